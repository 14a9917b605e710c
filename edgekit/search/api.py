"""``run_search``: check the recipe, run the study, re-measure the Pareto set, write every output.

Outputs in the search directory (default ``runs/<recipe name>/search/``)::

    study.db               the Optuna study (SQLite): what --resume continues
    search.json, .csv      every trial: config, fidelity reached, metrics, feasibility, time
    pareto.md, pareto.png  the Pareto set re-measured together on the test split, with CIs
    chosen/model.onnx      the fastest model within the constraints, and chosen/recipe.yaml reproducing it
    cache/                 stage results shared by trials (teacher, distilled students, pruned checkpoints)

Example:
    >>> result = run_search("recipes/digits_search.yaml", trials=8)
    >>> print(result.summary)
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from edgekit._io import write_text_atomic
from edgekit.errors import InputFileError

logger = logging.getLogger(__name__)


@dataclass
class SearchResult:
    """What a finished search produced."""

    search_dir: Path
    rows: List[dict]
    final: List[dict]
    chosen: Optional[dict]
    chosen_artifact: Optional[Path] = None
    chosen_recipe: Optional[Path] = None
    comparisons: List[dict] = field(default_factory=list)
    summary: List[str] = field(default_factory=list)


def run_search(recipe_path: str | Path, *, out_dir: Optional[str | Path] = None, resume: bool = False,
               ray_address: Optional[str] = None, cache_dir: Optional[str | Path] = None,
               compare: Optional[Dict[str, str]] = None, **overrides: Any) -> SearchResult:
    """Search the recipe's ``search.space`` for the best model under its constraints.

    Args:
        recipe_path: a recipe YAML with a ``search:`` section.
        out_dir: the search directory (default ``runs/<recipe name>/search``); never overwritten.
        resume: continue the search in ``out_dir``: finished trials are kept, interrupted ones re-run.
        ray_address: run trials as tasks on this Ray cluster (``host:port``) instead of local processes.
        cache_dir: stage cache shared by trials (default ``<out_dir>/cache``); searches may share one.
        compare: ``{name: artifact}`` re-measured with the Pareto set (e.g. a hand-written recipe's result).
        **overrides: ``trials``, ``wall_time_s``, ``strategy``, ``workers``, ``seed`` (the sampler's),
            ``start_from_recipe`` replace the search section's values.

    Local workers are spawned processes: in a script, call this under ``if __name__ == "__main__":``.

    Example:
        >>> res = run_search("recipes/digits_search.yaml", trials=8, workers=2)
        >>> res.chosen["latency_ratio"], res.chosen_recipe
    """
    from edgekit.search.driver import prepare_search, run_study
    from edgekit.search.results import trial_rows, write_tables

    compare = dict(compare or {})
    for name, path in compare.items():
        if not Path(path).is_file():
            raise InputFileError(f"--compare {name}={path}: no such file")
    setup = prepare_search(recipe_path, out_dir, resume, cache_dir, **overrides)
    t0 = time.time()
    study, rungs = run_study(setup, ray_address, on_trial=lambda st: write_tables(trial_rows(st, setup),
                                                                                  setup.search_dir))
    rows = trial_rows(study, setup)
    extra = {"strategy": setup.config.strategy, "rungs": rungs, "search_wall_s": round(time.time() - t0, 1)}
    write_tables(rows, setup.search_dir, extra)
    return _finish(setup, rows, compare, extra)


def _finish(setup: Any, rows: List[dict], compare: Dict[str, str], extra: dict) -> SearchResult:
    from edgekit.search.report import choose, pareto_markdown, plot_pareto, unmeetable_error, write_chosen
    from edgekit.search.results import closest_trials, paired_vs, pareto_rows, remeasure, write_tables

    failed = [r for r in rows if r["error"]]
    if not any(r["latency_ratio"] is not None for r in rows) and failed:
        raise _all_failed(setup, failed)
    front = pareto_rows(rows)
    final = remeasure(front, compare, setup, setup.config.measure.final_rounds)
    chosen = choose(final, rows)
    comparisons = [c for name in compare if chosen is not None
                   for c in [paired_vs(final, chosen["name"], name)] if c is not None]
    write_tables(rows, setup.search_dir, {**extra, "pareto": final, "chosen": chosen, "comparisons": comparisons})
    result = SearchResult(setup.search_dir, rows, final, chosen, comparisons=comparisons)
    if final:
        write_text_atomic(setup.search_dir / "pareto.md", pareto_markdown(final, chosen, setup))
        plot_pareto(rows, final, chosen, setup.search_dir / "pareto.png")
    if chosen is None:
        raise unmeetable_error(rows, setup, closest_trials(rows))
    row = next(r for r in rows if r["trial"] == chosen["trial"])
    paths = write_chosen(setup, {**row, "artifact": chosen["artifact"]})
    result.chosen_artifact, result.chosen_recipe = paths["artifact"], paths["recipe"]
    result.summary = _summary(result, setup)
    return result


def _all_failed(setup: Any, failed: List[dict]) -> Exception:
    from edgekit.errors import EdgekitError

    return EdgekitError(f"{setup.source}: every trial failed ({len(failed)}); the first: trial {failed[0]['trial']}: "
                        f"{failed[0]['error']} (all: {setup.search_dir / 'search.csv'})")


def _summary(result: SearchResult, setup: Any) -> List[str]:
    c = result.chosen
    n_done = sum(r["state"] in ("complete", "pruned") for r in result.rows)
    n_pruned = sum(r["state"] == "pruned" for r in result.rows)
    lines = [f"search: {n_done} trials ({n_pruned} pruned early), Pareto set of {len(result.final)}",
             f"chosen: trial {c['trial']}: test accuracy {c['test_accuracy']:.2f}% (teacher "
             f"{c['teacher_test_accuracy']:.2f}%), {c['latency_ms']:.3f} ms = {c['latency_ratio']:.3f}× the float "
             f"baseline (95% CI {c['latency_ratio_ci'][0]:.3f}–{c['latency_ratio_ci'][1]:.3f}), {c['size_mb']:.3f} MB",
             f"chosen artifact: {result.chosen_artifact}", f"reproduce: edgekit run {result.chosen_recipe}"]
    for cmp in result.comparisons:
        lines.append(f"chosen vs {cmp['b']}: latency ratio {cmp['ratio']:.3f} (95% CI {cmp['ci'][0]:.3f}–"
                     f"{cmp['ci'][1]:.3f}, {cmp['rounds']} paired rounds; < 1 = chosen is faster)")
    return lines


__all__ = ["SearchResult", "run_search"]
