"""Issue 15 evidence: INT8 that holds accuracy on a BERT encoder, timed against the *fused* fp32 graph.

A Hugging Face BERT (4 layers × 128 hidden, 4 heads, sequence 128; quick: 2 × 64, sequence 64) trained briefly
on the built-in documentation-topics text set (5 classes), exported with edgekit's default fusion (ONNX
Runtime's transformer optimizer: EmbedLayerNormalization, Attention, SkipLayerNormalization, BiasGelu) and its
unfused sibling. Artifacts of that one export:

- ``fp32 fused`` (the baseline) and ``fp32 unfused`` (what fusion buys);
- ``static naive``: static INT8 of every op ORT can quantise (``transformer_scope: false``);
- ``static + exclusions``: edgekit's default static INT8 for transformers (MatMul/Gemm with weights only;
  LayerNorm, Softmax, GELU, residual Adds, embeddings and attention products kept float, with reasons);
- ``static + SmoothQuant``: the same after SmoothQuant (alpha 0.5);
- ``dynamic``: dynamic INT8 of the fused graph (QAttention + MatMulInteger), edgekit's default for encoders.

The speed fallback is off for the static variants, so each row shows its policy alone. Test accuracy and
top-1 agreement with fp32 through each file on ORT CPU; INT8 MAC share from the sidecars; ORT CPU and OpenVINO
latency at batch 1 and 8, every artifact interleaved in the same rounds; speed-up = median of per-round paired
ratios vs ``fp32 fused`` on the same backend, min–max and a 95 % bootstrap CI.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_transformer_int8.py [--quick | --mode smoke] [--threads 1]
    PYTHONPATH=. .venv/bin/python benchmarks/bench_transformer_int8.py --from-json <results.json>

Raw figures go to ``benchmarks/results/transformer_int8.json``.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import torch
from _results_cli import results_main, run_section  # a sibling module in benchmarks/

from edgekit._io import read_sidecar
from edgekit.backends import open_runner
from edgekit.core.measure.latency import Case, paired_ratios, ratio_summary, run_interleaved
from edgekit.core.platform import load_average
from edgekit.core.tensors import take
from edgekit.core.train import evaluate, fit, predict
from edgekit.data import load_data
from edgekit.errors import EdgekitError
from edgekit.export import export_onnx
from edgekit.models import create_model
from edgekit.pipeline.report import ratio_ci
from edgekit.techniques.quantize.ptq import quantize

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "transformer_int8.json"
SETTINGS = {
    "full": {"layers": 4, "hidden": 128, "heads": 4, "seq": 128, "epochs": 8, "rounds": 15, "min_time": 1.0},
    "quick": {"layers": 2, "hidden": 64, "heads": 2, "seq": 64, "epochs": 1, "rounds": 3, "min_time": 0.1},
    # a trained small model in ~5 minutes: enough for the accuracy columns, not for timing on a shared machine
    "smoke": {"layers": 2, "hidden": 128, "heads": 4, "seq": 64, "epochs": 6, "rounds": 5, "min_time": 0.2},
}
BATCHES = (1, 8)
BASE = "fp32 fused"
QUANT = {
    "static naive": {"mode": "static", "transformer_scope": False, "speed_fallback": False},
    "static + exclusions": {"mode": "static", "speed_fallback": False},
    "static + SmoothQuant": {"mode": "static", "speed_fallback": False, "smoothquant": {"alpha": 0.5}},
    "dynamic": {"mode": "dynamic"},
}
BACKENDS = ("ort-cpu", "openvino")


def _train(s: dict, seed: int = 0):
    splits = load_data({"name": "doc_topics", "max_length": s["seq"]}, seed=seed)
    torch.manual_seed(seed)
    config = {"model_type": "bert", "num_hidden_layers": s["layers"], "hidden_size": s["hidden"],
              "num_attention_heads": s["heads"], "intermediate_size": 4 * s["hidden"],
              "max_position_embeddings": s["seq"]}
    model = create_model("hf", config=config, num_classes=splits.num_classes, vocab_size=splits.vocab_size)
    fit(model, splits.train, splits.val, {"optimizer": "adamw", "lr": 2e-4, "weight_decay": 0.01, "batch_size": 32,
                                          "epochs": s["epochs"], "warmup_epochs": 1}, seed=seed, desc="bert")
    return model.eval(), splits, config


def _artifacts(model, splits, w: Path, threads: int) -> tuple:
    """{name: path} of every artifact, and {name: sidecar}."""
    fused = export_onnx(model, take(splits.val.x, slice(0, 64)), w / "bert.onnx").path
    side = read_sidecar(fused)
    paths = {BASE: fused, "fp32 unfused": fused.with_name(side["fusion"]["unfused"])}
    sidecars: Dict[str, dict] = {BASE: side}
    calib = take(splits.train.x, slice(0, 128))
    for name, cfg in QUANT.items():
        out = w / f"{name.replace(' ', '_').replace('+', 'p')}.onnx"
        res = quantize(fused, cfg, calib=calib if cfg["mode"] == "static" else None, out_path=out,
                       val=splits.val, threads=threads)
        paths[name], sidecars[name] = out, res.sidecar
    return paths, sidecars


def _accuracy(paths: Dict[str, Path], splits, threads: int) -> Dict[str, dict]:
    out, ref = {}, None
    for name, p in paths.items():
        with open_runner(str(p), "ort-cpu", threads=threads) as r:
            logits = predict(r, splits.test.x)
            acc = evaluate(r, splits.test)
        pred = logits.argmax(1)
        ref = pred if ref is None else ref
        out[name] = {"test_accuracy": acc, "agreement_with_fp32": float(100.0 * (pred == ref).mean())}
    return out


def _time(paths: Dict[str, Path], x: Any, backend: str, s: dict, threads: int) -> Dict[str, Any]:
    """Latency of every artifact that opens on ``backend``, interleaved, paired against fp32 fused."""
    runners, skipped = {}, {}
    for k, p in paths.items():
        try:
            runners[k] = open_runner(str(p), backend, threads=threads)
            runners[k](take(x, slice(0, 1)))
        except (EdgekitError, RuntimeError) as e:
            skipped[k] = str(e).splitlines()[0][:200]
            runners.pop(k, None)
    out: Dict[str, Any] = {k: {} for k in runners}
    if BASE not in runners:
        return {"skipped": skipped, "rows": {}}
    n = len(next(iter(x.values())))
    for b in BATCHES:
        xb = take(x, np.arange(b) % n)
        cases = [Case(k, r, r.prepare(xb)) for k, r in runners.items()]
        res = run_interleaved(cases, warmup=3, min_time=s["min_time"], rounds=s["rounds"], desc=f"{backend} b{b}",
                              max_extra_rounds=0)
        med = res.round_medians
        base = list(runners).index(BASE)
        for i, k in enumerate(runners):
            ratios = paired_ratios(med[base], med[i])
            out[k][b] = {"ms": float(np.median(med[i])), **ratio_summary(ratios), "ci": ratio_ci(list(ratios))}
    for r in runners.values():
        r.close()
    return {"skipped": skipped, "rows": out}


def measure(mode: str = "full", threads: int = 1) -> dict:
    """Train, export, quantise four ways, measure accuracy and paired latency; the results dict."""
    s = SETTINGS[mode]
    model, splits, config = _train(s)
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-transformer-int8-") as d:
        paths, sidecars = _artifacts(model, splits, Path(d), threads)
        acc = _accuracy(paths, splits, threads)
        load_before = load_average()
        x = take(splits.val.x, slice(0, 32))
        latency = {b: _time(paths, x, b, s, threads) for b in BACKENDS}
    rows = {}
    for k in paths:
        side = sidecars.get(k, {})
        rows[k] = {**acc[k], "int8_mac_fraction": side.get("int8_mac_fraction", 0.0),
                   "kept_float": len(side.get("kept_float") or []),
                   "kept_float_ops": sorted({r.get("op_type", "?") for r in side.get("kept_float") or []}),
                   "val": side.get("accuracy", {})}
    fusion = sidecars[BASE]["fusion"]
    return {"mode": mode, "threads": threads, "model": config, "sequence": s["seq"], "epochs": s["epochs"],
            "load_average_before_timing": load_before, "fusion": {k: fusion[k] for k in ("counts", "parity")},
            "smoothquant": {k: v for k, v in (sidecars["static + SmoothQuant"].get("smoothquant") or {}).items()
                            if k != "tensors"},
            "rows": rows, "latency": latency}


def _cell(r: dict) -> str:
    ci = r.get("ci")
    cis = f" [CI {ci[0]:.2f}–{ci[1]:.2f}]" if ci else ""
    return f"{r['ms']:.3f} ms, {r['speedup']:.2f}× ({r['speedup_min']:.2f}–{r['speedup_max']:.2f}){cis}"


def _latency_table(res: dict, backend: str) -> List[str]:
    lat = res["latency"][backend]
    out = [f"**{backend}** (speed-up vs fp32 fused on {backend})", "", "| artifact | batch 1 | batch 8 |",
           "|---|---|---|"]
    for k, per in lat["rows"].items():
        cells = (_cell(per[b] if b in per else per[str(b)]) for b in BATCHES)  # str keys after a JSON round trip
        out.append(f"| {k} | " + " | ".join(cells) + " |")
    out += [f"| {k} | not run: {why} | |" for k, why in lat["skipped"].items()]
    return out + [""]


def to_markdown(res: dict) -> str:
    """The BENCHMARKS.md section for a results dict."""
    m = res["model"]
    out = ["## INT8 that holds accuracy on a BERT encoder (issue 15)", "",
           f"HF BERT {m['num_hidden_layers']} layers × {m['hidden_size']} hidden, {m['num_attention_heads']} heads, "
           f"sequence {res['sequence']}, trained {res['epochs']} epochs on doc_topics (5 classes); {res['threads']} "
           f"thread(s), load average {res['load_average_before_timing']} before timing. Fused ops: "
           f"{res['fusion']['counts']} (fused vs unfused max |Δlogit| "
           f"{res['fusion']['parity']['max_abs_diff']:.1e}). SmoothQuant: {res['smoothquant']}.", "",
           "| artifact | test % | agreement with fp32 % | INT8 MAC share | kept float (ops) |", "|---|---|---|---|---|"]
    for k, r in res["rows"].items():
        ops = ", ".join(r["kept_float_ops"]) or "–"
        out.append(f"| {k} | {r['test_accuracy']:.1f} | {r['agreement_with_fp32']:.1f} | "
                   f"{100 * r['int8_mac_fraction']:.1f} % | {r['kept_float']} ({ops}) |")
    out.append("")
    for backend in res["latency"]:
        out += _latency_table(res, backend)
    return "\n".join(out)


def run(ctx) -> str:
    """The ``benchmarks/run_all.py`` interface."""
    return run_section(ctx, "transformer_int8.json", measure, to_markdown)


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="2 × 64, sequence 64, 1 epoch: does it run")
    p.add_argument("--mode", choices=sorted(SETTINGS), help="full | quick | smoke (2 × 128, 6 epochs)")
    p.add_argument("--threads", type=int, default=1)


def main(argv: List[str] | None = None) -> int:
    return results_main(argv, __doc__, RESULTS, to_markdown, _args,
                        lambda a: measure(a.mode or ("quick" if a.quick else "full"), a.threads))


if __name__ == "__main__":
    raise SystemExit(main())
