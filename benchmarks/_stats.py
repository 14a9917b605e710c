"""Seed statistics the benchmark scripts share: a mean with its 95 % t-interval, and paired-by-seed differences."""
from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np


def t_half_width(values: Sequence[float]) -> float:
    """95 % t-interval half-width of the mean of ``values`` (nan for fewer than two)."""
    from scipy import stats

    v = np.asarray(values, float)
    if len(v) < 2:
        return float("nan")
    return float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))


def mean_ci(values: Sequence[float]) -> Tuple[float, float]:
    """(mean, 95 % t half-width) of per-seed ``values``."""
    return float(np.mean(values)), t_half_width(values)


def paired_by_seed(method: Sequence[float], base: Sequence[float]) -> Tuple[float, float]:
    """Mean of per-seed differences ``method - base`` and its 95 % t half-width (seed i of each is one pair)."""
    d = np.asarray(method, float) - np.asarray(base, float)
    return float(d.mean()), t_half_width(d)
