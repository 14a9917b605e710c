"""TensorRT engines from ONNX: parse, build with flags/profile/timing cache, reuse from the engine cache, load.

    result = build_engine("model.onnx", precision="fp16", batch_range=(1, 8, 32))
    result.path, result.cached          # a second call with the same key skips the build

This is the only edgekit module that calls TensorRT's builder (always inside functions, so ``import
edgekit`` stays lean). Everything before the build is plain Python, testable without TensorRT:
precision -> builder flags and profiles in ``profile.py``, cache key and sidecar checks in ``cache.py``,
Q/DQ detection and input shapes in ``edgekit.core.onnx_graph``.
"""
# TensorRT 10.x Python API (also 11.x where unchanged) as used below, checked against:
# - Builder, create_network(0) (EXPLICIT_BATCH is ignored since 10.0), NetworkDefinitionCreationFlag:
#   https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/Builder.html
# - IBuilderConfig set_flag/clear_flag (BuilderFlag FP16, INT8, SPARSE_WEIGHTS, TF32), set_memory_pool_limit
#   (MemoryPoolType.WORKSPACE), create_timing_cache/set_timing_cache/get_timing_cache, add_optimization_profile:
#   https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/c-api/classnvinfer1_1_1_i_builder_config.html
#   and Polygraphy tools/Polygraphy/polygraphy/backend/trt/config.py (NVIDIA/TensorRT)
# - ITimingCache.serialize: https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/TimingCache.html
# - IOptimizationProfile.set_shape(name, min, opt, max):
#   https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/OptimizationProfile.html
# - OnnxParser parse_from_file/num_errors/get_error; ParserError desc/node/node_name/node_operator (10.x):
#   https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/c-api/classnvonnxparser_1_1_i_parser_error-members.html
# - build_serialized_network (build_engine removed in 10.0), Runtime.deserialize_cuda_engine, ICudaEngine
#   num_io_tensors/get_tensor_name/get_tensor_mode/get_tensor_dtype/get_tensor_shape (get_binding_* removed):
#   https://docs.nvidia.com/deeplearning/tensorrt/api/python_api/infer/Core/Engine.html
# - IExecutionContext set_input_shape/set_tensor_address/execute_async_v3 (edgekit.backends.tensorrt.runner):
#   https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/ExecutionContext.html
#   and NVIDIA/TensorRT samples/python/common_runtime.py
from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

from edgekit._io import read_sidecar, require_file, sha256_file, sidecar_path, write_bytes_atomic, write_sidecar
from edgekit.backends.tensorrt.cache import (
    ENGINE_FORMAT,
    EngineCompatibilityError,
    EngineResult,
    copy_with_sidecar,
    default_cache_dir,
    engine_cache_key,
    timing_cache_name,
    valid_cached,
    validate_sidecar,
)
from edgekit.backends.tensorrt.profile import BatchRange, BuilderFlags, compute_profile, precision_flags
from edgekit.core.onnx_graph import graph_inputs, has_qdq, onnx_signature, position_rows
from edgekit.errors import BackendUnavailableError, ConfigError, EngineBuildError

logger = logging.getLogger(__name__)

DEFAULT_WORKSPACE_MB = 2048
INT8_NEEDS_QDQ = "int8 engines are built from Q/DQ ONNX; quantise with target: tensorrt first"



def describe_parser_errors(onnx_path: Union[str, Path], errors: Sequence[Mapping]) -> str:
    """One line per ONNX parser error: node index, name, operator and description."""
    lines = []
    for e in errors:
        where = f"node {e.get('node')}" if e.get("node", -1) is not None and e.get("node", -1) >= 0 else "graph"
        if e.get("node_name"):
            where += f" '{e['node_name']}'"
        if e.get("node_operator"):
            where += f" ({e['node_operator']})"
        lines.append(f"  {where}: {e.get('desc', '').strip()}")
    return f"{onnx_path}: TensorRT's ONNX parser failed with {len(errors)} error(s):\n" + "\n".join(lines)


def _import_tensorrt():
    from edgekit.core.platform import runtime_status

    version, reason = runtime_status("tensorrt")
    if version is None:
        raise BackendUnavailableError(f"TensorRT is unavailable: {reason}")
    import tensorrt as trt

    return trt


def current_identity() -> dict:
    """``{"tensorrt_version", "gpu_name", "compute_capability"}`` of this machine (current CUDA device).

    Example:
        >>> current_identity()["compute_capability"]
        '8.9'
    """
    trt = _import_tensorrt()
    import torch

    from edgekit.core.platform import cuda_unavailable_reason

    if not torch.cuda.is_available():
        raise BackendUnavailableError(f"TensorRT needs a CUDA GPU: {cuda_unavailable_reason()}")
    idx = torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(idx)
    return {"tensorrt_version": str(trt.__version__), "gpu_name": torch.cuda.get_device_name(idx),
            "compute_capability": f"{major}.{minor}"}


def _build_serialized(onnx_path: Path, flags: BuilderFlags, profile: Mapping, workspace_mb: int,
                      timing_cache: Optional[Path]) -> bytes:
    """Parse the ONNX file and build a serialized engine (TensorRT 10 API; see the module docstring)."""
    trt = _import_tensorrt()
    trt_logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(trt_logger)
    network = builder.create_network(0)  # always explicit batch in TensorRT 10
    parser = trt.OnnxParser(network, trt_logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = []
        for i in range(parser.num_errors):
            err = parser.get_error(i)
            errors.append({"node": err.node(), "desc": err.desc(),
                           "node_name": getattr(err, "node_name", lambda: "")(),
                           "node_operator": getattr(err, "node_operator", lambda: "")()})
        raise EngineBuildError(describe_parser_errors(onnx_path, errors))
    config = builder.create_builder_config()
    for name in flags.set:
        config.set_flag(getattr(trt.BuilderFlag, name))
    for name in flags.clear:
        config.clear_flag(getattr(trt.BuilderFlag, name))
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    if profile:
        opt_profile = builder.create_optimization_profile()
        for name, shapes in profile.items():
            opt_profile.set_shape(name, shapes["min"], shapes["opt"], shapes["max"])
        config.add_optimization_profile(opt_profile)
    if timing_cache is not None:
        blob = timing_cache.read_bytes() if timing_cache.is_file() else b""
        try:
            cache = config.create_timing_cache(blob)
        except Exception:  # a corrupt cache file must not stop the build
            cache = None
        if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
            logger.info(f"timing cache {timing_cache} is unreadable or from another TensorRT/GPU; "
                        "starting an empty one")
            config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"{onnx_path}: TensorRT could not build an engine (flags {list(flags.set)}, profile "
                               f"{dict(profile)}); see the TensorRT messages above")
    if timing_cache is not None:
        write_bytes_atomic(timing_cache, bytes(config.get_timing_cache().serialize()))
    return bytes(serialized)


def _named_inputs(onnx_path: Path, batch_range: Optional[BatchRange], axis_ranges: Optional[Mapping[str, Any]]):
    """``(inputs with symbolic axis names, batch_range, axis_ranges)`` for ``compute_profile``; the token inputs'
    named axes default to the position table's range."""
    sig = onnx_signature(onnx_path)
    if sig is None:  # a dtype a signature can't declare: dynamic dims stay unnamed
        return [(i.name, i.dims) for i in graph_inputs(onnx_path)], batch_range, axis_ranges
    inputs = [(i.name, [i.shape[0] if isinstance(i.shape[0], int) else None, *i.shape[1:]]) for i in sig.inputs]
    ranges = dict(axis_ranges or {})
    side = read_sidecar(onnx_path) or {}
    exported = side.get("signature") if isinstance(side.get("signature"), Mapping) else {}
    # the export's sidecar knows the HF config; a third-party file shows its position table
    max_positions = sig.max_positions or exported.get("max_positions") or position_rows(onnx_path)
    if max_positions and not (isinstance(batch_range, Mapping) and not set(batch_range) <= {"min", "opt", "max"}):
        p = int(max_positions)
        for name, dims in inputs:
            for d in dims[1:] if name in sig.token_inputs else ():
                if isinstance(d, str):
                    ranges.setdefault(d, (1, min(128, p), p))
    return inputs, batch_range, ranges or None


def build_engine(onnx_path: Union[str, Path], out_path: Union[str, Path, None] = None, *, precision: str = "fp16",
                 sparse_weights: bool = False, batch_range: Optional[BatchRange] = None,
                 axis_ranges: Optional[Mapping[str, Any]] = None, workspace_mb: int = DEFAULT_WORKSPACE_MB,
                 timing_cache: Union[str, Path, None] = None,
                 cache_dir: Union[str, Path, None] = None) -> EngineResult:
    """Build (or reuse) a TensorRT engine for an ONNX model.

    Validates everything it can before touching TensorRT (precision, Q/DQ for int8, profile). The
    engine cache (``cache_dir``, default ``default_cache_dir()``) is keyed by ``engine_cache_key``; on a
    hit no build happens. The engine is written atomically with a JSON sidecar (``<engine>.json``)
    holding the key fields, which ``load_engine`` checks.

    Args:
        onnx_path: fp32 ONNX, or Q/DQ ONNX for ``precision="int8"``.
        out_path: where to put the engine (a copy of the cache entry); None = the cache entry itself.
        precision: "fp32", "fp16" or "int8" (int8 needs Q/DQ nodes: implicit calibration is deprecated).
        sparse_weights: allow 2:4 structured-sparse kernels (BuilderFlag.SPARSE_WEIGHTS).
        batch_range: ``(min, opt, max)`` batch or explicit profile, see ``compute_profile``.
        axis_ranges: ``{axis: (min, opt, max)}`` for named dynamic axes besides the batch (``sequence`` of a
            transformer export); a token input's axes default to ``(1, min(128, P), P)`` with P the model's
            position-table size when the graph shows it.
        workspace_mb: builder workspace memory pool limit.
        timing_cache: timing cache file loaded before and saved (atomically) after the build; None = one
            per TensorRT version and GPU inside ``cache_dir``.
        cache_dir: engine cache folder.

    Example:
        >>> r = build_engine("model.onnx", "model.engine", precision="fp16", batch_range=(1, 8, 32))
        >>> r.cached, r.sidecar["profile"]
    """
    onnx_path = require_file(onnx_path, "ONNX model")
    flags = precision_flags(precision, sparse_weights)
    if not isinstance(workspace_mb, int) or isinstance(workspace_mb, bool) or workspace_mb < 1:
        raise ConfigError(f"workspace_mb must be a positive integer (MiB), got {workspace_mb!r}")
    if precision == "int8" and not has_qdq(onnx_path):
        raise ConfigError(f"{onnx_path}: {INT8_NEEDS_QDQ}")
    profile = compute_profile(*_named_inputs(onnx_path, batch_range, axis_ranges))
    identity = current_identity()
    onnx_sha = sha256_file(onnx_path)
    key = engine_cache_key(onnx_sha, identity["tensorrt_version"], identity["gpu_name"],
                           identity["compute_capability"], precision, sparse_weights, profile)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache_path = cache_dir / f"{key[:24]}.engine"
    out = Path(out_path) if out_path is not None else cache_path
    tc = Path(timing_cache) if timing_cache is not None else cache_dir / timing_cache_name(identity)
    for candidate in (out, cache_path):
        side = valid_cached(candidate, key)
        if side is not None:
            copy_with_sidecar(candidate, out, side)
            return EngineResult(out, side, key, True, 0.0, tc)
    logger.info(f"building TensorRT {precision} engine for {onnx_path.name} (profile {profile}) ...")
    t0 = time.perf_counter()
    blob = _build_serialized(onnx_path, flags, profile, workspace_mb, tc)
    seconds = time.perf_counter() - t0
    side = {"format": ENGINE_FORMAT, "target": "tensorrt", "cache_key": key, "onnx": str(onnx_path.resolve()),
            "onnx_sha256": onnx_sha, **identity, "precision": precision, "sparse_weights": bool(sparse_weights),
            "profile": profile, "builder_flags": list(flags.set), "cleared_flags": list(flags.clear),
            "workspace_mb": workspace_mb, "build_seconds": round(seconds, 3),
            "engine_sha256": hashlib.sha256(blob).hexdigest()}
    write_bytes_atomic(cache_path, blob)
    write_sidecar(cache_path, side)
    copy_with_sidecar(cache_path, out, side)
    return EngineResult(out, side, key, False, seconds, tc)


@dataclass
class LoadedEngine:
    """A deserialised engine with the runtime that owns it and its sidecar."""

    engine: Any
    runtime: Any
    sidecar: dict
    path: Path
    identity: dict


def load_engine(path: Union[str, Path]) -> LoadedEngine:
    """Deserialise an engine after checking its sidecar against this TensorRT version and GPU.

    Raises:
        EngineCompatibilityError: the sidecar names another TensorRT version/GPU, or the engine file
            does not match its sidecar, or TensorRT refuses the file.

    Example:
        >>> loaded = load_engine("model.engine"); loaded.sidecar["precision"]
    """
    path = require_file(path, "TensorRT engine")
    identity = current_identity()
    side = read_sidecar(path)
    blob = path.read_bytes()  # hashed and deserialised from the same read
    if side:
        validate_sidecar(side, identity, path)
        if side.get("engine_sha256") and side["engine_sha256"] != hashlib.sha256(blob).hexdigest():
            raise EngineCompatibilityError(f"{path}: the engine file does not match its sidecar "
                                           f"{sidecar_path(path).name} (sha256 differs); rebuild it")
    else:
        logger.info(f"{path}: no edgekit sidecar; cannot check its TensorRT version/GPU before loading")
    trt = _import_tensorrt()
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(blob)
    if engine is None:
        raise EngineCompatibilityError(f"{path}: TensorRT {identity['tensorrt_version']} cannot deserialise this "
                                       "engine (another TensorRT version or GPU, or a corrupt file); rebuild it")
    return LoadedEngine(engine, runtime, side, path, identity)


__all__ = ["EngineBuildError", "LoadedEngine", "build_engine", "current_identity", "describe_parser_errors",
           "load_engine"]
