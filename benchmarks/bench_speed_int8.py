"""Issue 14 evidence: speed-aware INT8 on an ONNX model whose first conv has one input channel.

The model is PyTorch's MNIST example network (Conv 1→32 3×3, Conv 32→64 3×3, max-pool, Linear 9216→128,
Linear 128→10), trained on digits resized to 1×28×28 and exported to ONNX: the kind of third-party file whose
all-layer INT8 is slower than fp32 on ONNX Runtime CPU at larger batches. Three artifacts of the same file:

- ``fp32``: the export;
- ``int8 all layers``: ``quantize(..., {"speed_fallback": False})``;
- ``int8 default``: ``quantize(...)`` with the defaults (speed fallback on, batches 1, 8, 32).

Test accuracy through each ONNX file, and ORT CPU latency at batch 1, 8, 32 with every artifact interleaved in
the same rounds; speed-up = median of per-round paired ratios vs fp32 with min–max and a 95 % bootstrap CI.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_speed_int8.py [--quick] [--threads 1]

Raw figures go to ``benchmarks/results/speed_int8.json``.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch
from _results_cli import results_main, run_section  # a sibling module in benchmarks/
from torch import nn

from edgekit.backends import open_runner
from edgekit.core.measure.latency import Case, paired_ratios, ratio_summary, run_interleaved
from edgekit.core.platform import load_average
from edgekit.core.train import evaluate, fit
from edgekit.data import load_data
from edgekit.export import export_onnx
from edgekit.pipeline.report import ratio_ci
from edgekit.techniques.quantize.ptq import quantize

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "speed_int8.json"
SETTINGS = {"full": {"epochs": 6, "rounds": 15, "min_time": 1.0},
            "quick": {"epochs": 2, "rounds": 5, "min_time": 0.2}}
BATCHES = (1, 8, 32)


def mnist_example_net() -> nn.Module:
    """The network of PyTorch's examples/mnist (dropout omitted: inference only)."""
    return nn.Sequential(nn.Conv2d(1, 32, 3), nn.ReLU(), nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(9216, 128), nn.ReLU(), nn.Linear(128, 10))


def _time(paths: Dict[str, Path], x: np.ndarray, rounds: int, min_time: float, threads: int) -> Dict[str, dict]:
    runners = {k: open_runner(str(p), "ort-cpu", threads=threads) for k, p in paths.items()}
    out: Dict[str, dict] = {k: {} for k in runners}
    for b in BATCHES:
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


def measure(mode: str = "full", threads: int = 1) -> dict:
    s = SETTINGS[mode]
    splits = load_data({"name": "digits", "image_size": 28, "channels": 1}, seed=0)
    torch.manual_seed(0)
    net = mnist_example_net()
    fit(net, splits.train, splits.val, {"optimizer": "adam", "lr": 1e-3, "batch_size": 64, "epochs": s["epochs"]},
        seed=0, desc="mnist net")
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-speed-int8-") as d:
        w = Path(d)
        paths = {"fp32": export_onnx(net, splits.val.x[:8], w / "mnist.onnx").path}
        calib = splits.train.x[:128]
        runs = {"int8 all layers": ({"speed_fallback": False}, w / "all.onnx"),
                "int8 default": ({}, w / "default.onnx")}
        sidecars = {}
        for name, (cfg, out) in runs.items():
            res = quantize(paths["fp32"], cfg, calib=calib, out_path=out, val=splits.val, threads=threads)
            paths[name], sidecars[name] = out, res.sidecar
        acc = {}
        for k, p in paths.items():
            r = open_runner(str(p), "ort-cpu", threads=threads)
            acc[k] = evaluate(r, splits.test)
            r.close()
        load_before = load_average()
        lat = _time(paths, splits.val.x[:32], s["rounds"], s["min_time"], threads)
    speed = sidecars["int8 default"].get("speed") or {}
    return {"mode": mode, "threads": threads, "load_average_before_timing": load_before,
            "rows": {k: {"test_accuracy": acc[k], "latency": lat[k]} for k in paths},
            "default_policy": speed.get("policy"), "float_nodes": speed.get("float_nodes", []),
            "flagged": speed.get("flagged", [])}


def _cell(r: dict) -> str:
    ci = r.get("ci")
    cis = f" [CI {ci[0]:.2f}–{ci[1]:.2f}]" if ci else ""
    return f"{r['ms']:.3f} ms, {r['speedup']:.2f}× ({r['speedup_min']:.2f}–{r['speedup_max']:.2f}){cis}"


def to_markdown(res: dict) -> str:
    out = ["## Speed-aware INT8 on a one-input-channel ONNX (issue 14)", "",
           f"PyTorch's MNIST example net on digits 1×28×28, ORT CPU, {res['threads']} thread(s), load average "
           f"{res['load_average_before_timing']} before timing; speed-up vs fp32 = median of per-round paired "
           "ratios (min–max) [95 % bootstrap CI].", "",
           "| artifact | test % | batch 1 | batch 8 | batch 32 |", "|---|---|---|---|---|"]
    for k, r in res["rows"].items():
        lat = r["latency"]
        cells = (_cell(lat[b] if b in lat else lat[str(b)]) for b in BATCHES)  # str keys after a JSON round trip
        out.append(f"| {k} | {r['test_accuracy']:.1f} | " + " | ".join(cells) + " |")
    out += ["", f"Default policy chosen: **{res['default_policy']}**; kept float for speed: "
            f"{', '.join(res['float_nodes']) or 'none'}.", ""]
    return "\n".join(out)


def run(ctx) -> str:
    """The ``benchmarks/run_all.py`` interface."""
    return run_section(ctx, "speed_int8.json", measure, to_markdown)


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int, default=1)


def main(argv: List[str] | None = None) -> int:
    return results_main(argv, __doc__, RESULTS, to_markdown, _args,
                        lambda a: measure("quick" if a.quick else "full", a.threads))


if __name__ == "__main__":
    raise SystemExit(main())
