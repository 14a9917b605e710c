"""Run a recipe's stages in order into a run directory, with a manifest and resumable stages.

Layout of ``runs/<recipe>/<name>/``::

    .lock                  held (fcntl/msvcrt) by the one process writing the run; holds its pid
    recipe.yaml            the recipe as given
    manifest.json          inputs (+sha256), versions, config, per-stage metrics/timings, variants
    stages/NN-<type>/      each stage's artifacts + stage.json (its key, variants with paths relative to the
                           run directory, metrics, sha256 of every file) once finished

A run is bound to its recipe: ``--resume`` continues only a run made by the same validated recipe and re-verifies
every reused artifact's sha256; names are single path components confined to the runs directory.
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
from edgekit.pipeline.preflight import check_benchmark_variants, preflight
from edgekit.pipeline.rundir import RunLock, check_run_name, confined, recipe_changes, recipe_fingerprint
from edgekit.pipeline.stage_record import read_record, verify_finished_stages, write_record
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
    """Pick the run directory: a new one (never an existing one) or, with ``resume``, an existing one.

    Names are single path components (:func:`~edgekit.pipeline.rundir.check_run_name`) and the resolved path
    must stay inside ``runs_dir``.
    """
    check_run_name(recipe.name, "name")
    if name is not None:
        check_run_name(name, "--name")
    base = confined(Path(runs_dir), recipe.name)
    if resume and name is None:
        existing = sorted(d for d in base.glob("*") if (d / "manifest.json").is_file()) if base.is_dir() else []
        if not existing:
            raise RunDirectoryError(f"--resume: no earlier run of '{recipe.name}' under {base} to resume")
        return max(existing, key=lambda d: d.stat().st_mtime)
    name = name or datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = confined(base, name)
    if run_dir.exists() and not resume:
        raise RunDirectoryError(f"run directory {run_dir} already exists; pick another --name or pass --resume "
                                "to continue it (edgekit never overwrites a run)")
    if resume and not (run_dir / "manifest.json").is_file():
        what = "does not exist" if not run_dir.exists() else "is not an edgekit run (no manifest.json)"
        raise RunDirectoryError(f"--resume: {run_dir} {what}; nothing to resume")
    return run_dir


def check_same_recipe(recipe: Any, run_dir: Path) -> dict:
    """The run's manifest, if ``run_dir`` was made by this very recipe (same validated config); else refuse,
    naming what changed. Reads only: a refused resume leaves every byte of the run unchanged."""
    manifest = read_json(run_dir / "manifest.json")
    before = manifest.get("recipe") if isinstance(manifest, dict) else None
    now = recipe.model_dump(mode="json")
    if not isinstance(before, dict) or recipe_fingerprint(before) != recipe_fingerprint(now):
        changes = recipe_changes(before, now) if isinstance(before, dict) else ["(no recipe recorded)"]
        raise RunDirectoryError(f"--resume: {run_dir} was made by a different recipe (changed: {'; '.join(changes)}); "
                                "it is left untouched — run under a new --name, or pass --resume --rerun-changed to "
                                "write the changed stages into a new run")
    return manifest


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
    out = {k: f"{v} sha256:{sha256_file(v)}" for k, v in files.items()}
    tok = getattr(recipe.data, "tokenizer", None)
    for key, path in (("model.hf", _users_hf_dir(recipe)), ("data.tokenizer", tok)):
        if path and Path(path).is_dir():
            out[key] = f"{path} sha256:{directory_digest(path)}"
        elif path and Path(path).is_file():
            out[key] = f"{path} sha256:{sha256_file(path)}"
    return out


def _users_hf_dir(recipe: Any) -> Optional[str]:
    """``model.hf`` when it is the user's own directory; one edgekit creates from ``model.config`` is derived from
    the recipe (already in every stage key) and may not exist yet."""
    hf = getattr(recipe.model, "hf", None)
    return hf if hf and not getattr(recipe.model, "config", None) else None


def directory_digest(path: str | Path) -> str:
    """sha256 over the relative names and contents of every file under ``path`` (a saved Hugging Face model)."""
    h = hashlib.sha256()
    root = Path(path)
    for f in sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")):
        h.update(f"{f.relative_to(root).as_posix()}:{sha256_file(f)}\n".encode())
    return h.hexdigest()


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
    hf = _users_hf_dir(recipe)
    if hf and Path(hf).is_dir():  # new weights in the user's model directory invalidate every stage
        if f"dir:{hf}" not in digests:
            digests[f"dir:{hf}"] = directory_digest(hf)
        h.update(f"model.hf:{digests[f'dir:{hf}']}".encode())
    for v in variants.values():
        for kind, path in sorted(v.artifacts().items()):
            if path not in digests:
                digests[path] = sha256_file(path)
            h.update(f"{v.name}:{kind}:{digests[path]}".encode())
    return h.hexdigest()[:16]


def run_recipe(recipe: Any, *, recipe_path: Optional[str] = None, runs_dir: str | Path = "runs",
               name: Optional[str] = None, resume: bool = False, report: bool = True,
               rerun_changed: bool = False) -> RunResult:
    """Execute a recipe end to end and write its report.

    Args:
        recipe: a validated Recipe (``edgekit.pipeline.recipe.load_recipe``) or a path to a YAML recipe.
        recipe_path: the YAML file (copied into the run directory).
        runs_dir: parent of ``<recipe name>/<run name>/``; nothing is written outside it.
        name: run name (default: a timestamp). An existing run is never overwritten.
        resume: continue an existing run (the latest one when ``name`` is None) made by this same recipe;
            finished stages whose inputs and files are unchanged are skipped. A run of a different (or edited)
            recipe is refused, naming what changed.
        report: benchmark the variants and write the report after the stages.
        rerun_changed: with ``resume``: copy the earlier run's finished stages into a **new** run and run the
            changed ones there (the earlier run is only read).

    Example:
        >>> result = run_recipe("recipes/digits_resnet.yaml", name="try1")
        >>> print(result.report)
    """
    from edgekit.pipeline.recipe import load_recipe

    if isinstance(recipe, (str, Path)):
        recipe_path = str(recipe)
        recipe = load_recipe(recipe)
    if rerun_changed and not resume:
        raise ConfigError("--rerun-changed goes with --resume: it re-runs an earlier run's changed stages in a new run")
    splits = _lazy_splits(recipe)
    preflight(recipe, splits)
    run_dir, lock = _claim_run_dir(recipe, runs_dir, name, resume, rerun_changed, recipe_path)
    try:
        manifest = {"schema": MANIFEST_SCHEMA, "recipe": recipe.model_dump(mode="json"),
                    "recipe_sha256": recipe_fingerprint(recipe.model_dump(mode="json")), "recipe_file": recipe_path,
                    "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "versions": _versions(),
                    "inputs": _input_files(recipe), "stages": [], "variants": {}}
        write_json_atomic(run_dir / "manifest.json", manifest)
        with torch_threads(recipe.threads):
            strict = resume and not rerun_changed
            return _run_stages_and_report(recipe, run_dir, splits, manifest, report, strict)
    finally:
        lock.release()


def _claim_run_dir(recipe: Any, runs_dir: str | Path, name: Optional[str], resume: bool, rerun_changed: bool,
                   recipe_path: Optional[str]) -> Tuple[Path, RunLock]:
    """The run directory, locked for this process: an existing run of this same recipe (resume), or a new one
    (copying an earlier run's finished stages with ``rerun_changed``)."""
    if resume and not rerun_changed:
        run_dir = resolve_run_dir(recipe, runs_dir, name, resume=True)
        check_same_recipe(recipe, run_dir)  # before the lock file is touched: a refusal changes nothing
        lock = RunLock(run_dir).acquire()
        try:
            check_same_recipe(recipe, run_dir)  # again, now that no other process can be writing it
            verify_finished_stages(run_dir)
        except BaseException:
            lock.release()
            raise
        return run_dir, lock
    source = resolve_run_dir(recipe, runs_dir, name, resume=True) if rerun_changed else None
    run_dir = resolve_run_dir(recipe, runs_dir, None if rerun_changed else name, resume=False)
    try:
        run_dir.mkdir(parents=True, exist_ok=False)
    except FileExistsError:
        raise RunDirectoryError(f"run directory {run_dir} already exists (another run started at the same moment?); "
                                "pick another --name") from None
    except OSError as e:
        raise RunDirectoryError(f"cannot create run directory {run_dir}: {e.strerror}") from None
    lock = RunLock(run_dir).acquire()
    try:
        if source is not None:
            _copy_finished_stages(source, run_dir)
        if recipe_path:
            write_text_atomic(run_dir / "recipe.yaml", Path(recipe_path).read_text(encoding="utf-8"))
    except BaseException:
        lock.release()
        raise
    return run_dir, lock


def _copy_finished_stages(source: Path, run_dir: Path) -> None:
    """Copy ``source``'s stage directories into the new ``run_dir`` (the source is only read, under its lock)."""
    if not (source / "stages").is_dir():
        return
    with RunLock(source):
        shutil.copytree(source / "stages", run_dir / "stages", symlinks=True)
    logger.info(f"--rerun-changed: new run {run_dir.name} from the finished stages of {source.name}")


def _run_stages_and_report(recipe: Any, run_dir: Path, splits: Callable[[], Any], manifest: dict,
                           report: bool, strict: bool) -> RunResult:
    variants: Dict[str, Variant] = _initial_variants(recipe, run_dir, splits)
    digests: Dict[str, str] = {}
    for i, cfg in enumerate(recipe.stages):
        t0 = time.perf_counter()
        key = stage_key(i, cfg, recipe, variants, digests)
        out, status = _run_stage(i, cfg, key, recipe, run_dir, variants, splits, strict)
        for v in out.variants:
            variants[v.name] = v
        manifest["stages"].append({"index": i, "type": cfg.type, "key": key, "status": status,
                                   "seconds": round(time.perf_counter() - t0, 2), "metrics": out.metrics,
                                   "produced": [v.name for v in out.variants]})
        manifest["variants"] = {n: v.to_dict() for n, v in variants.items()}
        write_json_atomic(run_dir / "manifest.json", manifest)
    _remove_foreign_stage_dirs(recipe, run_dir)
    _save_tokenizer(run_dir, splits, manifest)
    result = RunResult(run_dir, variants, manifest)
    check_benchmark_variants(recipe, list(variants))
    if report:
        from edgekit.pipeline.report import benchmark_and_report

        result.report, result.headline = benchmark_and_report(recipe, run_dir, variants, splits, manifest)
    manifest["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    write_json_atomic(run_dir / "manifest.json", manifest)
    return result


REFERENCE_DIR = "reference"  # stages/reference/: a given (not trained) reference model's checkpoint and export


def _remove_foreign_stage_dirs(recipe: Any, run_dir: Path) -> None:
    """Stage folders this recipe has no stage for (copied by --rerun-changed from a longer or reordered recipe):
    removed, so the run holds only what its recipe made."""
    expected = {f"{i:02d}-{cfg.type}" for i, cfg in enumerate(recipe.stages)} | {REFERENCE_DIR}
    for d in sorted((run_dir / "stages").glob("*")):
        if d.is_dir() and d.name not in expected:
            shutil.rmtree(d)
            logger.info(f"removed stage folder {d.name}: copied from the earlier run, not a stage of this recipe")


def _save_tokenizer(run_dir: Path, splits: Callable[[], Any], manifest: dict) -> None:
    """Text data: the tokenizer the run's models were trained with (``tokenizer.json``), so the run's
    artifacts can be fed new text without the recipe."""
    tok = getattr(splits(), "tokenizer", None)
    if tok is None:
        return
    path = run_dir / "tokenizer.json"
    write_text_atomic(path, tok.to_str())
    manifest["tokenizer"] = f"{path.name} sha256:{sha256_file(path)}"
    write_json_atomic(run_dir / "manifest.json", manifest)


def _lazy_splits(recipe: Any) -> Callable[[], Any]:
    """``splits()`` loads the recipe's data on first use and returns the same splits afterwards."""
    from edgekit.data import load_data

    cache: dict = {}

    def splits():
        if "s" not in cache:
            cache["s"] = load_data(recipe.data, recipe.seed)
        return cache["s"]

    return splits


def _run_stage(i: int, cfg: Any, key: str, recipe: Any, run_dir: Path, variants: Dict[str, Variant],
               splits: Callable[[], Any], strict: bool) -> Tuple[StageOutput, str]:
    """Run stage ``i`` into its directory, or reuse its result when an earlier attempt finished with ``key`` and
    its files are intact (see :mod:`edgekit.pipeline.stage_record`)."""
    stage_dir = run_dir / "stages" / f"{i:02d}-{cfg.type}"
    n = len(recipe.stages)
    cached = read_record(stage_dir, run_dir, key, strict=strict)
    if cached is not None:
        logger.info(f"[{i + 1}/{n}] {cfg.type}: finished earlier, skipped (key {key})")
        return cached, "cached"
    if stage_dir.exists():
        shutil.rmtree(stage_dir)  # an interrupted attempt, or another recipe's stage in a --rerun-changed copy
    stage_dir.mkdir(parents=True)
    logger.info(f"[{i + 1}/{n}] {cfg.type} ...")
    t0 = time.perf_counter()
    torch.manual_seed(recipe.seed + i)
    np.random.seed((recipe.seed + i) % 2**32)
    ctx = StageContext(run_dir, stage_dir, recipe.seed, recipe.threads, recipe, dict(variants), splits)
    out = STAGES.get(cfg.type).run(ctx, cfg)
    write_record(stage_dir, run_dir, key, cfg.type, out, time.perf_counter() - t0)
    return out, "ran"


def _initial_variants(recipe: Any, run_dir: Path, splits) -> Dict[str, Variant]:
    """The reference variant when the recipe starts from a file, or from random weights with no train stage."""
    from edgekit.models import count_params, save_checkpoint
    from edgekit.pipeline.lm import export_lm, is_lm
    from edgekit.pipeline.model_source import build_module

    src = recipe.model
    if src.onnx:
        return {"reference": Variant("reference", None, None, str(Path(src.onnx).resolve()), meta={"source": "onnx"})}
    if recipe.stages and recipe.stages[0].type == "train":
        return {}
    ref_dir = run_dir / "stages" / REFERENCE_DIR
    ckpt, onnx_path = ref_dir / "reference.pt", ref_dir / "reference.onnx"
    if not (ckpt.is_file() and onnx_path.is_file()):
        from edgekit.export import export_onnx

        torch.manual_seed(recipe.seed)
        model = build_module(src, splits())
        s = splits()
        save_checkpoint(model, ckpt, {"input_shape": list(s.input_shape), "num_classes": s.num_classes})
        if is_lm(s):  # the KV-cache graph, parity recorded in its sidecar
            export_lm(model, onnx_path, threads=recipe.threads)
        else:
            export_onnx(model, s.val.x[:32], onnx_path)
    else:  # resumed run: the reference written before
        from edgekit.models import load_checkpoint

        model, _ = load_checkpoint(ckpt)
    meta = {"source": "checkpoint" if src.checkpoint else "random-init"}
    return {"reference": Variant("reference", None, str(ckpt), str(onnx_path), meta=meta,
                                 metrics={"params": count_params(model)})}
