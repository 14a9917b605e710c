"""TensorRT build settings that need no TensorRT: precision -> builder flags, and optimisation profiles.

    precision_flags("int8", sparse_weights=True).set        # ('INT8', 'FP16', 'SPARSE_WEIGHTS')
    compute_profile([("input", [None, 3, 32, 32])], (1, 8, 32))["input"]["max"]   # [32, 3, 32, 32]
    compute_profile([("input_ids", ["batch", "sequence"]), ("attention_mask", ["batch", "sequence"])], (1, 1, 8),
                    axis_ranges={"sequence": (16, 128, 128)})["attention_mask"]["opt"]      # [1, 128]
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence, Tuple, Union

from edgekit.errors import ConfigError, did_you_mean

PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_BATCH_RANGE = (1, 1, 32)

BatchRange = Union[int, Sequence[int], Mapping[str, Any]]
Dim = Union[int, str, None]  # a fixed size, a symbolic axis name, or an unnamed dynamic dim


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


def _batch_triple(batch_range: BatchRange, what: str = "batch_range") -> Tuple[int, int, int]:
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
        raise ConfigError(f"{what} must be (min, opt, max), got {batch_range!r}")
    _check_triple(what, triple[:1], triple[1:2], triple[2:])
    return triple  # type: ignore[return-value]


def _fixed(d: Dim) -> bool:
    return isinstance(d, int) and not isinstance(d, bool)


def _explicit_shapes(where: str, dims: Sequence[Dim], spec: Any) -> dict:
    if spec is None:
        if not all(_fixed(d) for d in dims):
            raise ConfigError(f"{where} has dynamic dims but the profile gives no shapes for it")
        return {k: list(dims) for k in ("min", "opt", "max")}
    shapes = [spec.get(k) for k in ("min", "opt", "max")] if isinstance(spec, Mapping) else list(spec)
    if len(shapes) != 3 or any(not isinstance(s, (list, tuple)) or len(s) != len(dims) for s in shapes):
        raise ConfigError(f"{where}: profile needs min/opt/max shapes of rank {len(dims)}, got {spec!r}")
    _check_triple(f"profile of {where}", *shapes)
    for i, d in enumerate(dims):
        if _fixed(d) and any(s[i] != d for s in shapes):
            raise ConfigError(f"{where}: dim {i} is fixed at {d} in the ONNX model; the profile gives "
                              f"{[s[i] for s in shapes]}")
    return {k: [int(v) for v in s] for k, s in zip(("min", "opt", "max"), shapes)}


def _axis_ranges(inputs: Sequence[Tuple[str, Sequence[Dim]]], axis_ranges: Optional[Mapping[str, Any]]) -> dict:
    """``{axis name: (min, opt, max)}`` checked against the symbolic axes the inputs really have."""
    named = sorted({d for _, dims in inputs for d in dims[1:] if isinstance(d, str)})
    out = {}
    for axis, triple in (axis_ranges or {}).items():
        if axis not in named:
            raise ConfigError(f"axis_ranges names axis '{axis}'{did_you_mean(axis, named)}, which no input of the "
                              f"ONNX model has besides the batch; symbolic axes: {', '.join(named) or 'none'}")
        out[axis] = _batch_triple(triple, f"axis_ranges['{axis}']")
    return out


def _input_profile(where: str, dims: Sequence[Dim], batch_range: Optional[BatchRange], ranges: dict) -> dict:
    """min/opt/max of one input: the batch range on dim 0, ``ranges`` on its named dynamic dims."""
    if not dims:
        return {"min": [], "opt": [], "max": []}
    unfilled = [(i, d) for i, d in enumerate(dims) if i > 0 and not _fixed(d) and d not in ranges]
    if unfilled:
        shown = ", ".join(f"dim {i}" + (f" ('{d}')" if d else "") for i, d in unfilled)
        names = [d for _, d in unfilled if d]
        hint = (f"give axis_ranges={{{', '.join(repr(n) + ': (min, opt, max)' for n in names)}}}" if len(names) ==
                len(unfilled) else "pass an explicit profile {input: {'min': [...], 'opt': [...], 'max': [...]}}")
        raise ConfigError(f"{where} has dynamic {shown} besides the batch; a batch range cannot fill them: {hint}")
    if _fixed(dims[0]):
        if batch_range is not None and _batch_triple(batch_range) != (dims[0],) * 3:
            raise ConfigError(f"{where} has a fixed batch of {dims[0]}; batch_range {batch_range!r} needs an "
                              "ONNX export with a dynamic batch axis")
        batch = (dims[0],) * 3
    else:
        batch = _batch_triple(DEFAULT_BATCH_RANGE if batch_range is None else batch_range)
    return {k: [batch[j], *(d if _fixed(d) else ranges[d][j] for d in dims[1:])]
            for j, k in enumerate(("min", "opt", "max"))}


def compute_profile(inputs: Sequence[Tuple[str, Sequence[Dim]]], batch_range: Optional[BatchRange] = None,
                    axis_ranges: Optional[Mapping[str, Any]] = None) -> dict:
    """Min/opt/max shapes per input, from a batch range (plus ranges of named axes) or an explicit profile.

    Args:
        inputs: ``[(name, dims)]``; a dim is a fixed size, a symbolic axis name (``"sequence"``, as
            ``edgekit.core.onnx_graph.onnx_signature`` reads them) or None (dynamic, unnamed).
        batch_range: ``(min, opt, max)`` batch sizes applied to dim 0 of every input, a single int,
            ``{"min":, "opt":, "max":}``, or an explicit profile ``{input: {"min": shape, "opt": shape,
            "max": shape}}``. None = the input's static batch, else ``DEFAULT_BATCH_RANGE``.
        axis_ranges: ``{axis: (min, opt, max)}`` for the named dynamic axes besides the batch (a BERT export's
            ``sequence``, shared by all its inputs, so every input gets the same lengths).

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
    if explicit and axis_ranges:
        raise ConfigError("give either an explicit per-input profile or batch_range with axis_ranges, not both")
    ranges = _axis_ranges(inputs, axis_ranges)
    profile = {}
    for name, dims in inputs:
        where = f"input '{name}' (shape {['?' if d is None else d for d in dims]})"
        profile[name] = (_explicit_shapes(where, dims, batch_range.get(name))  # type: ignore[union-attr]
                         if explicit else _input_profile(where, dims, batch_range, ranges))
    return dict(sorted(profile.items()))


__all__ = ["BatchRange", "BuilderFlags", "DEFAULT_BATCH_RANGE", "Dim", "PRECISIONS", "compute_profile",
           "precision_flags"]
