"""ONNX Runtime CPU runner ('ort-cpu'): explicit thread count, full graph optimisation."""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from edgekit.backends.base import BackendSpec, Runner, register_backend
from edgekit.errors import InputFileError, first_line

_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
               "tensor(int32)": np.int32, "tensor(uint8)": np.uint8, "tensor(int8)": np.int8}


def session_options(threads: Optional[int] = None):
    """ORT SessionOptions for timing: full graph optimisation, sequential, explicit intra-op threads, quiet logs.

    Benchmarks keep many sessions alive and alternate between them; by default a session's idle workers keep
    spinning after run() returns and took a core from the next session's block (GEMM blocks ran at half
    speed), so spinning stops on return. That costs nothing measurable per run here.
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if threads:
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
    so.log_severity_level = 3
    so.add_session_config_entry("session.force_spinning_stop", "1")
    return so


class OrtRunner(Runner):
    """ONNX Runtime InferenceSession with one input and (first) output."""

    def __init__(self, path: str, providers: list, threads: Optional[int] = None,
                 optimized_model_path: Optional[str] = None, backend: str = "ort-cpu"):
        super().__init__()
        import onnxruntime as ort

        so = session_options(threads)
        if optimized_model_path:
            so.optimized_model_filepath = str(optimized_model_path)
        try:
            self.session = ort.InferenceSession(str(path), sess_options=so, providers=providers)
        except Exception as e:  # ORT raises its own exception types (Fail, InvalidGraph, ...)
            raise InputFileError(f"{path}: ONNX Runtime cannot load this model: {first_line(e)}") from None
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_shape = tuple(d if isinstance(d, int) else None for d in inp.shape)
        self.input_dtype = np.dtype(_ORT_DTYPES.get(inp.type, np.float32))
        self.output_name = self.session.get_outputs()[0].name
        self.backend = backend
        self.info = {
            "backend": backend,
            "precision": _precision_of(path),
            "device": "cpu" if backend == "ort-cpu" else "cuda",
            "threads": threads,
            "providers": self.session.get_providers(),
            "versions": {"onnxruntime": ort.__version__},
        }

    def run_prepared(self, prepared: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: prepared})[0]


def _precision_of(path: str) -> str:
    """'int8' when the graph holds quantised ops (QDQ, integer kernels), else 'fp32'; 'unknown' when unreadable."""
    from edgekit.core.onnx_graph import onnx_precision

    try:
        return onnx_precision(path)
    except InputFileError:
        return "unknown"


def _open(artifact: Any, threads: Optional[int] = None, optimized_model_path: Optional[str] = None,
          **_: Any) -> OrtRunner:
    return OrtRunner(str(artifact), ["CPUExecutionProvider"], threads, optimized_model_path)


def _probe():
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False, "package 'onnxruntime' is not installed (pip install onnxruntime)"
    return True, ""


def _describe() -> dict:
    import onnxruntime as ort

    return {"version": ort.__version__, "devices": ["cpu"], "providers": list(ort.get_available_providers())}


register_backend(BackendSpec(
    "ort-cpu", ("onnx",), _probe, _open, "cpu", "ONNX Runtime, CPU execution provider, ORT_ENABLE_ALL", priority=0,
    suffixes={"onnx": (".onnx",)}, precisions=("fp32", "int8"), quant_target="cpu",
    channel_alignment=8,  # prune's default so far; on AVX-512, 16 measured faster (docs/BENCHMARKS.md)
    title="ONNX Runtime CPU", describe=_describe))
