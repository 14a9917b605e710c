"""Search outputs: the trials table, the Pareto front re-measured on the test split, the chosen model and its recipe.

Example:
    >>> rows = trial_rows(study, setup)
    >>> front = pareto_rows(rows)
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from edgekit._io import write_json_atomic, write_text_atomic

CSV_COLUMNS = ["trial", "state", "fidelity", "val_accuracy", "accuracy_drop", "latency_ratio", "latency_ms",
               "size_mb", "feasible", "failed_constraints", "seconds", "cached_stages", "params", "artifact", "error"]


def trial_rows(study: Any, setup: Any) -> List[dict]:
    """One row per trial: its config, the fidelity it reached, its metrics, feasibility and time (a configuration
    drawn again is answered from its earlier trial and has no row of its own)."""
    rows, dims = [], {d.path: d for d in setup.dims}
    for t in study.get_trials(deepcopy=False):
        if "duplicate_of" in t.user_attrs:
            continue
        m = t.user_attrs.get("metrics") or {}
        excess = t.user_attrs.get("excess") or {}
        failed = sorted(k for k, v in excess.items() if v > 0)
        rungs = [t.user_attrs[k] for k in sorted(t.user_attrs) if k.startswith("rung")]
        params = {k: dims[k].tidy(v) if k in dims else v for k, v in t.params.items()}
        rows.append({
            "trial": t.number, "state": t.state.name.lower(), "params": params,
            "fidelity": m.get("fidelity"), "val_accuracy": m.get("val_accuracy"),
            "teacher_val_accuracy": m.get("teacher_val_accuracy"), "accuracy_drop": m.get("accuracy_drop"),
            "latency_ratio": m.get("latency_ratio"), "latency_ms": m.get("latency_ms"), "size_mb": m.get("size_mb"),
            "feasible": bool(m) and not failed, "failed_constraints": failed, "excess": excess,
            "seconds": round(sum(r.get("wall_s", 0.0) for r in rungs), 2),
            "cached_stages": sum(r.get("cached_stages", 0) for r in rungs),
            "rungs": [{k: r.get(k) for k in ("fidelity", "val_accuracy", "latency_ratio", "score", "wall_s")}
                      for r in rungs],
            "artifact": m.get("artifact"), "baseline_artifact": m.get("baseline_artifact"),
            "error": t.user_attrs.get("error"),
            "requeued_from": t.user_attrs.get("requeued_from"),
            "from_recipe": bool(t.user_attrs.get("from_recipe")),
        })
    return rows


def write_tables(rows: List[dict], search_dir: Path, extra: Optional[dict] = None) -> None:
    """search.json (every field) and search.csv (one line per trial)."""
    write_json_atomic(search_dir / "search.json", {"schema": "edgekit-search/1", "trials": rows, **(extra or {})})
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({**r, "params": ";".join(f"{k}={v}" for k, v in r["params"].items()),
                    "failed_constraints": ";".join(r["failed_constraints"])})
    write_text_atomic(search_dir / "search.csv", buf.getvalue())


def full_fidelity(rows: List[dict]) -> List[dict]:
    """Completed trials measured at full fidelity."""
    return [r for r in rows if r["state"] == "complete" and r["fidelity"] == 1.0 and r["latency_ratio"] is not None]


def pareto_rows(rows: List[dict]) -> List[dict]:
    """Full-fidelity trials not dominated in (lower latency ratio, higher validation accuracy), one per artifact,
    plus the fastest trial that meets every constraint when trials missing a size or latency limit dominate it."""
    from edgekit.bench.plots import pareto_front

    seen, unique = set(), []
    for r in sorted(full_fidelity(rows), key=lambda r: r["trial"]):
        if r["artifact"] not in seen:
            seen.add(r["artifact"])
            unique.append(r)
    idx = pareto_front([(r["latency_ratio"], r["val_accuracy"]) for r in unique])
    front = [unique[i] for i in idx]
    feasible = [r for r in unique if r["feasible"]]
    fastest = min(feasible, key=lambda r: r["latency_ratio"]) if feasible else None
    if fastest is not None and fastest not in front:  # dominated only by trials that miss a size/latency limit
        front.append(fastest)
    return front


def closest_trials(rows: List[dict], n: int = 3) -> List[dict]:
    """The measured trials that missed the constraints by the least (sum of relative excesses)."""
    measured = [r for r in rows if r["excess"]]
    return sorted(measured, key=lambda r: sum(max(0.0, v) for v in r["excess"].values()))[:n]


def remeasure(front: List[dict], compare: Dict[str, str], setup: Any, rounds: int) -> List[dict]:
    """Time the Pareto set (+ compared artifacts) together with the float baseline on the test split, with CIs.

    Latency: one interleaved run of every artifact and the baseline; each ratio is the median per-round
    ``candidate_ms / baseline_ms`` with a bootstrap 95% CI. Accuracy: test split through the same backend, with a
    Wilson 95% interval.
    """
    from edgekit.data import load_data
    from edgekit.search.locks import timing_slot
    from edgekit.search.measure import accuracy, bootstrap_ci, pair_x, size_mb, time_paired, wilson_ci

    obj, m = setup.config.objective, setup.config.measure
    entries = [{"name": f"trial {r['trial']}", "trial": r["trial"], "artifact": r["artifact"]} for r in front]
    entries += [{"name": name, "trial": None, "artifact": str(path)} for name, path in compare.items()]
    base = front[0]["baseline_artifact"] if front else None
    if base is None:
        return []
    splits = load_data(setup.recipe.data, setup.recipe.seed)
    x = pair_x(splits.test, obj.batch)
    with timing_slot(setup.lock_dir):
        times = time_paired([base] + [e["artifact"] for e in entries], obj.backend, x, setup.recipe.threads,
                            rounds, m.warmup, max(m.min_time, 0.1 * rounds / 5), m.warmup_s)
    teacher_acc = accuracy(base, obj.backend, splits.test, setup.recipe.threads)
    n = len(splits.test.x)
    out = []
    for e, ms in zip(entries, times[1:]):
        ratios = ms / times[0]
        acc = accuracy(e["artifact"], obj.backend, splits.test, setup.recipe.threads)
        ratio_ci = bootstrap_ci(ratios)
        out.append({**e, "test_accuracy": round(acc, 2), "test_accuracy_ci": wilson_ci(acc, n),
                    "teacher_test_accuracy": round(teacher_acc, 2), "test_accuracy_drop": round(teacher_acc - acc, 2),
                    "latency_ratio": round(float(np.median(ratios)), 4), "latency_ratio_ci": ratio_ci,
                    "latency_ms": round(float(np.median(ms)), 4), "baseline_ms": round(float(np.median(times[0])), 4),
                    "ratio_rounds": [round(float(v), 4) for v in ratios], "size_mb": round(size_mb(e["artifact"]), 4)})
    return out


def paired_vs(final: List[dict], a: str, b: str) -> Optional[dict]:
    """``a`` vs ``b`` from the same rounds: median per-round latency ratio a/b with a bootstrap 95% CI."""
    from edgekit.search.measure import bootstrap_ci

    by = {e["name"]: e for e in final}
    if a not in by or b not in by:
        return None
    r = np.asarray(by[a]["ratio_rounds"]) / np.asarray(by[b]["ratio_rounds"])
    return {"a": a, "b": b, "ratio": round(float(np.median(r)), 4), "ci": [round(v, 4) for v in bootstrap_ci(r)],
            "rounds": len(r)}


__all__ = ["closest_trials", "full_fidelity", "paired_vs", "pareto_rows", "remeasure", "trial_rows",
           "write_tables"]
