"""Importing this module registers every built-in backend (heavy imports stay lazy inside them)."""
from . import torch_runner, ort_runner, gpu_runners  # noqa: F401  (gpu_runners imports tensorrt only when opened)
