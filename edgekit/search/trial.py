"""One trial at one fidelity: run the trial's recipe stages through a shared stage cache, then measure it.

Cache: stage ``i`` of a trial lives in ``<cache>/<NN>-<type>-<key>/`` where ``key`` hashes the stage's config
together with the keys of every stage before it (and the recipe's seed, data and model). Two trials that share
a prefix of stages (the teacher; the same distilled student) share those directories: the first one to need a
stage builds it under a per-key lock, the others wait and reuse it. The pipeline's registered stage functions do
the work (:data:`edgekit.pipeline.stages.STAGES`), so a trial is exactly what ``edgekit run`` makes of its recipe.

Example:
    >>> metrics = run_rung({"raw": raw_recipe, "cache_dir": "search/cache", "lock_dir": "search/locks",
    ...                     "backend": default_backend("onnx", "cpu"), "batch": 1, "measure": {"rounds": 5, ...}})
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

from edgekit._io import read_json, write_json_atomic
from edgekit.search.locks import compute_slot, file_lock

logger = logging.getLogger(__name__)


def chain_keys(recipe: Any) -> List[str]:
    """Cache key of every stage: its config + the keys before it + seed, data and model of the recipe."""
    keys, prev = [], json.dumps({"seed": recipe.seed, "data": recipe.data.model_dump(mode="json"),
                                 "model": recipe.model.model_dump(mode="json"), "threads": recipe.threads},
                                sort_keys=True)
    for i, cfg in enumerate(recipe.stages):
        h = hashlib.sha256(f"{prev}|{i}|{json.dumps(cfg.model_dump(mode='json'), sort_keys=True)}".encode())
        prev = h.hexdigest()[:16]
        keys.append(f"{i:02d}-{cfg.type}-{prev}")
    return keys


def _run_stage_cached(i: int, cfg: Any, key: str, recipe: Any, cache_dir: Path, lock_dir: Path,
                      variants: Dict[str, Any], splits: Any) -> Tuple[Any, str]:
    import numpy as np
    import torch

    from edgekit.pipeline.stages import STAGES, StageContext, StageOutput, Variant

    stage_dir = cache_dir / key
    done = stage_dir / "stage.json"
    with file_lock(cache_dir / f"{key}.lock"):
        if done.is_file():
            rec = read_json(done)
            return StageOutput([Variant.from_dict(v) for v in rec["variants"]], rec.get("metrics", {})), "cached"
        if stage_dir.exists():
            shutil.rmtree(stage_dir)  # an interrupted attempt
        stage_dir.mkdir(parents=True)
        t0 = time.perf_counter()
        with compute_slot(lock_dir):
            torch.manual_seed(recipe.seed + i)
            np.random.seed((recipe.seed + i) % 2**32)
            ctx = StageContext(cache_dir, stage_dir, recipe.seed, recipe.threads, recipe, dict(variants),
                               lambda: splits)
            out = STAGES.get(cfg.type).run(ctx, cfg)
        write_json_atomic(done, {"key": key, "type": cfg.type, "variants": [v.to_dict() for v in out.variants],
                                 "metrics": out.metrics, "seconds": round(time.perf_counter() - t0, 2)})
    return out, "ran"


def _initial_variants(recipe: Any, cache_dir: Path, lock_dir: Path, splits: Any) -> Dict[str, Any]:
    """The reference variant when the recipe starts from a file (or random weights) instead of a train stage."""
    from edgekit.pipeline.stages import Variant

    src = recipe.model
    if src.onnx:
        return {"reference": Variant("reference", None, None, str(Path(src.onnx).resolve()), meta={"source": "onnx"})}
    if recipe.stages and recipe.stages[0].type == "train":
        return {}
    digest = hashlib.sha256(json.dumps({"model": src.model_dump(mode="json"), "seed": recipe.seed,
                                        "data": recipe.data.model_dump(mode="json")}, sort_keys=True).encode())
    ref_dir = cache_dir / f"reference-{digest.hexdigest()[:16]}"
    ckpt, onnx_path = ref_dir / "reference.pt", ref_dir / "reference.onnx"
    with file_lock(cache_dir / f"{ref_dir.name}.lock"):
        if not (ckpt.is_file() and onnx_path.is_file()):
            import torch

            from edgekit.export import export_onnx
            from edgekit.models import save_checkpoint
            from edgekit.pipeline.model_source import build_module

            with compute_slot(lock_dir):
                torch.manual_seed(recipe.seed)
                model = build_module(src, splits)
                save_checkpoint(model, ckpt, {"input_shape": list(splits.input_shape),
                                              "num_classes": splits.num_classes})
                export_onnx(model, splits.val.x[:32], onnx_path)
    return {"reference": Variant("reference", None, str(ckpt), str(onnx_path), meta={"source": "model"})}


def build_trial(raw: dict, cache_dir: Path, lock_dir: Path, threads: int, source: str = "search") -> dict:
    """Run (or reuse) every stage of the trial recipe ``raw``; return its reference, candidate and stage log."""
    from edgekit.core.threads import torch_threads
    from edgekit.data import load_data
    from edgekit.pipeline.recipe import validate_recipe

    recipe = validate_recipe(raw, source=source)
    splits = load_data(recipe.data, recipe.seed)
    keys = chain_keys(recipe)
    log = []
    with torch_threads(threads):
        variants = _initial_variants(recipe, cache_dir, lock_dir, splits)
        produced: List[Any] = []
        for i, cfg in enumerate(recipe.stages):
            t0 = time.perf_counter()
            out, status = _run_stage_cached(i, cfg, keys[i], recipe, cache_dir, lock_dir, variants, splits)
            for v in out.variants:
                variants[v.name] = v
            produced = out.variants or produced
            log.append({"stage": i, "type": cfg.type, "key": keys[i], "status": status,
                        "seconds": round(time.perf_counter() - t0, 2)})
    if not variants:
        raise ValueError("the trial recipe produced no model")
    reference = next(iter(variants.values()))
    candidate = produced[-1] if produced else reference
    return {"recipe": recipe, "splits": splits, "reference": reference, "candidate": candidate, "log": log,
            "key": keys[-1] if keys else "reference"}


def run_rung(job: dict) -> dict:
    """Worker entry point (a separate process or a Ray task): build one trial at one fidelity and measure it.

    ``job`` keys: raw (the trial recipe, epochs already scaled), cache_dir, lock_dir, backend, batch, measure
    (rounds/warmup/min_time), threads (compute threads for this worker), timing_threads.
    Returns the trial's metrics (see :func:`edgekit.search.measure.measure_candidate`).
    """
    from edgekit.search.measure import measure_candidate

    t0 = time.perf_counter()
    cache_dir, lock_dir = Path(job["cache_dir"]), Path(job["lock_dir"])
    built = build_trial(job["raw"], cache_dir, lock_dir, job["threads"])
    build_s = time.perf_counter() - t0
    metrics = measure_candidate(built, job, cache_dir, lock_dir)
    metrics.update({"build_s": round(build_s, 2), "seconds": round(time.perf_counter() - t0, 2),
                    "stages": built["log"], "key": built["key"]})
    return metrics


__all__ = ["build_trial", "chain_keys", "run_rung"]
