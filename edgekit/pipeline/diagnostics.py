""""Did it actually get faster?": compare every variant with its parent and name likely causes.

Also checks task-metric parity across artifacts of the same variant (PyTorch vs ONNX Runtime vs TensorRT ...).
What each backend wants (channel alignment, quantisation target, artifact kinds) comes from its BackendSpec.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import numpy as np


def _row(rows: List[dict], model: str, backend: str, batch: int) -> Optional[dict]:
    return next((r for r in rows if r["model"] == model and r["backend"] == backend and r["batch"] == batch), None)


def misaligned_channels(checkpoint: Optional[str], multiple: int = 8) -> List[str]:
    """Conv/Linear layers (not the stem input or the classifier output) whose channel counts are not multiples."""
    if not checkpoint or multiple <= 1:
        return []
    import torch

    payload = torch.load(checkpoint, map_location="cpu", weights_only=True)
    bad = []
    for name, s in payload.get("structure", {}).items():
        if s["type"] == "Conv2d" and s["out_channels"] % multiple and s["groups"] == 1:
            bad.append(f"{name}:{s['out_channels']}")
    return bad


def step_diagnostics(variants: Dict[str, Any], rows: List[dict], min_speedup: float = 1.1,
                     min_int8_coverage: float = 0.8) -> List[dict]:
    """One finding per (variant, backend) whose step from its parent did not pay off, with causes checked."""
    findings = []
    batches = sorted({r["batch"] for r in rows})
    for v in variants.values():
        if not v.parent or v.parent not in variants:
            continue
        for backend in sorted({r["backend"] for r in rows if r["model"] == v.name}):
            b1 = batches[0]
            child, parent = _row(rows, v.name, backend, b1), _row(rows, v.parent, backend, b1)
            if child is None or parent is None:
                continue
            step = _step_ratio(parent, child)
            coverage = v.meta.get("int8_mac_fraction")
            low_cov = coverage is not None and coverage < min_int8_coverage
            if step >= min_speedup and not low_cov:
                continue
            causes = _causes(v, variants[v.parent], backend, rows, batches, coverage, min_int8_coverage)
            findings.append({"variant": v.name, "parent": v.parent, "backend": backend, "batch": b1,
                             "step_speedup": round(step, 2), "int8_coverage": coverage, "causes": causes})
    return findings


def _step_ratio(parent: dict, child: dict) -> float:
    """How much faster ``child`` is than ``parent``: the ratio of their paired speedups (both measured against
    the baseline in the same interleaved rounds), falling back to the p50 ratio when a speedup is missing."""
    if parent.get("baseline"):
        parent = {**parent, "speedup": 1.0}
    if child.get("speedup") and parent.get("speedup"):
        return child["speedup"] / parent["speedup"]
    return parent["p50_ms"] / child["p50_ms"]


def _causes(v: Any, parent: Any, backend: str, rows: List[dict], batches: List[int], coverage: Optional[float],
            min_cov: float) -> List[str]:
    from edgekit.backends import backend_spec
    from edgekit.techniques.prune.config import default_round_to

    spec = backend_spec(backend)
    causes = []
    # the alignment pruning defaults to on this machine (16 on AVX-512 CPUs), not only the backend's declared one
    align, _ = default_round_to(backend)
    bad = misaligned_channels(v.checkpoint, align)
    if bad:
        causes.append(f"channel counts not multiples of {align}, the alignment {backend}'s kernels "
                      f"want here ({', '.join(bad[:4])}{'…' if len(bad) > 4 else ''})")
    target = v.recorded("target")
    if target and spec.quant_target and target != spec.quant_target:
        causes.append(f"QDQ flavour made for target '{target}' runs on {backend}, which wants target "
                      f"'{spec.quant_target}'; quantise with target: {spec.quant_target} for this backend")
    if coverage is not None and coverage < min_cov:
        causes.append(f"only {coverage:.0%} of MACs run in int8 (below {min_cov:.0%})")
    floats = v.meta.get("float_layers") or []
    if floats:
        causes.append(f"{len(floats)} layer(s) left in float: {', '.join(floats[:4])}")
    if len(batches) > 1:
        lo, hi = _row(rows, v.name, backend, batches[0]), _row(rows, v.name, backend, batches[-1])
        if lo and hi and hi["p50_ms"] / lo["p50_ms"] < 0.5 * batches[-1] / batches[0]:
            causes.append(f"call overhead dominates: latency grows only {hi['p50_ms'] / lo['p50_ms']:.1f}× from "
                          f"batch {batches[0]} to {batches[-1]} (a tiny model; larger batches amortise it)")
    if not causes:
        causes.append("no known cause found: the runtime may not have faster kernels for this change")
    return causes


def artifact_parity(variants: Dict[str, Any], x: np.ndarray, y: Optional[np.ndarray], backends: List[str],
                    threads: Optional[int]) -> List[dict]:
    """Accuracy and top-1 agreement of each variant's artifacts on the same held-out samples."""
    from edgekit.backends import backend_spec, open_runner
    from edgekit.bench.specs import variant_artifacts
    from edgekit.core.train import predict

    out = []
    for v in variants.values():
        preds: Dict[str, np.ndarray] = {}
        arts = variant_artifacts(v)
        for backend in dict.fromkeys(backends):
            spec = backend_spec(backend)
            kind = next((k for k in spec.artifact_kinds if k in arts), None)
            if kind is None or not spec.probe()[0]:
                continue
            with open_runner(arts[kind], backend, threads=threads) as runner:
                preds[backend] = predict(runner, x).argmax(1)
        if len(preds) < 2:
            continue
        names = list(preds)
        ref = preds[names[0]]
        row = {"variant": v.name, "artifacts": {}, "max_disagreement": 0.0}
        for n in names:
            agree = float(100.0 * (preds[n] == ref).mean())
            acc = float(100.0 * (preds[n] == y).mean()) if y is not None else None
            row["artifacts"][n] = {"accuracy": acc, "top1_agreement_vs_" + names[0]: agree}
            row["max_disagreement"] = max(row["max_disagreement"], 100.0 - agree)
        accs = [a["accuracy"] for a in row["artifacts"].values() if a["accuracy"] is not None]
        row["accuracy_spread"] = (max(accs) - min(accs)) if accs else None
        row["flagged"] = row["max_disagreement"] > 1.0 or (row["accuracy_spread"] or 0) > 1.0
        out.append(row)
    return out


def scratch_section(chosen: List[Any]) -> List[str]:
    """Report lines comparing each distilled or pruned variant with its architecture trained alone (same budget,
    no teacher) when the stage ran with ``compare_scratch: true``; empty otherwise."""
    rows = [(v.name, v.metrics.get("val_accuracy"), v.metrics["scratch_val_accuracy"]) for v in chosen
            if v.metrics.get("scratch_val_accuracy") is not None]
    if not rows:
        return []
    out = ["## With the teacher vs trained alone", "",
           "`compare_scratch: true`: the same architecture trained from fresh weights without a teacher, with the "
           "same epochs and optimiser; validation accuracy.", "",
           "| variant | with teacher (KD) | trained alone | KD − alone |", "|---|---|---|---|"]
    for name, kd, alone in rows:
        diff = f"{kd - alone:+.2f} pt" if kd is not None else "–"
        out.append(f"| {name} | {kd:.2f}% | {alone:.2f}% | {diff} |" if kd is not None
                   else f"| {name} | – | {alone:.2f}% | – |")
    return out + [""]
