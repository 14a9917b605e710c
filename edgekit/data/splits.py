"""In-memory datasets as numpy arrays, and deterministic train/val/test splitting."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from edgekit.errors import ConfigError


@dataclass(frozen=True)
class Split:
    """One split: ``x`` float32 [N, ...], ``y`` int64 [N] (None for unlabelled latency-only data)."""

    x: np.ndarray
    y: Optional[np.ndarray]

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def take(self, n: int) -> Split:
        """The first ``n`` samples."""
        return Split(self.x[:n], None if self.y is None else self.y[:n])


@dataclass(frozen=True)
class Splits:
    """train / val / test splits plus what a model needs to know about the data."""

    train: Split
    val: Split
    test: Split
    input_shape: Tuple[int, ...]
    num_classes: int
    name: str
    labelled: bool = True


def split_indices(n: int, fractions: Tuple[float, float, float], seed: int,
                  stratify: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Deterministically partition ``range(n)`` into disjoint train/val/test index arrays.

    With ``stratify`` (labels), each class is split in the same proportions.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ConfigError(f"data.split must be three non-negative fractions summing to 1, got {list(fractions)}")
    rng = np.random.default_rng(seed)
    if stratify is not None:
        classes, counts = np.unique(stratify, return_counts=True)
        if counts.min() < 3:
            stratify = None  # too few samples per class to stratify (e.g. random labels of synthetic data)
    groups = [np.arange(n)] if stratify is None else [np.flatnonzero(stratify == c) for c in classes]
    parts: list[list[np.ndarray]] = [[], [], []]
    for idx in groups:
        idx = rng.permutation(idx)
        n_tr = int(round(fractions[0] * len(idx)))
        n_va = int(round(fractions[1] * len(idx)))
        for i, chunk in enumerate((idx[:n_tr], idx[n_tr:n_tr + n_va], idx[n_tr + n_va:])):
            parts[i].append(chunk)
    out = tuple(np.sort(np.concatenate(p)) if p else np.empty(0, np.int64) for p in parts)
    if min(len(o) for o in out) == 0:
        raise ConfigError(f"data.split {list(fractions)} leaves an empty split for {n} samples")
    return out  # type: ignore[return-value]


def make_splits(x: np.ndarray, y: Optional[np.ndarray], fractions, seed: int, name: str,
                num_classes: Optional[int] = None) -> Splits:
    """Split arrays into a :class:`Splits` (stratified when labels exist)."""
    tr, va, te = split_indices(len(x), tuple(fractions), seed, y)
    pick = lambda idx: Split(np.ascontiguousarray(x[idx]), None if y is None else y[idx])  # noqa: E731
    if num_classes is None:
        num_classes = int(y.max()) + 1 if y is not None and len(y) else 0
    return Splits(pick(tr), pick(va), pick(te), tuple(int(d) for d in x.shape[1:]), num_classes, name, y is not None)
