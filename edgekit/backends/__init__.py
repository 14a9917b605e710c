"""Backend runners behind one interface (see ``base.Runner``); each backend declares its capabilities."""
from edgekit.backends.base import (
    BACKENDS,
    BackendSpec,
    Runner,
    artifact_files,
    artifact_kind,
    artifact_kinds,
    available_backends,
    backend_spec,
    causal_lm_backends,
    causal_lm_spec,
    compiling_backends,
    default_backend,
    load_backends,
    open_causal_lm_session,
    open_runner,
    probe_backend,
    register_backend,
    target_warning,
)

__all__ = ["BACKENDS", "BackendSpec", "Runner", "artifact_files", "artifact_kind", "artifact_kinds",
           "available_backends", "backend_spec", "causal_lm_backends", "causal_lm_spec", "compiling_backends",
           "default_backend", "load_backends", "open_causal_lm_session", "open_runner", "probe_backend",
           "register_backend", "target_warning"]
