"""The runner interface: one per backend, numpy in, numpy out; backends declare what they can do.

    with open_runner("model.onnx", backend="ort-cpu", threads=2) as runner:
        logits = runner(batch)        # np.ndarray -> np.ndarray
        runner.info                   # backend, precision, device, threads, versions

Benchmarks time ``run_prepared(prepare(x))`` followed by ``synchronize()``, so input
placement (host->device copies) stays outside the timed region.

A backend is one module in ``edgekit.backends`` that calls ``register_backend(BackendSpec(...))``; the spec
declares its capabilities (artifact kinds and the file suffixes it reads, device, precisions, preferred
quantisation target, channel alignment, float baseline, optional ``describe``/``compile`` hooks), so no other
module keeps a table of backends: ``artifact_kind``, ``default_backend``, ``target_warning``, doctor, bench,
the report and the compile stage all ask the registry.
"""
from __future__ import annotations

import abc
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union

import numpy as np

from edgekit.errors import BackendUnavailableError, ConfigError
from edgekit.registry import Registry


class Runner(abc.ABC):
    """Runs one model artifact on one backend.

    Inputs are one array (a model with one input) or a mapping of input name to array (several named inputs,
    dtypes kept: token ids stay integers). When the runner knows the model's :class:`Signature` (``signature``,
    read from the ONNX graph, the engine or the checkpoint), every call is checked against it first: missing or
    unexpected names, float data for an integer input, wrong rank or fixed sizes, token ids outside the
    vocabulary are a ShapeError naming the input and what it takes.
    """

    backend: str = ""

    def __init__(self) -> None:
        self.input_name: str = "input"
        self.input_shape: Tuple[Optional[int], ...] = ()
        self.input_dtype: np.dtype = np.dtype(np.float32)
        self.signature: Optional[Any] = None  # edgekit.core.signature.Signature when known
        self.info: dict = {}

    def set_signature(self, signature: Optional[Any]) -> None:
        """Adopt ``signature``; the first input's name, shape and dtype become ``input_name/shape/dtype``."""
        self.signature = signature
        if signature is None:
            return
        first = signature.inputs[0]
        self.input_name = first.name
        self.input_shape = tuple(d if isinstance(d, int) else None for d in first.shape)
        self.input_dtype = np.dtype(first.dtype)

    @property
    def input_names(self) -> Tuple[str, ...]:
        """The model's input names in call order."""
        return self.signature.names if self.signature is not None else (self.input_name,)

    def prepare(self, x: Any) -> Any:
        """Place a numpy batch (one array or named arrays) where the backend reads it (device memory, tensors...).

        Floating data is cast to the input's float dtype and integers to the input's integer width; a float/int
        mismatch never reaches here (``check_input`` refuses it).
        """
        if isinstance(x, Mapping):
            if self.signature is None:
                return {k: np.ascontiguousarray(v) for k, v in x.items()}
            return {spec.name: np.ascontiguousarray(x[spec.name], dtype=spec.dtype) for spec in self.signature.inputs}
        return np.ascontiguousarray(x, dtype=self.input_dtype)

    @abc.abstractmethod
    def run_prepared(self, prepared: Any) -> Any:
        """Run inference on a prepared input; return the backend-native first output."""

    def to_numpy(self, out: Any) -> np.ndarray:
        """Convert a backend-native output to numpy (copies device memory to the host)."""
        return np.asarray(out)

    def synchronize(self) -> None:  # noqa: B027  (an optional hook: CPU backends have nothing to wait for)
        """Wait for queued device work (no-op on CPU backends)."""

    def __call__(self, x: Any) -> np.ndarray:
        self.check_input(x)
        return self.to_numpy(self.run_prepared(self.prepare(x)))

    def check_input(self, x: Any) -> None:
        """Raise ShapeError when ``x`` (one array or named arrays) cannot be fed to this model."""
        from edgekit.errors import ShapeError

        where = self.info.get("artifact", "model")
        if self.signature is not None and (isinstance(x, Mapping) or not self.signature.single):
            self.signature.check(x, where=where)
            return
        if isinstance(x, Mapping):
            raise ShapeError(f"{where} takes one input '{self.input_name}'; pass one array, not named inputs "
                             f"{sorted(x)}")
        x = np.asarray(x)
        want = self.input_shape
        if want and (x.ndim != len(want) or any(w is not None and w != g for w, g in zip(want[1:], x.shape[1:]))):
            shown = "x".join("N" if d is None else str(d) for d in want)
            raise ShapeError(f"input '{self.input_name}' of {where} expects shape {shown}, got {list(x.shape)}")

    def close(self) -> None:  # noqa: B027  (an optional hook)
        """Release backend resources (and undo any process-wide setting the runner made)."""

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


@dataclass(frozen=True)
class BackendSpec:
    """A registered backend: what it runs and wants, how to probe it, how to open a runner.

    Example:
        >>> register_backend(BackendSpec("my-npu", ("onnx",), probe, open_fn, "npu", "My NPU runtime",
        ...                              suffixes={"onnx": (".onnx",)}, precisions=("int8",), quant_target="cpu"))
    """

    name: str
    artifact_kinds: Tuple[str, ...]  # what it opens, in order of preference: "module", "checkpoint", "onnx", ...
    probe: Callable[[], Tuple[bool, str]]  # -> (available, reason if not)
    open: Callable[..., Runner]
    device: str = "cpu"
    description: str = ""
    priority: int = 100  # lower = the default for its artifact kind and device (see default_backend)
    suffixes: Mapping[str, Tuple[str, ...]] = field(default_factory=dict)  # artifact kind -> file suffixes it reads
    companions: Mapping[str, Tuple[str, ...]] = field(default_factory=dict)  # kind -> suffixes of files that belong
    # to an artifact of that kind (same stem beside it, e.g. weights); counted in its size
    precisions: Tuple[str, ...] = ("fp32",)  # precisions it runs
    quant_target: Optional[str] = None  # the quantisation target (edgekit.techniques.quantize TARGETS) it wants
    channel_alignment: int = 1  # channel multiple its fast kernels want (the default for pruning's round_to)
    float_baseline: bool = False  # runs the reference in float: the baseline speedups are measured against
    title: str = ""  # short human name for reports, e.g. "ONNX Runtime CPU" (default: the name)
    tag: str = ""  # short name in variant and file names, e.g. "trt" (default: the name)
    describe: Optional[Callable[[], Dict[str, Any]]] = None  # -> {"version", "devices", ...} for `edgekit doctor`
    compile: Optional[Callable[..., Path]] = None  # (onnx_path, out_dir, **options) -> deployable artifact path
    # ONNX Runtime com.microsoft ops it runs (fused transformer graphs: Attention, SkipLayerNormalization, ...);
    # ("*",) = all of them. A fused artifact holding others is opened through its unfused sibling.
    contrib_ops: Tuple[str, ...] = ()
    # (onnx_path, threads) -> a session over a KV-cache causal-LM ONNX graph: ``input_names`` (the graph's inputs),
    # ``run({name: array}) -> [logits, present...]`` (outputs in graph order, fresh arrays), ``info``
    causal_lm: Optional[Callable[..., Any]] = None

    def runs_contrib_ops(self, ops: Any) -> bool:
        """True when this backend runs every ``com.microsoft`` op type in ``ops``."""
        return "*" in self.contrib_ops or set(ops) <= set(self.contrib_ops)

    @property
    def label(self) -> str:
        """``title`` or, without one, the name."""
        return self.title or self.name


BACKENDS: Registry[BackendSpec] = Registry("backend")


def register_backend(spec: BackendSpec) -> BackendSpec:
    """Register a backend spec under its name, after checking its declared capabilities.

    Raises:
        ConfigError: a suffix for a kind the backend does not run, a suffix another backend reads as another
            kind, or a channel alignment below 1.
    """
    undeclared = sorted((set(spec.suffixes) | set(spec.companions)) - set(spec.artifact_kinds))
    if undeclared:
        raise ConfigError(f"backend '{spec.name}' declares suffixes for {undeclared} but runs only "
                          f"{', '.join(spec.artifact_kinds)}")
    if not isinstance(spec.channel_alignment, int) or spec.channel_alignment < 1:
        raise ConfigError(f"backend '{spec.name}': channel_alignment must be a positive integer, "
                          f"got {spec.channel_alignment!r}")
    known = _suffix_table()
    for kind, suffixes in spec.suffixes.items():
        for sfx in suffixes:
            if not sfx.startswith(".") or sfx != sfx.lower():
                raise ConfigError(f"backend '{spec.name}': suffix {sfx!r} must be lower case and start with '.'")
            if known.get(sfx, kind) != kind:
                raise ConfigError(f"backend '{spec.name}' reads {sfx} files as {kind} but another backend reads "
                                  f"them as {known[sfx]}; one suffix, one artifact kind")
    BACKENDS.register(spec.name)(spec)
    return spec


def load_backends() -> None:
    """Import every backend module of ``edgekit.backends`` (each registers itself in ``BACKENDS``); idempotent."""
    from edgekit.backends import _builtin  # noqa: F401  (fills the registry)


def _suffix_table() -> Dict[str, str]:
    """``{suffix: artifact kind}`` over every registered backend."""
    return {sfx: kind for _, spec in BACKENDS.items() for kind, sfxs in spec.suffixes.items() for sfx in sfxs}


def artifact_files(artifact: Union[str, os.PathLike]) -> list:
    """The artifact's file and the companion files its kind declares that exist beside it (e.g. IR weights).

    Example:
        >>> artifact_files("model.onnx")
        [PosixPath('model.onnx')]
    """
    path = Path(os.fspath(artifact))
    kind = artifact_kind(path)
    suffixes = dict.fromkeys(sfx for _, spec in BACKENDS.items() for sfx in spec.companions.get(kind, ()))
    return [path] + [path.with_suffix(sfx) for sfx in suffixes if path.with_suffix(sfx).is_file()]


def artifact_kinds() -> Tuple[str, ...]:
    """Every artifact kind some registered backend runs (``module`` first, then in registration-name order).

    Example:
        >>> artifact_kinds()
        ('module', 'checkpoint', 'onnx', 'engine', ...)
    """
    load_backends()
    kinds: Dict[str, None] = {"module": None}
    for _, spec in sorted(BACKENDS.items(), key=lambda kv: (kv[1].priority, kv[0])):
        kinds.update(dict.fromkeys(spec.artifact_kinds))
    return tuple(kinds)


def artifact_kind(artifact: Any) -> str:
    """Classify an artifact: ``"module"`` for an ``nn.Module``, else the kind a backend declares for its suffix.

    Example:
        >>> artifact_kind("run/model.int8.onnx")
        'onnx'
    """
    import torch.nn as nn

    if isinstance(artifact, nn.Module):
        return "module"
    load_backends()
    suffix = Path(os.fspath(artifact)).suffix.lower()
    table = _suffix_table()
    if suffix in table:
        return table[suffix]
    by_kind: Dict[str, list] = {}
    for sfx, kind in table.items():
        by_kind.setdefault(kind, []).append(sfx)
    allowed = ", ".join(f"{'/'.join(sfxs)} ({kind})" for kind, sfxs in by_kind.items())
    raise ConfigError(f"cannot tell what kind of model '{artifact}' is from its suffix '{suffix}'; allowed: {allowed}")


def backend_spec(name: str) -> BackendSpec:
    """The registered backend ``name`` (built-ins registered on first use); unknown names raise ConfigError."""
    load_backends()
    return BACKENDS.get(name)


def default_backend(kind: str = "onnx", device: str = "cpu") -> str:
    """Name of the default backend that runs ``kind`` artifacts on ``device`` (lowest ``priority``).

    Example:
        >>> default_backend("onnx", "cpu")
        'ort-cpu'
    """
    load_backends()
    specs = sorted((s.priority, n) for n, s in BACKENDS.items() if kind in s.artifact_kinds and s.device == device)
    if not specs:
        raise ConfigError(f"no registered backend runs {kind} artifacts on {device}; registered: {', '.join(BACKENDS)}")
    return specs[0][1]


def compiling_backends() -> list:
    """Names of the backends with a ``compile`` hook, lowest ``priority`` first (the first is the default).

    Example:
        >>> compiling_backends()
        ['tensorrt', 'openvino']
    """
    load_backends()
    return [n for n, s in sorted(BACKENDS.items(), key=lambda kv: (kv[1].priority, kv[0])) if s.compile is not None]


def causal_lm_backends(device: Optional[str] = "cpu") -> list:
    """Names of the backends with a ``causal_lm`` session hook (KV-cache LM decoding), lowest ``priority`` first
    (the first is the default); only those on ``device`` unless it is None.

    Example:
        >>> causal_lm_backends()
        ['ort-cpu', 'openvino']
    """
    load_backends()
    return [n for n, s in sorted(BACKENDS.items(), key=lambda kv: (kv[1].priority, kv[0]))
            if s.causal_lm is not None and (device is None or s.device == device)]


def open_causal_lm_session(path: Union[str, os.PathLike], backend: Optional[str] = None,
                           threads: Optional[int] = None) -> Any:
    """A KV-cache session (see ``BackendSpec.causal_lm``) over the ONNX graph ``path`` on ``backend`` (None: the
    default, the first of :func:`causal_lm_backends`).

    Raises:
        ConfigError: ``backend`` is not registered or cannot decode causal LMs (the message lists those that can).
        BackendUnavailableError: the backend's runtime is missing here.
    """
    spec = causal_lm_spec(backend)
    ok, reason = spec.probe()
    if not ok:
        raise BackendUnavailableError(f"backend '{spec.name}' is unavailable here: {reason}")
    return spec.causal_lm(path, threads)


def causal_lm_spec(backend: Optional[str] = None) -> BackendSpec:
    """The spec of ``backend`` (None: the default causal-LM backend), refused unless it has a ``causal_lm`` hook."""
    allowed = causal_lm_backends(device=None)
    if not allowed:
        raise ConfigError("no registered backend decodes KV-cache causal LMs")
    name = allowed[0] if backend is None else backend
    if name not in allowed:
        from edgekit.errors import did_you_mean

        what = "is not a registered backend" if name not in BACKENDS.names() else "cannot decode KV-cache causal LMs"
        raise ConfigError(f"backend '{name}' {what}{did_you_mean(str(name), allowed)}; allowed: {', '.join(allowed)}")
    return BACKENDS.get(name)


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
    if kind == "onnx":
        artifact = unfused_sibling(artifact, spec)
    runner = spec.open(artifact, threads=threads, **options)
    runner.info.setdefault("backend", backend)
    runner.info.setdefault("threads", threads)
    runner.info.setdefault("artifact", "<nn.Module>" if kind == "module" else str(artifact))
    return runner


def unfused_sibling(path: Union[str, os.PathLike], spec: Optional[BackendSpec] = None
                    ) -> Union[str, os.PathLike]:
    """The unfused graph a fused transformer artifact keeps beside it (its sidecar's ``fusion.unfused``), for a
    backend (``spec``; None = any consumer that wants the unfused graph) that cannot run every ONNX Runtime
    contrib op of the fused file (``fusion.contrib_ops``); ``path`` itself otherwise."""
    from edgekit._io import read_sidecar

    fusion = read_sidecar(path).get("fusion") or {}
    if not fusion.get("applied") or not fusion.get("unfused"):
        return path
    if spec is not None and spec.runs_contrib_ops(fusion.get("contrib_ops") or {}):
        return path
    sibling = Path(path).with_name(fusion["unfused"])
    return sibling if sibling.is_file() else path


def target_warning(artifact_or_sidecar: Union[str, os.PathLike, Mapping, None], backend: str) -> Optional[str]:
    """A warning when an int8 artifact was quantised for another target than ``backend`` wants, else None.

    Driven by the backend's declared ``quant_target`` and the artifact's sidecar (``target``, ``precision``,
    ``quant_scheme``, ``int8_mac_fraction`` and the backend that fraction was measured on).

    Example:
        >>> target_warning("model.int8-tensorrt.onnx", "ort-cpu")
        "model.int8-tensorrt.onnx was quantised for target 'tensorrt' (int8 symmetric activations, ...) but runs on ..."
    """
    if artifact_or_sidecar is None or not isinstance(artifact_or_sidecar, (str, os.PathLike, Mapping)):
        return None
    if isinstance(artifact_or_sidecar, Mapping):
        side, name = artifact_or_sidecar, "the artifact"
    else:
        from edgekit._io import read_sidecar

        side, name = read_sidecar(artifact_or_sidecar), Path(artifact_or_sidecar).name
    target, want = side.get("target"), backend_spec(backend).quant_target
    if side.get("precision") != "int8" or not target or want is None or target == want:
        return None
    scheme = side.get("quant_scheme") or {}
    how = ""
    if scheme.get("activations"):
        sym = "symmetric" if scheme.get("activation_symmetric") else "asymmetric"
        how = f" ({scheme['activations']} {sym} activations, {scheme.get('weights', 'int8')} weights)"
    frac = side.get("int8_mac_fraction")
    cov = (f"; only {frac:.0%} of its MACs run in int8 there" if isinstance(frac, (int, float))
           and side.get("int8_mac_fraction_backend") == backend else "")
    return (f"{name} was quantised for target '{target}'{how} but runs on '{backend}', which wants target "
            f"'{want}'{cov}; quantise with target '{want}' for this backend")


def available_backends() -> dict:
    """Map every registered backend to (available, reason)."""
    load_backends()
    return {name: spec.probe() for name, spec in BACKENDS.items()}
