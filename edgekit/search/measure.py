"""Measuring a trial for real: accuracy through the deployed artifact, latency as a paired ratio vs the float model.

Accuracy runs through the target backend's runner on the validation split (the test split is kept for the final
re-measurement). Latency: the candidate and the float baseline (the reference model's artifact on the same
backend) are timed interleaved in rounds (A B A B ...) inside :func:`~edgekit.search.locks.timing_slot`, so no
other worker of the search computes meanwhile; the trial's latency is the median per-round ratio
``candidate_ms / baseline_ms`` (drift of the shared machine cancels) and ``latency_ms`` is that ratio times the
baseline's median per-round latency.

Example:
    >>> objective = {"backend": default_backend("onnx", "cpu"), "batch": 1, "measure": {...}}
    >>> m = measure_candidate(built, objective, cache_dir, lock_dir)
    >>> m["latency_ratio"], m["val_accuracy"]
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Sequence

import numpy as np

from edgekit._io import read_json, write_json_atomic
from edgekit.errors import ConfigError
from edgekit.search.locks import compute_slot, timing_slot


def deployed_artifact(variant: Any, backend: str) -> str:
    """The variant's file the backend runs (its first artifact kind the variant has)."""
    from edgekit.backends import backend_spec

    spec = backend_spec(backend)
    artifacts = variant.artifacts()
    for kind in spec.artifact_kinds:
        if kind in artifacts:
            return artifacts[kind]
    if "module" in spec.artifact_kinds and "checkpoint" in artifacts:
        return artifacts["checkpoint"]
    raise ConfigError(f"search.objective.backend: '{backend}' runs {', '.join(spec.artifact_kinds)}, but the "
                      f"trial's model '{variant.name}' only has {', '.join(artifacts) or 'no artifact'}")


def size_mb(path: str) -> float:
    """Size of an artifact file in MB (10^6 bytes)."""
    return os.path.getsize(path) / 1e6


def accuracy(artifact: str, backend: str, split: Any, threads: int) -> float:
    """Top-1 accuracy (%) of ``artifact`` run by ``backend`` on ``split``."""
    from edgekit.backends import open_runner
    from edgekit.core.train import evaluate

    with open_runner(artifact, backend=backend, threads=threads) as runner:
        return evaluate(runner, split)


def cached_accuracy(artifact: str, backend: str, split: Any, split_name: str, threads: int, lock_dir: Path) -> float:
    """Accuracy of an artifact on a split, remembered beside the artifact (artifacts never change once written)."""
    memo = Path(f"{artifact}.accuracy-{backend}-{split_name}.json")
    if memo.is_file():
        return float(read_json(memo)["accuracy"])
    with compute_slot(lock_dir):
        acc = accuracy(artifact, backend, split, threads)
    write_json_atomic(memo, {"accuracy": acc, "n": int(len(split.x))})
    return acc


def time_paired(artifacts: Sequence[str], backend: str, x: np.ndarray, threads: int, rounds: int, warmup: int,
                min_time: float, warmup_s: float = 0.0) -> List[np.ndarray]:
    """Per-round latencies (ms, each block's fastest iteration) of the artifacts, timed interleaved in rounds
    after ``warmup_s`` untimed seconds per artifact (interleaved too, so every session warms up alike)."""
    from edgekit.backends import open_runner
    from edgekit.core.measure.latency import Case, run_interleaved

    runners = [open_runner(a, backend=backend, threads=threads) for a in artifacts]
    try:
        cases = [Case(i, r, r.prepare(x)) for i, r in enumerate(runners)]
        if warmup_s > 0:
            run_interleaved(cases, warmup=warmup, min_time=warmup_s, rounds=1, desc="search warm-up",
                            max_extra_rounds=0)
        res = run_interleaved(cases, warmup=warmup, min_time=min_time, rounds=rounds, desc="search timing",
                              max_extra_rounds=0)
        return [np.asarray(v, float) for v in res.round_stat("min")]
    finally:
        for r in runners:
            r.close()


def measure_candidate(built: dict, job: dict, cache_dir: Path, lock_dir: Path) -> Dict[str, Any]:
    """Validation accuracy, size and paired latency of a built trial's candidate against its float reference."""
    backend, batch, m = job["backend"], int(job["batch"]), job["measure"]
    splits = built["splits"]
    base = deployed_artifact(built["reference"], backend)
    cand = deployed_artifact(built["candidate"], backend)
    threads = int(job.get("timing_threads") or built["recipe"].threads)
    teacher_acc = cached_accuracy(base, backend, splits.val, "val", job["threads"], lock_dir)
    val_acc = cached_accuracy(cand, backend, splits.val, "val", job["threads"], lock_dir)
    x = pair_x(splits.val, batch)
    with timing_slot(lock_dir):
        base_ms, cand_ms = time_paired([base, cand], backend, x, threads, int(m["rounds"]), int(m["warmup"]),
                                       float(m["min_time"]), float(m.get("warmup_s", 0.0)))
    ratios = cand_ms / base_ms
    ratio = float(np.median(ratios))
    return {"val_accuracy": round(val_acc, 3), "teacher_val_accuracy": round(teacher_acc, 3),
            "accuracy_drop": round(teacher_acc - val_acc, 3), "latency_ratio": round(ratio, 4),
            "latency_ratio_rounds": [round(float(r), 4) for r in ratios],
            "baseline_ms": round(float(np.median(base_ms)), 4),
            "latency_ms": round(ratio * float(np.median(base_ms)), 4),
            "size_mb": round(size_mb(cand), 4), "artifact": cand, "baseline_artifact": base,
            "variant": built["candidate"].name, "timing_threads": threads}


def bootstrap_ci(values: Sequence[float], stat=np.median, n: int = 2000, level: float = 0.95,
                 seed: int = 0) -> List[float]:
    """Percentile-bootstrap confidence interval of ``stat`` over ``values``."""
    v = np.asarray(values, float)
    if v.size < 2:
        return [float(v[0]), float(v[0])] if v.size else [float("nan"), float("nan")]
    rng = np.random.default_rng(seed)
    boots = np.array([stat(rng.choice(v, v.size, replace=True)) for _ in range(n)])
    lo, hi = np.percentile(boots, [(1 - level) / 2 * 100, (1 + level) / 2 * 100])
    return [float(lo), float(hi)]


def wilson_ci(correct_pct: float, n: int, z: float = 1.96) -> List[float]:
    """Wilson score interval (%, 95%) of an accuracy measured on ``n`` samples."""
    if n <= 0:
        return [float("nan"), float("nan")]
    p = correct_pct / 100.0
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return [round(100 * (centre - half), 2), round(100 * (centre + half), 2)]


def pair_x(split: Any, batch: int) -> np.ndarray:
    """``batch`` samples of a split as one contiguous input (repeated when the split is smaller)."""
    x = np.ascontiguousarray(split.x[:batch])
    return x if len(x) >= batch else np.concatenate([x] * (batch // max(1, len(x)) + 1))[:batch]


__all__ = ["accuracy", "bootstrap_ci", "cached_accuracy", "deployed_artifact", "measure_candidate", "pair_x",
           "size_mb", "time_paired", "wilson_ci"]

