"""``run_search``: an Optuna study over a recipe's search space, trials sent to local or Ray workers, resumable.

The study (sampler state, every trial's parameters, rung values and metrics) lives in ``<search dir>/study.db``
(SQLite), so an interrupted search continues with ``resume=True``: finished and pruned trials are kept, trials
that were running are re-run (their finished stages come from the stage cache).

Example:
    >>> result = run_search("recipes/digits_search.yaml", out_dir="runs/digits_search/search")
    >>> result.chosen["latency_ms"], result.chosen_recipe
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from edgekit._io import read_json, write_json_atomic
from edgekit.errors import ConfigError, RunDirectoryError
from edgekit.pipeline.preflight import check_input_files
from edgekit.search.config import SearchConfig, parse_search_config, split_search_section
from edgekit.search.space import (
    Dimension,
    apply_params,
    check_space_values,
    first_searched_stage,
    recipe_values,
    resolve_space,
    scale_epochs,
)

logger = logging.getLogger(__name__)


@dataclass
class SearchSetup:
    """A checked search: the base recipe (raw and validated), its search config and dimensions, and its folders."""

    raw: dict
    recipe: Any
    config: SearchConfig
    dims: List[Dimension]
    source: str
    search_dir: Path
    cache_dir: Path
    fingerprint: str
    overrides: Dict[str, Any] = field(default_factory=dict)

    @property
    def lock_dir(self) -> Path:
        return self.cache_dir / "locks"


def prepare_search(recipe_path: str | Path, out_dir: Optional[str | Path] = None, resume: bool = False,
                   cache_dir: Optional[str | Path] = None, **overrides: Any) -> SearchSetup:
    """Read and check everything before any training: the recipe, its ``search:`` section, the space's paths and
    values, the objective's backend, the folders. ``overrides`` replace search fields (trials, wall_time_s,
    strategy, workers, seed: the sampler's)."""
    from edgekit.backends import probe_backend
    from edgekit.pipeline.recipe import validate_recipe

    source = str(recipe_path)
    raw, search_raw, _ = split_search_section(recipe_path)
    search_raw = _with_overrides(search_raw, overrides)
    cfg = parse_search_config(search_raw, source)
    recipe = validate_recipe(raw, source=source)
    dims = resolve_space(cfg.space, raw)
    check_space_values(raw, dims, source)
    ok, reason = probe_backend(cfg.objective.backend)
    if not ok:
        raise ConfigError(f"{source}: search.objective.backend '{cfg.objective.backend}' is unavailable: {reason}")
    check_input_files(recipe)  # the same file checks as `edgekit run`
    search_dir = Path(out_dir) if out_dir else Path("runs") / recipe.name / "search"
    kept = {k: v for k, v in search_raw.items() if k not in ("budget", "workers")}  # may change on --resume
    fingerprint = hashlib.sha256(json.dumps({"raw": raw, "search": kept}, sort_keys=True,
                                            default=str).encode()).hexdigest()[:16]
    _check_search_dir(search_dir, resume, fingerprint)
    cache = Path(cache_dir) if cache_dir else search_dir / "cache"
    return SearchSetup(raw, recipe, cfg, dims, source, search_dir.resolve(), cache.resolve(), fingerprint)


def _with_overrides(search_raw: dict, overrides: Dict[str, Any]) -> dict:
    out = dict(search_raw)
    budget = dict(out.get("budget") or {})
    for key in ("trials", "wall_time_s"):
        if overrides.get(key) is not None:
            budget[key] = overrides[key]
    if budget:
        out["budget"] = budget
    for key in ("strategy", "workers", "seed", "start_from_recipe"):
        if overrides.get(key) is not None:
            out[key] = overrides[key]
    return out


def _check_search_dir(search_dir: Path, resume: bool, fingerprint: str) -> None:
    meta = search_dir / "search-setup.json"
    if resume:
        if not meta.is_file():
            raise RunDirectoryError(f"--resume: {search_dir} holds no earlier search (no search-setup.json)")
        if read_json(meta).get("fingerprint") != fingerprint:
            raise RunDirectoryError(f"--resume: the recipe or its search section changed since {search_dir} was "
                                    "started; resume with the same recipe, or start a new search with --out")
    elif (search_dir / "study.db").exists():
        raise RunDirectoryError(f"{search_dir} already holds a search; pass --resume to continue it or --out to "
                                "start another (edgekit never overwrites a search)")


def trial_job(setup: SearchSetup, params: Dict[str, Any], fraction: float, workers: int) -> dict:
    """The job a worker runs: the trial recipe (params applied, epochs scaled) and how to measure it."""
    from edgekit.pipeline.recipe import validate_recipe

    full = apply_params(setup.raw, setup.dims, params)
    raw = scale_epochs(full, validate_recipe(full, source=setup.source), first_searched_stage(setup.dims), fraction)
    obj, m = setup.config.objective, setup.config.measure
    return {"raw": raw, "cache_dir": str(setup.cache_dir), "lock_dir": str(setup.lock_dir),
            "backend": obj.backend, "batch": obj.batch, "fraction": fraction,
            "measure": {"rounds": m.rounds, "warmup": m.warmup, "min_time": m.min_time, "warmup_s": m.warmup_s},
            "threads": max(1, setup.recipe.threads // workers), "timing_threads": setup.recipe.threads}


def constraint_excess(metrics: dict, cfg: SearchConfig) -> Dict[str, float]:
    """How far a trial is over each constraint (<= 0: met), in the constraint's own unit."""
    c, out = cfg.constraints, {}
    if c.max_accuracy_drop is not None:
        out["max_accuracy_drop"] = round(metrics["accuracy_drop"] - c.max_accuracy_drop, 4)
    if c.max_latency_ms is not None:
        out["max_latency_ms"] = round(metrics["latency_ms"] - c.max_latency_ms, 4)
    if c.max_size_mb is not None:
        out["max_size_mb"] = round(metrics["size_mb"] - c.max_size_mb, 4)
    return out


def score(metrics: dict, excess: Dict[str, float], cfg: SearchConfig) -> float:
    """The value the study minimises: the objective, worsened by every constraint a trial misses.

    Latency objective: the latency ratio vs the float baseline, times (1 + excess) per missed constraint, excess
    in points / ms / MB; accuracy objective: minus the accuracy, minus the excesses.
    """
    over = sum(max(0.0, v) for v in excess.values())
    if cfg.objective.metric == "accuracy":
        return -metrics["val_accuracy"] + over
    return metrics["latency_ratio"] * (1.0 + over)


def _run_trial(trial: Any, setup: SearchSetup, rungs: List[float], run_job, workers: int) -> float:
    import optuna

    params = {d.path: d.suggest(trial) for d in setup.dims}
    same = earlier_trial_with(trial.study, params, setup.dims, trial.number)
    if same is not None:
        return _repeat(trial, same)
    base = rungs[0]
    for r, fraction in enumerate(rungs):
        t0 = time.time()
        try:
            metrics = run_job(trial_job(setup, params, fraction, workers))
        except Exception as e:  # recorded, so --resume can tell a failed trial from an interrupted one
            from edgekit.errors import EdgekitError, first_line

            trial.set_user_attr("error", f"{type(e).__name__}: {first_line(e, 300)}")
            logger.warning(f"trial {trial.number}: {type(e).__name__}: {first_line(e, 300)}")
            if isinstance(e, EdgekitError):  # a point of the space a stage rejects (e.g. an unreachable
                trial.set_constraint("stage_rejects", 1.0)  # macs_target): counted, and the sampler avoids it
                raise optuna.TrialPruned(f"a stage rejected this configuration: {first_line(e, 200)}") from None
            raise
        excess, slack = judged_excess(constraint_excess(metrics, setup.config), trial.study, r, len(rungs) - 1,
                                      first_stage_params(setup.dims, params))
        value = score(metrics, excess, setup.config)
        slim = {k: v for k, v in metrics.items() if k != "stages"}
        slim.update({"fidelity": fraction, "score": value, "wall_s": round(time.time() - t0, 2),
                     "accuracy_slack": slack,
                     "cached_stages": sum(s["status"] == "cached" for s in metrics["stages"])})
        trial.set_user_attr(f"rung{r}", slim)
        trial.set_user_attr("metrics", slim)
        trial.set_user_attr("excess", excess)
        trial.report(value, step=max(1, round(fraction / base)))
        if r < len(rungs) - 1 and trial.should_prune():
            _set_constraints(trial, excess)
            raise optuna.TrialPruned(f"rung {r} (epochs ×{fraction:g}): score {value:.4f}")
    _set_constraints(trial, excess)
    return value


def earlier_trial_with(study: Any, params: Dict[str, Any], dims: List[Dimension], number: int) -> Optional[Any]:
    """A finished trial (complete or pruned, a stage's refusal included) that measured these parameters already."""
    from optuna.trial import TrialState

    tidy = {d.path: d.tidy(params[d.path]) for d in dims}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        if t.number != number and "duplicate_of" not in t.user_attrs and len(t.params) == len(tidy) \
                and all(_same(d.tidy(t.params.get(d.path)), tidy[d.path]) for d in dims):
            return t
    return None


def _repeat(trial: Any, same: Any) -> float:
    """A configuration the study has measured is not built or timed again, and does not count against the budget:
    the sampler is told the earlier outcome (TPE draws a point of a small discrete space again and again once it
    rates it well; each repeat used to cost a whole trial)."""
    import optuna

    trial.set_user_attr("duplicate_of", same.number)
    for step, value in same.intermediate_values.items():
        trial.report(value, step=step)
    for key, value in same.constraints.items():
        trial.set_constraint(key, value)
    if same.state == optuna.trial.TrialState.PRUNED:
        raise optuna.TrialPruned(f"the configuration of trial {same.number}, which stopped early")
    return same.value


def first_stage_params(dims: List[Dimension], params: Dict[str, Any]) -> Dict[str, Any]:
    """The trial's values of the first searched stage's fields (in the digits search: its student); trials that
    share them share that stage's output at every fidelity."""
    first = first_searched_stage(dims)
    return {d.path: d.tidy(params[d.path]) for d in dims if d.stage_index == first and d.path in params}


def judged_excess(excess: Dict[str, float], study: Any, rung: int, last: int,
                  like: Dict[str, Any]) -> Tuple[Dict[str, float], Optional[float]]:
    """The constraint excesses a trial at ``rung`` is judged (scored, promoted, reported to the sampler) by, and the
    accuracy slack used: its accuracy excess less the gain it is expected to make by full fidelity. While no
    completed trial shares its first searched stage (``like``), that gain is unknown (slack None) and the short rung
    does not judge its accuracy: the gain differs by student (0.3-0.8 points from 1/2 of the epochs to all for
    ResNet-14 x1.0 on digits, 1.7-3.1 for ResNet-8 x1.0), and taking the median over other students stopped the first
    fast ResNet-8 trials of a search at the short rung though they meet the budget at full length."""
    if rung >= last:
        return excess, 0.0
    slack = expected_accuracy_gain(study, rung, last, like)
    if "max_accuracy_drop" not in excess:
        return excess, slack
    if slack is None:
        return {k: v for k, v in excess.items() if k != "max_accuracy_drop"}, None
    return {**excess, "max_accuracy_drop": round(excess["max_accuracy_drop"] - slack, 4)}, slack


def expected_accuracy_gain(study: Any, rung: int, last: int, like: Optional[Dict[str, Any]] = None) -> Optional[float]:
    """Validation points a trial gains from ``rung`` to full fidelity: the median over the completed trials measured at
    both that have the parameter values ``like`` (all of them when None); None until one has been. A short fine-tune
    underrates every student, small fast ones most: judged by its raw accuracy drop, a short rung stopped the
    fastest configurations before they could reach the budget."""
    from optuna.trial import TrialState

    gains = [t.user_attrs[f"rung{last}"]["val_accuracy"] - t.user_attrs[f"rung{rung}"]["val_accuracy"]
             for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
             if f"rung{rung}" in t.user_attrs and f"rung{last}" in t.user_attrs
             and all(_same(t.params.get(k), v) for k, v in (like or {}).items())]
    return round(max(0.0, float(np.median(gains))), 3) if gains else None


def _same(a: Any, b: Any) -> bool:
    return abs(a - b) < 1e-9 if isinstance(a, float) and isinstance(b, float) else a == b


def _set_constraints(trial: Any, excess: Dict[str, float]) -> None:
    """What the constraint-aware sampler reads (once per trial: at its last rung)."""
    for key, value in excess.items():
        trial.set_constraint(key, float(value))


def _requeue_interrupted(study: Any) -> int:
    """Trials an interruption left running (or failed by Ctrl-C) are closed and queued again with their params."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    requeued = {t.user_attrs.get("requeued_from") for t in trials}
    n = 0
    for t in trials:
        interrupted = t.state == TrialState.RUNNING or (t.state == TrialState.FAIL and "error" not in t.user_attrs)
        if not interrupted or t.number in requeued:
            continue
        if t.state == TrialState.RUNNING:
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        study.enqueue_trial(t.params, user_attrs={"requeued_from": t.number}, skip_if_exists=False)
        n += 1
    return n


def _enqueue_recipe_values(study: Any, setup: SearchSetup) -> None:
    """Queue the recipe as written as the first trial (when its value of every searched field is in the space)."""
    values, outside = recipe_values(setup.recipe, setup.dims)
    if outside:
        logger.info(f"search: the recipe's own configuration is not a point of the space ({'; '.join(outside)}); "
                    "not queued as the first trial")
        return
    study.enqueue_trial(values, user_attrs={"from_recipe": True})
    logger.info(f"search: trial 0 is the recipe as written: {values}")


def finished_trials(study: Any) -> List[Any]:
    """Trials that count against the budget: complete or pruned, each configuration once (a repeat is answered from
    the earlier trial)."""
    from optuna.trial import TrialState

    return [t for t in study.get_trials(deepcopy=False)
            if t.state in (TrialState.COMPLETE, TrialState.PRUNED) and "duplicate_of" not in t.user_attrs]


MAX_REPEATS_IN_A_ROW = 50


def _optimize(study: Any, objective: Any, budget: int, wall_time_s: Optional[float], workers: int,
              callbacks: list) -> None:
    """Run trials until ``budget`` distinct configurations are finished or the wall time is spent; a repeated
    configuration is drawn again. Stops early when the sampler proposes only repeats (a small space exhausted)."""
    deadline = time.time() + (wall_time_s if wall_time_s is not None else float("inf"))
    attempts, repeats_in_a_row = budget - len(finished_trials(study)), 0
    while attempts > 0 and time.time() < deadline:
        before = len(study.get_trials(deepcopy=False))
        left = deadline - time.time()
        study.optimize(objective, n_trials=attempts, timeout=None if left == float("inf") else max(1.0, left),
                       n_jobs=workers, catch=(Exception,), callbacks=callbacks)
        new = study.get_trials(deepcopy=False)[before:]
        repeats = sum("duplicate_of" in t.user_attrs for t in new)
        repeats_in_a_row = repeats_in_a_row + repeats if repeats == len(new) else repeats
        if repeats_in_a_row >= MAX_REPEATS_IN_A_ROW:
            logger.info(f"search: the last {repeats_in_a_row} draws repeated configurations already measured; "
                        "stopping (the space is nearly exhausted)")
            return
        attempts = min(repeats, budget - len(finished_trials(study)))


def run_study(setup: SearchSetup, ray_address: Optional[str] = None, on_trial: Any = None, pool: Any = None) -> Any:
    """Create (or load) the study in the search directory and run trials until the budget is spent.

    Returns ``(study, rungs)``. ``on_trial(study)`` is called after every trial (e.g. to rewrite the tables).
    ``pool`` replaces the local / Ray workers: a context manager that yields ``run_job(job) -> metrics`` (the
    strategy benchmark answers jobs from a table of measured trials with it).
    """
    import optuna

    from edgekit.search.executors import check_ray_address, local_pool, ray_pool
    from edgekit.search.strategies import STRATEGIES

    cfg = setup.config
    if ray_address:
        check_ray_address(ray_address)  # before anything is written
    setup.search_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(setup.search_dir / "search-setup.json",
                      {"fingerprint": setup.fingerprint, "source": setup.source, "recipe": setup.raw,
                       "search": cfg.model_dump(mode="json"), "cache_dir": str(setup.cache_dir)})
    seed = setup.recipe.seed if cfg.seed is None else cfg.seed
    sampler, pruner, rungs = STRATEGIES.get(cfg.strategy)(seed=seed, trials=cfg.budget.trials,
                                                          fidelity=cfg.fidelity, objective=cfg.objective.metric)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # failed trials are logged once, by _run_trial
    # trials of several workers write the study from as many driver threads: SQLite's default 5 s wait for its
    # write lock can run out on a loaded machine ("database is locked" fails the trial), so wait longer
    storage = optuna.storages.RDBStorage(f"sqlite:///{setup.search_dir / 'study.db'}",
                                         engine_kwargs={"connect_args": {"timeout": 120}})
    study = optuna.create_study(storage=storage, study_name="search", sampler=sampler, pruner=pruner,
                                direction="minimize", load_if_exists=True)
    requeued = _requeue_interrupted(study)
    if cfg.start_from_recipe and not study.get_trials(deepcopy=False):
        _enqueue_recipe_values(study, setup)
    remaining = cfg.budget.trials - len(finished_trials(study))
    logger.info(f"search: {len(finished_trials(study))} trial(s) finished earlier, {requeued} re-queued, "
                f"{max(0, remaining)} to run ({cfg.strategy}, rungs {rungs}, {cfg.workers} worker(s))")
    if remaining <= 0:
        return study, rungs
    if pool is None:
        pool = ray_pool(ray_address, cfg.resources) if ray_address else local_pool(cfg.workers)
    callbacks = [lambda st, _t: on_trial(st)] if on_trial else []
    with pool as run_job:
        _optimize(study, lambda t: _run_trial(t, setup, rungs, run_job, cfg.workers), cfg.budget.trials,
                  cfg.budget.wall_time_s, cfg.workers, callbacks)
    return study, rungs


__all__ = ["SearchSetup", "finished_trials", "run_study", "constraint_excess", "prepare_search", "score", "trial_job"]
