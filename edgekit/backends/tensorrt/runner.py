"""The 'tensorrt' backend: engines, or ONNX built into a cached engine on open.

No TensorRT or CUDA import at module import: the TensorRT calls live in ``edgekit.backends.tensorrt.build`` and
run when a runner is opened. Device buffers are PyTorch CUDA tensors (no pycuda); inference is queued with
``execute_async_v3`` on a dedicated ``torch.cuda.Stream`` and ``synchronize()`` waits for that stream, so
benchmarks time exactly the engine.

Example:
    >>> runner = open_runner("model.onnx", backend="tensorrt", precision="fp16", batch_range=(1, 8, 32))
    >>> logits = runner(np.zeros((4, 3, 32, 32), np.float32))
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Tuple

import numpy as np

from edgekit.backends.base import BackendSpec, Runner, artifact_kind, register_backend
from edgekit.errors import BackendUnavailableError, ConfigError, ShapeError

# TensorRT DataType member name -> torch dtype attribute name (TensorRT 10: FLOAT, HALF, BF16, INT8,
# UINT8, INT32, INT64, BOOL, FP8, INT4, FP4; the last two have no torch storage type).
TRT_TO_TORCH_DTYPE = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT8": "int8",
                      "UINT8": "uint8", "INT32": "int32", "INT64": "int64", "BOOL": "bool", "FP8": "float8_e4m3fn"}
_NUMPY_OF_TORCH = {"float32": np.float32, "float16": np.float16, "int8": np.int8, "uint8": np.uint8,
                   "int32": np.int32, "int64": np.int64, "bool": np.bool_}


def torch_dtype_name(trt_dtype: str) -> str:
    """torch dtype name for a TensorRT DataType name (``"HALF"`` -> ``"float16"``).

    Example:
        >>> torch_dtype_name("FLOAT")
        'float32'
    """
    name = trt_dtype.rsplit(".", 1)[-1].upper()
    if name not in TRT_TO_TORCH_DTYPE:
        raise ConfigError(f"TensorRT tensor type {trt_dtype} has no PyTorch equivalent; supported: "
                          f"{', '.join(TRT_TO_TORCH_DTYPE)}")
    return TRT_TO_TORCH_DTYPE[name]


class TensorRTRunner(Runner):
    """Runs a deserialised TensorRT engine with PyTorch CUDA tensors as I/O buffers.

    Example:
        >>> runner = TensorRTRunner("model.engine")
        >>> p = runner.prepare(x); out = runner.run_prepared(p); runner.synchronize()
    """

    backend = "tensorrt"

    def __init__(self, engine_path: str, build_info: Optional[dict] = None):
        super().__init__()
        import torch

        from edgekit.backends.tensorrt.build import load_engine

        self._torch = torch
        self.loaded = load_engine(engine_path)
        self.engine = self.loaded.engine
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise BackendUnavailableError(f"{engine_path}: TensorRT could not create an execution context "
                                          "(out of GPU memory?)")
        io = io_tensors(self.engine)
        inputs = [t for t in io if t["mode"] == "INPUT"]
        self.outputs = [t for t in io if t["mode"] == "OUTPUT"]
        if not inputs or not self.outputs:
            raise ConfigError(f"{engine_path}: edgekit runners feed inputs and read outputs; this engine has inputs "
                              f"{[t['name'] for t in inputs]} and outputs {[t['name'] for t in self.outputs]}")
        self._inputs = inputs
        inp = inputs[0]
        self.input_name = inp["name"]
        self.input_shape = tuple(None if d < 0 else d for d in inp["shape"])
        self._in_torch = {t["name"]: getattr(torch, torch_dtype_name(t["dtype"])) for t in inputs}
        self.input_dtype = np.dtype(_NUMPY_OF_TORCH.get(torch_dtype_name(inp["dtype"]), np.float32))
        self.set_signature(_engine_signature(inputs))
        self._out_torch = {t["name"]: getattr(torch, torch_dtype_name(t["dtype"])) for t in self.outputs}
        self.device, self.stream = self._device_and_stream()
        self._bound: list = []  # keeps the tensors of the last call alive until the next one
        side = self.loaded.sidecar
        self.info = {
            "backend": "tensorrt", "precision": side.get("precision", "unknown"),
            "device": self.loaded.identity["gpu_name"],
            "compute_capability": self.loaded.identity["compute_capability"],
            "profile": side.get("profile"), "engine": str(engine_path),
            "versions": {"tensorrt": self.loaded.identity["tensorrt_version"], "torch": torch.__version__},
            **(build_info or {}),
        }

    def _device_and_stream(self):
        """The current CUDA device and a dedicated stream on it (TensorRT warns on the default stream)."""
        device = self._torch.device("cuda", self._torch.cuda.current_device())
        return device, self._torch.cuda.Stream(device=device)

    def _on_stream(self):
        return self._torch.cuda.stream(self.stream)

    def prepare(self, x: Any):
        """One CUDA tensor (one-input engine) or ``{name: tensor}``, each in its engine dtype, on the stream."""
        arrays = x if isinstance(x, dict) else {self.input_name: x}
        with self._on_stream():
            placed = {name: self._torch.from_numpy(np.ascontiguousarray(a)).to(self.device, self._in_torch[name],
                                                                                  non_blocking=True)
                      for name, a in arrays.items()}
        return placed if isinstance(x, dict) else placed[self.input_name]

    def run_prepared(self, prepared):
        ctx = self.context
        feeds = prepared if isinstance(prepared, dict) else {self.input_name: prepared}
        for name, tensor in feeds.items():
            if not ctx.set_input_shape(name, tuple(tensor.shape)):
                raise ShapeError(f"input '{name}' shape {list(tensor.shape)} is outside the engine's "
                                 f"optimisation profile {self.info.get('profile')}; rebuild with a wider batch_range "
                                 "(or axis_ranges for a sequence axis)")
            ctx.set_tensor_address(name, tensor.data_ptr())
        outs = []
        with self._on_stream():
            for t in self.outputs:
                shape = tuple(int(d) for d in ctx.get_tensor_shape(t["name"]))
                buf = self._torch.empty(shape, dtype=self._out_torch[t["name"]], device=self.device)
                ctx.set_tensor_address(t["name"], buf.data_ptr())
                outs.append(buf)
        if not ctx.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError(f"TensorRT execute_async_v3 failed for {self.info['engine']}")
        self._bound = [*feeds.values(), *outs]
        return outs[0]

    def to_numpy(self, out) -> np.ndarray:
        self.stream.synchronize()
        return out.float().cpu().numpy() if out.is_floating_point() else out.cpu().numpy()

    def synchronize(self) -> None:
        self.stream.synchronize()

    def close(self) -> None:
        self.stream.synchronize()
        self._bound = []
        self.context = None


def _engine_signature(inputs: list):
    """The engine's signature from its input tensors (None when a dtype has no signature name, e.g. int8)."""
    from edgekit.core.signature import InputSpec, Signature, dtype_name

    try:
        specs = [InputSpec(t["name"], dtype_name(torch_dtype_name(t["dtype"])),
                           tuple(("batch" if i == 0 else f"dim{i}") if d < 0 else d for i, d in enumerate(t["shape"]))
                           or ("batch",)) for t in inputs]
    except ConfigError:
        return None
    return Signature(tuple(specs))


def io_tensors(engine: Any) -> list:
    """``[{"name", "mode" ("INPUT"/"OUTPUT"), "dtype" (DataType name), "shape" (-1 = dynamic)}]`` by tensor name."""
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    return [{"name": n, "mode": engine.get_tensor_mode(n).name, "dtype": engine.get_tensor_dtype(n).name,
             "shape": [int(d) for d in engine.get_tensor_shape(n)]} for n in names]


# ----------------------------------------------------------------------------- registration


def _probe_tensorrt() -> Tuple[bool, str]:
    from edgekit.core.platform import cuda_unavailable_reason, runtime_status

    version, reason = runtime_status("tensorrt")
    if version is None:
        return False, reason

    why = cuda_unavailable_reason()
    return (False, f"TensorRT {version} is installed but {why}") if why else (True, "")


def _open_tensorrt(artifact: Any, threads: Optional[int] = None, precision: Optional[str] = None, **options: Any):
    """Open an engine; an ONNX file is first built (or fetched from the engine cache)."""
    if artifact_kind(artifact) == "engine":
        if precision is not None or options:
            unused = ["precision"] * (precision is not None) + sorted(options)
            raise ConfigError(f"options {unused} only apply when building from ONNX; {artifact} is already an engine")
        return TensorRTRunner(str(artifact))
    from edgekit.backends.tensorrt.build import build_engine
    from edgekit.core.onnx_graph import has_qdq

    allowed = {"out_path", "sparse_weights", "batch_range", "axis_ranges", "workspace_mb", "timing_cache", "cache_dir"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ConfigError(f"unknown tensorrt option(s) {unknown}; allowed: precision, {', '.join(sorted(allowed))}")
    if precision is None:  # the artifact as it is: Q/DQ ONNX -> int8, float ONNX -> fp32
        precision = "int8" if has_qdq(artifact) else "fp32"
    result = build_engine(artifact, precision=precision, **options)
    return TensorRTRunner(str(result.path), {"built_from": str(artifact), "engine_cached": result.cached,
                                             "build_seconds": round(result.build_seconds, 3)})



def _describe_tensorrt() -> dict:
    from edgekit.core.platform import gpu_facts, runtime_status

    return {"version": runtime_status("tensorrt")[0], "devices": [d["name"] for d in gpu_facts()["devices"]]}


def compile_engine(onnx_path: Any, out_dir: Any, *, precision: str = "fp16", **options: Any) -> Path:
    """The backend's ``compile`` hook: build (or reuse) an engine in ``out_dir``; returns its path.

    ``precision`` fp32/fp16/int8 (int8 needs Q/DQ ONNX); other options as ``build_engine`` (sparse_weights,
    batch_range, axis_ranges, workspace_mb, timing_cache, cache_dir). The engine's sidecar records precision, TensorRT
    version, GPU, cache key and build time.

    Example:
        >>> compile_engine("model.int8-tensorrt.onnx", "run/compile", precision="int8")
        PosixPath('run/compile/model.int8-tensorrt-int8.engine')
    """
    from edgekit.backends.tensorrt.build import build_engine

    allowed = {"sparse_weights", "batch_range", "axis_ranges", "workspace_mb", "timing_cache", "cache_dir"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ConfigError(f"unknown tensorrt compile option(s) {unknown}; allowed: precision, "
                          f"{', '.join(sorted(allowed))}")
    if "batch_range" in options and options["batch_range"] is not None:
        options["batch_range"] = tuple(options["batch_range"])
    out = Path(out_dir) / f"{Path(onnx_path).stem}-{precision}.engine"
    return build_engine(onnx_path, out, precision=precision, **options).path


register_backend(BackendSpec(
    "tensorrt", ("engine", "onnx"), _probe_tensorrt, _open_tensorrt, "cuda",
    "TensorRT engine (fp32/fp16/int8 Q/DQ, 2:4 sparse); ONNX is built and cached on open",
    suffixes={"engine": (".engine", ".plan", ".trt"), "onnx": (".onnx",)}, precisions=("fp32", "fp16", "int8"),
    quant_target="tensorrt",
    channel_alignment=16,  # int8 tensor-core kernels want channel multiples of 16 (fp16: 8)
    title="TensorRT", tag="trt", describe=_describe_tensorrt, compile=compile_engine))
