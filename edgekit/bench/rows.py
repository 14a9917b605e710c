"""Benchmark step 3, the rows: one result row per model x backend x batch, and the CPU GEMM peak summary.

Every derived number uses the same per-round latency: GOP/s and % peak (the peak of the same round) and the
speedups (per-round ratios against the baseline), so they agree with each other.

Example:
    >>> rows = batch_rows(plan, timing, base_key=plan.keys[0], macs=plan.macs(), accuracy={}, peak_gpu=None)
    >>> rows[1]["speedup"], rows[1]["efficiency"]
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np

from edgekit.bench.plan import BenchPlan, Key
from edgekit.bench.run import BatchTiming
from edgekit.core.measure.accuracy import paired_accuracy_difference
from edgekit.core.measure.latency import paired_ratios, ratio_summary, summarize

GPU_PEAK_KEY = {"int8": "int8_gops", "fp16": "fp16_gops", "bf16": "fp16_gops"}


def batch_rows(plan: BenchPlan, timing: BatchTiming, base_key: Key, macs: Dict[str, tuple], accuracy: Dict[Key, float],
               peak_gpu: Optional[dict]) -> List[dict]:
    """The rows of one batch size, in plan order, each with its paired speedup against ``base_key``."""
    keys = plan.keys
    base = timing.per_round[keys.index(base_key)]
    rows = []
    for i, key in enumerate(keys):
        row = _row(plan, key, timing, i, macs.get(key[0], (None, None, "")), peak_gpu)
        row["baseline"] = key == base_key
        row["accuracy"] = accuracy.get(key)
        correct = plan.correct
        if key != base_key and key in correct and base_key in correct:
            row.update(paired_accuracy_difference(correct[key], correct[base_key]))
        row.update(ratio_summary(paired_ratios(base, timing.per_round[i])))
        rows.append(_ordered(row))
    return rows


_ORDER = ("model", "backend", "batch", "baseline", "precision", "device", "threads", "artifact", "warning", "rounds")


def _ordered(row: dict) -> dict:
    """The row's keys in the schema's order (identification first, as bench.json has always listed them)."""
    return {**{k: row[k] for k in _ORDER}, **{k: v for k, v in row.items() if k not in _ORDER}}


def _row(plan: BenchPlan, key: Key, timing: BatchTiming, i: int, macs: tuple, peak_gpu: Optional[dict]) -> dict:
    m, batch, per_round = plan.meta[key], timing.batch, timing.per_round[i]
    total, int8 = macs[0], macs[1]
    row = {"model": key[0], "backend": key[1], "batch": batch, "precision": m["precision"], "device": m["device"],
           "threads": m["threads"], "artifact": m["artifact"], "warning": m.get("warning"), "rounds": len(per_round),
           **summarize(timing.pooled[i], batch),
           "size_bytes": m["size_bytes"], "mem_delta_mb": m["mem_delta_mb"], "macs": total, "int8_macs": int8}
    row["round_ms"] = float(np.median(per_round))
    achieved = 2.0 * total * batch / (per_round / 1e3) / 1e9 if total else None
    row["gops"] = float(np.median(achieved)) if total else None
    row["peak_gops"], row["efficiency"] = None, None
    if m["device"] == "cpu" and timing.peak_gops and total:
        # paired like the speedups: achieved / peak in the same round, median over rounds
        pr = timing.peak_gops["int8" if m["precision"] == "int8" else "fp32"]
        row["peak_gops"], row["efficiency"] = float(np.median(pr)), float(np.median(achieved / pr))
    elif m["device"] != "cpu" and peak_gpu and row["gops"]:
        pk = peak_gpu.get(GPU_PEAK_KEY.get(m["precision"], "fp32_gops"))
        row["peak_gops"], row["efficiency"] = pk, (row["gops"] / pk if pk else None)
    return row


def peak_summary(timings: Sequence[BatchTiming], threads: int) -> Optional[dict]:
    """Median (and max) CPU GEMM peak over every round of every batch; None when no CPU case was timed."""
    from edgekit.bench.peak import PEAK_SIZES

    rounds: Dict[str, List[float]] = {}
    for t in timings:
        for p, vals in t.peak_gops.items():
            rounds.setdefault(p, []).extend(vals.tolist())
    if not rounds:
        return None
    out = {"sizes": dict(PEAK_SIZES), "threads": threads,
           "method": f"ONNX Runtime MatMul (fp32, {PEAK_SIZES['fp32']}^3) / MatMulInteger (u8 x s8, "
                     f"{PEAK_SIZES['int8']}^3), timed in every round between the variants; median (and max) of the "
                     "per-round values"}
    for p, vals in rounds.items():
        out[f"{p}_gops"] = round(float(np.median(vals)), 1) if vals else None
        out[f"{p}_gops_max"] = round(float(np.max(vals)), 1) if vals else None
    return out


__all__ = ["GPU_PEAK_KEY", "batch_rows", "peak_summary"]
