"""Benchmark inputs: batch-size lists, sequence lengths, typed input specs, held-out data and synthetic batches.

Example:
    >>> parse_batches("1,8,32")
    [1, 8, 32]
    >>> split = as_split("heldout.npz")      # x (float32 N x ...) and y (int N), or one array per input name + y
    >>> parse_inputs(["input_ids:int64:1x128", "attention_mask:int64:1x128"])
    {'input_ids': ('int64', (128,)), 'attention_mask': ('int64', (128,))}
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from edgekit.errors import ConfigError, InputFileError, ShapeError


@dataclass
class HeldOut:
    """A held-out split: ``x`` float32 [N, ...] or ``{input name: array}`` (dtypes kept), ``y`` int64 [N] or
    None, and where it came from."""

    x: Any
    y: Optional[np.ndarray]
    source: Optional[str] = None


def parse_inputs(items: Any) -> Dict[str, Tuple[str, Tuple[int, ...]]]:
    """``{name: (dtype, per-sample shape)}`` from ``name:dtype:shape`` texts (the shape with its batch axis first,
    e.g. ``input_ids:int64:1x128``; the benchmark's batch sizes replace that first size) or from a mapping
    ``{name: (dtype, full shape)}``.

    Raises:
        ConfigError: malformed text, an unknown dtype, a non-positive size or a repeated name.

    Example:
        >>> parse_inputs(["pixel_values:float32:1x3x32x32"])
        {'pixel_values': ('float32', (3, 32, 32))}
    """
    from edgekit.core.signature import DTYPES

    pairs = list(items.items()) if isinstance(items, Mapping) else [
        _split_input(t) for t in ([items] if isinstance(items, str) else list(items or []))]
    out: Dict[str, Tuple[str, Tuple[int, ...]]] = {}
    for name, (dtype, shape) in pairs:
        if dtype not in DTYPES:
            raise ConfigError(f"input '{name}': dtype '{dtype}' is not supported; allowed: {', '.join(DTYPES)}")
        dims = [d for d in shape]
        if len(dims) < 2 or not all(isinstance(d, (int, np.integer)) and d > 0 for d in dims):
            raise ConfigError(f"input '{name}': shape {list(dims)} must be positive sizes, batch first, e.g. 1x128")
        if name in out:
            raise ConfigError(f"input '{name}' is given twice")
        out[name] = (dtype, tuple(int(d) for d in dims[1:]))
    return out


def _split_input(text: str) -> Tuple[str, Tuple[str, List[int]]]:
    parts = str(text).split(":")
    if len(parts) != 3 or not parts[0]:
        raise ConfigError(f"--input '{text}' must be name:dtype:shape, e.g. input_ids:int64:1x128")
    sizes = [t.strip() for t in parts[2].replace(",", "x").split("x")]
    if not all(t.isdigit() for t in sizes):
        raise ConfigError(f"--input '{text}': shape '{parts[2]}' must be positive sizes like 1x128")
    return parts[0], (parts[1], [int(t) for t in sizes])


def parse_sequences(seqs: Any) -> Optional[List[int]]:
    """Sequence lengths from "32,128", an int or a sequence (None stays None); positive integers only."""
    if seqs is None:
        return None
    try:
        return parse_batches(seqs)
    except ConfigError:
        raise ConfigError(f"sequence lengths must be positive integers like 32,128; got {seqs!r}") from None


def synthetic_inputs(signature: Any, shapes: Mapping[str, Sequence[int]], batch: int, seed: int = 0) -> dict:
    """A batch for every input of ``signature`` with the given per-sample ``shapes``: floats N(0, 1), token ids
    uniform in ``[0, vocab_size)`` (the embedding table's rows), masks and bools ones, token-type ids and other
    integers zeros — values every model accepts.

    Example:
        >>> synthetic_inputs(onnx_signature("bert.onnx"), {"input_ids": (128,), ...}, batch=8)["input_ids"].shape
        (8, 128)
    """
    rng = np.random.default_rng(seed)
    out = {}
    for spec in signature.inputs:
        shape = (batch, *shapes[spec.name])
        if spec.is_float:
            out[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        elif spec.name in signature.token_inputs and signature.vocab_size:
            out[spec.name] = rng.integers(0, signature.vocab_size, shape).astype(spec.dtype)
        elif spec.dtype == "bool" or "mask" in spec.name.lower():
            out[spec.name] = np.ones(shape, dtype=spec.dtype)
        else:
            out[spec.name] = np.zeros(shape, dtype=spec.dtype)
    return out


def parse_batches(batches: Any) -> List[int]:
    """Parse batch sizes from "1,8,32", an int or a sequence; refuse anything but positive integers.

    Example:
        >>> parse_batches("1, 8")
        [1, 8]
        >>> parse_batches("0,-1,x")   # raises ConfigError
    """
    if isinstance(batches, (int, np.integer)) and not isinstance(batches, bool):
        items: List[Any] = [batches]
    elif isinstance(batches, str):
        items = [b.strip() for b in batches.split(",")]
    else:
        try:
            items = list(batches)
        except TypeError:
            raise ConfigError(f"batch sizes must be positive integers like 1,8,32; got {batches!r}") from None
    bad, out = [], []
    for b in items:
        v = None
        if isinstance(b, (int, np.integer)) and not isinstance(b, bool):
            v = int(b)
        elif isinstance(b, str) and b.isdigit():
            v = int(b)
        if v is None or v < 1:
            bad.append(repr(b) if b == "" else str(b))
        elif v not in out:
            out.append(v)
    if bad or not out:
        raise ConfigError(f"batch sizes must be positive integers like 1,8,32; bad: {', '.join(bad) or 'none given'}")
    return out


def load_npz(path: str | os.PathLike) -> HeldOut:
    """Load a held-out split from an ``.npz``: ``x`` (and optionally ``y``), or one array per model input name
    (dtypes kept, e.g. int64 token ids) plus optional ``y``; validated."""
    p = Path(path)
    if not p.is_file():
        raise InputFileError(f"data file not found: {p}")
    try:
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:
        raise InputFileError(f"{p}: not a readable .npz file ({type(e).__name__})") from None
    y = arrays.pop("y", None)
    if not arrays:
        raise InputFileError(f"{p}: needs an array 'x' (N x input shape) or one array per model input; found: "
                             f"{', '.join(arrays) or 'none'}")
    if "x" in arrays and len(arrays) == 1:
        x = arrays["x"]
        if not np.issubdtype(x.dtype, np.number) or x.ndim < 2 or len(x) == 0:
            raise ShapeError(f"{p}: 'x' must be a non-empty numeric array N x input shape, got {x.dtype} "
                             f"{list(x.shape)}")
        x = x.astype(np.float32, copy=False)
        if not np.isfinite(x).all():
            raise InputFileError(f"{p}: 'x' holds NaN or infinite values")
        n: int = len(x)
        data: Any = x
    else:
        bad = {k: f"{v.dtype} {list(v.shape)}" for k, v in arrays.items()
               if not (np.issubdtype(v.dtype, np.number) or v.dtype == bool) or v.ndim < 1 or len(v) == 0}
        if bad:
            raise ShapeError(f"{p}: named arrays must be non-empty numeric arrays N x ..., got {bad}")
        sizes = {k: len(v) for k, v in arrays.items()}
        if len(set(sizes.values())) > 1:
            raise ShapeError(f"{p}: named arrays disagree on the number of samples: {sizes}")
        n, data = next(iter(sizes.values())), arrays
    if y is not None:
        if not np.issubdtype(y.dtype, np.integer) or y.shape != (n,):
            raise ShapeError(f"{p}: 'y' must be integer labels of shape [{n}], got {y.dtype} {list(y.shape)}")
        y = y.astype(np.int64)
    return HeldOut(data, y, str(p))


def is_dataset_name(data: Any) -> bool:
    """True for a string naming a built-in dataset rather than a file (no path separator, no .npz)."""
    if not isinstance(data, str):
        return False
    return not (data.endswith(".npz") or os.sep in data or Path(data).exists())


def load_named(name: str, seed: int = 0, like_shape: Optional[tuple] = None) -> HeldOut:
    """The test split of a built-in dataset (e.g. ``digits``) via ``edgekit.data.load_data``.

    ``like_shape`` (a model's per-sample input shape, e.g. (3, 32, 32)) picks the image size and
    channels, so ``--data digits`` fits a model trained on digits resized to 32x32 RGB.
    """
    from edgekit.data import DataConfig, load_data

    cfg: dict = {"name": name}
    if like_shape is not None and len(like_shape) == 3 and name == "digits" and like_shape[0] in (1, 3) \
            and like_shape[1] == like_shape[2]:
        cfg.update(channels=int(like_shape[0]), image_size=int(like_shape[1]))
    splits = load_data(DataConfig(**cfg), seed=seed)
    return HeldOut(np.asarray(splits.test.x, np.float32), None if splits.test.y is None
                   else np.asarray(splits.test.y, np.int64), f"{name}:test")


def as_split(data: Any, seed: int = 0, like_shape: Optional[tuple] = None) -> Optional[Any]:
    """Accept None, a Split-like object (``.x``, ``.y``), an ``.npz`` path or a dataset name."""
    if data is None:
        return None
    if isinstance(data, (str, os.PathLike)):
        s = os.fspath(data)
        return load_named(s, seed, like_shape) if is_dataset_name(s) else load_npz(s)
    if hasattr(data, "x") and isinstance(data.x, Mapping):  # named inputs: dtypes kept, checked by the runner
        from edgekit.core.tensors import num_samples

        y = getattr(data, "y", None)
        n = num_samples(data.x)
        if y is not None and np.asarray(y).shape != (n,):
            raise ShapeError(f"data.y must have shape [{n}], got {list(np.asarray(y).shape)}")
        return HeldOut({k: np.asarray(v) for k, v in data.x.items()}, None if y is None else np.asarray(y, np.int64),
                       getattr(data, "source", None))
    if hasattr(data, "x"):
        x = np.asarray(data.x)
        y = getattr(data, "y", None)
        if x.ndim < 2 or len(x) == 0:
            raise ShapeError(f"data.x must be a non-empty array N x input shape, got shape {list(x.shape)}")
        if y is not None and np.asarray(y).shape != (len(x),):
            raise ShapeError(f"data.y must have shape [{len(x)}], got {list(np.asarray(y).shape)}")
        return HeldOut(x.astype(np.float32, copy=False), None if y is None else np.asarray(y, np.int64),
                       getattr(data, "source", None))
    raise ConfigError(f"data must be a split with .x/.y, an .npz path or a dataset name, got {type(data).__name__}")
