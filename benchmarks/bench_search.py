"""Acceptance-scale evidence for `edgekit search` (issue 17) on the digits CNN.

Three parts, all sharing one stage cache (the teacher is trained once; identical students are built once):

1. **search vs the hand-written demo**: `run_search(recipes/digits_search.yaml)` with the demo's configuration
   (ResNet-14 student, 50% MACs, l2, minmax INT8 — recipes/digits_resnet.yaml's stages, CPU target) built through
   the same stages and re-measured together with the Pareto set (paired rounds on the test split, CI).
   ``--demo-artifact PATH`` uses a real `edgekit run recipes/digits_resnet.yaml` result instead.
2. **strategy vs random at equal trials**: `tpe-hyperband` and `random`, ``--seeds`` sampler seeds each, the same
   number of trials; the figure is the best in-budget (constraint-meeting, full-fidelity) latency ratio vs the
   float baseline, mean over seeds (lower is better), with the wall time of each search.
3. **1 vs 2 local workers**: the same random search (same seed, so the same configurations) with 1 and 2 worker
   processes, each on a fresh cache that already holds the teacher; throughput = finished trials per minute.

``--scale small`` runs the same protocol on 16×16 digits with a ResNet-20 teacher (for a loaded machine);
``--scale full`` is the acceptance configuration (recipes/digits_search.yaml as written).

Example:
    PYTHONPATH=$PWD python benchmarks/bench_search.py --scale full --out /tmp/bench_search --trials 16 --seeds 0,1,2
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

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
                res = run_search(recipe, out_dir=d, cache_dir=cache, trials=trials, strategy=strategy, seed=seed)
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
                       strategy="random", seed=0, workers=workers)
        wall = time.time() - t0
        res[workers] = {"wall_s": round(wall, 1), "trials": len(r.rows),
                        "trials_per_min": round(60 * len(r.rows) / wall, 2)}
        print("workers", workers, res[workers], flush=True)
    res["speedup"] = round(res[2]["trials_per_min"] / res[1]["trials_per_min"], 2)
    return res


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", choices=["small", "full"], default="full")
    p.add_argument("--out", default="/tmp/bench_search")
    p.add_argument("--trials", type=int, default=16)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--parts", default="acceptance,strategies,workers")
    p.add_argument("--workers-trials", type=int, default=4)
    p.add_argument("--demo-artifact", default=None, help="student-pruned-int8-cpu.onnx of an `edgekit run` of the "
                                                         "demo recipe (default: built here with the demo's config)")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    recipe = small_recipe(out) if args.scale == "small" else ROOT / "recipes" / "digits_search.yaml"
    cache = out / "cache"
    parts, result = args.parts.split(","), {"scale": args.scale, "recipe": str(recipe)}
    if "acceptance" in parts:
        from edgekit.search import run_search

        t0 = time.time()
        demo = args.demo_artifact or demo_artifact(recipe, cache)
        result["demo_build_s"] = round(time.time() - t0, 1)
        t0 = time.time()
        res = run_search(recipe, out_dir=out / "acceptance", cache_dir=cache, trials=args.trials,
                         compare={"demo": demo})
        result["acceptance"] = {"wall_s": round(time.time() - t0, 1), "chosen": res.chosen,
                                "comparisons": res.comparisons, "summary": res.summary}
        print("\n".join(res.summary), flush=True)
    if "strategies" in parts:
        result["strategies"] = strategies(recipe, out, cache, [int(s) for s in args.seeds.split(",")], args.trials)
    if "workers" in parts:
        result["workers"] = workers_throughput(recipe, out, cache, args.workers_trials)
    (out / "bench_search.json").write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps({k: v for k, v in result.items() if k != "acceptance"}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
