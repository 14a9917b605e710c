"""Run a recipe's stages in order into a run directory, with a manifest and resumable stages.

Layout of ``runs/<recipe>/<name>/``::

    recipe.yaml            the recipe as given
    manifest.json          inputs (+sha256), versions, config, per-stage metrics/timings, variants
    stages/NN-<type>/      each stage's artifacts + stage.json (its key, variants, metrics) once finished
    bench/                 benchmark results (json/csv/md/png)
    report.md, report.json, *.png
"""
from __future__ import annotations

import hashlib
import json
import logging
import platform
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from edgekit._io import read_json, sha256_file, write_json_atomic, write_text_atomic
from edgekit.core.threads import torch_threads
from edgekit.errors import ConfigError, RunDirectoryError
from edgekit.pipeline.stages import STAGES, StageContext, StageOutput, Variant

logger = logging.getLogger(__name__)

MANIFEST_SCHEMA = "edgekit-manifest/1"


@dataclass
class RunResult:
    """What a finished run produced."""

    run_dir: Path
    variants: Dict[str, Variant]
    manifest: dict
    report: Optional[Path] = None
    headline: List[str] = field(default_factory=list)


def resolve_run_dir(recipe: Any, runs_dir: str | Path, name: Optional[str], resume: bool) -> Path:
    """Pick the run directory: a new one (never an existing one) or, with ``resume``, an existing one."""
    base = Path(runs_dir) / recipe.name
    if resume and name is None:
        existing = sorted(d for d in base.glob("*") if (d / "manifest.json").is_file()) if base.is_dir() else []
        if not existing:
            raise RunDirectoryError(f"--resume: no earlier run of '{recipe.name}' under {base} to resume")
        return max(existing, key=lambda d: d.stat().st_mtime)
    name = name or datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = base / name
    if run_dir.exists() and not resume:
        raise RunDirectoryError(f"run directory {run_dir} already exists; pick another --name or pass --resume "
                                "to continue it (edgekit never overwrites a run)")
    if resume and run_dir.exists() and not (run_dir / "manifest.json").is_file():
        raise RunDirectoryError(f"{run_dir} is not an edgekit run (no manifest.json); refusing to write into it")
    return run_dir


def _versions() -> dict:
    import onnx
    import onnxruntime

    from edgekit import __version__

    return {"edgekit": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "numpy": np.__version__}


def _input_files(recipe: Any) -> Dict[str, str]:
    """sha256 of every file the recipe reads."""
    files = {}
    for key in ("checkpoint", "onnx"):
        p = getattr(recipe.model, key)
        if p:
            files[f"model.{key}"] = p
    if recipe.data.path and Path(recipe.data.path).is_file():
        files["data.path"] = recipe.data.path
    for i, st in enumerate(recipe.stages):
        calib = getattr(st, "calibration", None)
        if isinstance(calib, str) and Path(calib).is_file():
            files[f"stages[{i}].calibration"] = calib
    return {k: f"{v} sha256:{sha256_file(v)}" for k, v in files.items()}


def _preflight(recipe: Any) -> None:
    """Cheap checks before any expensive work: files exist, backends named exist, stage inputs resolvable."""
    from edgekit._io import require_file
    from edgekit.backends import backend_spec
    from edgekit.pipeline.model_source import import_plugins

    import_plugins(recipe.model.imports)
    for key in ("checkpoint", "onnx"):
        p = getattr(recipe.model, key)
        if p:
            require_file(p, f"model.{key}")
    if recipe.data.name in ("npz",):
        require_file(recipe.data.path or "", "data.path")
    for t in recipe.targets:
        backend_spec(t.backend)
    from edgekit.pipeline.report import check_required_targets

    check_required_targets(recipe)
    names = ["reference"] if (recipe.model.checkpoint or recipe.model.onnx) else []
    for i, st in enumerate(recipe.stages):
        calib = getattr(st, "calibration", None)
        if isinstance(calib, str):
            require_file(calib, f"stages[{i}].calibration")
        known = not any(n.startswith("<") for n in names)  # default names are decided by the stages themselves
        if st.input is not None and known and st.input not in names and st.input != "reference":
            raise ConfigError(f"stages[{i}].input: no earlier stage produces a variant named '{st.input}'; "
                              f"earlier variants: {', '.join(names) or 'none'}")
        names.append(st.name or f"<{st.type}>")
    torch_stages = sorted(n for n, st in STAGES.items() if st.needs_torch)
    if recipe.model.onnx and any(s.type in torch_stages for s in recipe.stages):
        raise ConfigError(f"model.onnx: an ONNX reference cannot go through PyTorch stages ({'/'.join(torch_stages)}); "
                          "start from model.name or model.checkpoint instead")


def stage_key(index: int, cfg: Any, recipe: Any, variants: Dict[str, Variant],
              digests: Optional[Dict[str, str]] = None) -> str:
    """Hash of everything a stage's result depends on: its config, seed, data and the input artifacts.

    ``digests`` (path → sha256) memoises file hashes across the stages of one run, where artifacts are
    written once and never change.
    """
    digests = {} if digests is None else digests
    h = hashlib.sha256()
    h.update(json.dumps({"i": index, "stage": cfg.model_dump(mode="json"), "seed": recipe.seed,
                         "data": recipe.data.model_dump(mode="json"), "model": recipe.model.model_dump(mode="json"),
                         "threads": recipe.threads}, sort_keys=True).encode())
    for v in variants.values():
        for kind, path in sorted(v.artifacts().items()):
            if path not in digests:
                digests[path] = sha256_file(path)
            h.update(f"{v.name}:{kind}:{digests[path]}".encode())
    return h.hexdigest()[:16]


def run_recipe(recipe: Any, *, recipe_path: Optional[str] = None, runs_dir: str | Path = "runs",
               name: Optional[str] = None, resume: bool = False, report: bool = True) -> RunResult:
    """Execute a recipe end to end and write its report.

    Args:
        recipe: a validated Recipe (``edgekit.pipeline.recipe.load_recipe``) or a path to a YAML recipe.
        recipe_path: the YAML file (copied into the run directory).
        runs_dir: parent of ``<recipe name>/<run name>/``.
        name: run name (default: a timestamp). An existing run is never overwritten.
        resume: continue an existing run (the latest one when ``name`` is None); finished stages whose
            inputs and config are unchanged are skipped.
        report: benchmark the variants and write the report after the stages.

    Example:
        >>> result = run_recipe("recipes/digits_resnet.yaml", name="try1")
        >>> print(result.report)
    """
    from edgekit.pipeline.recipe import load_recipe

    if isinstance(recipe, (str, Path)):
        recipe_path = str(recipe)
        recipe = load_recipe(recipe)
    _preflight(recipe)
    splits = _lazy_splits(recipe)
    _check_model_fits(recipe, splits)
    _check_calibration_files(recipe, splits)
    run_dir = _make_run_dir(recipe, runs_dir, name, resume, recipe_path)
    manifest = {"schema": MANIFEST_SCHEMA, "recipe": recipe.model_dump(mode="json"), "recipe_file": recipe_path,
                "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "versions": _versions(),
                "inputs": _input_files(recipe), "stages": [], "variants": {}}
    write_json_atomic(run_dir / "manifest.json", manifest)
    with torch_threads(recipe.threads):
        return _run_stages_and_report(recipe, run_dir, splits, manifest, report)


def _run_stages_and_report(recipe: Any, run_dir: Path, splits: Callable[[], Any], manifest: dict,
                           report: bool) -> RunResult:
    variants: Dict[str, Variant] = _initial_variants(recipe, run_dir, splits)
    digests: Dict[str, str] = {}
    for i, cfg in enumerate(recipe.stages):
        t0 = time.perf_counter()
        key = stage_key(i, cfg, recipe, variants, digests)
        out, status = _run_stage(i, cfg, key, recipe, run_dir, variants, splits)
        for v in out.variants:
            variants[v.name] = v
        manifest["stages"].append({"index": i, "type": cfg.type, "key": key, "status": status,
                                   "seconds": round(time.perf_counter() - t0, 2), "metrics": out.metrics,
                                   "produced": [v.name for v in out.variants]})
        manifest["variants"] = {n: v.to_dict() for n, v in variants.items()}
        write_json_atomic(run_dir / "manifest.json", manifest)
    result = RunResult(run_dir, variants, manifest)
    if report:
        from edgekit.pipeline.report import benchmark_and_report

        result.report, result.headline = benchmark_and_report(recipe, run_dir, variants, splits, manifest)
    manifest["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    write_json_atomic(run_dir / "manifest.json", manifest)
    return result


def _lazy_splits(recipe: Any) -> Callable[[], Any]:
    """``splits()`` loads the recipe's data on first use and returns the same splits afterwards."""
    from edgekit.data import load_data

    cache: dict = {}

    def splits():
        if "s" not in cache:
            cache["s"] = load_data(recipe.data, recipe.seed)
        return cache["s"]

    return splits


def _make_run_dir(recipe: Any, runs_dir: str | Path, name: Optional[str], resume: bool,
                  recipe_path: Optional[str]) -> Path:
    """Create (or, resuming, reuse) the run directory and copy the recipe file into it."""
    run_dir = resolve_run_dir(recipe, runs_dir, name, resume)
    try:
        run_dir.mkdir(parents=True, exist_ok=resume)
    except OSError as e:
        raise RunDirectoryError(f"cannot create run directory {run_dir}: {e.strerror}") from None
    if recipe_path:
        write_text_atomic(run_dir / "recipe.yaml", Path(recipe_path).read_text(encoding="utf-8"))
    return run_dir


def _run_stage(i: int, cfg: Any, key: str, recipe: Any, run_dir: Path, variants: Dict[str, Variant],
               splits: Callable[[], Any]) -> Tuple[StageOutput, str]:
    """Run stage ``i`` into its directory, or reuse its result when an earlier attempt finished with ``key``."""
    stage_dir = run_dir / "stages" / f"{i:02d}-{cfg.type}"
    done = stage_dir / "stage.json"
    rec = read_json(done) if done.is_file() else {}
    n = len(recipe.stages)
    if rec.get("key") == key:
        logger.info(f"[{i + 1}/{n}] {cfg.type}: finished earlier, skipped (key {key})")
        return StageOutput([Variant.from_dict(v) for v in rec["variants"]], rec.get("metrics", {})), "cached"
    if stage_dir.exists():
        shutil.rmtree(stage_dir)  # an interrupted attempt: start the stage afresh
    stage_dir.mkdir(parents=True)
    logger.info(f"[{i + 1}/{n}] {cfg.type} ...")
    t0 = time.perf_counter()
    torch.manual_seed(recipe.seed + i)
    np.random.seed((recipe.seed + i) % 2**32)
    ctx = StageContext(run_dir, stage_dir, recipe.seed, recipe.threads, recipe, dict(variants), splits)
    out = STAGES.get(cfg.type).run(ctx, cfg)
    write_json_atomic(done, {"key": key, "type": cfg.type, "variants": [v.to_dict() for v in out.variants],
                             "metrics": out.metrics, "seconds": round(time.perf_counter() - t0, 2)})
    return out, "ran"


def _check_calibration_files(recipe: Any, splits) -> None:
    """Validate every stage's calibration npz against the data's sample shape before any training."""
    from edgekit.data import load_calibration
    from edgekit.errors import ShapeError

    for i, st in enumerate(recipe.stages):
        calib = getattr(st, "calibration", None)
        if isinstance(calib, str):
            try:
                load_calibration(calib, splits().input_shape)
            except ShapeError as e:
                raise ShapeError(f"stages[{i}].calibration: {e}") from None


def _check_model_fits(recipe: Any, splits) -> None:
    from edgekit.pipeline.model_source import build_module, onnx_input_fits

    if recipe.model.onnx:
        onnx_input_fits(recipe.model.onnx, splits())
    elif recipe.model.checkpoint:
        build_module(recipe.model, splits())


def _initial_variants(recipe: Any, run_dir: Path, splits) -> Dict[str, Variant]:
    """The reference variant when the recipe starts from a file, or from random weights with no train stage."""
    from edgekit.models import count_params, save_checkpoint
    from edgekit.pipeline.model_source import build_module

    src = recipe.model
    if src.onnx:
        return {"reference": Variant("reference", None, None, str(Path(src.onnx).resolve()), meta={"source": "onnx"})}
    if recipe.stages and recipe.stages[0].type == "train":
        return {}
    ref_dir = run_dir / "stages" / "reference"
    ckpt, onnx_path = ref_dir / "reference.pt", ref_dir / "reference.onnx"
    if not (ckpt.is_file() and onnx_path.is_file()):
        from edgekit.export import export_onnx

        torch.manual_seed(recipe.seed)
        model = build_module(src, splits())
        s = splits()
        save_checkpoint(model, ckpt, {"input_shape": list(s.input_shape), "num_classes": s.num_classes})
        export_onnx(model, s.val.x[:32], onnx_path)
    else:  # resumed run: the reference written before
        from edgekit.models import load_checkpoint

        model, _ = load_checkpoint(ckpt)
    meta = {"source": "checkpoint" if src.checkpoint else "random-init"}
    return {"reference": Variant("reference", None, str(ckpt), str(onnx_path), meta=meta,
                                 metrics={"params": count_params(model)})}
