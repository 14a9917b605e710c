"""PNG plots of a benchmark result (matplotlib, headless 'Agg'; imported only when plotting).

Example:
    >>> write_plots(result, "bench_out")    # {'latency': .../latency.png, 'throughput': ..., 'pareto': ...}
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from edgekit._io import atomic_path


def pareto_front(points: Sequence[Tuple[float, float]]) -> List[int]:
    """Indices of points not dominated in (lower latency, higher accuracy), sorted by latency.

    Example:
        >>> pareto_front([(1.0, 90.0), (2.0, 95.0), (3.0, 94.0)])
        [0, 1]
    """
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    return path


def plot_latency(result, path: Path) -> Path:
    """Bars at p50 with whiskers up to p99, per model/backend, one colour per batch size."""
    plt = _pyplot()
    rows = result.ordered_rows()
    models = list(dict.fromkeys(r["model"] for r in result.rows))  # group each model's backends side by side
    backends = list(dict.fromkeys(r["backend"] for r in result.rows))
    present = {(r["model"], r["backend"]) for r in rows}
    labels = [f"{m}\n{b}" for m in models for b in backends if (m, b) in present]
    batches = sorted({r["batch"] for r in rows})
    width = 0.8 / len(batches)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(labels) * max(1, len(batches) / 1.5)), 3.6))
    for j, b in enumerate(batches):
        by_label = {f"{r['model']}\n{r['backend']}": r for r in rows if r["batch"] == b}
        xs = [i + (j - (len(batches) - 1) / 2) * width for i, lab in enumerate(labels) if lab in by_label]
        rs = [by_label[lab] for lab in labels if lab in by_label]
        p50 = [r["p50_ms"] for r in rs]
        ax.bar(xs, p50, width, label=f"batch {b}",
               yerr=[[0] * len(rs), [r["p99_ms"] - r["p50_ms"] for r in rs]], capsize=3)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_ylabel("latency per batch, ms (bar p50, whisker p99)")
    if len(batches) > 1:
        ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title("Latency")
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


def plot_throughput(result, path: Path) -> Path:
    """Throughput (samples/s) against batch size, one line per model/backend."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    series: Dict[str, list] = {}
    for r in result.rows:
        series.setdefault(f"{r['model']} / {r['backend']}", []).append((r["batch"], r["throughput"]))
    for name, pts in series.items():
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
    batches = sorted({r["batch"] for r in result.rows})
    ax.set_xscale("log", base=2)
    ax.set_xticks(batches)
    ax.set_xticklabels([str(b) for b in batches])
    values = [r["throughput"] for r in result.rows if r["throughput"] > 0]
    if values and max(values) / min(values) > 20:
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax.xaxis.set_minor_formatter(plt.NullFormatter())
    ax.set_xlabel("batch size")
    ax.set_ylabel("samples / s")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_title("Throughput vs batch size")
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


def plot_pareto(result, path: Path) -> Path:
    """Accuracy vs p50 latency at the smallest batch; the Pareto front is drawn and its points ringed."""
    plt = _pyplot()
    b = min(r["batch"] for r in result.rows)
    rows = [r for r in result.rows if r["batch"] == b and r.get("accuracy") is not None]
    pts = [(r["p50_ms"], r["accuracy"]) for r in rows]
    front = pareto_front(pts)
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.scatter([p[0] for p in pts], [p[1] for p in pts], color="tab:blue", zorder=3)
    for r, (x, y) in zip(rows, pts):
        ax.annotate(f"{r['model']} / {r['backend']}", (x, y), fontsize=7, xytext=(4, 3), textcoords="offset points")
    fx, fy = [pts[i][0] for i in front], [pts[i][1] for i in front]
    ax.step(fx, fy, where="post", color="tab:red", alpha=0.7, label="Pareto front")
    ax.scatter(fx, fy, s=120, facecolors="none", edgecolors="tab:red", zorder=4)
    ax.set_xlabel(f"p50 latency at batch {b}, ms")
    ax.set_ylabel("accuracy, %")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Accuracy vs latency")
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


def write_plots(result, out_dir, prefix: str = "") -> Dict[str, Path]:
    """Write the plots that apply: latency always, throughput with >1 batch, Pareto with accuracy."""
    out = Path(out_dir)
    if not result.rows:
        return {}
    paths = {"latency": plot_latency(result, out / f"{prefix}latency.png")}
    if len({r["batch"] for r in result.rows}) > 1:
        paths["throughput"] = plot_throughput(result, out / f"{prefix}throughput.png")
    if any(r.get("accuracy") is not None for r in result.rows):
        paths["pareto"] = plot_pareto(result, out / f"{prefix}pareto.png")
    return paths
