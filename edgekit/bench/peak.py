"""How fast can this machine multiply matrices? GEMM probes timed in the same rounds as the models.

``GemmProbe`` is a runner-like GEMM on ONNX Runtime (fp32 MatMul at 512^3, u8 x s8 MatMulInteger at 1024^3)
that ``benchmark`` times between the variants in every round, so efficiency is judged against *this*
machine in *this* run, not a datasheet. (fp32 uses 512^3 because MLAS sgemm is ~30% slower at 1024^3 on a
2-core AVX-512 EPYC, 318 vs 451 GOP/s, while its conv kernels reach ~430: a peak must be the best the
kernels reach, or efficiencies exceed 100%.) ``measure_gpu_peak`` does the same for the first CUDA GPU.

Example:
    >>> g = GemmProbe("int8", threads=2)
    >>> g.run_prepared(g.prepared)
    >>> measure_gpu_peak()   # None without a CUDA GPU
"""
from __future__ import annotations

import functools
import importlib
from typing import Optional

import numpy as np

from edgekit.backends.ort import session_options

PEAK_SIZES = {"fp32": 512, "int8": 1024}  # GEMM n per precision (n^3 MACs per call)


def _gemm_model(op: str, n: int):
    """A one-node ONNX model computing A(n x n) @ B(n x n) with B a constant initializer."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if op == "MatMul":
        a_type, out_type = TensorProto.FLOAT, TensorProto.FLOAT
        b = rng.standard_normal((n, n), dtype=np.float32)
        inputs = ["A", "B"]
        inits = [numpy_helper.from_array(b, "B")]
    else:  # MatMulInteger u8 x s8 -> int32
        a_type, out_type = TensorProto.UINT8, TensorProto.INT32
        b = rng.integers(-127, 128, (n, n), dtype=np.int8)
        inputs = ["A", "B", "a_zp"]
        inits = [numpy_helper.from_array(b, "B"), numpy_helper.from_array(np.array(128, np.uint8), "a_zp")]
    node = helper.make_node(op, inputs, ["Y"])
    graph = helper.make_graph([node], "gemm", [helper.make_tensor_value_info("A", a_type, [n, n])],
                              [helper.make_tensor_value_info("Y", out_type, [n, n])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, 9)
    return model.SerializeToString(), (np.random.default_rng(1).random((n, n), dtype=np.float32)
                                       if op == "MatMul" else rng.integers(0, 256, (n, n), dtype=np.uint8))


class GemmProbe:
    """A runner-like GEMM (n x n x n) on ONNX Runtime, timed like a model to measure the peak in the same rounds.

    ``precision`` "fp32" runs MatMul, "int8" runs MatMulInteger (u8 activations x s8 weights, int32 out).

    Example:
        >>> g = GemmProbe("int8", 1024, threads=2)
        >>> g.run_prepared(g.prepared)
    """

    def __init__(self, precision: str = "fp32", size: Optional[int] = None, threads: Optional[int] = None):
        import onnxruntime as ort

        if precision not in PEAK_SIZES:
            raise ValueError(f"GEMM peak precision must be one of {sorted(PEAK_SIZES)}, got {precision!r}")
        size = size or PEAK_SIZES[precision]
        blob, a = _gemm_model("MatMul" if precision == "fp32" else "MatMulInteger", size)
        self.session = ort.InferenceSession(blob, sess_options=session_options(threads),
                                            providers=["CPUExecutionProvider"])
        self.precision, self.size, self.ops = precision, size, 2.0 * size ** 3
        self.prepared = {"A": a}
        self.info = {"backend": "gemm-peak", "precision": precision, "threads": threads}

    def prepare(self, x=None):
        return self.prepared

    def run_prepared(self, prepared):
        return self.session.run(None, prepared)

    def synchronize(self) -> None:
        """CPU work is synchronous."""

    def close(self) -> None:
        self.session = None

    def gops(self, ms: float) -> float:
        """GOP/s of one call that took ``ms`` milliseconds."""
        return self.ops / (ms / 1e3) / 1e9


def measure_gpu_peak(size: int = 4096, min_time: float = 0.2) -> Optional[dict]:
    """GEMM throughput (GOP/s) of the first CUDA GPU via torch: fp32, fp16 and int8 (``torch._int_mm``).

    Returns None when no CUDA device is usable; a precision whose kernel is missing maps to None.

    Example:
        >>> measure_gpu_peak()   # {'device': 'NVIDIA H100 ...', 'fp32_gops': ..., 'fp16_gops': ..., 'int8_gops': ...}
    """
    try:
        torch = importlib.import_module("torch")
        if not torch.cuda.is_available():
            return None
    except Exception:
        return None
    out: dict = {"device": torch.cuda.get_device_name(0), "size": size,
                 "method": "torch.matmul (fp32 without TF32, fp16) / torch._int_mm (int8), CUDA events, best of 3"}
    for key, dtype in (("fp32_gops", torch.float32), ("fp16_gops", torch.float16), ("int8_gops", torch.int8)):
        try:
            if dtype is torch.int8:
                a = torch.randint(-127, 127, (size, size), dtype=torch.int8, device="cuda")
                b = torch.randint(-127, 127, (size, size), dtype=torch.int8, device="cuda")
                fn = functools.partial(torch._int_mm, a, b)
            else:
                a = torch.randn(size, size, dtype=dtype, device="cuda")
                b = torch.randn(size, size, dtype=dtype, device="cuda")
                fn = functools.partial(torch.matmul, a, b)
            prev_tf32 = torch.backends.cuda.matmul.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = False
            try:
                out[key] = _time_cuda(torch, fn, 2.0 * size**3, min_time)
            finally:
                torch.backends.cuda.matmul.allow_tf32 = prev_tf32
        except Exception:
            out[key] = None
    return out


def _time_cuda(torch, fn, ops: float, min_time: float) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    n = max(1, int(min_time * 1000 / max(start.elapsed_time(end), 1e-3)))
    best = 0.0
    for _ in range(3):
        start.record()
        for _ in range(n):
            fn()
        end.record()
        torch.cuda.synchronize()
        best = max(best, ops * n / (start.elapsed_time(end) / 1e3) / 1e9)
    return round(best, 1)


__all__ = ["GemmProbe", "PEAK_SIZES", "measure_gpu_peak"]
