"""Acceptance-scale evidence for `edgekit search` (issue 17) on the digits CNN.

Three parts, all sharing one stage cache (the teacher is trained once; identical students are built once):

1. **search vs the hand-written demo**: `run_search(recipes/digits_search.yaml)` with the demo's configuration
   (ResNet-14 student, 50% MACs, l2, minmax INT8 — recipes/digits_resnet.yaml's stages, CPU target) built through
   the same stages and re-measured together with the Pareto set (paired rounds on the test split, CI).
   ``--demo-artifact PATH`` uses a real `edgekit run recipes/digits_resnet.yaml` result instead.
2. **strategy vs random at equal trials**: ``--strategies`` (the default `tpe-bound`, then `random`), ``--seeds``
   sampler seeds each, the same number of trials, neither started from the recipe's own configuration
   (``start_from_recipe: false``). A trial's own latency figure (5 paired rounds, each trial in its own session)
   moves by up to 20 % between sessions, and the minimum of such figures favours the search that measured more
   trials at full fidelity, so after all searches each one's chosen artifact and every in-budget full-fidelity
   artifact are re-timed **together** (one interleaved session with the float teacher, ``--remeasure-rounds``
   rounds, test split). The headline is the chosen artifact's re-measured ratio vs the float baseline (lower is
   better), mean over seeds, and tpe − random paired by seed (mean ± 95 % t half-width); the trial-time figures and
   wall times are kept. A second run with the same ``--work`` reuses the searches it finds finished.
3. **1 vs 2 local workers**: the same random search (same seed, so the same configurations) with 1 and 2 worker
   processes, each on a fresh cache that already holds the teacher; throughput = finished trials per minute.

``--scale small`` runs the same protocol on 16×16 digits with a ResNet-20 teacher (for a loaded machine);
``--scale full`` is the acceptance configuration (recipes/digits_search.yaml as written).

``--acceptance-from DIR --acceptance-wall-s S`` reads part 1 from an `edgekit search ... --compare demo=...` run
already made (its ``search.json``; S = the command's wall time as ``time`` measured it), and ``--cache`` lets the
other parts reuse that run's stage cache. Raw figures go to ``benchmarks/results/search.json`` (a ``--parts``
run replaces only its parts there); the section of docs/BENCHMARKS.md is rendered from it.

Example:
    PYTHONPATH=$PWD python benchmarks/bench_search.py --scale full --work /tmp/bench_search --trials 16 --seeds 0,1,2
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import List, Optional

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _stats import t_half_width  # noqa: E402  (a sibling module in benchmarks/)

RESULTS = ROOT / "benchmarks" / "results" / "search.json"
PLOT = ROOT / "docs" / "img" / "search_pareto.png"
PARTS = ("acceptance", "strategies", "workers")

DEMO = {"student.student.depth": 14, "student.student.width": 1.0, "student-pruned.macs_target": 0.5,
        "student-pruned.importance": "l2", "student-pruned-int8.method": "minmax"}


def small_recipe(out: Path) -> Path:
    """recipes/digits_search.yaml at 16×16 with a ResNet-20 teacher and shorter fine-tunes (same search space)."""
    raw = yaml.safe_load((ROOT / "recipes" / "digits_search.yaml").read_text())
    raw["name"] = "digits_search_small"
    raw["model"] = {"name": "resnet_cifar", "kwargs": {"depth": 20, "width": 1.0}}
    raw["data"]["image_size"] = 16
    raw["stages"][0]["epochs"] = 4
    raw["stages"][1]["train"]["epochs"] = 4
    raw["stages"][2]["finetune"]["epochs"] = 4
    raw["stages"][3].pop("calibration")  # the shipped npz is 32×32: draw calibration from the training split
    raw["search"]["space"]["student.student.depth"] = [8, 14]
    path = out / "digits_search_small.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def demo_artifact(recipe: Path, cache: Path) -> str:
    """The demo's configuration built through the search's stages (shares the teacher through the cache)."""
    from edgekit.search.driver import prepare_search, trial_job
    from edgekit.search.trial import build_trial

    setup = prepare_search(recipe, out_dir=cache.parent / "demo-setup", cache_dir=cache)
    job = trial_job(setup, DEMO, 1.0, workers=1)
    built = build_trial(job["raw"], setup.cache_dir, setup.lock_dir, job["threads"])
    return built["candidate"].onnx


def best_in_budget(rows: list) -> float | None:
    """The lowest trial-time latency ratio among a search's in-budget full-fidelity trials (as the search measured
    them: each its own 5-round paired figure, so the minimum is biased low, the more so the more trials it took)."""
    vals = [r["latency_ratio"] for r in rows if r["feasible"] and r["fidelity"] == 1.0]
    return min(vals) if vals else None


def search_picks(search_json: dict) -> dict:
    """What a finished search offers the joint re-measurement: its ``chosen`` artifact (the fastest in-budget member
    of its Pareto set, by its own final re-measurement on the test split: what `edgekit search` hands back), every
    distinct in-budget full-fidelity artifact it measured, and the float baseline its trials were timed against."""
    rows = search_json.get("trials") or []
    in_budget: dict = {}
    for r in rows:
        if r["state"] == "complete" and r["feasible"] and r["fidelity"] == 1.0 and r.get("artifact"):
            in_budget.setdefault(r["artifact"], r["trial"])
    chosen = search_json.get("chosen")
    return {"chosen": chosen["artifact"] if chosen else None, "chosen_trial": chosen["trial"] if chosen else None,
            "in_budget": sorted(in_budget), "trial_best": best_in_budget(rows),
            "baselines": sorted({r["baseline_artifact"] for r in rows if r.get("baseline_artifact")})}


def paired_difference(a: List[Optional[float]], b: List[Optional[float]]) -> dict:
    """``a - b`` paired by seed (seeds where either is missing are left out): mean and 95 % t half-width, and
    whether ``a`` is lower (or higher) than ``b`` beyond it."""
    d = np.asarray([x - y for x, y in zip(a, b) if x is not None and y is not None], float)
    if len(d) < 2:
        return {"n": len(d), "mean": round(float(d.mean()), 4) if len(d) else None, "half_width": None,
                "verdict": "too few seeds"}
    mean, half = float(d.mean()), t_half_width(d)
    verdict = "a lower" if mean + half < 0 else "a higher" if mean - half > 0 else "no difference beyond the CI"
    return {"n": len(d), "mean": round(mean, 4), "half_width": round(half, 4),
            "per_seed": [round(float(v), 4) for v in d], "verdict": verdict}


def remeasure_together(recipe: Path, out: Path, cache: Path, artifacts: List[str], baseline: str,
                       rounds: int) -> dict:
    """Every artifact and the float baseline timed in ONE interleaved session (after an interleaved warm-up) on the
    test split's first batch, each ratio the median of its per-round ratios with a bootstrap 95 % CI; plus each
    one's test accuracy and its drop from the float teacher's. ``{artifact: figures}``."""
    from edgekit.data import load_data
    from edgekit.search.driver import prepare_search
    from edgekit.search.measure import accuracy, bootstrap_ci, pair_x, time_paired

    setup = prepare_search(recipe, out_dir=out / "remeasure-setup", cache_dir=cache)
    obj, m, threads = setup.config.objective, setup.config.measure, setup.recipe.threads
    splits = load_data(setup.recipe.data, setup.recipe.seed)
    times = time_paired([baseline] + artifacts, obj.backend, pair_x(splits.test, obj.batch), threads, rounds,
                        m.warmup, 0.1 * rounds, max(1.0, m.warmup_s))
    teacher = accuracy(baseline, obj.backend, splits.test, threads)
    res = {"rounds": rounds, "baseline": baseline, "baseline_ms": round(float(np.median(times[0])), 4),
           "teacher_test_accuracy": round(teacher, 2), "max_accuracy_drop": setup.config.constraints.max_accuracy_drop,
           "artifacts": {}}
    for path, ms in zip(artifacts, times[1:]):
        ratios = ms / times[0]
        acc = accuracy(path, obj.backend, splits.test, threads)
        res["artifacts"][path] = {"ratio": round(float(np.median(ratios)), 4),
                                  "ci": [round(v, 4) for v in bootstrap_ci(ratios)],
                                  "test_accuracy": round(acc, 2), "test_drop": round(teacher - acc, 2)}
    return res


def _run_one(recipe: Path, d: Path, cache: Path, strategy: str, seed: int, trials: int) -> dict:
    from edgekit.errors import RunDirectoryError
    from edgekit.search import run_search

    wall = d / "bench-wall.json"  # a finished search is reused when the script is run again (same --work)
    if not wall.is_file():
        t0 = time.time()
        try:
            run_search(recipe, out_dir=d, cache_dir=cache, trials=trials, strategy=strategy, seed=seed,
                       start_from_recipe=False,  # the strategies alone, not the recipe's point
                       wall_time_s=7 * 86400)  # equal trials: not cut short by the recipe's wall-time budget
        except Exception as e:  # an unmeetable run still wrote its table
            if isinstance(e, RunDirectoryError):  # an interrupted search: not a result
                raise
            print(f"{strategy} seed {seed}: {e}")
        wall.write_text(json.dumps({"wall_s": round(time.time() - t0, 1)}))
    sj = json.loads((d / "search.json").read_text())
    rows = sj["trials"]
    return {"wall_s": json.loads(wall.read_text())["wall_s"], "pruned": sum(r["state"] == "pruned" for r in rows),
            "finished": sum(r["state"] in ("complete", "pruned") for r in rows),
            "full_fidelity": sum(r["state"] == "complete" and r["fidelity"] == 1.0 for r in rows),
            **search_picks(sj)}


def strategies(recipe: Path, out: Path, cache: Path, seeds: list, trials: int, rounds: int = 20,
               names: tuple = ("tpe-bound", "random")) -> dict:
    """Part 2: each strategy × seed searched, then every search's in-budget artifacts re-measured together."""
    from edgekit.core.platform import load_average

    load_before, date = load_average(), datetime.now(timezone.utc).isoformat(timespec="minutes")
    table = {}
    for seed in seeds:  # seed by seed: an interrupted run leaves pairs (a rerun reuses the finished searches)
        for strategy in names:
            table[f"{strategy}/{seed}"] = _run_one(recipe, out / f"{strategy}-s{seed}", cache, strategy, seed, trials)
            print(strategy, seed, {k: table[f"{strategy}/{seed}"][k] for k in ("trial_best", "chosen_trial",
                                                                                  "wall_s")}, flush=True)
    baselines = sorted({b for r in table.values() for b in r["baselines"]})
    if len(baselines) != 1:
        raise RuntimeError(f"the searches were timed against {len(baselines)} float baselines: {baselines}")
    artifacts = sorted({a for r in table.values() for a in r["in_budget"] + ([r["chosen"]] if r["chosen"] else [])})
    joint = remeasure_together(recipe, out, cache, artifacts, baselines[0], rounds)
    for r in table.values():
        r["chosen_ratio"] = joint["artifacts"][r["chosen"]]["ratio"] if r["chosen"] else None
        r["chosen_test_drop"] = joint["artifacts"][r["chosen"]]["test_drop"] if r["chosen"] else None
        best = min(r["in_budget"], key=lambda a: joint["artifacts"][a]["ratio"], default=None)
        r["best_found"] = best and joint["artifacts"][best]["ratio"]
    summary = {}
    for strategy in names:
        runs = [table[f"{strategy}/{s}"] for s in seeds]
        summary[strategy] = {k: _mean([r[k] for r in runs]) for k in ("chosen_ratio", "best_found", "trial_best")}
        summary[strategy].update({"found_in_budget": f"{sum(r['chosen'] is not None for r in runs)}/{len(seeds)}",
                                  "mean_wall_s": _mean([r["wall_s"] for r in runs], 1)})
    by = {k: {s: [table[f"{s}/{seed}"][k] for seed in seeds] for s in names}
          for k in ("chosen_ratio", "best_found", "trial_best")}
    diffs = {k: paired_difference(v[names[0]], v[names[1]]) for k, v in by.items()}
    return {"date": date, "load": [load_before, load_average()], "trials": trials, "seeds": seeds, "runs": table,
            "joint": joint, "summary": summary, "difference": diffs}


def _mean(vals: list, digits: int = 4) -> Optional[float]:
    ok = [v for v in vals if v is not None]
    return round(sum(ok) / len(ok), digits) if ok else None


# 4 points no stage refuses: with a budget of 4 and each configuration measured once, every run builds exactly these,
# whatever order its sampler draws them in (a seeded sampler asked from 2 threads draws other points than from 1)
FIXED_POINTS = {"student.student.depth": [8], "student.student.width": [0.75, 1.0],
                "student-pruned.macs_target": [0.7, 0.8], "student-pruned.importance": ["l2"],
                "student-pruned-int8.method": ["minmax"]}


def fixed_work_recipe(recipe: Path, out: Path) -> Path:
    """The search recipe with its space cut to FIXED_POINTS (the same work for every worker count)."""
    raw = yaml.safe_load(recipe.read_text())
    raw["search"]["space"] = FIXED_POINTS
    path = out / "workers_fixed_points.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def work_done(rows: List[dict], wall: float) -> dict:
    """Trials, trials that built a model, and distinct configurations built per minute (two workers can draw the same
    configuration at once: the second waits for the first's stages and reuses them, so it is not new work)."""
    built = [r for r in rows if not r["error"]]
    distinct = len({json.dumps(r["params"], sort_keys=True) for r in built})
    return {"trials": len(rows), "built": len(built), "distinct": distinct,
            "trials_per_min": round(60 * distinct / wall, 2)}


def workers_throughput(recipe: Path, out: Path, cache: Path, order: tuple = (1, 2, 2, 1)) -> dict:
    """The same 4 configurations (FIXED_POINTS) searched with 1 and 2 worker processes, each run on a fresh cache that
    holds only the teacher, in the order ``order`` (1 2 2 1: drift of the machine hits both alike). Throughput counts
    the distinct configurations built and measured."""
    from edgekit.core.platform import load_average
    from edgekit.search import run_search

    teacher = sorted(cache.glob("00-train-*"))
    recipe = fixed_work_recipe(recipe, out)
    runs = []
    for i, workers in enumerate(order):
        wcache = out / f"cache-w{workers}-{i}"
        shutil.rmtree(wcache, ignore_errors=True)
        shutil.rmtree(out / f"workers-{workers}-{i}", ignore_errors=True)
        wcache.mkdir(parents=True)
        for t in teacher:  # only the teacher is shared: every trial's own stages are built afresh
            if t.is_dir():
                shutil.copytree(t, wcache / t.name)
        load0, t0 = load_average(), time.time()
        r = run_search(recipe, out_dir=out / f"workers-{workers}-{i}", cache_dir=wcache, trials=len(FIXED_POINTS),
                       strategy="random", seed=0, workers=workers, start_from_recipe=False)
        wall = time.time() - t0
        runs.append({"workers": workers, "wall_s": round(wall, 1), **work_done(r.rows, wall),
                     "load": [load0, load_average()]})
        print("workers", runs[-1], flush=True)
    res: dict = {"order": list(order), "runs": runs}
    for w in (1, 2):
        mine = [r for r in runs if r["workers"] == w]
        res[str(w)] = {"wall_s": round(float(np.mean([r["wall_s"] for r in mine])), 1), "trials": mine[0]["trials"],
                       "built": mine[0]["built"],
                       "trials_per_min": round(float(np.mean([r["trials_per_min"] for r in mine])), 2)}
    res["speedup"] = round(res["2"]["trials_per_min"] / res["1"]["trials_per_min"], 2)
    return res


def acceptance_summary(search_json: dict, wall_s: float, command: str) -> dict:
    """What part 1 reports, from a search's ``search.json``: the chosen model and the demo re-measured together."""
    rows = search_json["trials"]
    final = {e["name"]: e for e in search_json.get("pareto") or []}
    chosen = search_json.get("chosen")
    params = {r["trial"]: r["params"] for r in rows}
    keep = ("name", "test_accuracy", "test_accuracy_ci", "teacher_test_accuracy", "test_accuracy_drop",
            "latency_ratio", "latency_ratio_ci", "latency_ms", "baseline_ms", "size_mb")
    models = [{**{k: e.get(k) for k in keep}, "params": params.get(e.get("trial")),
               "from_recipe": any(r["trial"] == e.get("trial") and r.get("from_recipe") for r in rows)}
              for e in final.values()]
    return {"command": command, "wall_s": round(wall_s, 1), "search_wall_s": search_json.get("search_wall_s"),
            "trials": sum(r["state"] in ("complete", "pruned") for r in rows),
            "pruned": sum(r["state"] == "pruned" for r in rows),
            "rejected": sum(bool(r.get("error")) for r in rows),
            "full_fidelity": sum(r["state"] == "complete" and r["fidelity"] == 1.0 for r in rows),
            "chosen": chosen and chosen["name"], "models": models,
            "comparisons": search_json.get("comparisons") or []}


def _acceptance(a: argparse.Namespace, recipe: Path, cache: Path) -> dict:
    if a.acceptance_from:
        d = Path(a.acceptance_from)
        res = acceptance_summary(json.loads((d / "search.json").read_text()), a.acceptance_wall_s or 0.0,
                                 f"edgekit search {recipe.relative_to(ROOT) if recipe.is_relative_to(ROOT) else recipe}"
                                 f" --compare demo=<demo run>/student-pruned-int8-cpu.onnx")
    else:
        from edgekit.search import run_search

        demo = a.demo_artifact or demo_artifact(recipe, cache)
        t0 = time.time()
        d = Path(a.work) / "acceptance"
        run_search(recipe, out_dir=d, cache_dir=cache, compare={"demo": demo},
                   **({"trials": a.trials} if a.trials else {}))
        res = acceptance_summary(json.loads((d / "search.json").read_text()), time.time() - t0,
                                 "bench_search.py (run_search with compare=demo)")
    res["date"] = datetime.fromtimestamp((d / "search.json").stat().st_mtime, timezone.utc).isoformat(
        timespec="minutes")  # when the search finished
    if (d / "pareto.png").is_file():
        PLOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(d / "pareto.png", PLOT)
    return res


def measure(a: argparse.Namespace) -> dict:
    from edgekit.core.platform import environment, load_average

    out = Path(a.work)
    out.mkdir(parents=True, exist_ok=True)
    recipe = small_recipe(out) if a.scale == "small" else ROOT / "recipes" / "digits_search.yaml"
    cache = Path(a.cache) if a.cache else out / "cache"
    env = environment()
    result = {"scale": a.scale, "recipe": recipe.name, "date": datetime.now(timezone.utc).isoformat(timespec="minutes"),
              "cpu": env["cpu_model"], "cores": env["cores_usable"], "load_before": load_average()}
    parts = a.parts.split(",")
    if "acceptance" in parts:
        result["acceptance"] = _acceptance(a, recipe, cache)
    if "strategies" in parts:
        result["strategies"] = strategies(recipe, out, cache, [int(s) for s in a.seeds.split(",")], a.trials or 16,
                                          a.remeasure_rounds, tuple(getattr(a, "strategies", "tpe-bound,random")
                                                                    .split(",")))
    if "workers" in parts:
        result["workers"] = workers_throughput(recipe, out, cache)
    result["load_after"] = load_average()
    return merge_parts(result, getattr(a, "out", None), parts)


def merge_parts(result: dict, saved: Optional[Path], parts: List[str]) -> dict:
    """A run of some parts keeps the other parts of the saved results file (same scale), with that file's header
    (date, machine, load); a part measured now carries its own ``date`` and ``load``."""
    if saved is None or not Path(saved).is_file() or set(PARTS) <= set(parts):
        return result
    old = json.loads(Path(saved).read_text())
    if old.get("scale") != result["scale"]:
        return result
    return {**old, **{p: result[p] for p in PARTS if p in parts and p in result}}


def _fmt_ci(ci: Optional[list], digits: int = 3) -> str:
    return f"{ci[0]:.{digits}f}–{ci[1]:.{digits}f}" if ci else "–"


def _acceptance_md(acc: dict) -> List[str]:
    when = f", finished {acc['date']}" if acc.get("date") else ""
    lines = [f"**Search vs the hand-written demo** (`{acc['command']}`{when}): {acc['wall_s']:.0f} s in all "
             f"({acc['trials']} trials, {acc['pruned']} stopped early of which {acc['rejected']} refused by a stage, "
             f"{acc['full_fidelity']} at full fidelity). Re-measured together on the test split:", "",
             "| model | configuration | test acc % (95% CI) | drop pt | latency vs float teacher (95% CI) | ms | MB |",
             "|---|---|---|---|---|---|---|"]
    for m in acc["models"]:
        cfg = ", ".join(f"{k.split('.')[-1]} {round(v, 10) if isinstance(v, float) else v}"  # 0.6000000000000001
                        for k, v in (m["params"] or {}).items()) or "the demo's artifact"
        name = m["name"] + (" **(chosen)**" if m["name"] == acc["chosen"] else "") + \
            (" = the recipe as written" if m["from_recipe"] else "")
        lines.append(f"| {name} | {cfg} | {m['test_accuracy']:.2f} ({_fmt_ci(m['test_accuracy_ci'], 1)}) | "
                     f"{m['test_accuracy_drop']:+.2f} | {m['latency_ratio']:.3f} ({_fmt_ci(m['latency_ratio_ci'])}) | "
                     f"{m['latency_ms']:.3f} | {m['size_mb']:.3f} |")
    for c in acc["comparisons"]:
        verdict = ("faster" if c["ci"][1] < 1 else "slower" if c["ci"][0] > 1 else "no difference beyond the CI")
        lines += ["", f"**{c['a']} / {c['b']} latency: {c['ratio']:.3f} (95% CI {_fmt_ci(c['ci'])}, {c['rounds']} "
                      f"paired rounds): {verdict}.**"]
    return lines


def _strategies_md(st: dict) -> List[str]:
    if "joint" not in st:
        return _strategies_trial_md(st)
    names = list(st["summary"])
    joint, budget = st["joint"], st["joint"]["max_accuracy_drop"]
    lines = ["", f"**Strategy vs random at equal trials** ({st['trials']} trials per search, seeds "
             f"{', '.join(map(str, st['seeds']))}; neither search started from the recipe's configuration; all share "
             f"one stage cache, so wall times mostly count cache hits and compare no cost; measured {st['date']}, "
             f"load average {st['load'][0]} before / {st['load'][1]} after). "
             f"Each search's chosen model (the fastest in budget of its own final re-measurement) and every in-budget "
             f"full-fidelity artifact of every search were then re-timed **together**: one interleaved session with "
             f"the float teacher, {joint['rounds']} paired rounds, on the test split. Latency ratio vs the float "
             f"teacher (lower is better), bootstrap 95 % CI; test accuracy drop in points (budget {budget}):", "",
             *([st["note"], ""] if st.get("note") else []),
             "| seed | " + " | ".join(f"{n}: chosen, re-measured (CI) | drop pt" for n in names) + " | difference |",
             "|---|" + "---|---|" * len(names) + "---|"]
    for seed in st["seeds"]:
        cells = []
        for n in names:
            r = st["runs"][f"{n}/{seed}"]
            e = joint["artifacts"].get(r["chosen"]) if r["chosen"] else None
            over = " (over budget)" if e and budget is not None and e["test_drop"] > budget else ""
            cells += [f"{e['ratio']:.3f} ({_fmt_ci(e['ci'])})" if e else "none in budget",
                      f"{e['test_drop']:+.2f}{over}" if e else "–"]
        pair = [st["runs"][f"{n}/{seed}"]["chosen_ratio"] for n in names]
        cells.append(f"{pair[0] - pair[1]:+.3f}" if None not in pair else "–")
        lines.append(f"| {seed} | " + " | ".join(cells) + " |")
    lines += ["", "| strategy | chosen, re-measured (mean) | best in-budget found, re-measured (mean) | best during "
              "search, trial figures (mean) | found in budget | mean wall s |", "|---|---|---|---|---|---|"]
    for n, s in st["summary"].items():
        lines.append(f"| {n} | {_num(s['chosen_ratio'])} | {_num(s['best_found'])} | {_num(s['trial_best'])} | "
                     f"{s['found_in_budget']} | {s['mean_wall_s']:.0f} |")
    labels = {"chosen_ratio": "chosen, re-measured", "best_found": "best in-budget found, re-measured",
              "trial_best": "best during search (trial figures)"}
    lines += ["", f"{names[0]} − {names[1]}, paired by seed (mean ± 95 % t half-width):"]
    for k, label in labels.items():
        d = st["difference"][k]
        pm = f"{d['mean']:+.4f} ± {d['half_width']:.4f}" if d["half_width"] is not None else _num(d["mean"])
        verdict = {"a lower": f"{names[0]} is faster", "a higher": f"{names[1]} is faster"}.get(d["verdict"],
                                                                                                 d["verdict"])
        lines.append(f"- {label}: {pm} (n = {d['n']}): {verdict}.")
    return lines


def _num(v: Optional[float]) -> str:
    return "–" if v is None else f"{v:.3f}"


def _strategies_trial_md(st: dict) -> List[str]:
    """The older results format: the trial-time figures only."""
    lines = ["", "**Strategy vs random at equal trials** (best in-budget latency ratio vs the float teacher at full "
             "fidelity, as each search measured it in its trials; lower is better; neither search started from the "
             "recipe's configuration; all share the acceptance run's stage cache, so wall times mostly count cache "
             "hits and compare no cost):", "",
             "| strategy | mean best ratio | per seed | found in budget | mean wall s |", "|---|---|---|---|---|"]
    for name, s in st["summary"].items():
        per = ", ".join("–" if v is None else f"{v:.3f}" for v in s["per_seed"])
        mean = "–" if s["mean_best_ratio"] is None else f"{s['mean_best_ratio']:.3f}"
        lines.append(f"| {name} | {mean} | {per} | {s['found_in_budget']} | {s['mean_wall_s']:.0f} |")
    return lines


def _workers_md(w: dict, cores: int) -> List[str]:
    lines = ["", "**1 vs 2 local workers** (the same 4 configurations, none refused, fresh caches holding only the "
             "teacher; throughput counts distinct configurations built and measured):", ""]
    if "runs" in w:
        lines += ["| run | workers | compute threads per trial | trials (built, distinct) | wall s | distinct "
                  "configurations/min | load before / after |", "|---|---|---|---|---|---|---|"]
        for i, r in enumerate(w["runs"], 1):
            lines.append(f"| {i} | {r['workers']} | {2 // r['workers']} | {r['trials']} ({r['built']}, "
                         f"{r.get('distinct', r['built'])}) | {r['wall_s']:.0f} | {r['trials_per_min']:.2f} | "
                         f"{r['load'][0]} / {r['load'][1]} |")
    else:
        lines += ["| workers | trials | wall s | trials/min |", "|---|---|---|---|"]
        for k in ("1", "2"):
            r = w.get(k) or w.get(int(k))
            lines.append(f"| {k} | {r['trials']} | {r['wall_s']:.0f} | {r['trials_per_min']:.2f} |")
    lines.append(f"\nThroughput 2 / 1 workers (mean of each): **{w['speedup']:.2f}×**.")
    if cores and w["speedup"] > cores:
        lines.append(f"That is more than {cores} cores can give: the two runs differ in more than the worker count "
                     "(a trial computes with all the recipe's threads at 1 worker, with half at 2) and in when "
                     "they ran, so read it as \"the pool runs trials concurrently\", not as a scaling figure.")
    return lines


def to_markdown(res: dict) -> str:
    """The BENCHMARKS.md section of a results file."""
    lines = ["## Search: the fastest model within the accuracy budget (issue 17)", "",
             f"`benchmarks/bench_search.py --scale {res['scale']}` ({res['recipe']}), {res['date']}, {res['cpu']}, "
             f"{res['cores']} cores, load average {res['load_before']} before / {res['load_after']} after. "
             "Latency figures are paired interleaved ratios; wall times move with the machine's load.", ""]
    if "acceptance" in res:
        lines += _acceptance_md(res["acceptance"])
        lines += ["", "![search Pareto front](img/search_pareto.png)"]
    if "strategies" in res:
        lines += _strategies_md(res["strategies"])
    if "workers" in res:
        lines += _workers_md(res["workers"], res.get("cores") or 0)
    return "\n".join(lines) + "\n"


def run(ctx) -> str:
    """The ``benchmarks/run_all.py`` interface (quick: the small scale, 4 trials, one seed)."""
    from _results_cli import run_section

    def measure_mode(mode: str) -> dict:
        quick = mode == "quick"
        a = argparse.Namespace(scale="small" if quick else "full", work=tempfile.mkdtemp(prefix="edgekit-search-"),
                               cache=None, trials=4 if quick else 16, seeds="0" if quick else "0,1,2",
                               parts="acceptance,strategies,workers",
                               remeasure_rounds=6 if quick else 20,
                               demo_artifact=None, acceptance_from=None, acceptance_wall_s=None)
        return measure(a)

    return run_section(ctx, "search.json", measure_mode, to_markdown)


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scale", choices=["small", "full"], default="full")
    p.add_argument("--work", default="/tmp/bench_search", help="where the searches are written")
    p.add_argument("--cache", default=None, help="stage cache to share (default: <work>/cache)")
    p.add_argument("--trials", type=int, default=None, help="trials per search (default: the recipe's for the "
                                                            "acceptance part, 16 for the strategies)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--parts", default="acceptance,strategies,workers")
    p.add_argument("--strategies", default="tpe-bound,random", help="the strategy to judge, then its baseline")
    p.add_argument("--remeasure-rounds", type=int, default=20, help="paired rounds of the joint re-measurement of "
                                                                    "the strategies' in-budget artifacts")
    p.add_argument("--demo-artifact", default=None, help="student-pruned-int8-cpu.onnx of an `edgekit run` of the "
                                                         "demo recipe (default: built here with the demo's config)")
    p.add_argument("--acceptance-from", default=None, help="a search directory made by `edgekit search --compare "
                                                           "demo=...` to report as part 1 instead of running it")
    p.add_argument("--acceptance-wall-s", type=float, default=None, help="that command's wall time (s)")


def main(argv: Optional[List[str]] = None) -> int:
    from _results_cli import results_main

    return results_main(argv, __doc__, RESULTS, to_markdown, _args, measure)


if __name__ == "__main__":
    raise SystemExit(main())
