"""Backend runners behind one interface (see ``base.Runner``)."""
from edgekit.backends.base import (
                   BACKENDS,
                   BackendSpec,
                   Runner,
                   available_backends,
                   backend_spec,
                   default_backend,
                   open_runner,
                   probe_backend,
                   register_backend,
)

__all__ = ["BACKENDS", "BackendSpec", "Runner", "available_backends", "backend_spec", "default_backend", "open_runner", "probe_backend",
           "register_backend"]
