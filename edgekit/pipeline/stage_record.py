"""``stage.json``: what a finished stage produced, portable and verifiable.

A record holds the stage's key, its variants with artifact paths **relative to the run directory** (a copied or
moved run resumes against its own files, never the original's) and the sha256 of every file in the stage's
directory. Before a finished stage is reused its files are re-hashed: a missing, truncated or edited artifact
is never silently reused. In a resumed run that is an error naming the file (edgekit does not delete a
finished result); ``--resume --rerun-changed`` writes a new run in which such a stage simply runs again.

Example:
    >>> write_record(stage_dir, run_dir, key, out, seconds)
    >>> out = read_record(stage_dir, run_dir, key, strict=True)   # None: run the stage
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Dict, Optional

from edgekit._io import read_json, sha256_file, write_json_atomic
from edgekit.errors import RunDirectoryError
from edgekit.pipeline.stages import StageOutput, Variant

logger = logging.getLogger(__name__)

RECORD = "stage.json"
PATH_FIELDS = ("checkpoint", "onnx", "engine")


def _relative(path: Optional[str], run_dir: Path) -> Optional[str]:
    if not path:
        return path
    p = Path(path).resolve()
    root = run_dir.resolve()
    return p.relative_to(root).as_posix() if root in p.parents else str(p)


def _absolute(path: Optional[str], run_dir: Path) -> Optional[str]:
    if not path or os.path.isabs(path):
        return path
    return str(run_dir / path)


def write_record(stage_dir: Path, run_dir: Path, key: str, stage_type: str, out: StageOutput, seconds: float) -> None:
    """Write ``stage_dir/stage.json`` for a stage that just finished (the last file it writes)."""
    variants = []
    for v in out.variants:
        d = v.to_dict()
        for f in PATH_FIELDS:
            d[f] = _relative(d.get(f), run_dir)
        variants.append(d)
    files = {f.relative_to(run_dir).as_posix(): sha256_file(f)
             for f in sorted(stage_dir.rglob("*")) if f.is_file() and f.name != RECORD}
    write_json_atomic(stage_dir / RECORD, {"key": key, "type": stage_type, "variants": variants,
                                           "metrics": out.metrics, "seconds": round(seconds, 2), "files": files})


def read_record(stage_dir: Path, run_dir: Path, key: str, *, strict: bool) -> Optional[StageOutput]:
    """The finished stage's output when its record matches ``key`` and every recorded file is intact; None when
    the stage must run. With ``strict`` (resuming a run in place) a record whose files fail the check raises
    :class:`RunDirectoryError` instead of returning None."""
    done = stage_dir / RECORD
    if not done.is_file():
        return None
    rec = read_json(done)
    if not isinstance(rec, dict) or rec.get("key") != key:
        return None
    problem = _verify(rec, run_dir)
    if problem:
        if strict:
            raise RunDirectoryError(f"{stage_dir}: finished stage cannot be reused: {problem}; the run is left as it "
                                    "is — pass --resume --rerun-changed to redo this stage in a new run")
        logger.warning(f"{stage_dir.name}: {problem}; running the stage again")
        return None
    variants = []
    for d in rec.get("variants", []):
        d = dict(d)
        for f in PATH_FIELDS:
            d[f] = _absolute(d.get(f), run_dir)
        variants.append(Variant.from_dict(d))
    return StageOutput(variants, rec.get("metrics", {}))


def _verify(rec: Dict[str, Any], run_dir: Path) -> Optional[str]:
    """What is wrong with a record's files (None when all are present with their recorded sha256)."""
    files = rec.get("files")
    if not isinstance(files, dict):
        return "its record has no sha256 of its files (written by an older edgekit), so it cannot be verified"
    for rel, digest in files.items():
        p = run_dir / rel
        if not p.is_file():
            return f"{rel} is missing"
        if sha256_file(p) != digest:
            return f"{rel} has changed since the stage wrote it (sha256 differs)"
    for v in rec.get("variants", []):
        for f in PATH_FIELDS:
            path = _absolute(v.get(f), run_dir) if isinstance(v, dict) else None
            if path and not Path(path).is_file():
                return f"{v.get(f)} is missing"
    return None


def verify_finished_stages(run_dir: Path) -> None:
    """Refuse (naming the file) when any finished stage of ``run_dir`` has a missing or changed file; run before
    a resumed run writes anything, so a refusal leaves the run exactly as it was."""
    for done in sorted((run_dir / "stages").glob(f"*/{RECORD}")):
        rec = read_json(done)
        problem = _verify(rec, run_dir) if isinstance(rec, dict) else f"{done.name} is not a stage record"
        if problem:
            raise RunDirectoryError(f"{done.parent}: finished stage cannot be reused: {problem}; the run is left as "
                                    "it is — pass --resume --rerun-changed to redo this stage in a new run")
