"""Timing harness: warm-up, then variants interleaved in rounds (A B C A B C ...).

Each round times one block of iterations per case; the timer sees only ``runner.run_prepared(p)``
followed by ``runner.synchronize()`` (inputs are prepared once, outside). Every block starts with one
untimed iteration, so a thread pool left spinning or a cache left cold by the previous case does not
land on the next case's first timed iteration. Cases on a CUDA device are timed with CUDA events.

Comparisons use **per-round ratios**: the baseline's per-round latency divided by the case's in the same
round (by default each block's fastest iteration, see ``Interleaved.round_stat``), so machine drift
(another job starting, turbo, thermal) shifts both alike.

Example:
    >>> cases = [Case("a", runner_a, runner_a.prepare(x)), Case("b", runner_b, runner_b.prepare(x))]
    >>> res = run_interleaved(cases, warmup=5, iters=200, rounds=10)
    >>> r = res.round_stat("min")
    >>> paired_ratios(r[0], r[1])   # speedup of b over a, per round
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from edgekit._log import progress
from edgekit.errors import ConfigError

ROUND_STATS = {"min": np.min, "p25": lambda a: np.percentile(a, 25), "median": np.median}


@dataclass
class Case:
    """One thing to time: a runner and an input already placed where it reads it."""

    key: Any
    runner: Any
    prepared: Any
    device: str = "cpu"
    round_time_s: Optional[float] = None  # fixed time budget per round (reference cases such as the GEMM peak)


@dataclass
class Interleaved:
    """Per-case timings from ``run_interleaved``.

    ``times[i]`` lists case i's per-iteration milliseconds of each round; ``order`` is the sequence of
    case indices as blocks were run (for auditing the interleaving).
    """

    times: List[List[np.ndarray]]
    order: List[int] = field(default_factory=list)
    iters_per_round: List[int] = field(default_factory=list)
    reference: List[bool] = field(default_factory=list)  # True for fixed-budget reference cases (GEMM peak)
    adaptive: Optional[dict] = None  # with Precision: target, rounds run, widest relative CI half-width, met

    @property
    def round_medians(self) -> List[np.ndarray]:
        """Median latency (ms) of every round, per case."""
        return self.round_stat("median")

    def round_stat(self, stat: str = "min") -> List[np.ndarray]:
        """One latency (ms) per round and case, from the block's ``min``, ``p25`` or ``median``.

        ``min`` (the default for ratios) suits shared machines: contention only ever *adds* time
        (preemption, cache thrash), so a block's fastest iteration is the best estimate of the model's
        own cost; a block median flips whenever half the block was preempted. A minimum over more samples
        is luckier, so blocks are compared at equal sample size: with k the smallest block of the round
        (over the non-reference cases), a case's value is the median over consecutive k-iteration chunks
        of the chunk statistic. Reference cases (the GEMM peak) use their whole block.
        """
        fn = ROUND_STATS.get(stat)
        if fn is None:
            raise ConfigError(f"unknown per-round statistic '{stat}'; allowed: {', '.join(ROUND_STATS)}")
        reference = self.reference or [False] * len(self.times)
        compared = [i for i, ref in enumerate(reference) if not ref]
        out = [np.empty(len(rounds)) for rounds in self.times]
        for r in range(min((len(t) for t in self.times), default=0)):
            k = min((len(self.times[i][r]) for i in compared), default=1)
            for i, rounds in enumerate(self.times):
                block = rounds[r]
                if reference[i] or stat == "median" or len(block) <= k:
                    out[i][r] = float(fn(block))
                else:
                    n = len(block) // k
                    out[i][r] = float(np.median([fn(block[j * k:(j + 1) * k]) for j in range(n)]))
        return out

    def all_times(self, i: int) -> np.ndarray:
        """Every timed iteration (ms) of case ``i``, all rounds pooled."""
        return np.concatenate(self.times[i]) if self.times[i] else np.zeros(0)


def _cuda_events_usable(device: str) -> bool:
    if device == "cpu":
        return False
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def make_block_timer(case: Case) -> Callable[[int], np.ndarray]:
    """Return ``f(n) -> ms[n]`` timing n iterations of ``case`` (after one untimed iteration).

    CPU cases use ``time.perf_counter_ns``; CUDA cases use ``torch.cuda.Event`` pairs recorded around
    ``run_prepared`` + ``synchronize`` and read after one final synchronisation.
    """
    runner, prepared = case.runner, case.prepared
    run, sync = runner.run_prepared, runner.synchronize

    if _cuda_events_usable(case.device):
        import torch

        def cuda_block(n: int) -> np.ndarray:
            run(prepared)
            sync()
            events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
            for start, end in events:
                start.record()
                run(prepared)
                sync()
                end.record()
            torch.cuda.synchronize()
            return np.array([s.elapsed_time(e) for s, e in events], dtype=np.float64)

        return cuda_block

    clock = time.perf_counter_ns

    def cpu_block(n: int) -> np.ndarray:
        run(prepared)
        sync()
        out = np.empty(n, dtype=np.float64)
        for j in range(n):
            t0 = clock()
            run(prepared)
            sync()
            out[j] = clock() - t0
        return out / 1e6

    return cpu_block


def plan_iterations(est_ms: float, rounds: int, iters: Optional[int], min_time: Optional[float]) -> int:
    """Iterations per round for one case: ``iters`` split over rounds, or enough to fill ``min_time``."""
    if iters is not None:
        return max(1, math.ceil(iters / rounds))
    per_round_s = (min_time or 0.0) / rounds
    return max(1, math.ceil(per_round_s * 1000.0 / max(est_ms, 1e-6)))


def validate_settings(warmup: int, iters: Optional[int], min_time: Optional[float], rounds: int) -> None:
    """Raise ConfigError for non-positive or conflicting timing settings."""
    if iters is not None and min_time is not None:
        raise ConfigError("give either iters (--iters) or min_time (--min-time), not both")
    if not isinstance(warmup, int) or warmup < 0:
        raise ConfigError(f"warmup must be an integer >= 0, got {warmup!r}")
    if iters is not None and (not isinstance(iters, int) or iters < 1):
        raise ConfigError(f"iters must be a positive integer, got {iters!r}")
    if min_time is not None and not (isinstance(min_time, (int, float)) and min_time > 0):
        raise ConfigError(f"min_time must be a positive number of seconds, got {min_time!r}")
    if not isinstance(rounds, int) or rounds < 1:
        raise ConfigError(f"rounds must be a positive integer, got {rounds!r}")


@dataclass(frozen=True)
class Precision:
    """Adaptive rounds: keep adding rounds until every case's speed-up (vs case 0) has a 95 % CI whose half-width is
    at most ``ci_target`` of its median, or ``max_rounds`` rounds or ``max_seconds`` of timing are reached."""

    ci_target: float = 0.05
    max_rounds: int = 60
    max_seconds: float = 120.0


def ci_half_widths(res: Interleaved, stat: str = "min") -> List[float]:
    """Relative half-width of the 95 % CI of each non-reference case's per-round ratio against case 0."""
    per_round = res.round_stat(stat)
    out = []
    for i in range(1, len(per_round)):
        if res.reference and res.reference[i]:
            continue
        r = paired_ratios(per_round[0], per_round[i])
        ci = ratio_ci(list(r))
        med = float(np.median(r)) if r.size else 0.0
        out.append(float("inf") if ci is None or med <= 0 else (ci[1] - ci[0]) / 2 / med)
    return out


def run_interleaved(cases: Sequence[Case], warmup: int = 10, iters: Optional[int] = None,
                    min_time: Optional[float] = 1.0, rounds: int = 20, desc: str = "bench",
                    max_extra_rounds: Optional[int] = None, precision: Optional[Precision] = None) -> Interleaved:
    """Warm every case up, then time them interleaved: round r runs case 0, 1, ..., n-1 in turn.

    Args:
        cases: what to time; all share the rounds.
        warmup: untimed iterations per case before the first round.
        iters: total timed iterations per case (split evenly over rounds); exclusive with ``min_time``.
        min_time: minimum total timed seconds per case; iterations per round are sized from the
            warm-up, and extra rounds (at most ``max_extra_rounds``, default ``rounds``) run while a
            case is still short of it.
        rounds: number of rounds (each yields one paired ratio); with ``precision``, the least.
        desc: progress-bar label.
        precision: adaptive rounds (:class:`Precision`): more rounds until every speed-up's CI is narrow enough
            or a cap is hit; ``res.adaptive`` records what happened.

    Example:
        >>> res = run_interleaved(cases, warmup=3, iters=50, rounds=5)
        >>> res.order[:4]            # [0, 1, 0, 1] for two cases
    """
    validate_settings(warmup, iters, min_time, rounds)
    if not cases:
        return Interleaved(times=[])
    timers = [make_block_timer(c) for c in cases]
    estimates = [float(np.median(timer(max(1, warmup)))) for timer in timers]  # warm-up doubles as the estimate
    per_round = [math.ceil(c.round_time_s * 1000.0 / max(e, 1e-6)) if c.round_time_s
                 else plan_iterations(e, rounds, iters, min_time) for c, e in zip(cases, estimates)]
    res = Interleaved(times=[[] for _ in cases], iters_per_round=per_round,
                      reference=[bool(c.round_time_s) for c in cases])

    def one_round() -> None:
        for i, timer in enumerate(timers):
            res.order.append(i)
            res.times[i].append(timer(per_round[i]))

    for _ in progress(range(rounds), desc=desc, total=rounds):
        one_round()
    if iters is None and min_time:
        extra = rounds if max_extra_rounds is None else max_extra_rounds
        timed = [i for i, c in enumerate(cases) if not c.round_time_s] or [0]
        while extra > 0 and min(res.all_times(i).sum() for i in timed) < min_time * 1000 * (1 - 1e-9):
            one_round()
            extra -= 1
    if precision is not None and len(cases) > 1:
        t0 = time.perf_counter()
        while (max(ci_half_widths(res), default=0.0) > precision.ci_target and len(res.times[0]) < precision.max_rounds
               and time.perf_counter() - t0 < precision.max_seconds):
            one_round()
        widest = max(ci_half_widths(res), default=0.0)
        res.adaptive = {"ci_target": precision.ci_target, "rounds": len(res.times[0]),
                        "widest_ci_half_width": round(widest, 4), "met": widest <= precision.ci_target}
    return res


def paired_ratios(base_round_ms: np.ndarray, case_round_ms: np.ndarray) -> np.ndarray:
    """Per-round speedups ``base / case`` of two cases timed in the same rounds (>1: case is faster).

    Example:
        >>> paired_ratios(np.array([10., 12.]), np.array([5., 4.]))
        array([2., 3.])
    """
    base, case = np.asarray(base_round_ms, float), np.asarray(case_round_ms, float)
    if base.shape != case.shape:
        raise ValueError(f"paired ratios need the same rounds, got {base.shape} and {case.shape}")
    return base / case


def summarize(ms: np.ndarray, batch: int) -> Dict[str, float]:
    """Latency statistics (ms) and throughput (samples/s) of pooled per-iteration times.

    Example:
        >>> summarize(np.array([1.0, 2.0, 3.0]), batch=8)["p50_ms"]
        2.0
    """
    ms = np.asarray(ms, float)
    if ms.size == 0:
        raise ValueError("no timings to summarise")
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    mean = float(ms.mean())
    return {"p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99), "mean_ms": mean,
            "std_ms": float(ms.std(ddof=1)) if ms.size > 1 else 0.0, "min_ms": float(ms.min()),
            "iters": int(ms.size), "throughput": batch * 1000.0 / mean}


CI_LEVEL = 0.95


def ratio_ci(ratios: Optional[Sequence[float]], level: float = CI_LEVEL, resamples: int = 2000) -> Optional[tuple]:
    """Bootstrap percentile interval of the median of paired per-round ratios (None with fewer than 3 rounds).

    Seeded, so the same rounds always give the same interval.

    Example:
        >>> lo, hi = ratio_ci([2.0, 2.1, 1.9, 2.05, 1.95])
        >>> lo <= 2.0 <= hi
        True
    """
    r = np.asarray([v for v in ratios or [] if v is not None and np.isfinite(v)], float)
    if r.size < 3:
        return None
    rng = np.random.default_rng(0)
    meds = np.median(r[rng.integers(0, r.size, size=(resamples, r.size))], axis=1)
    lo, hi = np.quantile(meds, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def ratio_summary(ratios: np.ndarray) -> Dict[str, Any]:
    """Median, min and max of per-round ratios (the spread a reviewer asks for) and the median's 95 % bootstrap
    confidence interval (``speedup_ci``: [low, high], None with fewer than 3 rounds)."""
    r = np.asarray(ratios, float)
    ci = ratio_ci(list(r))
    return {"speedup": float(np.median(r)), "speedup_min": float(r.min()), "speedup_max": float(r.max()),
            "speedup_ci": [round(ci[0], 4), round(ci[1], 4)] if ci else None,
            "speedup_rounds": [round(float(v), 4) for v in r]}
