"""Importing this module registers every built-in backend (heavy imports stay lazy inside them)."""
from . import torch_runner, ort_runner  # noqa: F401

try:  # the TensorRT/CUDA-ORT module registers itself; it imports tensorrt only when opened
    from . import gpu_runners  # noqa: F401
except ImportError:  # pragma: no cover - module added by the TensorRT work
    pass
