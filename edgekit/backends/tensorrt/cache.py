"""The TensorRT engine cache: cache keys, sidecar checks, timing-cache names and cached-entry reuse (no TensorRT).

An engine only loads on the TensorRT version and GPU that built it, so every engine carries a JSON sidecar
(``<engine>.json``) with those facts and a key over everything that decides whether it can be reused.

Example:
    >>> key = engine_cache_key(sha, "10.3.0", "NVIDIA L4", "8.9", "fp16", False, profile)
    >>> validate_sidecar(read_sidecar("m.engine"), current_identity(), "m.engine")
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Union

from edgekit._io import atomic_path, read_sidecar, sha256_file, write_sidecar
from edgekit.errors import EngineCompatibilityError, InputFileError

ENGINE_FORMAT = "edgekit-trt-engine/1"



def engine_cache_key(onnx_sha256: str, tensorrt_version: str, gpu_name: str, compute_capability: str,
                     precision: str, sparse_weights: bool, profile: Mapping) -> str:
    """Hex sha256 over the fields that decide whether an engine can be reused.

    Example:
        >>> engine_cache_key("ab12", "10.3.0", "NVIDIA L4", "8.9", "fp16", False, {})[:8]
    """
    fields = {"format": ENGINE_FORMAT, "onnx_sha256": onnx_sha256, "tensorrt_version": str(tensorrt_version),
              "gpu_name": str(gpu_name), "compute_capability": str(compute_capability), "precision": precision,
              "sparse_weights": bool(sparse_weights), "profile": profile}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def validate_sidecar(sidecar: Mapping, current: Mapping, engine_path: Union[str, Path] = "engine") -> None:
    """Raise EngineCompatibilityError unless ``sidecar`` matches the ``current`` TensorRT version and GPU.

    Args:
        sidecar: the engine's JSON sidecar (see ``build_engine``).
        current: ``{"tensorrt_version", "gpu_name", "compute_capability"}`` of this machine.
        engine_path: shown in messages.

    Example:
        >>> validate_sidecar(read_sidecar("m.engine"), current_identity(), "m.engine")
    """
    if sidecar.get("format") != ENGINE_FORMAT:
        raise EngineCompatibilityError(f"{engine_path}: sidecar format is {sidecar.get('format')!r}, expected "
                                       f"'{ENGINE_FORMAT}'; rebuild the engine with edgekit")
    rebuild = f"rebuild it from its ONNX ({sidecar.get('onnx', 'unknown')}) with edgekit.build_engine"
    if str(sidecar.get("tensorrt_version")) != str(current["tensorrt_version"]):
        raise EngineCompatibilityError(
            f"{engine_path} was built with TensorRT {sidecar.get('tensorrt_version')} but this machine has TensorRT "
            f"{current['tensorrt_version']}; engines only load on the TensorRT version that built them — {rebuild}")
    theirs = (sidecar.get("gpu_name"), str(sidecar.get("compute_capability")))
    ours = (current["gpu_name"], str(current["compute_capability"]))
    if theirs != ours:
        raise EngineCompatibilityError(
            f"{engine_path} was built for {theirs[0]} (compute capability {theirs[1]}) but this GPU is {ours[0]} "
            f"(compute capability {ours[1]}); engines are tuned to one GPU — {rebuild}")


def timing_cache_name(identity: Mapping) -> str:
    """File name of the timing cache for one TensorRT version and GPU (caches are not portable)."""
    gpu = re.sub(r"[^A-Za-z0-9]+", "-", str(identity["gpu_name"])).strip("-").lower()
    sm = str(identity["compute_capability"]).replace(".", "")
    return f"timing-trt{identity['tensorrt_version']}-{gpu}-sm{sm}.cache"


def default_cache_dir() -> Path:
    """``$EDGEKIT_CACHE/engines``, default ``~/.cache/edgekit/engines``."""
    return Path(os.environ.get("EDGEKIT_CACHE", Path.home() / ".cache" / "edgekit")).expanduser() / "engines"


@dataclass(frozen=True)
class EngineResult:
    """What ``build_engine`` produced: the engine file, its cache key and whether it was reused."""

    path: Path
    sidecar: dict
    key: str
    cached: bool
    build_seconds: float
    timing_cache: Optional[Path] = None

    def metrics(self) -> dict:
        """Flat metrics for a stage output / manifest."""
        return {"engine": str(self.path), "cache_key": self.key, "cached": self.cached,
                "build_seconds": round(self.build_seconds, 3), "precision": self.sidecar["precision"],
                "sparse_weights": self.sidecar["sparse_weights"], "engine_bytes": self.path.stat().st_size,
                "tensorrt_version": self.sidecar["tensorrt_version"], "gpu_name": self.sidecar["gpu_name"]}


def valid_cached(path: Path, key: str) -> Optional[dict]:
    """The sidecar of the engine at ``path`` when it exists, was built for ``key`` and its bytes match, else None."""
    try:
        side = read_sidecar(path) if path.is_file() else {}
    except InputFileError:
        return None
    return side if side.get("cache_key") == key and side.get("engine_sha256") == sha256_file(path) else None


def copy_with_sidecar(src: Path, dst: Path, side: dict) -> None:
    """Copy an engine (atomically) and write its sidecar beside the copy; nothing to do when src is dst."""
    if src.resolve() == dst.resolve():
        return
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
    write_sidecar(dst, side)


__all__ = ["ENGINE_FORMAT", "EngineCompatibilityError", "EngineResult", "copy_with_sidecar", "default_cache_dir",
           "engine_cache_key", "timing_cache_name", "valid_cached", "validate_sidecar"]
