"""TensorRT build settings that need no TensorRT: precision -> builder flags, and optimisation profiles.

    precision_flags("int8", sparse_weights=True).set        # ('INT8', 'FP16', 'SPARSE_WEIGHTS')
    compute_profile([("input", [None, 3, 32, 32])], (1, 8, 32))["input"]["max"]   # [32, 3, 32, 32]
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence, Tuple, Union

from edgekit.errors import ConfigError, did_you_mean

PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_BATCH_RANGE = (1, 1, 32)

BatchRange = Union[int, Sequence[int], Mapping[str, Any]]


@dataclass(frozen=True)
class BuilderFlags:
    """BuilderFlag member names to set and to clear on the IBuilderConfig."""

    set: Tuple[str, ...]
    clear: Tuple[str, ...] = ()


def precision_flags(precision: str, sparse_weights: bool = False) -> BuilderFlags:
    """Map an edgekit precision to TensorRT builder flags.

    fp32 clears TF32 (so "fp32" really is fp32); fp16 sets FP16; int8 sets INT8 plus FP16 so layers
    outside the Q/DQ pairs fall back to fp16; ``sparse_weights`` adds SPARSE_WEIGHTS (2:4 kernels).

    Example:
        >>> precision_flags("int8", sparse_weights=True).set
        ('INT8', 'FP16', 'SPARSE_WEIGHTS')
    """
    table = {"fp32": BuilderFlags((), ("TF32",)), "fp16": BuilderFlags(("FP16",)),
             "int8": BuilderFlags(("INT8", "FP16"))}
    if precision not in table:
        raise ConfigError(f"TensorRT precision '{precision}'{did_you_mean(precision, PRECISIONS)} is not "
                          f"supported; allowed: {', '.join(PRECISIONS)}")
    flags = table[precision]
    return BuilderFlags(flags.set + (("SPARSE_WEIGHTS",) if sparse_weights else ()), flags.clear)


def _check_triple(where: str, mins: Sequence[int], opts: Sequence[int], maxs: Sequence[int]) -> None:
    for a, b, c in zip(mins, opts, maxs):
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in (a, b, c)) or not a <= b <= c:
            raise ConfigError(f"{where}: need integers with 1 <= min <= opt <= max, got min={list(mins)}, "
                              f"opt={list(opts)}, max={list(maxs)}")


def _batch_triple(batch_range: BatchRange) -> Tuple[int, int, int]:
    if isinstance(batch_range, Mapping):
        triple = tuple(batch_range.get(k) for k in ("min", "opt", "max"))
    elif isinstance(batch_range, int) and not isinstance(batch_range, bool):
        triple = (batch_range,) * 3
    else:
        try:
            triple = tuple(batch_range)
        except TypeError:
            triple = ()
    if len(triple) != 3:
        raise ConfigError(f"batch_range must be (min, opt, max), got {batch_range!r}")
    _check_triple("batch_range", triple[:1], triple[1:2], triple[2:])
    return triple  # type: ignore[return-value]


def _explicit_shapes(where: str, dims: Sequence[Optional[int]], spec: Any) -> dict:
    if spec is None:
        if any(d is None for d in dims):
            raise ConfigError(f"{where} has dynamic dims but the profile gives no shapes for it")
        return {k: list(dims) for k in ("min", "opt", "max")}
    shapes = [spec.get(k) for k in ("min", "opt", "max")] if isinstance(spec, Mapping) else list(spec)
    if len(shapes) != 3 or any(not isinstance(s, (list, tuple)) or len(s) != len(dims) for s in shapes):
        raise ConfigError(f"{where}: profile needs min/opt/max shapes of rank {len(dims)}, got {spec!r}")
    _check_triple(f"profile of {where}", *shapes)
    for i, d in enumerate(dims):
        if d is not None and any(s[i] != d for s in shapes):
            raise ConfigError(f"{where}: dim {i} is fixed at {d} in the ONNX model; the profile gives "
                              f"{[s[i] for s in shapes]}")
    return {k: [int(v) for v in s] for k, s in zip(("min", "opt", "max"), shapes)}


def compute_profile(inputs: Sequence[Tuple[str, Sequence[Optional[int]]]],
                    batch_range: Optional[BatchRange] = None) -> dict:
    """Min/opt/max shapes per input, from a batch range or an explicit per-input profile.

    Args:
        inputs: ``[(name, dims)]`` with None for dynamic dims (see ``edgekit.core.onnx_graph.graph_inputs``).
        batch_range: ``(min, opt, max)`` batch sizes applied to dim 0 of every input, a single int,
            ``{"min":, "opt":, "max":}``, or an explicit profile ``{input: {"min": shape, "opt": shape,
            "max": shape}}`` (needed when dims other than the batch are dynamic). None = the input's static
            batch, else ``DEFAULT_BATCH_RANGE``.

    Returns:
        ``{input_name: {"min": [...], "opt": [...], "max": [...]}}`` sorted by name.

    Example:
        >>> compute_profile([("input", [None, 3, 32, 32])], (1, 8, 32))["input"]["max"]
        [32, 3, 32, 32]
    """
    names = [n for n, _ in inputs]
    explicit = isinstance(batch_range, Mapping) and not set(batch_range) <= {"min", "opt", "max"}
    for name in batch_range if explicit else ():  # type: ignore[union-attr]
        if name not in names:
            raise ConfigError(f"profile names input '{name}'{did_you_mean(name, names)}, which the ONNX model "
                              f"does not have; inputs: {', '.join(names)}")
    profile = {}
    for name, dims in inputs:
        where = f"input '{name}' (shape {['?' if d is None else d for d in dims]})"
        if explicit:
            profile[name] = _explicit_shapes(where, dims, batch_range.get(name))  # type: ignore[union-attr]
            continue
        if any(d is None for d in dims[1:]):
            bad = [i for i, d in enumerate(dims) if d is None and i > 0]
            raise ConfigError(f"{where} has dynamic dims {bad} besides the batch; a batch range cannot fill them. "
                              f"Pass an explicit profile {{'{name}': {{'min': [...], 'opt': [...], 'max': [...]}}}}")
        if not dims:
            profile[name] = {"min": [], "opt": [], "max": []}
            continue
        if dims[0] is not None:
            if batch_range is not None and _batch_triple(batch_range) != (dims[0],) * 3:
                raise ConfigError(f"{where} has a fixed batch of {dims[0]}; batch_range {batch_range!r} needs an "
                                  "ONNX export with a dynamic batch axis")
            triple = (dims[0],) * 3
        else:
            triple = _batch_triple(DEFAULT_BATCH_RANGE if batch_range is None else batch_range)
        profile[name] = {k: [b, *dims[1:]] for k, b in zip(("min", "opt", "max"), triple)}
    return dict(sorted(profile.items()))


__all__ = ["BatchRange", "BuilderFlags", "DEFAULT_BATCH_RANGE", "PRECISIONS", "compute_profile", "precision_flags"]
