"""In-memory datasets as numpy arrays, and deterministic train/val/test splitting."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

import numpy as np

from edgekit.core.signature import Signature
from edgekit.core.tensors import Inputs, NamedInputs, is_named, num_samples, take
from edgekit.errors import ConfigError


@dataclass(frozen=True)
class Split:
    """One split: ``x`` one array [N, ...] (float32 images/sequences) or :class:`NamedInputs` (named arrays with
    their own dtypes, e.g. int64 ``input_ids``/``attention_mask``), ``y`` int64 [N] (None when unlabelled)."""

    x: Inputs
    y: Optional[np.ndarray]

    def __len__(self) -> int:
        return num_samples(self.x)

    def take(self, n: int) -> Split:
        """The first ``n`` samples."""
        return Split(take(self.x, slice(0, n)), None if self.y is None else self.y[:n])


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
    signature: Optional[Signature] = None  # named/typed inputs (text data); None = one float array
    vocab_size: Optional[int] = None  # tokenizer vocabulary (token ids lie in [0, vocab_size))
    tokenizer: Any = None  # the tokenizers.Tokenizer that produced the ids (saved with the run / model)
    preprocessing: Dict[str, Any] = field(default_factory=dict)  # what was applied to the data, for the report
    task: str = "classification"  # or "causal-lm": x token windows [N, T], y their next tokens [N, T]


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


def make_splits(x: Inputs, y: Optional[np.ndarray], fractions, seed: int, name: str,
                num_classes: Optional[int] = None) -> Splits:
    """Split one array or named arrays into a :class:`Splits` (stratified when labels exist).

    For named arrays, ``input_shape`` is the per-sample shape of the first input (e.g. ``(max_length,)``).
    """
    tr, va, te = split_indices(num_samples(x), tuple(fractions), seed, y)
    if is_named(x):
        x = NamedInputs(x)
    pick = lambda idx: Split(_contiguous(take(x, idx)), None if y is None else y[idx])  # noqa: E731
    if num_classes is None:
        num_classes = int(y.max()) + 1 if y is not None and len(y) else 0
    first = next(iter(x.values())) if is_named(x) else x
    return Splits(pick(tr), pick(va), pick(te), tuple(int(d) for d in first.shape[1:]), num_classes, name,
                  y is not None)


def _contiguous(x: Inputs) -> Inputs:
    return NamedInputs({k: np.ascontiguousarray(v) for k, v in x.items()}) if is_named(x) else np.ascontiguousarray(x)
