"""Issue 14 evidence: pruning a concat + squeeze-excitation CNN, and whether KD recovery beats training from scratch.

1. ``concat_se_cnn`` (width 32, 3×32×32 digits) trained briefly, pruned with ``macs_target`` 0.7 / 0.5 / 0.3
   (``round_to`` left at its default: the backend's alignment, 16 on AVX-512), each with KD fine-tune and
   ``compare_scratch``; widths, MACs reached, test accuracy, and ONNX Runtime fp32 latency at batch 1 and 8:
   1 intra-op thread, all variants interleaved in the same rounds, speedup = median of per-round paired ratios with
   min–max and a 95 % bootstrap CI.
2. A KD grid on a small ``concat_se_cnn`` (width 16, 16×16): the −50 %-MACs pruned model fine-tuned with logit KD
   for each (alpha, temperature, epochs), 3 seeds, against the same architecture trained from scratch with the same
   epochs; mean test accuracy ± 95 % t-interval over seeds.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_prune.py [--quick] [--parts concat,kd]

``run(ctx)`` (the ``benchmarks/run_all.py`` interface) and ``section()`` return the markdown; raw figures go to
``benchmarks/results/prune.json``.
"""
from __future__ import annotations

import argparse
import copy
import tempfile
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch

from edgekit._io import write_json_atomic
from edgekit.backends import open_runner
from edgekit.core.measure.latency import Case, paired_ratios, ratio_summary, run_interleaved
from edgekit.core.train import evaluate, fit
from edgekit.data import load_data
from edgekit.export import export_onnx
from edgekit.models import create_model
from edgekit.pipeline.report import ratio_ci
from edgekit.techniques.prune.prune import prune

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "prune.json"
SETTINGS = {
    "full": {"ref_epochs": 12, "ft_epochs": 6, "rounds": 15, "min_time": 1.0, "grid_epochs": (3, 6), "seeds": 3},
    "quick": {"ref_epochs": 4, "ft_epochs": 2, "rounds": 7, "min_time": 0.3, "grid_epochs": (3,), "seeds": 3},
}
TRAIN = {"optimizer": "adam", "lr": 3e-3, "batch_size": 64}
FINETUNE = {"optimizer": "adam", "lr": 2e-3, "batch_size": 64}


def _time(paths: Dict[str, Path], x: np.ndarray, batches, rounds: int, min_time: float) -> Dict[str, dict]:
    """{variant: {batch: ms, speedup (median of paired ratios vs the first variant), min, max, ci}}."""
    runners = {k: open_runner(str(p), "ort-cpu", threads=1) for k, p in paths.items()}
    out: Dict[str, dict] = {k: {} for k in runners}
    for b in batches:
        xb = np.ascontiguousarray(np.resize(x, (b, *x.shape[1:])))
        cases = [Case(k, r, r.prepare(xb)) for k, r in runners.items()]
        res = run_interleaved(cases, warmup=5, min_time=min_time, rounds=rounds, desc=f"ort-cpu b{b}",
                              max_extra_rounds=0)
        med = res.round_medians
        for i, k in enumerate(runners):
            ratios = paired_ratios(med[0], med[i])
            out[k][b] = {"ms": float(np.median(med[i])), **ratio_summary(ratios), "ci": ratio_ci(list(ratios))}
    for r in runners.values():
        r.close()
    return out


def concat_pruning(mode: str, work: Path) -> dict:
    """Train the concat+SE CNN, prune it to three MACs targets (KD + scratch comparison), time ORT fp32."""
    s = SETTINGS[mode]
    splits = load_data({"name": "digits", "image_size": 32, "channels": 3}, seed=0)
    torch.manual_seed(0)
    ref = create_model("concat_se_cnn", width=32, num_classes=10)
    fit(ref, splits.train, splits.val, {**TRAIN, "epochs": s["ref_epochs"]}, seed=0, desc="reference")
    x = splits.val.x[:8]
    paths = {"unpruned": export_onnx(ref, x, work / "ref.onnx").path}
    rows: Dict[str, dict] = {"unpruned": {"macs_fraction": 1.0, "test_accuracy": evaluate(ref, splits.test)}}
    for target in (0.7, 0.5, 0.3):
        res = prune(ref, {"macs_target": target, "compare_scratch": True, "alpha": 0.5, "temperature": 2.0,
                          "finetune": {**FINETUNE, "epochs": s["ft_epochs"]}},
                    train=splits.train, val=splits.val, teacher=copy.deepcopy(ref), seed=0)
        name = f"macs_target {target}"
        paths[name] = export_onnx(res.model, x, work / f"p{int(target * 100)}.onnx").path
        widths = sorted({w for r in res.layers for w in r["widths"].values()})
        rows[name] = {"macs_fraction": res.macs_fraction, "round_to": res.config.round_to, "aligned": res.aligned,
                      "widths": widths, "candidates": len(res.search), "val_kd": res.val_accuracy,
                      "val_scratch": res.scratch["val_accuracy"], "test_accuracy": evaluate(res.model, splits.test)}
    lat = _time(paths, x, (1, 8), s["rounds"], s["min_time"])
    for k in rows:
        rows[k]["latency"] = lat[k]
    return rows


def _mean_ci(values: List[float]) -> tuple:
    from scipy import stats

    v = np.asarray(values, float)
    half = float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")
    return float(v.mean()), half


def kd_grid(mode: str) -> dict:
    """KD (alpha, T, epochs) vs scratch on the −50 %-MACs pruned small concat+SE CNN, 3 seeds each."""
    s = SETTINGS[mode]
    splits = load_data({"name": "digits", "image_size": 16, "channels": 3}, seed=0)
    torch.manual_seed(0)
    ref = create_model("concat_se_cnn", width=16, num_classes=10)
    fit(ref, splits.train, splits.val, {**TRAIN, "epochs": 8}, seed=0, desc="grid reference")
    pruned = prune(ref, {"macs_target": 0.5, "round_to": 8, "finetune": {"epochs": 0}}, example_input=splits.val.x[:8])
    out = {"reference_test": evaluate(ref, splits.test), "macs_fraction": pruned.macs_fraction, "rows": []}
    seeds = range(s["seeds"])
    for epochs in s["grid_epochs"]:
        from edgekit.techniques.recovery import recover

        scratch = []
        for seed in seeds:  # what compare_scratch does (recovery.scratch_baseline), kept here to read test accuracy
            fresh = copy.deepcopy(pruned.model)
            torch.manual_seed(seed)
            for m in fresh.modules():
                if hasattr(m, "reset_parameters"):
                    m.reset_parameters()
            fit(fresh, splits.train, splits.val, {**FINETUNE, "epochs": epochs}, seed=seed)
            scratch.append(evaluate(fresh, splits.test))
        out["rows"].append({"method": "scratch", "epochs": epochs, "alpha": None, "temperature": None,
                            "test": scratch, "mean_ci": _mean_ci(scratch)})
        for alpha in (0.5, 0.9):
            for temp in (2.0, 4.0):
                accs = []
                for seed in seeds:
                    m = copy.deepcopy(pruned.model)
                    recover(m, ref, splits.train, splits.val, {**FINETUNE, "epochs": epochs}, temperature=temp,
                            alpha=alpha, seed=seed)
                    accs.append(evaluate(m, splits.test))
                out["rows"].append({"method": "prune+KD", "epochs": epochs, "alpha": alpha, "temperature": temp,
                                    "test": accs, "mean_ci": _mean_ci(accs)})
    return out


def _lat_cell(lat: dict, b: int) -> str:
    r = lat[b]
    ci = r.get("ci")
    cis = f" [CI {ci[0]:.2f}–{ci[1]:.2f}]" if ci else ""
    return f"{r['ms']:.3f} ms, {r['speedup']:.2f}× ({r['speedup_min']:.2f}–{r['speedup_max']:.2f}){cis}"


def to_markdown(res: dict) -> str:
    out = ["## Pruning a concat + SE CNN (issue 14)", ""]
    if "concat" in res:
        out += ["| variant | MACs kept | round_to | widths | val KD / scratch | test | ORT fp32 b1 | ORT fp32 b8 |",
                "|---|---|---|---|---|---|---|---|"]
        for k, r in res["concat"].items():
            vals = f"{r['val_kd']:.1f} / {r['val_scratch']:.1f}" if "val_kd" in r else "–"
            out.append(f"| {k} | {r['macs_fraction']:.3f} | {r.get('round_to', '–')} | {r.get('widths', '–')} | "
                       f"{vals} | {r['test_accuracy']:.1f} | {_lat_cell(r['latency'], 1)} | "
                       f"{_lat_cell(r['latency'], 8)} |")
        out.append("")
    if "kd" in res:
        g = res["kd"]
        out += [f"KD grid: width-16 concat+SE CNN (reference test {g['reference_test']:.1f}%), pruned to "
                f"{g['macs_fraction']:.3f} of its MACs, then fine-tuned; test accuracy mean ± 95% t-CI over 3 seeds.",
                "",
                "| method | epochs | alpha | T | test % (mean ± CI) |", "|---|---|---|---|---|"]
        for r in g["rows"]:
            m, h = r["mean_ci"]
            out.append(f"| {r['method']} | {r['epochs']} | {r['alpha'] or '–'} | {r['temperature'] or '–'} | "
                       f"{m:.2f} ± {h:.2f} |")
        out.append("")
    return "\n".join(out) + "\n"


def measure(mode: str = "full", parts=("concat", "kd"), work: Path | None = None) -> dict:
    res: dict = {"mode": mode}
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-prune-") as d:
        w = Path(work or d)
        if "concat" in parts:
            res["concat"] = concat_pruning(mode, w)
        if "kd" in parts:
            res["kd"] = kd_grid(mode)
    return res


def run(ctx) -> str:
    """The ``benchmarks/run_all.py`` interface."""
    res = measure("quick" if ctx.quick else "full", work=ctx.work_dir)
    write_json_atomic(Path(ctx.results_dir) / "prune.json", res)
    return to_markdown(res)


def section(quick: bool = False) -> str:
    res = measure("quick" if quick else "full")
    write_json_atomic(RESULTS, res)
    return to_markdown(res)


def main(argv: List[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--parts", default="concat,kd")
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args(argv)
    res = measure("quick" if a.quick else "full", tuple(a.parts.split(",")))
    write_json_atomic(a.out, res)
    print(to_markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
