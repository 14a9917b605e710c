"""Accuracy differences a reviewer can trust: paired over the same held-out samples.

Two models scored on the same samples are compared sample by sample: the difference of their top-1 accuracies (in
points) with a bootstrap confidence interval over the samples, and McNemar's exact test on the samples where they
disagree (``mcnemar_p``: how likely a difference this lopsided is if neither model were better).

Example:
    >>> paired_accuracy_difference(np.array([1, 1, 0, 1], bool), np.array([1, 0, 0, 1], bool))["accuracy_delta"]
    25.0
"""
from __future__ import annotations

import math
from typing import Any, Dict

import numpy as np

from edgekit.core.measure.latency import CI_LEVEL


def mcnemar_exact_p(only_model: int, only_baseline: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts (binomial test at 1/2)."""
    n = only_model + only_baseline
    if n == 0:
        return 1.0
    k = min(only_model, only_baseline)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0 ** n
    return min(1.0, 2.0 * tail)


def paired_accuracy_difference(correct: np.ndarray, base_correct: np.ndarray, level: float = CI_LEVEL,
                               resamples: int = 2000) -> Dict[str, Any]:
    """``{"accuracy_delta": points, "accuracy_delta_ci": [low, high], "mcnemar_p": p}`` of a model against a
    baseline from their per-sample correctness on the same samples (seeded bootstrap over samples)."""
    a, b = np.asarray(correct, bool), np.asarray(base_correct, bool)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"paired accuracy needs the same non-empty samples, got {a.shape} and {b.shape}")
    d = a.astype(np.float32) - b.astype(np.float32)
    rng = np.random.default_rng(0)
    means = np.concatenate([d[rng.integers(0, d.size, size=(min(200, resamples - i), d.size))].mean(axis=1)
                            for i in range(0, resamples, 200)])  # in chunks: memory stays O(200 × samples)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2]) * 100.0
    return {"accuracy_delta": round(float(d.mean() * 100.0), 4), "accuracy_delta_ci": [round(float(lo), 4),
                                                                                       round(float(hi), 4)],
            "mcnemar_p": round(mcnemar_exact_p(int((a & ~b).sum()), int((~a & b).sum())), 6)}
