"""Backends compared on the same file: paired per-round ratios from one interleaved benchmark.

Every row of a benchmark carries its per-round speedups against the same baseline, measured in the same
rounds. For two backends that ran the same artifact, the ratio of their per-round speedups is the ratio of
their per-round latencies (``s_b / s_ref = ref_ms / b_ms`` round by round), so machine drift cancels as it
does for the speedups. The speedups are stored rounded to 4 decimals: < 0.1% error for speedups >= 0.05.

Rule: each backend is compared with the reference backend (default: the default ONNX backend on the CPU,
``ort-cpu``) on every (model, batch) where both ran the same artifact file; ratio > 1 means the backend is
faster than the reference.

Example:
    >>> for p in backend_pairs(result.rows):
    ...     print(p["model"], p["batch"], p["backend"], f"{p['ratio']:.2f}×")
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np


def backend_pairs(rows: Sequence[dict], reference: Optional[str] = None) -> List[dict]:
    """One entry per (model, batch, backend) whose artifact the ``reference`` backend also ran.

    Returns:
        ``[{"model", "batch", "backend", "reference", "artifact", "ratio", "ratio_min", "ratio_max",
        "ratio_rounds"}]`` in row order; ``ratio`` is the median per-round ``reference_ms / backend_ms``.
    """
    if reference is None:
        from edgekit.backends import default_backend

        reference = default_backend("onnx", "cpu")
    refs: Dict[Tuple[str, int], dict] = {(r["model"], r["batch"]): r for r in rows if r["backend"] == reference}
    out = []
    for r in rows:
        ref = refs.get((r["model"], r["batch"]))
        if r["backend"] == reference or ref is None or ref.get("artifact") != r.get("artifact"):
            continue
        mine, theirs = r.get("speedup_rounds") or [], ref.get("speedup_rounds") or []
        if not mine or len(mine) != len(theirs):
            continue
        ratios = np.asarray(mine, float) / np.asarray(theirs, float)
        out.append({"model": r["model"], "batch": r["batch"], "backend": r["backend"], "reference": reference,
                    "artifact": r.get("artifact"), "ratio": float(np.median(ratios)), "ratio_min": float(ratios.min()),
                    "ratio_max": float(ratios.max()), "ratio_rounds": [round(float(v), 4) for v in ratios]})
    return out


def format_ratio(pair: dict) -> str:
    """``1.32× (1.20–1.41)``: median per-round ratio and its min–max."""
    return f"{pair['ratio']:.2f}× ({pair['ratio_min']:.2f}–{pair['ratio_max']:.2f})"


__all__ = ["backend_pairs", "format_ratio"]
