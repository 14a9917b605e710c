"""Writing a finished search: Pareto table and plot, the chosen artifact and the plain recipe that reproduces it.

Example:
    >>> chosen = choose(final, rows)
    >>> write_chosen(setup, chosen_row)   # chosen/model.onnx + chosen/recipe.yaml
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml

from edgekit._io import atomic_path, sidecar_path, write_text_atomic
from edgekit.errors import ConfigError


def choose(final: List[dict], rows: List[dict]) -> Optional[dict]:
    """The fastest re-measured Pareto member among the trials that met every constraint on the validation split."""
    feasible = {r["trial"] for r in rows if r["feasible"]}
    candidates = [e for e in final if e["trial"] is not None and e["trial"] in feasible]
    return min(candidates, key=lambda e: e["latency_ratio"]) if candidates else None


def unmeetable_error(rows: List[dict], setup: Any, closest: List[dict]) -> ConfigError:
    """No trial met the constraints: name the closest trials and the constraint each one failed."""
    c = setup.config.constraints.model_dump(exclude_none=True)
    lines = []
    for r in closest:
        misses = ", ".join(f"{k} {c[k]} (got {_got(r, k)})" for k in r["failed_constraints"])
        lines.append(f"trial {r['trial']} ({'; '.join(f'{k}={v}' for k, v in r['params'].items())}): failed {misses}")
    measured = sum(1 for r in rows if r["excess"])
    return ConfigError(f"{setup.source}: search.constraints: none of {measured} measured trial(s) met "
                       f"{', '.join(f'{k} {v}' for k, v in c.items())}; closest:\n  " + "\n  ".join(lines)
                       + f"\n(every trial: {setup.search_dir / 'search.csv'}); relax the constraint or widen the space")


def _got(row: dict, constraint: str) -> str:
    key = {"max_accuracy_drop": "accuracy_drop", "max_latency_ms": "latency_ms", "max_size_mb": "size_mb"}[constraint]
    return f"{row[key]:g}"


def reproducing_recipe(setup: Any, params: Dict[str, Any]) -> dict:
    """The base recipe with the chosen parameters written in, at full fidelity, without a ``search:`` section."""
    from edgekit.search.space import apply_params

    raw = apply_params(setup.raw, setup.dims, params)
    raw["name"] = f"{setup.recipe.name}-chosen"
    raw["description"] = (f"Chosen by `edgekit search {setup.source}`: "
                          + ", ".join(f"{k}={v}" for k, v in params.items()))
    return raw


def write_chosen(setup: Any, row: dict) -> Dict[str, Path]:
    """Copy the chosen artifact to ``<search dir>/chosen/`` and write the recipe that reproduces it."""
    from edgekit.pipeline.recipe import validate_recipe

    out = setup.search_dir / "chosen"
    src = Path(row["artifact"])
    dst = out / f"model{src.suffix}"
    with atomic_path(dst, suffix=src.suffix) as tmp:
        shutil.copyfile(src, tmp)
    side = sidecar_path(src)
    if side.is_file():
        with atomic_path(sidecar_path(dst)) as tmp:
            shutil.copyfile(side, tmp)
    raw = reproducing_recipe(setup, row["params"])
    validate_recipe(raw, source="chosen recipe")  # it must be a plain, valid recipe
    recipe_path = write_text_atomic(out / "recipe.yaml", "# reproduces the chosen model: edgekit run "
                                    f"{out / 'recipe.yaml'}\n" + yaml.safe_dump(raw, sort_keys=False))
    return {"artifact": dst, "recipe": recipe_path}


def pareto_markdown(final: List[dict], chosen: Optional[dict], setup: Any) -> str:
    """The re-measured Pareto set as a markdown table (test split, paired latency ratios with 95% CIs)."""
    obj = setup.config.objective
    head = (f"Pareto set re-measured together on the test split ({obj.backend}, batch {obj.batch}, "
            f"{setup.config.measure.final_rounds} interleaved rounds); latency ratio = candidate / float baseline "
            "(median per round, bootstrap 95% CI); accuracy with Wilson 95% CI.\n\n")
    lines = ["| model | test acc % (CI) | drop pts | latency ms | ratio vs float (CI) | size MB | chosen |",
             "|---|---|---|---|---|---|---|"]
    for e in final:
        lo, hi = e["test_accuracy_ci"]
        rlo, rhi = e["latency_ratio_ci"]
        mark = "**yes**" if chosen is not None and e["name"] == chosen["name"] else ""
        lines.append(f"| {e['name']} | {e['test_accuracy']:.2f} ({lo:.1f}–{hi:.1f}) | {e['test_accuracy_drop']:+.2f} "
                     f"| {e['latency_ms']:.3f} | {e['latency_ratio']:.3f} ({rlo:.3f}–{rhi:.3f}) | {e['size_mb']:.3f} "
                     f"| {mark} |")
    return head + "\n".join(lines) + "\n"


def plot_pareto(rows: List[dict], final: List[dict], chosen: Optional[dict], path: Path) -> Path:
    """Accuracy vs latency: every measured trial (validation, grey), the re-measured front (test), size as marker."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    pts = [r for r in rows if r["latency_ms"] is not None]
    ax.scatter([r["latency_ms"] for r in pts], [r["val_accuracy"] for r in pts],
               s=[20 + 400 * r["size_mb"] for r in pts], c="lightgrey", edgecolors="grey", alpha=0.6,
               label="trials (validation, any fidelity)")
    front = sorted(final, key=lambda e: e["latency_ms"])
    ax.plot([e["latency_ms"] for e in front], [e["test_accuracy"] for e in front], "-", color="tab:blue", lw=1)
    ax.scatter([e["latency_ms"] for e in front], [e["test_accuracy"] for e in front],
               s=[20 + 400 * e["size_mb"] for e in front], c="tab:blue", alpha=0.8, label="Pareto set (test)")
    for e in front:
        ax.annotate(e["name"], (e["latency_ms"], e["test_accuracy"]), fontsize=7, xytext=(4, 4),
                    textcoords="offset points")
    if chosen is not None:
        ax.scatter([chosen["latency_ms"]], [chosen["test_accuracy"]], marker="*", s=250, c="tab:red", label="chosen")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title("search: accuracy vs latency (marker area ~ size)")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
    return path


__all__ = ["choose", "pareto_markdown", "plot_pareto", "reproducing_recipe", "unmeetable_error", "write_chosen"]
