"""ONNX Runtime CPU runner ('ort-cpu'): explicit thread count, full graph optimisation, no idle spinning.

Runner options (``open_runner(path, "ort-cpu", threads=2, spinning=False, optimized_model_path=None)``):

- ``spinning`` (default False): let idle intra-op worker threads spin-wait for work
  (``session.intra_op.allow_spinning``). Off by default: paired benchmarks keep several sessions open, and the
  idle ones' spinning workers took the cores from the active one (transformer note, 6 sessions, 2 threads:
  2.99 ms with spinning vs 1.39 ms without; an identical-copy control's p10-p90 ratio band 0.58-1.64 vs
  0.77-1.12). Turn it on to time a single session the way a latency-tuned server would run it.
- ``optimized_model_path``: also write ORT's optimised graph there (for inspection and profiling).

Inputs are fed by name: one array for a one-input model, or ``{name: array}`` for several (dtypes as the graph
declares them; checked against the graph's signature first).
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from edgekit.backends.base import BackendSpec, Runner, register_backend
from edgekit.errors import ConfigError, InputFileError, first_line

_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
               "tensor(int32)": np.int32, "tensor(uint8)": np.uint8, "tensor(int8)": np.int8}


def session_options(threads: Optional[int] = None, spinning: bool = False):
    """ORT SessionOptions for timing: full graph optimisation, sequential, explicit intra-op threads, quiet logs.

    Benchmarks keep many sessions alive and alternate between them; by default a session's idle workers keep
    spinning after run() returns and took a core from the next session's block (GEMM blocks ran at half
    speed), so spinning stops on return and, unless ``spinning``, workers never spin-wait at all.

    Example:
        >>> so = session_options(threads=2)       # allow_spinning=0
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
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return so


class OrtRunner(Runner):
    """ONNX Runtime InferenceSession: named inputs (the graph's signature), first output."""

    def __init__(self, path: str, providers: list, threads: Optional[int] = None,
                 optimized_model_path: Optional[str] = None, backend: str = "ort-cpu", spinning: bool = False):
        super().__init__()
        import onnxruntime as ort

        if not isinstance(spinning, bool):
            raise ConfigError(f"ort option spinning must be true or false, got {spinning!r}")
        so = session_options(threads, spinning)
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
        self.set_signature(_signature_of(path))
        self.backend = backend
        self.info = {
            "backend": backend,
            "precision": _precision_of(path),
            "device": "cpu" if backend == "ort-cpu" else "cuda",
            "threads": threads,
            "spinning": spinning,
            "providers": self.session.get_providers(),
            "versions": {"onnxruntime": ort.__version__},
        }

    def feeds(self, prepared: Any) -> dict:
        """``{input name: array}`` for ``session.run`` from a prepared array or mapping."""
        return dict(prepared) if isinstance(prepared, dict) else {self.input_name: prepared}

    def run_prepared(self, prepared: Any) -> np.ndarray:
        return self.session.run([self.output_name], self.feeds(prepared))[0]


def _signature_of(path: str):
    """The graph's signature (None for inputs a signature cannot declare, e.g. uint8 images)."""
    from edgekit.core.onnx_graph import onnx_signature

    try:
        return onnx_signature(path)
    except InputFileError:
        return None


def _precision_of(path: str) -> str:
    """'int8' when the graph holds quantised ops (QDQ, integer kernels), else 'fp32'; 'unknown' when unreadable."""
    from edgekit.core.onnx_graph import onnx_precision

    try:
        return onnx_precision(path)
    except InputFileError:
        return "unknown"


def _open(artifact: Any, threads: Optional[int] = None, optimized_model_path: Optional[str] = None,
          spinning: bool = False, **options: Any) -> OrtRunner:
    if options:
        raise ConfigError(f"unknown ort-cpu option(s) {sorted(options)}; allowed: spinning, optimized_model_path")
    return OrtRunner(str(artifact), ["CPUExecutionProvider"], threads, optimized_model_path, spinning=spinning)


class OrtCausalLMSession:
    """The ``causal_lm`` hook's session: a KV-cache LM graph on the CPU provider, all outputs in graph order.

    Example:
        >>> sess = OrtCausalLMSession("lm.onnx", threads=1)
        >>> logits, *present = sess.run({"input_ids": ids, "attention_mask": mask, **past})
    """

    def __init__(self, path: Any, threads: Optional[int] = None):
        import onnxruntime as ort

        try:
            self.session = ort.InferenceSession(str(path), session_options(threads),
                                                providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT raises its own exception types (Fail, InvalidGraph, ...)
            raise InputFileError(f"{path}: ONNX Runtime cannot load this model: {first_line(e)}") from None
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.info = {"backend": "ort-cpu", "threads": threads, "versions": {"onnxruntime": ort.__version__}}

    def get_inputs(self) -> list:
        """The session's input descriptions (name, shape, type), as ONNX Runtime gives them."""
        return self.session.get_inputs()

    def get_outputs(self) -> list:
        """The session's output descriptions (name, shape, type)."""
        return self.session.get_outputs()

    def run(self, feed: dict) -> list:
        """Every output for ``feed`` (``{input name: array}``), in graph order."""
        return self.session.run(None, feed)


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
    title="ONNX Runtime CPU", describe=_describe, contrib_ops=("*",), causal_lm=OrtCausalLMSession))
