"""Searching the pruning ratio: to meet a MACs target (counted) or a speedup target (measured on a backend).

Both searches bisect one scalar ``s`` (the channel ratio, or the scale of per-layer ratios) between 0 and
its maximum; every candidate is a really pruned copy of the model, counted or timed. Channel counts are rounded,
so MACs fall in steps as ``s`` grows; the MACs search returns the closest measured candidate.
"""
from __future__ import annotations

import logging
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch.nn as nn

from edgekit._log import progress
from edgekit.errors import ConfigError

logger = logging.getLogger(__name__)


MACS_TOLERANCE = 0.05  # |reached - macs_target| beyond this is reported with a warning


def search_macs(macs_of: Callable[[float], float], target: float, s_max: float, excluded: List[str], round_to: int,
                iterations: int = 12) -> Tuple[float, List[dict]]:
    """The ``s`` in (0, s_max] whose pruned copy keeps the fraction of MACs closest to ``target`` (at or below it
    when two are equally close), found by bisection on ``s`` where every candidate is pruned and counted.

    Nothing assumes the counts are monotone: the answer is the best *measured* candidate; a warning says when it is
    more than :data:`MACS_TOLERANCE` from the target (rounding to ``round_to`` makes the reachable set discrete).

    Raises:
        ConfigError: even ``s_max`` keeps more than ``target + MACS_TOLERANCE`` of the MACs.

    Example:
        >>> s, tried = search_macs(lambda s: (1 - s) ** 2, 0.5, 0.9, [], 8)
        >>> round((1 - s) ** 2, 2)
        0.5
    """
    history: List[dict] = []
    exact: List[float] = []

    def real(s: float) -> float:
        f = macs_of(s)
        history.append({"ratio": round(s, 5), "macs_fraction": round(f, 5)})
        exact.append(s)
        return f

    if real(s_max) > target + MACS_TOLERANCE:
        where = f" with excluded layers {', '.join(excluded)}" if excluded else ""
        best = history[-1]["macs_fraction"]
        raise ConfigError(f"macs_target {target} is unreachable{where}: pruning every group to its limit "
                          f"(max_ratio, one round_to={round_to} multiple) still keeps {best:.3f} of the MACs; "
                          f"allowed: macs_target >= {best:.3f}, or exclude fewer layers / lower round_to")
    lo, hi = 0.0, s_max
    for _ in progress(range(iterations), desc="prune: MACs search", total=iterations):
        mid = 0.5 * (lo + hi)
        if real(mid) <= target:
            hi = mid
        else:
            lo = mid
    i = min(range(len(history)), key=lambda j: (abs(history[j]["macs_fraction"] - target)
                                                + (0 if history[j]["macs_fraction"] <= target else 1e-6), exact[j]))
    best = history[i]
    best["chosen"] = True
    if abs(best["macs_fraction"] - target) > MACS_TOLERANCE:
        warnings.warn(f"prune: macs_target {target}: the closest pruned candidate keeps {best['macs_fraction']:.3f} "
                      f"of the MACs (channel counts are multiples of round_to={round_to}); lower round_to to get "
                      "closer", stacklevel=2)
    logger.info(f"prune: macs_target {target} -> ratio {best['ratio']:.3f} keeps {best['macs_fraction']:.3f} "
                f"({len(history)} candidates measured)")
    return exact[i], history


def _open_timed(model: nn.Module, sample: np.ndarray, backend: str, threads: Optional[int], tmp: Path, stem: str):
    """A runner for ``model`` on ``backend``: the module itself for torch backends, else an ONNX export."""
    from edgekit.backends import backend_spec, open_runner

    spec = backend_spec(backend)
    if "onnx" in spec.artifact_kinds:
        from edgekit.export import export_onnx

        path = export_onnx(model, sample, tmp / f"{stem}.onnx", atol=1e-2, min_top1_agreement=0.0).path
        return open_runner(path, backend, threads=threads)
    return open_runner(model, backend, threads=threads)


def measure_speedup(base_runner, model: nn.Module, sample: np.ndarray, backend: str, threads: Optional[int],
                    rounds: int, tmp: Path, stem: str) -> Dict[str, float]:
    """Paired per-round speedup of ``model`` over ``base_runner`` (interleaved A B A B ... rounds)."""
    from edgekit.core.measure.latency import Case, paired_ratios, ratio_summary, run_interleaved

    runner = _open_timed(model, sample, backend, threads, tmp, stem)
    cases = [Case("base", base_runner, base_runner.prepare(sample)), Case(stem, runner, runner.prepare(sample))]
    res = run_interleaved(cases, warmup=5, min_time=0.25 * rounds, rounds=rounds, desc=f"time {stem}",
                          max_extra_rounds=0)
    med = res.round_medians
    out = ratio_summary(paired_ratios(med[0], med[1]))
    out["base_ms"], out["candidate_ms"] = float(np.median(med[0])), float(np.median(med[1]))
    runner.close()
    return out


def search_speed(prune_copy: Callable[[float], nn.Module], base_model: nn.Module, sample: np.ndarray, target: float,
                 s_max: float, backend: str, threads: Optional[int], rounds: int, iterations: int = 5
                 ) -> Tuple[float, List[dict]]:
    """Smallest ``s`` whose pruned copy is measured ``>= target`` times faster than ``base_model``.

    Every candidate is exported (ONNX backends) into a temporary directory and timed against the unpruned
    model as interleaved paired ratios; each candidate's measured speedup is recorded.

    Raises:
        ConfigError: the most-pruned candidate (``s_max``) misses the target.
    """
    history: List[dict] = []
    with tempfile.TemporaryDirectory(prefix="edgekit-prune-speed-") as d:
        tmp = Path(d)
        base = _open_timed(base_model, sample, backend, threads, tmp, "base")

        def speed(s: float, i: int) -> float:
            m = prune_copy(s)
            r = measure_speedup(base, m, sample, backend, threads, rounds, tmp, f"cand{i}")
            history.append({"ratio": round(s, 5), "speedup": round(r["speedup"], 4), "speedup_min": r["speedup_min"],
                            "speedup_max": r["speedup_max"], "base_ms": r["base_ms"],
                            "candidate_ms": r["candidate_ms"]})
            logger.info(f"prune: ratio {s:.3f} -> measured speedup {r['speedup']:.2f}x on {backend}")
            return r["speedup"]

        best = speed(s_max, 0)
        if best < target:
            raise ConfigError(f"speedup_target {target} is unreachable on {backend}: the most-pruned candidate "
                              f"(ratio {s_max:.2f}) measured {best:.2f}x; allowed: speedup_target <= {best:.2f} "
                              "here, or raise max_ratio / exclude fewer layers")
        lo, hi = 0.0, s_max
        for i in progress(range(1, iterations + 1), desc="prune: speed search", total=iterations):
            mid = 0.5 * (lo + hi)
            if speed(mid, i) >= target:
                hi = mid
            else:
                lo = mid
        base.close()
    return hi, history
