"""Importing this module registers every built-in backend (heavy imports stay lazy inside them)."""
from edgekit.backends import ort, ort_cuda, torch  # noqa: F401
from edgekit.backends.tensorrt import runner  # noqa: F401
