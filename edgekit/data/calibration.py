"""Calibration sets: ``calib_data/*.npz`` with ``x`` (N × input shape, float32) and optional ``y``."""
from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from edgekit._io import atomic_path, check_npz_file
from edgekit.data.datasets import DataConfig, load_data
from edgekit.errors import ConfigError, InputFileError, ShapeError, first_line

MAX_ABS = 1e6  # beyond this, int8 scales computed from the data would flush every ordinary value to zero
RANGE_FACTOR = 100.0  # calibration values this many times beyond the training data's are a different kind of data


def load_calibration(path: str | Path, input_shape: Optional[Sequence[Optional[int]]] = None,
                     max_samples: Optional[int] = None, reference: Optional[np.ndarray] = None) -> np.ndarray:
    """Read a calibration npz and check it fits a model input of per-sample ``input_shape``.

    The stored dtype is checked before any conversion (integer pixels would calibrate int8 scales for the wrong
    range); ``reference`` (e.g. the training inputs) bounds the value range. Raises ShapeError/InputFileError
    before any calibration runs.

    Example:
        >>> x = load_calibration("calib_data/digits32_rgb.npz", (3, 32, 32))
    """
    p = check_npz_file(path, "calibration")
    try:
        with np.load(p, allow_pickle=False) as f:
            if "x" not in f.files:
                found = ", ".join(f.files) or "none"
                raise InputFileError(f"{p}: npz must contain an array named 'x' (found: {found})")
            x = f["x"]
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise InputFileError(f"{p}: not a readable npz of plain arrays ({first_line(e, 200)})") from None
    return check_calibration(x, input_shape, str(p), max_samples, reference=reference)


def check_calibration(x: np.ndarray, input_shape: Optional[Sequence[Optional[int]]], where: str = "calibration data",
                      max_samples: Optional[int] = None, reference: Optional[np.ndarray] = None) -> np.ndarray:
    """Validate calibration samples (non-empty, floating point *as stored*, finite, sane range, per-sample shape)
    and return float32.

    Example:
        >>> check_calibration(np.zeros((8, 3, 32, 32), np.float32), (3, 32, 32)).shape
        (8, 3, 32, 32)
    """
    if x.ndim < 2 or x.shape[0] == 0:
        raise ShapeError(f"{where}: calibration data is empty or not batched (shape {list(x.shape)})")
    if not np.issubdtype(x.dtype, np.floating):
        raise ShapeError(f"{where}: calibration data must be floating point (preprocessed like the training data), "
                         f"got dtype {x.dtype}; integer pixels would calibrate int8 for the wrong range")
    if not np.isfinite(x).all():
        raise ShapeError(f"{where}: calibration data contains NaN or infinite values")
    peak = float(np.abs(x).max())
    if peak > MAX_ABS:
        raise ShapeError(f"{where}: calibration values reach {peak:.3g}; allowed |x| ≤ {MAX_ABS:.0e} "
                         "(preprocess it like the training data)")
    if reference is not None and len(reference):
        ref = float(np.abs(reference).max())
        if peak > RANGE_FACTOR * max(ref, 1e-6):
            raise ShapeError(f"{where}: calibration values reach {peak:.3g} but the training data stays within "
                             f"±{ref:.3g}; preprocess it like the training data")
    if input_shape is not None:
        want = list(input_shape)
        got = list(x.shape[1:])
        if len(want) != len(got) or any(w is not None and w != g for w, g in zip(want, got)):
            raise ShapeError(f"{where}: samples have shape {got} but the model input expects {want}")
    if max_samples is not None:
        x = x[:max_samples]
    return np.ascontiguousarray(x, dtype=np.float32)


def make_calibration(data: DataConfig | dict, out: str | Path, samples: int = 128, seed: int = 0) -> Path:
    """Write a calibration npz drawn from the **training** split only (never val/test).

    Example:
        >>> make_calibration({"name": "digits", "image_size": 32, "channels": 3}, "calib_data/digits32_rgb.npz")
    """
    if samples <= 0:
        raise ConfigError(f"samples must be a positive integer, got {samples}")
    splits = load_data(data, seed)
    rng = np.random.default_rng(seed)
    n = min(samples, len(splits.train))
    idx = np.sort(rng.choice(len(splits.train), n, replace=False))
    x = splits.train.x[idx]
    y = None if splits.train.y is None else splits.train.y[idx]
    with atomic_path(out, suffix=".npz") as tmp:
        with open(tmp, "wb") as f:
            if y is None:
                np.savez(f, x=x)
            else:
                np.savez(f, x=x, y=y)
    return Path(out)
