"""Benchmark step 2, the run: time every planned case interleaved in rounds, with the GEMM peak in the same rounds.

Example:
    >>> timings, gpu_peak = run_plan(plan, [1, 8], warmup=10, iters=None, min_time=1.0, rounds=20)
    >>> timings[0].per_round[0]     # one latency (ms) per round of the first case at batch 1
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np

from edgekit.bench.plan import BenchPlan
from edgekit.core.measure.latency import Case, Precision, run_interleaved

PEAK_ROUND_S = 0.02  # seconds of GEMM per round and precision


@dataclass
class BatchTiming:
    """One batch size: per-round and pooled latencies (ms) per planned case, and the GEMM peak per round."""

    batch: int
    per_round: List[np.ndarray]  # per case in plan order: one latency per round (see round_stat)
    pooled: List[np.ndarray]  # per case in plan order: every timed iteration
    peak_gops: Dict[str, np.ndarray]  # per GEMM precision: GOP/s in each round
    adaptive: Optional[dict] = None  # with a Precision: CI target, rounds run, widest relative half-width, met


def run_plan(plan: BenchPlan, batches: List[int], warmup: int, iters: Optional[int], min_time: Optional[float],
             rounds: int, round_stat: str = "min", precision: Optional[Precision] = None
             ) -> Tuple[List[BatchTiming], Optional[dict]]:
    """Time the plan's cases at every batch size; returns the timings and the GPU GEMM peak (None without GPU cases).

    CPU cases are interleaved with ONNX Runtime GEMM probes (fp32, int8) timed for ``PEAK_ROUND_S`` per round,
    so every case's efficiency is judged against the peak of its own round.
    """
    from edgekit.bench.peak import GemmProbe, measure_gpu_peak

    devices = [plan.meta[k]["device"] for k in plan.keys]
    probes = {p: GemmProbe(p, None, plan.threads) for p in ("fp32", "int8")} if "cpu" in devices else {}
    try:
        peak_gpu = measure_gpu_peak() if any(d != "cpu" for d in devices) else None
        timings = [_time_batch(plan, batch, probes, warmup, iters, min_time, rounds, round_stat, precision)
                   for batch in batches]
    finally:
        for probe in probes.values():
            probe.close()
    return timings, peak_gpu


def _time_batch(plan: BenchPlan, batch: int, probes: dict, warmup: int, iters: Optional[int],
                min_time: Optional[float], rounds: int, round_stat: str,
                precision: Optional[Precision] = None) -> BatchTiming:
    keys = plan.keys
    cases = [Case(k, plan.runners[k], plan.runners[k].prepare(plan.sample(k, batch)), plan.meta[k]["device"])
             for k in keys]
    cases += [Case(("__peak__", p), g, g.prepared, "cpu", round_time_s=PEAK_ROUND_S) for p, g in probes.items()]
    res = run_interleaved(cases, warmup=warmup, iters=iters, min_time=min_time, rounds=rounds,
                          desc=f"bench batch={batch}", precision=precision)
    per_round = res.round_stat(round_stat)  # one latency per round and case
    peaks = {p: np.array([g.gops(ms) for ms in per_round[len(keys) + j]]) for j, (p, g) in enumerate(probes.items())}
    return BatchTiming(batch, per_round[:len(keys)], [res.all_times(i) for i in range(len(keys))], peaks,
                       res.adaptive)


__all__ = ["BatchTiming", "PEAK_ROUND_S", "run_plan"]
