"""The runner interface: one per backend, numpy in, numpy out.

    runner = open_runner("model.onnx", backend="ort-cpu", threads=2)
    logits = runner(batch)            # np.ndarray -> np.ndarray
    runner.info                       # backend, precision, device, versions

Benchmarks time ``run_prepared(prepare(x))`` followed by ``synchronize()``, so input
placement (host->device copies) stays outside the timed region.
"""
from __future__ import annotations

import abc
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Tuple

import numpy as np

from edgekit.errors import BackendUnavailableError, ConfigError
from edgekit.registry import Registry


class Runner(abc.ABC):
    """Runs one model artifact on one backend."""

    backend: str = ""

    def __init__(self) -> None:
        self.input_name: str = "input"
        self.input_shape: Tuple[Optional[int], ...] = ()
        self.input_dtype: np.dtype = np.dtype(np.float32)
        self.info: dict = {}

    def prepare(self, x: np.ndarray) -> Any:
        """Place a numpy batch where the backend reads it (device memory, tensors...)."""
        return np.ascontiguousarray(x, dtype=self.input_dtype)

    @abc.abstractmethod
    def run_prepared(self, prepared: Any) -> Any:
        """Run inference on a prepared input; return the backend-native first output."""

    def to_numpy(self, out: Any) -> np.ndarray:
        """Convert a backend-native output to numpy (copies device memory to the host)."""
        return np.asarray(out)

    def synchronize(self) -> None:
        """Wait for queued device work (no-op on CPU backends)."""

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.check_input(x)
        return self.to_numpy(self.run_prepared(self.prepare(x)))

    def check_input(self, x: np.ndarray) -> None:
        """Raise ShapeError when ``x`` cannot be fed to this model."""
        from edgekit.errors import ShapeError

        want = self.input_shape
        if want and (x.ndim != len(want) or any(w is not None and w != g for w, g in zip(want[1:], x.shape[1:]))):
            shown = "x".join("N" if d is None else str(d) for d in want)
            raise ShapeError(
                f"input '{self.input_name}' of {self.info.get('artifact', 'model')} expects shape {shown}, got {list(x.shape)}"
            )

    def close(self) -> None:
        """Release backend resources."""


@dataclass(frozen=True)
class BackendSpec:
    """A registered backend: what it runs, how to probe it, how to open a runner."""

    name: str
    artifact_kinds: Tuple[str, ...]  # subset of ("module", "checkpoint", "onnx", "engine")
    probe: Callable[[], Tuple[bool, str]]  # -> (available, reason if not)
    open: Callable[..., Runner]
    device: str = "cpu"
    description: str = ""
    priority: int = 100  # lower = the default for its artifact kind and device (see default_backend)


BACKENDS: Registry[BackendSpec] = Registry("backend")


def register_backend(spec: BackendSpec) -> BackendSpec:
    """Register a backend spec under its name."""
    BACKENDS.register(spec.name)(spec)
    return spec


def artifact_kind(artifact: Any) -> str:
    """Classify an artifact: 'module', 'checkpoint', 'onnx' or 'engine'."""
    import torch.nn as nn

    if isinstance(artifact, nn.Module):
        return "module"
    suffix = Path(os.fspath(artifact)).suffix.lower()
    if suffix == ".onnx":
        return "onnx"
    if suffix in (".engine", ".plan", ".trt"):
        return "engine"
    if suffix in (".pt", ".pth", ".ckpt"):
        return "checkpoint"
    raise ConfigError(
        f"cannot tell what kind of model '{artifact}' is from its suffix '{suffix}'; "
        "allowed: .onnx (ONNX), .pt/.pth/.ckpt (edgekit checkpoint), .engine/.plan (TensorRT)"
    )


def backend_spec(name: str) -> BackendSpec:
    """The registered backend ``name`` (built-ins registered on first use); unknown names raise ConfigError."""
    from edgekit.backends import _builtin  # noqa: F401  (fills the registry)

    return BACKENDS.get(name)


def default_backend(kind: str = "onnx", device: str = "cpu") -> str:
    """Name of the default backend that runs ``kind`` artifacts on ``device`` (lowest ``priority``).

    Example:
        >>> default_backend("onnx", "cpu")
        'ort-cpu'
    """
    from edgekit.backends import _builtin  # noqa: F401  (fills the registry)

    specs = sorted((s.priority, n) for n, s in BACKENDS.items() if kind in s.artifact_kinds and s.device == device)
    if not specs:
        raise ConfigError(f"no registered backend runs {kind} artifacts on {device}; registered: {', '.join(BACKENDS)}")
    return specs[0][1]


def probe_backend(name: str) -> Tuple[bool, str]:
    """Return (available, reason) for a backend name."""
    return backend_spec(name).probe()


def open_runner(artifact: Any, backend: str = "ort-cpu", threads: Optional[int] = None, **options: Any) -> Runner:
    """Open a runner for ``artifact`` (path or nn.Module) on ``backend``.

    Args:
        artifact: an ``nn.Module``, an edgekit checkpoint (.pt), an ONNX file or a TensorRT engine.
        backend: registered backend name, e.g. "torch", "ort-cpu", "torch-cuda", "tensorrt".
        threads: intra-op CPU threads (None = backend default); recorded in ``runner.info``.
        **options: backend-specific options (e.g. ``precision="fp16"`` for torch-cuda).

    Example:
        >>> runner = open_runner("model.onnx", backend="ort-cpu", threads=2)
        >>> logits = runner(np.zeros((1, 3, 32, 32), np.float32))
    """
    spec = backend_spec(backend)
    kind = artifact_kind(artifact)
    if kind != "module":
        from edgekit._io import require_file

        require_file(artifact, "model file")
    if kind not in spec.artifact_kinds:
        raise ConfigError(
            f"backend '{backend}' cannot run a {kind} artifact ({artifact}); it runs: {', '.join(spec.artifact_kinds)}"
        )
    ok, reason = spec.probe()
    if not ok:
        raise BackendUnavailableError(f"backend '{backend}' is unavailable here: {reason}")
    runner = spec.open(artifact, threads=threads, **options)
    runner.info.setdefault("backend", backend)
    runner.info.setdefault("threads", threads)
    runner.info.setdefault("artifact", "<nn.Module>" if kind == "module" else str(artifact))
    return runner


def available_backends() -> dict:
    """Map every registered backend to (available, reason)."""
    from edgekit.backends import _builtin  # noqa: F401  (fills the registry)

    return {name: spec.probe() for name, spec in BACKENDS.items()}
