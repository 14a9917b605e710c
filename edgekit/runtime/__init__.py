"""Backend runners behind one interface (see ``base.Runner``)."""
from .base import BACKENDS, BackendSpec, Runner, available_backends, open_runner, probe_backend, register_backend

__all__ = ["BACKENDS", "BackendSpec", "Runner", "available_backends", "open_runner", "probe_backend", "register_backend"]
