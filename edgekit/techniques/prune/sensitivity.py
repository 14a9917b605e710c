"""Sensitivity analysis: accuracy vs pruning ratio for each channel group, and non-uniform ratios from it.

Each group (one conv and its BN, or a whole residual stage) is pruned alone at each ratio, without
fine-tuning, and the validation accuracy is measured. :func:`allocate_ratios` then picks per-group ratios
that meet a MACs target while losing the least accuracy (greedy on accuracy lost per MAC removed).

Example:
    >>> sens = sensitivity(model, splits.val.x[:8], splits.val, out_dir="runs/sens")
    >>> ratios = allocate_ratios(sens, macs_target=0.5)
    >>> prune(model, x, {"macs_target": 0.5, "per_layer_ratios": ratios, "finetune": {...}}, train=..., val=...)
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch.nn as nn

from edgekit._io import atomic_path, write_json_atomic, write_text_atomic
from edgekit._log import progress
from edgekit.errors import ConfigError
from edgekit.techniques.prune import _graph as pg
from edgekit.techniques.prune import _plan as pp
from edgekit.techniques.scope import Scope


@dataclass
class SensitivityResult:
    """``rows``: one per (group, ratio): group, layers, channels, ratio, kept, accuracy, macs_fraction."""

    baseline_accuracy: float
    ratios: List[float]
    rows: List[dict]
    round_to: int
    files: Dict[str, str] = field(default_factory=dict)
    _estimate: Optional[Callable[[Dict[str, int]], int]] = field(default=None, repr=False)
    _channels: Dict[str, int] = field(default_factory=dict, repr=False)
    _groups: list = field(default_factory=list, repr=False)  # the traced groups (their segments plan the channels)

    def table(self) -> Dict[str, Dict[float, float]]:
        """{group: {ratio: accuracy}}."""
        out: Dict[str, Dict[float, float]] = {}
        for r in self.rows:
            out.setdefault(r["group"], {})[r["ratio"]] = r["accuracy"]
        return out

    def to_markdown(self) -> str:
        """The table as markdown: one row per group, one column per ratio (accuracy %)."""
        head = "| group | channels | " + " | ".join(f"{r:.0%}" for r in self.ratios) + " |"
        lines = [f"Baseline accuracy {self.baseline_accuracy:.2f}% (each group pruned alone, no fine-tune)", "",
                 head, "|" + "---|" * (len(self.ratios) + 2)]
        for g, accs in self.table().items():
            cells = " | ".join(f"{accs[r]:.2f}" for r in self.ratios)
            lines.append(f"| {g} | {self._channels.get(g, '')} | {cells} |")
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict:
        return {"baseline_accuracy": self.baseline_accuracy, "ratios": self.ratios, "round_to": self.round_to,
                "rows": self.rows, "files": self.files}


def sensitivity(model: nn.Module, example_input: Any, val, *, ratios: Sequence[float] = (0.25, 0.5, 0.75),
                importance: str = "l1", round_to: int = 8, exclude: Scope | Sequence[str] = (),
                out_dir: Optional[str | Path] = None, max_samples: int = 1000) -> SensitivityResult:
    """Accuracy on ``val`` of ``model`` with each channel group pruned alone at each ratio.

    Args:
        model: trained model (unchanged).
        example_input: a sample batch (traced at batch 1).
        val: labelled :class:`edgekit.data.Split` (at most ``max_samples`` are used).
        ratios: channel ratios to try, each in (0, 1).
        importance / round_to / exclude: as in :class:`edgekit.techniques.prune.config.PruneConfig`.
        out_dir: when given, writes ``sensitivity.md``, ``sensitivity.json`` and ``sensitivity.png`` there.

    Example:
        >>> sens = sensitivity(model, x, splits.val, ratios=(0.3, 0.6))
        >>> sens.table()["layer1.0.conv1"]
    """
    from edgekit.core.train import evaluate
    from edgekit.techniques.prune._structured import as_example

    bad = [r for r in ratios if not (0 < r < 1)]
    if not ratios or bad:
        raise ConfigError(f"sensitivity ratios must lie in (0, 1); got {list(ratios)}")
    if val is None or getattr(val, "y", None) is None:
        raise ConfigError("sensitivity analysis needs a labelled validation split")
    example = as_example(example_input)
    work = copy.deepcopy(model).cpu().eval()
    excluded = pg.resolve_names(work, Scope.model_validate(exclude), "sensitivity.exclude")
    classifier = pg.find_classifier(work)
    dg = pg.trace(work, example)
    groups = [g for g in pg.list_groups(work, dg, classifier, excluded) if not g.excluded and g.channels > round_to]
    if not groups:
        raise ConfigError(f"nothing to analyse: every group of {type(model).__name__} is excluded or has "
                          f"<= round_to={round_to} channels")
    val = val.take(max_samples)
    imp = pg.make_importance(importance)
    estimate = pp.macs_estimator(work, example, groups)
    full = estimate({})
    base = evaluate(work, val)
    rows = []
    jobs = [(g, r) for g in groups for r in sorted(ratios)]
    for g, r in progress(jobs, desc="sensitivity", total=len(jobs)):
        plan = pp.segment_plan(groups, {g.root: r}, round_to, 0.99)
        keep = sum(plan[s.key] for s in g.segments)
        m = copy.deepcopy(work)
        pp.apply_plan(m, example, plan, imp, classifier, excluded)
        rows.append({"group": g.root, "layers": g.members, "channels": g.channels, "ratio": float(r), "kept": keep,
                     "accuracy": evaluate(m, val), "macs_fraction": estimate(plan) / full})
    res = SensitivityResult(base, [float(r) for r in sorted(ratios)], rows, round_to, _estimate=estimate,
                            _channels={g.root: g.channels for g in groups}, _groups=groups)
    if out_dir is not None:
        res.files = _write(res, Path(out_dir))
    return res


def _write(res: SensitivityResult, out: Path) -> Dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = {"markdown": str(write_text_atomic(out / "sensitivity.md", res.to_markdown())),
             "json": str(write_json_atomic(out / "sensitivity.json", res.to_dict()))}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for g, accs in res.table().items():
        xs = [0.0] + res.ratios
        ax.plot(xs, [res.baseline_accuracy] + [accs[r] for r in res.ratios], marker="o", label=g)
    ax.set_xlabel("channels removed from the group (ratio)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("Pruning sensitivity per group (no fine-tune)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    with atomic_path(out / "sensitivity.png", suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    files["plot"] = str(out / "sensitivity.png")
    return files


def allocate_ratios(result: SensitivityResult, macs_target: float,
                    max_ratio: Optional[float] = None) -> Dict[str, float]:
    """Per-group ratios meeting ``macs_target`` (fraction of MACs kept, estimated) with the least accuracy lost.

    Greedy: repeatedly raise, to the next measured ratio, the group whose step costs the least accuracy per
    MAC removed, until the estimated MACs fraction is at most ``macs_target``. The estimate assumes groups
    act independently; :func:`edgekit.techniques.prune.prune.prune` with ``per_layer_ratios`` and the same
    ``macs_target`` rescales these ratios to meet the target exactly.

    Raises:
        ConfigError: the target cannot be met with the measured ratios.

    Example:
        >>> allocate_ratios(sens, 0.5)
        {'stem.0': 0.25, 'layer1.0.conv1': 0.5, ...}
    """
    if not (0 < macs_target < 1):
        raise ConfigError(f"macs_target must be between 0 and 1 (fraction of MACs kept), got {macs_target}")
    if result._estimate is None:
        raise ConfigError("this SensitivityResult was loaded without its MACs model; rerun sensitivity()")
    table = result.table()
    grid = [0.0] + [r for r in result.ratios if max_ratio is None or r <= max_ratio]
    level = {g: 0 for g in table}
    est, full = result._estimate, result._estimate({})

    def plan(lv: Dict[str, int]) -> Dict[str, int]:
        return pp.segment_plan(result._groups, {g: grid[i] for g, i in lv.items()}, result.round_to, 0.99)

    def acc(g: str, i: int) -> float:
        return result.baseline_accuracy if i == 0 else table[g][grid[i]]

    cur = est(plan(level)) / full
    while cur > macs_target:
        best, best_cost, best_macs = None, None, None
        for g, i in level.items():
            if i + 1 >= len(grid):
                continue
            trial = dict(level, **{g: i + 1})
            m = est(plan(trial)) / full
            saved = cur - m
            if saved <= 0:
                continue
            cost = max(0.0, acc(g, i) - acc(g, i + 1)) / saved
            if best_cost is None or cost < best_cost:
                best, best_cost, best_macs = g, cost, m
        if best is None:
            raise ConfigError(f"macs_target {macs_target} cannot be met with ratios up to {grid[-1]} per group "
                              f"(best estimate {cur:.3f}); analyse larger ratios")
        level[best] += 1
        cur = best_macs
    return {g: grid[i] for g, i in level.items() if i > 0}
