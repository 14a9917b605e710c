"""Acceptance-scale evidence for `edgekit search` (issue 17) on the digits CNN.

Three parts, all sharing one stage cache (the teacher is trained once; identical students are built once):

1. **search vs the hand-written demo**: `run_search(recipes/digits_search.yaml)` with the demo's configuration
   (ResNet-14 student, 50% MACs, l2, minmax INT8 — recipes/digits_resnet.yaml's stages, CPU target) built through
   the same stages and re-measured together with the Pareto set (paired rounds on the test split, CI).
   ``--demo-artifact PATH`` uses a real `edgekit run recipes/digits_resnet.yaml` result instead.
2. **strategy vs random at equal trials**: `tpe-hyperband` and `random`, ``--seeds`` sampler seeds each, the same
   number of trials, neither started from the recipe's own configuration (``start_from_recipe: false``); the
   figure is the best in-budget (constraint-meeting, full-fidelity) latency ratio vs the float baseline, mean
   over seeds (lower is better), with the wall time of each search.
3. **1 vs 2 local workers**: the same random search (same seed, so the same configurations) with 1 and 2 worker
   processes, each on a fresh cache that already holds the teacher; throughput = finished trials per minute.

``--scale small`` runs the same protocol on 16×16 digits with a ResNet-20 teacher (for a loaded machine);
``--scale full`` is the acceptance configuration (recipes/digits_search.yaml as written).

``--acceptance-from DIR --acceptance-wall-s S`` reads part 1 from an `edgekit search ... --compare demo=...` run
already made (its ``search.json``; S = the command's wall time as ``time`` measured it), and ``--cache`` lets the
other parts reuse that run's stage cache. Raw figures go to ``benchmarks/results/search.json``; the section of
docs/BENCHMARKS.md is rendered from it.

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

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
RESULTS = ROOT / "benchmarks" / "results" / "search.json"
PLOT = ROOT / "docs" / "img" / "search_pareto.png"

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
    vals = [r["latency_ratio"] for r in rows if r["feasible"] and r["fidelity"] == 1.0]
    return min(vals) if vals else None


def strategies(recipe: Path, out: Path, cache: Path, seeds: list, trials: int) -> dict:
    from edgekit.search import run_search

    table = {}
    for strategy in ("tpe-hyperband", "random"):
        for seed in seeds:
            t0 = time.time()
            d = out / f"{strategy}-s{seed}"
            try:
                res = run_search(recipe, out_dir=d, cache_dir=cache, trials=trials, strategy=strategy, seed=seed,
                                 start_from_recipe=False)  # the strategies alone, not the recipe's point
                rows = res.rows
            except Exception as e:  # an unmeetable run still wrote its table
                print(f"{strategy} seed {seed}: {e}")
                rows = json.loads((d / "search.json").read_text())["trials"]
            table[f"{strategy}/{seed}"] = {"best_ratio": best_in_budget(rows), "wall_s": round(time.time() - t0, 1),
                                           "pruned": sum(r["state"] == "pruned" for r in rows)}
            print(strategy, seed, table[f"{strategy}/{seed}"], flush=True)
    summary = {}
    for strategy in ("tpe-hyperband", "random"):
        vals = [table[f"{strategy}/{s}"]["best_ratio"] for s in seeds]
        ok = [v for v in vals if v is not None]
        summary[strategy] = {"mean_best_ratio": round(sum(ok) / len(ok), 4) if ok else None, "per_seed": vals,
                             "found_in_budget": f"{len(ok)}/{len(seeds)}",
                             "mean_wall_s": round(sum(table[f"{strategy}/{s}"]["wall_s"] for s in seeds) / len(seeds),
                                                  1)}
    return {"runs": table, "summary": summary}


def workers_throughput(recipe: Path, out: Path, cache: Path, trials: int) -> dict:
    from edgekit.search import run_search

    teacher = sorted(cache.glob("00-train-*"))
    res = {}
    for workers in (1, 2):
        wcache = out / f"cache-w{workers}"
        shutil.rmtree(wcache, ignore_errors=True)
        wcache.mkdir(parents=True)
        for t in teacher:  # only the teacher is shared: every trial's own stages are built afresh
            if t.is_dir():
                shutil.copytree(t, wcache / t.name)
        t0 = time.time()
        r = run_search(recipe, out_dir=out / f"workers-{workers}", cache_dir=wcache, trials=trials,
                       strategy="random", seed=0, workers=workers, start_from_recipe=False)
        wall = time.time() - t0
        res[workers] = {"wall_s": round(wall, 1), "trials": len(r.rows),
                        "trials_per_min": round(60 * len(r.rows) / wall, 2)}
        print("workers", workers, res[workers], flush=True)
    res["speedup"] = round(res[2]["trials_per_min"] / res[1]["trials_per_min"], 2)
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
        result["strategies"] = strategies(recipe, out, cache, [int(s) for s in a.seeds.split(",")], a.trials or 16)
    if "workers" in parts:
        result["workers"] = workers_throughput(recipe, out, cache, a.workers_trials)
    result["load_after"] = load_average()
    return result


def _fmt_ci(ci: Optional[list], digits: int = 3) -> str:
    return f"{ci[0]:.{digits}f}–{ci[1]:.{digits}f}" if ci else "–"


def _acceptance_md(acc: dict) -> List[str]:
    lines = [f"**Search vs the hand-written demo** (`{acc['command']}`): {acc['wall_s']:.0f} s in all "
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
    lines = ["", "**1 vs 2 local workers** (the same random trials, fresh caches holding only the teacher):", "",
             "| workers | trials | wall s | trials/min |", "|---|---|---|---|"]
    for k in ("1", "2"):
        r = w.get(k) or w.get(int(k))
        lines.append(f"| {k} | {r['trials']} | {r['wall_s']:.0f} | {r['trials_per_min']:.2f} |")
    lines.append(f"\nThroughput 2 / 1 workers: **{w['speedup']:.2f}×**.")
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
                               parts="acceptance,strategies,workers", workers_trials=2 if quick else 4,
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
    p.add_argument("--workers-trials", type=int, default=4)
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
