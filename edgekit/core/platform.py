"""What machine is this? The one place for host facts: CPU, ISA, cores, memory, GPU, driver, CUDA, runtimes.

``environment()`` describes the host (CPU model, ISA flags, cores, memory, GPU, library versions);
``gpu_facts()`` the CUDA side (PyTorch's build, devices, the NVIDIA driver seen through libcuda, why CUDA is
unusable); ``runtime_status(module)`` whether an optional inference runtime (TensorRT, OpenVINO) imports
with its libraries, and its version. Nothing here imports a backend: backends ask this module.

Example:
    >>> env = environment()
    >>> env["cpu_model"], env["cores_logical"], env["versions"]["onnxruntime"]
    >>> {module: runtime_status(module) for module in RUNTIMES}   # (version, "") or (None, why not)
"""
from __future__ import annotations

import ctypes
import importlib
import os
import platform as _platform
import sys
from dataclasses import dataclass
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
        (e.g. "9.0" or None), ``versions`` (python, numpy, torch, onnx, onnxruntime and every optional
        runtime of ``runtime_versions``: None when absent or broken), ``platform`` and ``threading_env``
        (the OMP_*/KMP_*/MKL_* variables that are set).

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
        **runtime_versions(),
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


@dataclass(frozen=True)
class RuntimePackage:
    """An optional inference runtime: the attributes a real install has (stub wheels lack them) and how to get it."""

    title: str
    attributes: Tuple[str, ...]
    install: str


# Optional runtimes whose presence decides which backends can run, by Python module name.
RUNTIMES = dict(
    tensorrt=RuntimePackage("TensorRT", ("Builder", "Runtime"), "pip install tensorrt; needs an NVIDIA GPU and driver"),
    openvino=RuntimePackage("OpenVINO", ("Core",), "pip install openvino"),
)


def runtime_status(module: str) -> Tuple[Optional[str], str]:
    """``(version, "")`` when the runtime ``module`` imports with its libraries, else ``(None, reason)``.

    Never raises: a missing package, a missing dependency, libraries that fail to load (stub wheels raise
    at import; broken CUDA installs raise anything, even SystemExit) and stub packages are all reasons.

    Example:
        >>> version, reason = runtime_status(next(iter(RUNTIMES)))
    """
    pkg = RUNTIMES.get(module) or RuntimePackage(module, (), f"pip install {module}")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and e.name.split(".")[0] != module:
            return None, f"the '{module}' package is installed but cannot import its dependency '{e.name}'"
        return None, f"Python package '{module}' is not installed ({pkg.install})"
    except (Exception, SystemExit) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        return None, (f"the '{module}' package is installed but cannot load {pkg.title}'s libraries "
                      f"({type(e).__name__}: {first})")
    if not all(hasattr(mod, a) for a in pkg.attributes):
        return None, (f"the '{module}' package has no {'/'.join(pkg.attributes)}: a stub package without "
                      f"{pkg.title} libraries")
    return _version(module) or str(getattr(mod, "__version__", "unknown")), ""


def runtime_versions() -> dict:
    """``{module: version or None}`` for every optional runtime in ``RUNTIMES``."""
    return {name: runtime_status(name)[0] for name in RUNTIMES}


def gpu_facts() -> dict:
    """PyTorch's CUDA build and devices, the NVIDIA driver seen through libcuda, and why CUDA is unusable.

    Example:
        >>> gpu_facts()["devices"]
        [{'index': 0, 'name': 'NVIDIA L4', 'compute_capability': '8.9', 'memory_gb': 22.0}]
    """
    import torch

    devices = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            devices.append({"index": i, "name": props.name, "compute_capability": f"{props.major}.{props.minor}",
                            "memory_gb": round(props.total_memory / 2**30, 1)})
    return {"torch_cuda_build": torch.version.cuda, "cuda_available": bool(devices), "devices": devices,
            "driver": dict(cuda_driver_info()), "unavailable_reason": cuda_unavailable_reason()}


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
    return (f"PyTorch is built with CUDA {torch.version.cuda} but cannot use the GPU "
            f"(driver CUDA {drv['driver_cuda_version']})")


def _ver(text: Optional[str]) -> Tuple[int, ...]:
    try:
        return tuple(int(p) for p in str(text).split(".")[:2])
    except ValueError:
        return ()
