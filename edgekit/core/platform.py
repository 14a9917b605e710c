"""What machine is this, and how fast can it multiply matrices?

``environment()`` describes the host (CPU model, ISA flags, cores, memory, GPU, package versions);
``measure_peak()`` runs a short GEMM micro-benchmark (fp32 through ONNX Runtime MatMul at 512^3,
u8 x s8 through ONNX Runtime MatMulInteger at 1024^3) so efficiency is judged against *this* machine in
*this* run, not a datasheet. (fp32 uses 512^3 because MLAS sgemm is ~30% slower at 1024^3 on a 2-core
AVX-512 EPYC, 318 vs 451 GOP/s, while its conv kernels reach ~430: a peak must be the best the
kernels reach, or efficiencies exceed 100%.)

Example:
    >>> env = environment()
    >>> env["cpu_model"], env["cores_logical"]
    >>> peak = measure_peak(threads=2)
    >>> peak.fp32_gops, peak.int8_gops
"""
from __future__ import annotations

import ctypes
import importlib
import os
import platform as _platform
import sys
import time
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Optional, Tuple

import numpy as np

# ISA flags worth reporting (the flags that decide which GEMM kernels run).
_INTERESTING_FLAGS = (
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512dq", "avx512bw", "avx512vl", "avx512_vnni",
    "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16", "amx_fp16",
    # aarch64
    "asimd", "asimddp", "sve", "sve2", "i8mm", "bf16",
)


def _cpuinfo() -> dict:
    """Parse /proc/cpuinfo (Linux); empty dict elsewhere."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return {}
    info: dict = {}
    for line in text.splitlines():
        if ":" not in line:
            continue
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key in ("model name", "Model", "Hardware") and "model" not in info and value:
            info["model"] = value
        elif key in ("flags", "Features") and "flags" not in info:
            info["flags"] = value.split()
    return info


def _cpu_model(cpuinfo: dict) -> str:
    model = cpuinfo.get("model") or _platform.processor() or _platform.machine()
    return model or "unknown"


def _isa_flags(cpuinfo: dict) -> list:
    flags = set(cpuinfo.get("flags", []))
    return [f for f in _INTERESTING_FLAGS if f in flags]


def _cores() -> tuple:
    logical = os.cpu_count() or 1
    physical = None
    try:
        import psutil

        physical = psutil.cpu_count(logical=False)
    except Exception:
        physical = None
    return logical, physical or logical


def _usable_cores() -> int:
    """CPUs this process may run on (affinity mask), falling back to os.cpu_count()."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _memory_gb() -> Optional[float]:
    try:
        import psutil

        return round(psutil.virtual_memory().total / 2**30, 1)
    except Exception:
        return None


def _version(module: str) -> Optional[str]:
    """Version of an installed module without importing heavy ones when metadata suffices."""
    try:
        from importlib import metadata

        dist = {"onnxruntime": ("onnxruntime", "onnxruntime-gpu")}.get(module, (module,))
        for name in dist:
            try:
                return metadata.version(name)
            except metadata.PackageNotFoundError:
                continue
    except Exception:
        pass
    try:
        mod = importlib.import_module(module)
        return getattr(mod, "__version__", "unknown")
    except Exception:
        return None


def _gpu() -> tuple:
    """(name, compute capability) of the first CUDA device, or (None, None)."""
    try:
        torch = importlib.import_module("torch")
        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(0)
            return torch.cuda.get_device_name(0), f"{major}.{minor}"
    except Exception:
        pass
    return None, None


def environment() -> dict:
    """Describe this machine and the package versions that decide inference speed.

    Returns:
        dict with keys ``cpu_model``, ``isa_flags`` (list), ``cores_logical``, ``cores_physical``,
        ``cores_usable`` (affinity), ``memory_gb``, ``gpu`` (name or None), ``gpu_compute_capability``
        (e.g. "9.0" or None), ``versions`` (python, numpy, torch, onnx, onnxruntime, tensorrt),
        ``platform`` and ``threading_env`` (the OMP_*/KMP_*/MKL_* variables that are set). TensorRT is probed, never required: its version is None when absent.

    Example:
        >>> env = environment()
        >>> "avx2" in env["isa_flags"]
    """
    cpuinfo = _cpuinfo()
    logical, physical = _cores()
    gpu, cc = _gpu()
    versions = {
        "python": _platform.python_version(),
        "numpy": np.__version__,
        "torch": _version("torch"),
        "onnx": _version("onnx"),
        "onnxruntime": _version("onnxruntime"),
        "tensorrt": _tensorrt_version(),
    }
    return {
        "cpu_model": _cpu_model(cpuinfo),
        "isa_flags": _isa_flags(cpuinfo),
        "cores_logical": logical,
        "cores_physical": physical,
        "cores_usable": _usable_cores(),
        "memory_gb": _memory_gb(),
        "gpu": gpu,
        "gpu_compute_capability": cc,
        "versions": versions,
        "platform": f"{_platform.system()} {_platform.release()} {_platform.machine()}; {sys.implementation.name}",
        "threading_env": {k: os.environ[k] for k in _THREAD_VARS if k in os.environ},
    }


_THREAD_VARS = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "KMP_BLOCKTIME", "GOMP_SPINCOUNT", "MKL_NUM_THREADS",
                "OPENBLAS_NUM_THREADS")


def load_average() -> Optional[float]:
    """1-minute load average (runnable processes), or None where the OS does not report it."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _tensorrt_version() -> Optional[str]:
    """TensorRT version or None; never raises (a broken install is reported as absent)."""
    try:
        spec = importlib.util.find_spec("tensorrt")
        if spec is None:
            return None
        trt = importlib.import_module("tensorrt")
        return str(getattr(trt, "__version__", "unknown"))
    except BaseException:  # a broken CUDA install can raise anything, even SystemExit
        return None


# ---------------------------------------------------------------------------------------------
# GEMM peak micro-benchmark
# ---------------------------------------------------------------------------------------------


PEAK_SIZES = {"fp32": 512, "int8": 1024}  # GEMM n per precision (n^3 MACs per call)


@dataclass
class Peak:
    """Measured GEMM throughput of this machine in GOP/s (1 MAC = 2 ops)."""

    fp32_gops: Optional[float]
    int8_gops: Optional[float]
    threads: Optional[int]
    sizes: dict
    method: str = "onnxruntime MatMul (fp32) / MatMulInteger (u8 x s8), best of repeats"

    def for_precision(self, precision: Optional[str]) -> Optional[float]:
        """Peak GOP/s matching an artifact precision ('int8' -> u8 x s8 peak, else fp32)."""
        return self.int8_gops if precision == "int8" else self.fp32_gops

    def to_dict(self) -> dict:
        return asdict(self)


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

        from edgekit.backends.ort import session_options

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


def _time_gemm(op: str, n: int, threads: Optional[int], min_time: float, repeats: int) -> Optional[float]:
    """Best GOP/s of ``op`` over ``repeats`` timed blocks of at least ``min_time`` seconds each."""
    try:
        g = GemmProbe("fp32" if op == "MatMul" else "int8", n, threads)
    except Exception:
        return None
    g.run_prepared(g.prepared)  # warm-up (allocations, weight pre-packing)
    best = 0.0
    for _ in range(repeats):
        count, t0 = 0, time.perf_counter()
        while True:
            g.run_prepared(g.prepared)
            count += 1
            dt = time.perf_counter() - t0
            if dt >= min_time:
                break
        best = max(best, g.ops * count / dt / 1e9)
    return round(best, 1)


def measure_peak(threads: Optional[int] = None, sizes: Optional[dict] = None, min_time: float = 0.15,
                 repeats: int = 3) -> Peak:
    """Measure fp32 and u8 x s8 GEMM throughput with ONNX Runtime (takes ~1 s).

    Args:
        threads: intra-op threads, the same as the benchmark's (None = ORT default).
        sizes: square matrix size n per precision (default ``PEAK_SIZES``: fp32 512, int8 1024).
        min_time: seconds per timed block.
        repeats: timed blocks; the best one is kept (peak = what the machine can do).

    Example:
        >>> measure_peak(threads=2).fp32_gops
    """
    sizes = {**PEAK_SIZES, **(sizes or {})}
    return Peak(
        fp32_gops=_time_gemm("MatMul", sizes["fp32"], threads, min_time, repeats),
        int8_gops=_time_gemm("MatMulInteger", sizes["int8"], threads, min_time, repeats),
        threads=threads,
        sizes=sizes,
    )


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
                fn = lambda: torch._int_mm(a, b)  # noqa: E731
            else:
                a = torch.randn(size, size, dtype=dtype, device="cuda")
                b = torch.randn(size, size, dtype=dtype, device="cuda")
                fn = lambda: a @ b  # noqa: E731
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


@lru_cache(maxsize=1)
def cuda_driver_info() -> dict:
    """Probe the NVIDIA driver through libcuda directly (works with a CPU-only PyTorch build).

    Returns:
        ``{"loaded": bool, "driver_cuda_version": "12.4" | None, "device_count": int, "error": str}``.

    Example:
        >>> cuda_driver_info()["error"]
        'no NVIDIA driver (libcuda.so.1 cannot be loaded)'
    """
    info = {"loaded": False, "driver_cuda_version": None, "device_count": 0, "error": ""}
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        info["error"] = "no NVIDIA driver (libcuda.so.1 cannot be loaded)"
        return info
    info["loaded"] = True
    version, count = ctypes.c_int(0), ctypes.c_int(0)
    if lib.cuDriverGetVersion(ctypes.byref(version)) == 0 and version.value:
        info["driver_cuda_version"] = f"{version.value // 1000}.{(version.value % 1000) // 10}"
    rc = lib.cuInit(0)
    if rc != 0:
        info["error"] = f"the NVIDIA driver failed to initialise (cuInit error {rc}; 100 = no CUDA device)"
        return info
    if lib.cuDeviceGetCount(ctypes.byref(count)) == 0:
        info["device_count"] = count.value
    if not count.value:
        info["error"] = "the NVIDIA driver sees no CUDA device"
    return info


def cuda_unavailable_reason() -> str:
    """'' when PyTorch can use a CUDA device, else why not (build, driver, device, version mismatch).

    Example:
        >>> cuda_unavailable_reason()
        'PyTorch 2.13.0+cpu is a CPU-only build (no CUDA support compiled in)'
    """
    import torch

    if torch.cuda.is_available():
        return ""
    if torch.version.cuda is None:
        return f"PyTorch {torch.__version__} is a CPU-only build (no CUDA support compiled in)"
    drv = cuda_driver_info()
    if not drv["loaded"] or drv["error"]:
        return f"PyTorch is built with CUDA {torch.version.cuda} but {drv['error']}"
    need, have = _ver(torch.version.cuda), _ver(drv["driver_cuda_version"])
    if have and need and have < need:
        return (f"driver/runtime mismatch: PyTorch needs CUDA {torch.version.cuda} but the driver supports up to "
                f"CUDA {drv['driver_cuda_version']}; update the NVIDIA driver")
    return f"PyTorch is built with CUDA {torch.version.cuda} but cannot use the GPU (driver CUDA {drv['driver_cuda_version']})"


def _ver(text: Optional[str]) -> Tuple[int, ...]:
    try:
        return tuple(int(p) for p in str(text).split(".")[:2])
    except ValueError:
        return ()
