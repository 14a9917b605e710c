"""Benchmark inputs: batch-size lists and held-out data specs (``.npz`` file or a dataset name).

Example:
    >>> parse_batches("1,8,32")
    [1, 8, 32]
    >>> split = as_split("heldout.npz")      # arrays x (float32 N x ...) and y (int N)
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional

import numpy as np

from edgekit.errors import ConfigError, InputFileError, ShapeError


@dataclass
class HeldOut:
    """A held-out split: ``x`` float32 [N, ...], ``y`` int64 [N] or None, and where it came from."""

    x: np.ndarray
    y: Optional[np.ndarray]
    source: Optional[str] = None


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
    """Load a held-out split from an ``.npz`` with arrays ``x`` and (optionally) ``y``, validated."""
    p = Path(path)
    if not p.is_file():
        raise InputFileError(f"data file not found: {p}")
    try:
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:
        raise InputFileError(f"{p}: not a readable .npz file ({type(e).__name__})") from None
    if "x" not in arrays:
        raise InputFileError(f"{p}: needs an array 'x' (N x input shape); found: {', '.join(arrays) or 'none'}")
    x, y = arrays["x"], arrays.get("y")
    if not np.issubdtype(x.dtype, np.number) or x.ndim < 2 or len(x) == 0:
        raise ShapeError(f"{p}: 'x' must be a non-empty numeric array N x input shape, got {x.dtype} {list(x.shape)}")
    x = x.astype(np.float32, copy=False)
    if not np.isfinite(x).all():
        raise InputFileError(f"{p}: 'x' holds NaN or infinite values")
    if y is not None:
        if not np.issubdtype(y.dtype, np.integer) or y.shape != (len(x),):
            raise ShapeError(f"{p}: 'y' must be integer labels of shape [{len(x)}], got {y.dtype} {list(y.shape)}")
        y = y.astype(np.int64)
    return HeldOut(x, y, str(p))


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
