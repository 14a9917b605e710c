"""Which variants may be the headline: confidence intervals on paired ratios, INT8 steps slower than their float
parent (per backend), accuracy drops beyond the recipe's budget, chance-level accuracy, and the recipe's per-batch
speed-up gate (``report.gate_speedup``). Used by the run report (:mod:`edgekit.pipeline.report`) and by
``edgekit run --gate``.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

from edgekit.core.measure.latency import CI_LEVEL, ratio_ci
from edgekit.pipeline.stages import Variant

__all__ = ["CI_LEVEL", "format_ratio_ci", "format_speedup_ci", "gate_failures", "measured_efficiency", "ratio_ci",
           "slower_than_parent", "step_ratios", "variant_flags"]

def format_ratio_ci(median: Optional[float], ratios: Optional[List[float]]) -> str:
    """``2.00× [95% CI 1.95–2.05]`` (or ``2.00× (n<3 rounds, no CI)``)."""
    if median is None:
        return "–"
    ci = ratio_ci(ratios)
    if ci is None:
        return f"{median:.2f}× (no CI: < 3 rounds)"
    return f"{median:.2f}× [{CI_LEVEL:.0%} CI {ci[0]:.2f}–{ci[1]:.2f}]"


def format_speedup_ci(row: dict) -> str:
    """A row's speedup over the baseline with its confidence interval; the baseline reads ``1.00× (baseline)``."""
    if row.get("baseline"):
        return "1.00× (baseline)"
    return format_ratio_ci(row.get("speedup"), row.get("speedup_rounds"))


def measured_efficiency(row: dict) -> Optional[str]:
    """The efficiency cell: a percentage, or why it is a failed measurement (above 100 % of the measured peak, or a
    zero / missing peak). None when the row has no efficiency."""
    eff, peak = row.get("efficiency"), row.get("peak_gops")
    if eff is None:
        return None
    if not peak or peak <= 0:
        return "failed (peak 0)"
    if eff > 1.0:
        return "failed (> 100% of peak)"
    return f"{eff:.0%}"


def step_ratios(rows: List[dict], child: str, parent: str) -> List[dict]:
    """Per backend and batch: the child's paired speedup over its parent (per-round ratios parent / child, from the
    same rounds, so the baseline cancels), with its CI."""
    out = []
    by_key = {(r["model"], r["backend"], r["batch"]): r for r in rows}
    for r in rows:
        if r["model"] != child:
            continue
        p = by_key.get((parent, r["backend"], r["batch"]))
        if p is None or not r.get("speedup_rounds") or not p.get("speedup_rounds"):
            continue
        rounds = [c / b for c, b in zip(r["speedup_rounds"], p["speedup_rounds"]) if b]
        if not rounds:
            continue
        rounds.sort()
        med = rounds[len(rounds) // 2] if len(rounds) % 2 else 0.5 * (rounds[len(rounds) // 2 - 1]
                                                                      + rounds[len(rounds) // 2])
        out.append({"backend": r["backend"], "batch": r["batch"], "ratio": med, "ci": ratio_ci(rounds),
                    "rounds": rounds})
    return out


def variant_flags(chosen: List[Variant], rows: List[dict], labelled: bool, num_classes: Optional[int],
                  max_drop: float = 5.0, speed: bool = True) -> Dict[str, List[str]]:
    """{variant: [reasons it must not headline]}: INT8 slower than its float parent at some backend and batch
    (``speed``; :func:`slower_than_parent` keeps these per backend), an accuracy drop beyond ``max_drop`` points
    (the recipe's ``report.max_accuracy_drop``), accuracy at chance."""
    base = next((r for r in rows if r.get("baseline")), None)
    flags: Dict[str, List[str]] = {v.name: [] for v in chosen}
    for (name, _), why in (slower_than_parent(chosen, rows) if speed else {}).items():
        flags[name] += why
    for v in chosen:
        accs = [r["accuracy"] for r in rows if r["model"] == v.name and r.get("accuracy") is not None]
        if not labelled or not accs:
            continue
        acc = min(accs)
        if base is not None and base.get("accuracy") is not None and base["accuracy"] - acc > max_drop:
            flags[v.name].append(f"accuracy {acc:.1f}% is {base['accuracy'] - acc:.1f} pt below the baseline "
                                 f"(allowed {max_drop:g})")
        if num_classes and acc <= 100.0 / num_classes + 5.0:
            flags[v.name].append(f"accuracy {acc:.1f}% is at chance ({100.0 / num_classes:.1f}% for "
                                 f"{num_classes} classes): the model did not learn")
    return flags


def slower_than_parent(chosen: List[Variant], rows: List[dict]) -> Dict[Tuple[str, str], List[str]]:
    """{(variant, backend): [why]} for INT8 variants slower than their float parent on that backend at some
    benchmarked batch: such a variant never headlines on that backend (it may still on another)."""
    names = {v.name: v for v in chosen}
    out: Dict[Tuple[str, str], List[str]] = {}
    for v in chosen:
        parent = names.get(v.parent) if v.parent else None
        if v.meta.get("precision") == "int8" and parent is not None and parent.meta.get("precision") != "int8":
            for s in step_ratios(rows, v.name, parent.name):
                if s["ratio"] < 1.0:
                    out.setdefault((v.name, s["backend"]), []).append(
                        f"INT8 slower than its float parent {parent.name} on {s['backend']} at batch {s['batch']}: "
                        f"{format_ratio_ci(s['ratio'], s['rounds'])}")
    return out


def gate_failures(rows: List[dict], gate_speedup: Dict[int, float]) -> Dict[Tuple[str, str], List[str]]:
    """{(variant, backend): [why]} for variants below the recipe's per-batch speed-up gate over the float baseline
    on that backend (a batch that was not benchmarked fails the gate: it was asked for)."""
    out: Dict[Tuple[str, str], List[str]] = {}
    if not gate_speedup:
        return out
    for m, backend in dict.fromkeys((r["model"], r["backend"]) for r in rows if not r.get("baseline")):
        by_batch = {r["batch"]: r for r in rows if r["model"] == m and r["backend"] == backend}
        for b, need in sorted(gate_speedup.items()):
            got = by_batch.get(b, {}).get("speedup")
            if got is None:
                out.setdefault((m, backend), []).append(f"no speed-up measured at batch {b} (gate {need:g}×)")
            elif got < need:
                out.setdefault((m, backend), []).append(f"{got:.2f}× at batch {b}, below the gate's {need:g}×")
    return out


