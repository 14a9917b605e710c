"""Replay search strategies on a measured table of a search space (see bench_search_table.py).

The real driver (:func:`edgekit.search.driver.run_study`) runs unchanged; only the pool is replaced: each job (a trial
recipe at a fidelity) is answered from the table. A trial's latency figure is the point's jointly measured ratio
times a residual drawn from the residuals real searches showed (a trial's own figure over the same artifact's joint
figure), so the sampler sees the noise a real search sees while each choice is judged by the joint figure.
"""
from __future__ import annotations

import contextlib
import json
import shutil
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import numpy as np
from _stats import t_half_width


def params_of(raw: dict, dims) -> Dict:
    """The searched values a trial recipe holds."""
    out = {}
    for d in dims:
        node = raw["stages"][d.stage_index]
        for key in d.keys:
            node = node[key]
        out[d.path] = d.tidy(node)
    return out


def point_key(params: Dict) -> str:
    return json.dumps(params, sort_keys=True)


class TablePool:
    """``run_job`` answering from the table; counts the seconds the stages it 'builds' took when measured."""

    def __init__(self, table: dict, dims, residuals: np.ndarray, rng: np.random.Generator,
                 timing_s: float = 3.0) -> None:
        self.table, self.dims, self.residuals, self.rng = table, dims, residuals, rng
        self.timing_s, self.built, self.seconds = timing_s, set(), 0.0

    @contextlib.contextmanager
    def __call__(self) -> Iterator:
        yield self.run_job

    def run_job(self, job: dict) -> dict:
        from edgekit.errors import ConfigError

        params = params_of(job["raw"], self.dims)
        rec = self.table["points"][point_key(params)][f"{float(job['fraction'])}"]
        if "refused" in rec:
            raise ConfigError(rec["refused"])
        new = {k: s for k, s in rec["stage_seconds"].items() if k not in self.built}
        self.built |= set(new)
        self.seconds += sum(s or 0.0 for s in new.values()) + self.timing_s
        full = self.table["points"][point_key(params)]["1.0"]
        ratio = full["latency_ratio"] * float(self.rng.choice(self.residuals))
        drop = rec["teacher_val_accuracy"] - rec["val_accuracy"]
        return {"val_accuracy": rec["val_accuracy"], "teacher_val_accuracy": rec["teacher_val_accuracy"],
                "accuracy_drop": round(drop, 3), "latency_ratio": round(ratio, 4), "latency_ratio_rounds": [ratio],
                "baseline_ms": 1.0, "latency_ms": ratio, "size_mb": rec["size_mb"], "artifact": rec["artifact"],
                "baseline_artifact": rec["baseline"], "variant": "replay", "timing_threads": 2,
                "build_s": 0.0, "seconds": 0.0, "key": point_key(params),
                "stages": [{"status": "ran" if k in new else "cached"} for k in rec["stage_seconds"]]}


def chosen_point(study, table: dict, budget: float) -> Optional[dict]:
    """What the search hands back: the fastest (by the joint figure, as the final re-measurement would rank them)
    of its full-fidelity trials that met the budget on the validation split."""
    from optuna.trial import TrialState

    best = None
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        m = t.user_attrs.get("metrics") or {}
        if m.get("fidelity") != 1.0 or m["accuracy_drop"] > budget:
            continue
        rec = table["points"][m["key"]]["1.0"]
        if best is None or rec["latency_ratio"] < best["latency_ratio"]:
            best = {"point": m["key"], "latency_ratio": rec["latency_ratio"],
                    "test_drop": round(rec["teacher_test_accuracy"] - rec["test_accuracy"], 3),
                    "trial_ratio": m["latency_ratio"]}
    return best


def residuals_from_searches(table: dict, search_dirs: List[Path]) -> np.ndarray:
    """Each real full-fidelity trial's latency figure over its artifact's joint figure in the table, divided by the
    median of its search's such residuals: the trial-to-trial noise within one search (a factor common to a whole
    search, such as the machine's load that day, does not change which trial it ranks first)."""
    by_artifact = {r["artifact"]: r["latency_ratio"] for p in table["points"].values()
                   for r in [p.get("1.0", {})] if "latency_ratio" in r}
    out = []
    for d in search_dirs:
        f = d / "search.json"
        if not f.is_file():
            continue
        res = [r["latency_ratio"] / by_artifact[r["artifact"]] for r in json.loads(f.read_text())["trials"]
               if r.get("fidelity") == 1.0 and r.get("artifact") in by_artifact and r.get("latency_ratio")]
        if len(res) >= 3:
            out += list(np.asarray(res) / np.median(res))
    return np.asarray(out, float)


def replay_one(recipe: Path, table: dict, work: Path, strategy: str, seed: int, trials: int,
               residuals: np.ndarray) -> dict:
    from edgekit.search.driver import prepare_search, run_study

    d = work / f"{strategy}-t{trials}-s{seed}"
    shutil.rmtree(d, ignore_errors=True)
    setup = prepare_search(recipe, out_dir=d, cache_dir=work / "no-cache", trials=trials, strategy=strategy,
                           seed=seed, start_from_recipe=False, wall_time_s=7 * 86400)
    pool = TablePool(table, setup.dims, residuals, np.random.default_rng(10_000 + seed))
    study, _ = run_study(setup, pool=pool())
    budget = setup.config.constraints.max_accuracy_drop
    chosen = chosen_point(study, table, budget)
    states = [t.state.name for t in study.get_trials(deepcopy=False)]
    shutil.rmtree(d, ignore_errors=True)
    return {"chosen": chosen, "compute_s": round(pool.seconds, 1), "pruned": states.count("PRUNED"),
            "complete": states.count("COMPLETE")}


def _seeds(spec: str) -> List[int]:
    if "-" in spec:
        lo, hi = spec.split("-")
        return list(range(int(lo), int(hi) + 1))
    return [int(s) for s in spec.split(",")]


def summarise(runs: Dict[str, List[dict]], names: List[str]) -> dict:
    """Mean chosen ratio per strategy (a search with nothing in budget counts as the float baseline, 1.0) and the
    paired difference by seed."""
    def ratio(r: dict) -> float:
        return r["chosen"]["latency_ratio"] if r["chosen"] else 1.0

    out = {}
    for n in names:
        rs = runs[n]
        out[n] = {"mean_ratio": round(float(np.mean([ratio(r) for r in rs])), 4),
                  "none_in_budget": sum(r["chosen"] is None for r in rs),
                  "test_over_budget": sum(bool(r["chosen"]) and r["chosen"]["test_drop"] > 0.5 for r in rs),
                  "mean_compute_s": round(float(np.mean([r["compute_s"] for r in rs])), 1)}
    if len(names) == 2:
        d = np.asarray([ratio(a) - ratio(b) for a, b in zip(runs[names[0]], runs[names[1]])])
        half = t_half_width(d)
        out["difference"] = {"a": names[0], "b": names[1], "mean": round(float(d.mean()), 4),
                             "half_width": round(half, 4), "a_better": int((d < 0).sum()),
                             "b_better": int((d > 0).sum()), "ties": int((d == 0).sum())}
    return out


def replay_main(a) -> None:
    import logging

    logging.getLogger("edgekit").setLevel(logging.ERROR)
    from bench_search_table import RECIPE

    table = json.loads(Path(a.table).read_text())
    work = Path(a.work)
    residuals = residuals_from_searches(table, sorted(Path(p).parent for p in _search_jsons(a.searches)))
    if residuals.size:  # kept with the table, so a clone without those searches replays the same noise
        table["residuals"] = [round(float(v), 5) for v in residuals]
        from edgekit._io import write_json_atomic

        write_json_atomic(Path(a.table), table)
    residuals = np.asarray(table.get("residuals") or [1.0], float)
    print(f"residuals: n={residuals.size}, median {np.median(residuals):.3f}, "
          f"p10-p90 {np.percentile(residuals, 10):.3f}-{np.percentile(residuals, 90):.3f}", flush=True)
    register_variants()
    register_latency_only_variant()
    import os
    if os.environ.get("REPLAY_ORDINAL"):
        use_ordinal_lists()
    names = a.strategies.split(",")
    results = json.loads(Path(a.out).read_text()) if Path(a.out).is_file() else {}
    results["table"] = table_meta(table, residuals)
    for trials in [int(t) for t in a.trials.split(",")]:
        runs: Dict[str, List[dict]] = {n: [] for n in names}
        t0 = time.time()
        for seed in _seeds(a.seeds):
            for n in names:
                runs[n].append(replay_one(RECIPE, table, work, n, seed, trials, residuals))
        s = summarise(runs, names)
        key = f"{','.join(names)}|{trials}|{a.seeds}"
        results[key] = {"trials": trials, "seeds": a.seeds, "summary": s, "runs": runs,
                        "residuals": {"n": int(residuals.size), "median": round(float(np.median(residuals)), 4)},
                        "seconds": round(time.time() - t0, 1)}
        print(trials, json.dumps(s), flush=True)
        Path(a.out).write_text(json.dumps(results, indent=1))


def table_meta(table: dict, residuals: np.ndarray) -> dict:
    """What the rendered section says about the table the replays ran on."""
    pts = table["points"].values()
    full = [p["1.0"] for p in pts if "latency_ratio" in p.get("1.0", {})]
    budget_ok = [r for r in full if r["teacher_val_accuracy"] - r["val_accuracy"] <= 0.5]
    return {"points": len(table["points"]), "refused": sum("refused" in p["1.0"] for p in pts),
            "measured": len(full), "in_budget_val": len(budget_ok),
            "fastest_in_budget": round(min(r["latency_ratio"] for r in budget_ok), 4),
            "timing": table.get("timing"), "residuals_n": int(residuals.size),
            "residuals_p10_p90": [round(float(np.percentile(residuals, q)), 3) for q in (10, 90)]}


def _search_jsons(pattern: str) -> List[Path]:
    import glob

    return [Path(p) for p in glob.glob(pattern)]


def register_variants() -> None:
    """Strategy variants tried on the table (not part of edgekit's registry outside this benchmark)."""
    import math

    import optuna

    from edgekit.search.strategies import STRATEGIES

    def halving(fidelity):
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=fidelity.reduction_factor,
                                                      min_early_stopping_rate=0)

    def add(name, make_sampler, multi_fidelity=True):
        if name in STRATEGIES:
            return

        @STRATEGIES.register(name)
        def _strategy(seed, trials, fidelity):
            if multi_fidelity:
                return make_sampler(seed, trials), halving(fidelity), fidelity.fractions()
            return make_sampler(seed, trials), optuna.pruners.NopPruner(), [1.0]

    tpe = optuna.samplers.TPESampler
    add("v-tpe-full", lambda s, n: tpe(seed=s, n_startup_trials=max(3, n // 4), multivariate=True), False)
    add("v-tpe-hb-gamma25", lambda s, n: tpe(seed=s, n_startup_trials=max(3, n // 4), multivariate=True,
                                             gamma=lambda x: min(math.ceil(0.25 * x), 25)))
    add("v-tpe-hb-indep", lambda s, n: tpe(seed=s, n_startup_trials=max(3, n // 4)))
    add("v-tpe-hb-group", lambda s, n: tpe(seed=s, n_startup_trials=max(3, n // 4), multivariate=True, group=True))
    add("v-gp-hb", lambda s, n: optuna.samplers.GPSampler(seed=s, n_startup_trials=max(3, n // 4)))
    add("v-gp-full", lambda s, n: optuna.samplers.GPSampler(seed=s, n_startup_trials=max(3, n // 4)), False)


def use_ordinal_lists() -> None:
    """Variant: a list of evenly spaced numbers is drawn as a stepped number (TPE's kernel then relates neighbours)."""
    from edgekit.search.space import Dimension

    plain = Dimension.suggest

    def suggest(self, trial):
        c = self.choices
        if c and len(c) >= 3 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in c):
            v = sorted(c)
            steps = {round(b - a, 10) for a, b in zip(v, v[1:])}
            if len(steps) == 1:
                step = steps.pop()
                if all(isinstance(x, int) for x in v):
                    return trial.suggest_int(self.path, v[0], v[-1], step=int(step))
                return round(trial.suggest_float(self.path, v[0], v[-1], step=step), 10)
        return plain(self, trial)

    Dimension.suggest = suggest


def register_latency_only_variant() -> None:
    """Variant: tpe-bound without the accuracy rule (a short rung stops only trials slower than the incumbent)."""
    import optuna

    from edgekit.search.strategies import STRATEGIES, best_in_budget

    if "v-bound-latency-only" in STRATEGIES:
        return

    class LatencyOnly(optuna.pruners.BasePruner):
        def prune(self, study, trial) -> bool:
            best, m = best_in_budget(study, "latency"), trial.user_attrs.get("metrics") or {}
            return best is not None and bool(m) and m["latency_ratio"] > best * 1.1

    @STRATEGIES.register("v-bound-latency-only")
    def _strategy(seed, trials, fidelity, objective="latency"):
        return (optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(3, trials // 4), multivariate=True),
                LatencyOnly(), fidelity.fractions())
