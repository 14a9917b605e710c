"""``benchmark()``: latency, throughput, memory, MACs, efficiency, accuracy and paired speedups.

Example:
    >>> from edgekit.bench import benchmark
    >>> res = benchmark(["fp32.onnx", "int8.onnx"], backends=("ort-cpu",), batches=(1, 8), threads=2)
    >>> print(res.to_markdown()); res.write("bench_out")
"""
from __future__ import annotations

import logging
import os
import resource
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from edgekit.bench.data import as_split, is_dataset_name, parse_batches
from edgekit.bench.results import SCHEMA, BenchResult
from edgekit.bench.specs import ModelSpec, as_specs, model_macs, pick_artifact, size_bytes
from edgekit.core.measure.latency import (
    ROUND_STATS,
    Case,
    paired_ratios,
    ratio_summary,
    run_interleaved,
    summarize,
    validate_settings,
)
from edgekit.errors import BackendUnavailableError, ConfigError, EdgekitError, ShapeError, first_line

logger = logging.getLogger(__name__)

PEAK_ROUND_S = 0.02  # seconds of GEMM per round and precision
GPU_PEAK_KEY = {"int8": "int8_gops", "fp16": "fp16_gops", "bf16": "fp16_gops"}


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def _resolve_shape(spec: ModelSpec, runner: Any, input_shape, data) -> Tuple[int, ...]:
    if input_shape is not None:
        return tuple(int(d) for d in input_shape)
    if data is not None:
        return tuple(data.x.shape[1:])
    if spec.input_shape:
        return tuple(int(d) for d in spec.input_shape)
    dims = tuple(runner.input_shape[1:]) if runner.input_shape else ()
    if dims and all(isinstance(d, int) and d > 0 for d in dims):
        return dims
    raise ShapeError(f"model '{spec.name}': its input shape is not fixed in the artifact; "
                     "pass input_shape (per sample, e.g. (3, 224, 224)) or --data")


def _sample(shape: Tuple[int, ...], batch: int, dtype, data, seed: int = 0) -> np.ndarray:
    if data is not None:
        idx = np.arange(batch) % len(data.x)
        return np.ascontiguousarray(data.x[idx]).astype(dtype, copy=False)
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch, *shape), dtype=np.float32).astype(dtype, copy=False)


def _match_baseline(baseline: Any, keys: List[Tuple[str, str]], specs: List[ModelSpec]) -> Tuple[str, str]:
    if baseline is None:
        return keys[0]
    if isinstance(baseline, tuple):
        name, backend = baseline
    else:
        name, _, backend = str(baseline).partition("@")
    if name not in {s.name for s in specs}:  # a path given: map it to the model that has that artifact
        for s in specs:
            if any(isinstance(a, (str, os.PathLike)) and Path(a).resolve() == Path(name).resolve()
                   for a in s.artifacts.values()):
                name = s.name
                break
    for key in keys:
        if key[0] == name and (not backend or key[1] == backend):
            return key
    allowed = ", ".join(f"{m}@{b}" for m, b in keys)
    raise ConfigError(f"baseline '{baseline}' is not among the benchmarked models; allowed: {allowed}")


def benchmark(models: Any, backends: Sequence[str] = ("ort-cpu",), batches: Any = (1,), threads: Optional[int] = None,
              warmup: int = 10, iters: Optional[int] = None, min_time: Optional[float] = None, rounds: int = 20,
              baseline: Any = None, data: Any = None, out_dir: Union[str, os.PathLike, None] = None,
              input_shape: Optional[Sequence[int]] = None, plots: bool = True, round_stat: str = "min") -> BenchResult:
    """Time models on backends and batch sizes, interleaved in rounds, with paired speedups.

    Args:
        models: a path (.onnx / .pt / .engine), an ``nn.Module``, a ``ModelSpec`` or a list of them
            (pipeline variants with ``name``/``checkpoint``/``onnx``/``engine`` attributes work too).
        backends: backend names (``edgekit.backends.BACKENDS``); unavailable ones are skipped with their
            reason unless none is left (then BackendUnavailableError).
        batches: batch sizes (ints or "1,8,32").
        threads: intra-op CPU threads; None = the CPUs this process may use. Recorded in the result.
        warmup: untimed iterations per case before timing.
        iters / min_time: total timed iterations, or minimum timed seconds, per case (default 1 s).
        rounds: interleaved rounds; each gives one per-round speedup ratio.
        baseline: model name or path (optionally ``name@backend``); default the first model on the first backend.
        data: held-out split (``.x`` float32 [N, ...], ``.y`` int64), an ``.npz`` path or ``"digits"``:
            adds top-1 accuracy (%) measured through the same runner.
        out_dir: when given, writes bench.json / .csv / .md and plots there.
        input_shape: per-sample input shape when the artifact does not fix it.
        plots: write PNG plots along with the tables (when ``out_dir`` is given).
        round_stat: per-round latency behind ratios and efficiency: "min" (default; robust to the
            additive noise of a shared machine), "p25" or "median".

    Returns:
        BenchResult with one row per model x backend x batch.

    Example:
        >>> res = benchmark(["a.onnx", "b.onnx"], batches="1,8", threads=2, iters=200)
        >>> res.rows[1]["speedup"]
    """
    batch_list = parse_batches(batches)  # cheap validation first, before heavy imports and work
    validate_settings(warmup, iters, min_time, rounds)
    if round_stat not in ROUND_STATS:
        raise ConfigError(f"round_stat must be one of {', '.join(ROUND_STATS)}, got {round_stat!r}")
    if iters is None and min_time is None:
        min_time = 1.0
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"threads must be a positive integer, got {threads!r}")

    from edgekit.backends import (
        BACKENDS,
        _builtin,  # noqa: F401  (fills the registry)
    )
    from edgekit.bench.peak import GemmProbe, measure_gpu_peak
    from edgekit.core.platform import environment, load_average

    env = environment()
    threads = threads or env["cores_usable"]
    backend_list = [b.strip() for b in ([backends] if isinstance(backends, str) else backends) for b in b.split(",")
                    if b.strip()]
    if not backend_list:
        raise ConfigError("no backend given; valid: " + ", ".join(BACKENDS.names()))
    specs = [BACKENDS.get(b) for b in backend_list]  # unknown names -> ConfigError with did-you-mean
    models_ = as_specs(models)
    split = None if is_dataset_name(data) else as_split(data)  # a dataset name is loaded to fit the model

    skipped: List[dict] = []
    usable = []
    for bspec in specs:
        ok, reason = bspec.probe()
        if ok:
            usable.append(bspec)
        else:
            skipped.append({"model": "*", "backend": bspec.name, "reason": f"backend unavailable: {reason}"})
    if not usable:
        raise BackendUnavailableError("; ".join(f"backend '{s['backend']}' {s['reason']}" for s in skipped))

    from edgekit.backends.base import open_runner

    runners: Dict[Tuple[str, str], Any] = {}
    meta: Dict[Tuple[str, str], dict] = {}
    shapes: Dict[str, Tuple[int, ...]] = {}
    probes: Dict[str, Any] = {}
    try:
        for spec in models_:
            for bspec in usable:
                picked = pick_artifact(spec, bspec.artifact_kinds)
                if picked is None:
                    skipped.append({"model": spec.name, "backend": bspec.name,
                                    "reason": f"no {' or '.join(bspec.artifact_kinds)} artifact "
                                              f"(has: {', '.join(spec.artifacts) or 'none'})"})
                    continue
                kind, art = picked
                rss0 = _rss_mb()
                runner = open_runner(art, backend=bspec.name, threads=threads)
                runners[(spec.name, bspec.name)] = runner
                if split is None and data is not None:
                    try:
                        like = _resolve_shape(spec, runner, input_shape, None)
                    except ShapeError:
                        like = None
                    split = as_split(data, like_shape=like)
                shape = _resolve_shape(spec, runner, input_shape, split)
                shapes.setdefault(spec.name, shape)
                x = _sample(shape, max(batch_list), runner.input_dtype, split)
                try:  # validates the input shape (runner() checks it first) before any timing
                    runner(x)
                except EdgekitError:
                    raise
                except Exception as e:
                    raise ShapeError(f"model '{spec.name}' on {bspec.name} cannot run input of shape "
                                     f"{list(x.shape)}: {first_line(e, 240)}") from None
                meta[(spec.name, bspec.name)] = {
                    "kind": kind, "artifact": "<nn.Module>" if kind == "module" else os.fspath(art),
                    "size_bytes": size_bytes(art, kind), "mem_delta_mb": round(_rss_mb() - rss0, 1),
                    "device": bspec.device, "precision": runner.info.get("precision", "fp32"),
                    "threads": runner.info.get("threads", threads),
                    "warning": _target_warning(art, kind, bspec.name),
                }
                if meta[(spec.name, bspec.name)]["warning"]:
                    logger.info(f"bench: warning: {meta[(spec.name, bspec.name)]['warning']}")
        keys = list(runners)
        if not keys:
            raise ConfigError("nothing to benchmark: " + "; ".join(f"{s['model']} on {s['backend']}: {s['reason']}"
                                                                   for s in skipped))
        base_key = _match_baseline(baseline, keys, models_)

        macs = {}
        for spec in models_:
            if spec.name in shapes:
                owned = {b: r for (m, b), r in runners.items() if m == spec.name}
                macs[spec.name] = model_macs(spec, owned, shapes[spec.name])
        has_labels = split is not None and split.y is not None
        from edgekit.core.train import evaluate

        accuracy = {k: evaluate(r, split, batch_size=128) for k, r in runners.items()} if has_labels else {}

        t0, load_start = time.time(), load_average()
        probes = ({p: GemmProbe(p, None, threads) for p in ("fp32", "int8")}
                  if any(m["device"] == "cpu" for m in meta.values()) else {})
        peak_rounds: Dict[str, List[float]] = {p: [] for p in probes}
        peak_gpu = measure_gpu_peak() if any(m["device"] != "cpu" for m in meta.values()) else None

        rows: List[dict] = []
        for batch in batch_list:
            cases = [Case(k, runners[k], runners[k].prepare(_sample(shapes[k[0]], batch, runners[k].input_dtype, split)),
                          meta[k]["device"]) for k in keys]
            cases += [Case(("__peak__", p), g, g.prepared, "cpu", round_time_s=PEAK_ROUND_S) for p, g in probes.items()]
            res = run_interleaved(cases, warmup=warmup, iters=iters, min_time=min_time, rounds=rounds,
                                  desc=f"bench batch={batch}")
            per_round = res.round_stat(round_stat)  # one latency per round and case (see round_stat)
            bi = keys.index(base_key)
            peak_now = {p: np.array([g.gops(ms) for ms in per_round[len(keys) + j]]) for j, (p, g) in enumerate(probes.items())}
            for p, arr in peak_now.items():
                peak_rounds[p] += arr.tolist()
            for i, k in enumerate(keys):
                m = meta[k]
                total, int8, _src = macs.get(k[0], (None, None, ""))
                row = {"model": k[0], "backend": k[1], "batch": batch, "baseline": k == base_key,
                       "precision": m["precision"], "device": m["device"], "threads": m["threads"],
                       "artifact": m["artifact"], "warning": m.get("warning"), "rounds": len(per_round[i]),
                       **summarize(res.all_times(i), batch),
                       "size_bytes": m["size_bytes"], "mem_delta_mb": m["mem_delta_mb"],
                       "macs": total, "int8_macs": int8}
                # GOP/s from the same per-round latency as the ratios (median over rounds), so that
                # GOP/s, % peak and speedups agree with each other
                row["round_ms"] = float(np.median(per_round[i]))
                achieved = 2.0 * total * batch / (per_round[i] / 1e3) / 1e9 if total else None
                row["gops"] = float(np.median(achieved)) if total else None
                row["peak_gops"], row["efficiency"] = None, None
                if m["device"] == "cpu" and probes and total:
                    # paired like the speedups: achieved / peak in the same round, median over rounds
                    pr = peak_now["int8" if m["precision"] == "int8" else "fp32"]
                    row["peak_gops"], row["efficiency"] = float(np.median(pr)), float(np.median(achieved / pr))
                elif m["device"] != "cpu" and peak_gpu and row["gops"]:
                    pk = peak_gpu.get(GPU_PEAK_KEY.get(m["precision"], "fp32_gops"))
                    row["peak_gops"], row["efficiency"] = pk, (row["gops"] / pk if pk else None)
                row["accuracy"] = accuracy.get(k)
                row.update(ratio_summary(paired_ratios(per_round[bi], per_round[i])))
                rows.append(row)
        timing_s = time.time() - t0
    finally:
        for r in list(runners.values()) + list(probes.values()):
            try:
                r.close()
            except Exception:
                pass

    result = BenchResult(
        rows=rows, skipped=skipped, environment=env,
        peak={"cpu": _peak_summary(peak_rounds, threads), "gpu": peak_gpu},
        config={"backends": backend_list, "batches": batch_list, "threads": threads, "warmup": warmup,
                "iters": iters, "min_time": min_time, "rounds": rounds, "round_stat": round_stat, "input_shapes": {k: list(v) for k, v in shapes.items()},
                "data": None if split is None else {"n": int(len(split.x)), "source": getattr(split, "source", None)},
                "timing_s": round(timing_s, 1), "peak_rss_mb": round(_peak_rss_mb(), 1),
                "load_avg_1m": [load_start, load_average()]},
        baseline={"model": base_key[0], "backend": base_key[1]},
    )
    if out_dir is not None:
        result.write(out_dir, plots=plots)
    return result


def _target_warning(artifact: Any, kind: str, backend: str) -> Optional[str]:
    """A warning when a quantised artifact runs on a backend its QDQ flavour was not made for."""
    if kind != "onnx":
        return None
    from edgekit.techniques.quantize.ptq import check_target

    return check_target(artifact, backend)


def _peak_summary(peak_rounds: Dict[str, List[float]], threads: int) -> Optional[dict]:
    if not peak_rounds:
        return None
    from edgekit.bench.peak import PEAK_SIZES

    out = {"sizes": dict(PEAK_SIZES), "threads": threads,
           "method": f"ONNX Runtime MatMul (fp32, {PEAK_SIZES['fp32']}^3) / MatMulInteger (u8 x s8, "
                     f"{PEAK_SIZES['int8']}^3), timed in every round between the variants; median (and max) of the "
                     "per-round values"}
    for p, vals in peak_rounds.items():
        out[f"{p}_gops"] = round(float(np.median(vals)), 1) if vals else None
        out[f"{p}_gops_max"] = round(float(np.max(vals)), 1) if vals else None
    return out


__all__ = ["ModelSpec", "benchmark", "SCHEMA"]
