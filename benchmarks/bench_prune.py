"""Issue 5 evidence: does structured pruning make the deployed model faster in ONNX Runtime?

Digits ResNet reference (ResNet-18, CIFAR stem, width 0.5, 3×32×32) trained ~97 %; pruned to 30 %, 50 % and
70 % fewer MACs (Torch-Pruning DepGraph, L1 importance, channels rounded to multiples of 8), each fine-tuned
with KD from the unpruned model; then MobileNetV2 and ResNet-18 at 224×224 (random weights, latency only).
Latency: ONNX Runtime CPU fp32, 2 threads, batch 1 and 8, all variants of one model interleaved in the same
rounds; speedup = median of per-round paired ratios (unpruned / pruned) with min–max. Accuracy is measured
through the exported ONNX model (ORT), on the test split.

    .venv/bin/python benchmarks/bench_prune.py            # prints the markdown section
    .venv/bin/python benchmarks/bench_prune.py --quick    # short fine-tunes and timings (smoke run)

``run(ctx)`` (the ``benchmarks/run_all.py`` interface) and ``section()`` return the markdown; raw figures go to
``benchmarks/results/prune.json``.
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
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
from edgekit.techniques.prune.prune import prune

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "prune.json"
# (fraction of MACs removed, channel multiple): 16 = one AVX-512 fp32 vector, ORT's NCHWc block on this CPU;
# the extra 8-aligned -50 % variant shows what misaligned channel counts cost.
VARIANTS = ((0.3, 16), (0.5, 16), (0.7, 16), (0.5, 8))
SETTINGS = {
    "full": {"ref_epochs": 5, "ft_epochs": 5, "timing": {"warmup": 10, "min_time": 1.5, "rounds": 8}},
    "quick": {"ref_epochs": 2, "ft_epochs": 1, "timing": {"warmup": 3, "min_time": 0.3, "rounds": 3}},
}
PRUNE = {"importance": "l1", "alpha": 0.7, "temperature": 4.0}  # KD from the unpruned model (teacher=...)
FINETUNE = {"lr": 0.02, "batch_size": 64, "schedule": "cosine"}


def _time(onnx_paths: Dict[str, Path], x: np.ndarray, batches, threads: int, timing: dict) -> Dict[str, dict]:
    """{variant: {batch: {ms, speedup, speedup_min, speedup_max}}}, speedups vs the first variant."""
    runners = {k: open_runner(str(p), "ort-cpu", threads=threads) for k, p in onnx_paths.items()}
    out: Dict[str, dict] = {k: {} for k in runners}
    for b in batches:
        xb = np.ascontiguousarray(np.resize(x, (b, *x.shape[1:])))
        cases = [Case(k, r, r.prepare(xb)) for k, r in runners.items()]
        res = run_interleaved(cases, warmup=timing["warmup"], min_time=timing["min_time"], rounds=timing["rounds"],
                              desc=f"ort-cpu b{b}", max_extra_rounds=0)
        med = res.round_medians
        for i, k in enumerate(runners):
            row = {"ms": float(np.median(med[i]))}
            row.update(ratio_summary(paired_ratios(med[0], med[i])))
            out[k][b] = row
    return out


def digits_reference(mode: str, work: Path, threads: int) -> dict:
    """Train the digits ResNet, prune it three ways with KD fine-tune, measure accuracy (ORT) and latency."""
    s = SETTINGS[mode]
    splits = load_data({"name": "digits", "image_size": 32, "channels": 3}, seed=0)
    torch.manual_seed(0)
    ref = create_model("resnet18", stem="cifar", width=0.5, in_channels=3, num_classes=10)
    t0 = time.perf_counter()
    fit(ref, splits.train, splits.val, {"epochs": s["ref_epochs"], "lr": 0.05}, seed=0, desc="reference")
    train_s = time.perf_counter() - t0
    x = splits.val.x[:8]
    paths = {"unpruned": export_onnx(ref, x, work / "digits_ref.onnx").path}
    rows = {"unpruned": {"macs_removed": 0.0, "params": sum(p.numel() for p in ref.parameters())}}
    for red, rt in VARIANTS:
        name = f"-{int(red * 100)}% MACs, ×{rt}"
        t0 = time.perf_counter()
        res = prune(ref, {**PRUNE, "macs_target": round(1 - red, 3), "round_to": rt,
                          "finetune": {**FINETUNE, "epochs": s["ft_epochs"]}},
                    example_input=x, train=splits.train, val=splits.val, teacher=ref, seed=0)
        paths[name] = export_onnx(res.model, x, work / f"digits_{int(red * 100)}_{rt}.onnx").path
        rows[name] = {"macs_removed": 1 - res.macs_fraction, "params": res.params_after, "macs": res.macs_after,
                      "round_to": rt, "channels": [(r["group"], r["before"], r["after"]) for r in res.layers],
                      "seconds": time.perf_counter() - t0, "val_accuracy": res.val_accuracy}
        rows["unpruned"]["macs"] = res.macs_before
    for k, p in paths.items():
        rows[k]["test_accuracy"] = evaluate(open_runner(str(p), "ort-cpu", threads=threads), splits.test)
    lat = _time(paths, x, (1, 8), threads, s["timing"])
    for k in rows:
        rows[k]["latency"] = lat[k]
    return {"train_seconds": train_s, "variants": rows}


def latency_224(arch: str, kwargs: dict, mode: str, work: Path, threads: int) -> dict:
    """Random-weight model at 224×224: unpruned vs 30/50/70 % fewer MACs, latency only."""
    torch.manual_seed(0)
    model = create_model(arch, num_classes=1000, in_channels=3, **kwargs).eval()
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    paths = {"unpruned": export_onnx(model, x, work / f"{arch}_224.onnx", atol=1e-2).path}
    rows: Dict[str, dict] = {"unpruned": {"macs_removed": 0.0, "params": sum(p.numel() for p in model.parameters())}}
    for red, rt in VARIANTS:
        name = f"-{int(red * 100)}% MACs, ×{rt}"
        res = prune(model, {**PRUNE, "macs_target": round(1 - red, 3), "round_to": rt, "finetune": {"epochs": 0}},
                    example_input=x)
        paths[name] = export_onnx(res.model, x, work / f"{arch}_{int(red * 100)}_{rt}.onnx", atol=1e-2,
                                  min_top1_agreement=0.0).path
        rows[name] = {"macs_removed": 1 - res.macs_fraction, "params": res.params_after, "macs": res.macs_after}
        rows["unpruned"]["macs"] = res.macs_before
    lat = _time(paths, x, (1, 8), threads, s_timing(mode))
    for k in rows:
        rows[k]["latency"] = lat[k]
    return {"variants": rows}


def s_timing(mode: str) -> dict:
    return SETTINGS[mode]["timing"]


def measure(mode: str = "full", threads: int = 2, work: Path | None = None, partial: Path | None = None) -> dict:
    """Every figure of the section as a dict; with ``partial``, each finished part is saved there as it lands."""
    from edgekit._log import configure_cli_logging

    configure_cli_logging()
    log = logging.getLogger("edgekit.benchmarks").info

    torch.set_num_threads(threads)
    out: dict = {"mode": mode, "threads": threads}
    parts = (("digits", lambda w: digits_reference(mode, w, threads)),
             ("mobilenetv2_224", lambda w: latency_224("mobilenetv2", {}, mode, w, threads)),
             ("resnet18_224", lambda w: latency_224("resnet18", {}, mode, w, threads)))
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-prune-") as d:
        for key, fn in parts:
            t0 = time.perf_counter()
            out[key] = fn(Path(work or d))
            log(f"bench_prune: {key} done in {time.perf_counter() - t0:.0f} s")
            if partial is not None:
                write_json_atomic(partial, out)
    return out


def _lat(lat: dict, b: int) -> dict:
    return lat[b] if b in lat else lat[str(b)]  # int keys become strings in the saved JSON


def _fmt_lat(lat: dict, b: int, base: bool) -> str:
    r = _lat(lat, b)
    if base:
        return f"{r['ms']:.2f} ms"
    return f"{r['ms']:.2f} ms ({r['speedup']:.2f}× [{r['speedup_min']:.2f}–{r['speedup_max']:.2f}])"


def to_markdown(res: dict) -> str:
    """Markdown section from :func:`measure`'s dict."""
    d = res["digits"]["variants"]
    base = d["unpruned"]
    lines = ["## Pruning: fewer MACs that run faster (issue 5)", "",
             "Digits ResNet reference (ResNet-18, CIFAR stem, width 0.5, 3×32×32); structured channel pruning with "
             "Torch-Pruning (L1 importance, channel counts rounded to multiples of ×16 or ×8, classifier outputs "
             "kept), "
             "MACs target searched, then KD fine-tune from the unpruned model. Accuracy: test split through the "
             f"exported ONNX model on ORT. Latency: ORT CPU fp32, {res['threads']} threads; speedup = median of "
             "per-round paired ratios vs unpruned [min–max].", "",
             "| variant | MACs removed | MACs (M) | params (k) | test acc % (ORT) | Δ acc | batch 1 | batch 8 |",
             "|---|---|---|---|---|---|---|---|"]
    for k, r in d.items():
        lines.append(f"| {k} | {r['macs_removed']:.0%} | {r['macs'] / 1e6:.1f} | {r['params'] / 1e3:.0f} | "
                     f"{r['test_accuracy']:.2f} | {r['test_accuracy'] - base['test_accuracy']:+.2f} | "
                     f"{_fmt_lat(r['latency'], 1, k == 'unpruned')} | {_fmt_lat(r['latency'], 8, k == 'unpruned')} |")
    acc = [k for k, r in d.items() if k != "unpruned" and r["macs_removed"] >= 0.5 - 1e-9 and r["round_to"] == 16]
    if acc:
        k = min(acc, key=lambda n: d[n]["macs_removed"])
        r = d[k]
        ok_acc = r["test_accuracy"] >= base["test_accuracy"] - 1.0
        ok_lat = _lat(r["latency"], 1)["speedup"] >= 1.6
        lines += ["", f"**Acceptance** ({k}): accuracy {r['test_accuracy']:.2f}% vs {base['test_accuracy']:.2f}% "
                      f"({'within' if ok_acc else 'NOT within'} 1.0 point); batch-1 ORT speedup "
                      f"{_lat(r['latency'], 1)['speedup']:.2f}× ({'meets' if ok_lat else 'misses'} ≥ 1.6×)."]
        ch = ", ".join(f"{g} {a}→{b}" for g, a, b in r["channels"])
        lines += ["", f"Channels kept per coupled group ({k}): {ch}."]
    a16, a8 = d.get("-50% MACs, ×16"), d.get("-50% MACs, ×8")
    if a16 and a8:
        s16, s8 = _lat(a16["latency"], 1)["speedup"], _lat(a8["latency"], 1)["speedup"]
        lines += ["", f"**Alignment**: at about the same MACs ({a16['macs_removed']:.0%} vs {a8['macs_removed']:.0%} "
                      f"removed), channel counts in multiples of 16 run {s16:.2f}× faster than unpruned at batch 1, "
                      f"multiples of 8 {s8:.2f}×."]
        if s16 > 1.1 * s8:
            lines[-1] += (" ONNX Runtime's x86 convolutions work on blocks of 16 fp32 channels (one AVX-512 vector, "
                          "NCHWc layout), so 24 or 40 channels cost about as much as 32 or 48: use `round_to: 16` for "
                          "ORT on AVX-512 CPUs (8 suits AVX2 and fp16 tensor cores).")
    for key, title in (("mobilenetv2_224", "MobileNetV2 (width 1.0)"), ("resnet18_224", "ResNet-18")):
        if key not in res:  # a partial results file (the run was interrupted)
            continue
        v = res[key]["variants"]
        lines += ["", f"**{title} at 224×224** (random weights, latency only, no fine-tune):", "",
                  "| variant | MACs removed | MACs (M) | params (M) | batch 1 | batch 8 |", "|---|---|---|---|---|---|"]
        for k, r in v.items():
            base = k == "unpruned"
            lines.append(f"| {k} | {r['macs_removed']:.0%} | {r['macs'] / 1e6:.0f} | {r['params'] / 1e6:.2f} | "
                         f"{_fmt_lat(r['latency'], 1, base)} | {_fmt_lat(r['latency'], 8, base)} |")
    lines += ["", "Caveat: this 2-core machine is shared; ORT's two-thread runs of models with many small ops "
                  "(MobileNetV2) slow down disproportionately when another process takes a core (the unpruned "
                  "MobileNetV2 ran 2.6 ms of kernel time per image in an ORT profile but 11 ms wall here), while the "
                  "smallest pruned variant does not, probably because its ops fall below ORT's parallelisation "
                  "threshold; its batch-1 ratio overstates the gain (ORT kernel-time profile: MobileNetV2 −50 % MACs "
                  "1.8×, −70 % 2.7×). The digits ResNet ratios were similar in a heavily loaded and a quieter run "
                  "(−50 % MACs ×16: 1.88× and 1.77× at batch 1)."]
    lines += ["", "Unstructured sparsity (`method: unstructured`) shrinks the compressed file but runs at dense "
                  "speed on these runtimes; 2:4 sparsity (`method: \"2:4\"`) needs TensorRT sparse tensor cores."]
    return "\n".join(lines) + "\n"


def run(ctx) -> str:
    """``benchmarks/run_all.py`` entry point."""
    path = Path(ctx.results_dir) / "prune.json"
    res = measure("quick" if ctx.quick else "full", ctx.threads, ctx.work_dir, partial=path)
    write_json_atomic(path, res)
    return to_markdown(res)


def section(quick: bool = False, threads: int = 2) -> str:
    """The markdown section (runs the whole measurement; raw figures to benchmarks/results/prune.json)."""
    res = measure("quick" if quick else "full", threads, partial=RESULTS)
    write_json_atomic(RESULTS, res)
    return to_markdown(res)


def main(argv: List[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--from-json", default=None, help="re-render the markdown from a saved results file")
    args = p.parse_args(argv)
    if args.from_json:
        import json

        print(to_markdown(json.loads(Path(args.from_json).read_text())))
        return 0
    print(section(args.quick, args.threads))
    return 0


if __name__ == "__main__":
    sys.exit(main())
