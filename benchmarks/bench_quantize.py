"""INT8 quantisation evidence (issue 6): accuracy per calibration method, ORT CPU speed-ups, targets, LSTM, 224².

- Digits ResNet-18 (CIFAR stem, 3×32×32) at standard width (64–512 channels) and at width 0.5 (the demo's
  teacher), each trained 5 epochs here; fp32 vs int8 test accuracy for MinMax / Entropy / Percentile
  calibration (128 training samples) and int8 MAC coverage after ORT optimisation; the standard-width model
  also pruned (−50 % MACs, ×16 channels, KD fine-tune) and quantised.
- ORT CPU latency and efficiency fp32 vs int8 at batch 1 and 8 as paired interleaved ratios
  (``edgekit.bench.benchmark``), ``target: cpu`` (U8S8) vs ``target: tensorrt`` (symmetric S8S8) artifacts on
  ORT CPU; batch-1 fp32-vs-int8 ratios at 1 and 2 threads for every digits model.
- LSTM (digits as 8-step sequences) dynamic int8: accuracy, size and latency.
- MobileNetV2 / ResNet-18 at 3×224×224 (random weights, synthetic calibration): fp32 vs int8 latency.

Run through ``benchmarks/run_all.py`` (``run(ctx)``), or alone: ``python benchmarks/bench_quantize.py``.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("KMP_BLOCKTIME", "0")  # as run_all.py and the edgekit CLI
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

METHODS = [("minmax", {}), ("entropy", {}), ("percentile", {"percentile": 99.99})]
DIGITS = {"name": "digits", "image_size": 32, "channels": 3}
# (key, width, title, training). The acceptance model is the first: ResNet-18 as published (CIFAR stem), trained
# on digits; at full width it needs a smaller step and a warm-up (lr 0.05 without warm-up diverged to 28 %).
DIGITS_MODELS = (("resnet18", 1.0, "ResNet-18, standard width (64–512 channels)",
                  {"epochs": 5, "lr": 0.02, "batch_size": 32, "warmup_epochs": 0.5}),
                 ("resnet18-w0.5", 0.5, "ResNet-18 width 0.5 (32–256 channels; the demo recipe's teacher)",
                  {"epochs": 5, "lr": 0.05}))
ACCEPTANCE = {"model": "resnet18", "threads": 2, "accuracy_drop": 0.5, "speedup": 2.5}
PRUNE = {"macs_target": 0.5, "round_to": 16, "importance": "l1",
         "finetune": {"epochs": 3, "lr": 0.02, "batch_size": 64, "schedule": "cosine"}}


def _train_reference(work: Path, key: str, width: float, train: dict, seed: int = 0):
    import torch

    from edgekit.core.train import fit
    from edgekit.data import load_data
    from edgekit.export import export_onnx
    from edgekit.models import create_model

    splits = load_data(DIGITS, seed)
    torch.manual_seed(seed)
    model = create_model("resnet18", stem="cifar", width=width, in_channels=3, num_classes=10)
    t0 = time.perf_counter()
    fit(model, splits.train, splits.val, train, seed=seed, desc=f"train digits {key}")
    train_s = time.perf_counter() - t0
    path = export_onnx(model, splits.val.x[:32], work / f"digits_{key}_fp32.onnx").path
    return splits, model, path, train_s


def _acc(path, split, threads):
    from edgekit.backends import open_runner
    from edgekit.core.train import evaluate

    return evaluate(open_runner(path, "ort-cpu", threads=threads), split)


def _speed_rows(res):
    """{(model, batch): (p50_ms, speedup, min, max, rounds, efficiency)} from a BenchResult."""
    out = {}
    for r in res.rows:
        out[(r["model"], r["batch"])] = (r["p50_ms"], r["speedup"], r["speedup_min"], r["speedup_max"],
                                         r.get("rounds"), r.get("efficiency"))
    return out


def _paired_b1(fp32, int8, x1, threads: int, quick: bool) -> dict:
    """fp32 vs int8 only at batch 1: median (and spread) of per-round paired ratios.

    Two per-round statistics: the block's fastest iteration (what ``benchmark`` uses: contention on a shared
    machine only adds time) and the block median (what a loaded machine delivers).
    """
    from edgekit.backends import open_runner
    from edgekit.core.measure.latency import Case, paired_ratios, run_interleaved

    a, b = open_runner(fp32, "ort-cpu", threads=threads), open_runner(int8, "ort-cpu", threads=threads)
    rounds, min_time = (4, 0.3) if quick else (20, 3.0)
    res = run_interleaved([Case("fp32", a, a.prepare(x1)), Case("int8", b, b.prepare(x1))], warmup=50,
                          min_time=min_time, rounds=rounds, max_extra_rounds=0, desc=f"fp32 vs int8, {threads} thr")
    out = {"threads": threads, "rounds": rounds, "load_avg_1m": os.getloadavg()[0]}
    for stat in ("min", "median"):
        per_round = res.round_stat(stat)
        r = paired_ratios(per_round[0], per_round[1])
        out[stat] = {"speedup": float(np.median(r)), "min": float(r.min()), "max": float(r.max()),
                     "fp32_ms": float(np.median(per_round[0])), "int8_ms": float(np.median(per_round[1]))}
    return out


def _digits_model(work: Path, key: str, width: float, train: dict, threads: int, ctx) -> dict:
    """Train, quantise (3 calibration methods, 2 targets), optionally prune, and time one digits ResNet."""
    from edgekit.bench import ModelSpec, benchmark
    from edgekit.export import export_onnx
    from edgekit.techniques.prune.prune import prune
    from edgekit.techniques.quantize.ptq import quantize

    splits, model, fp32, train_s = _train_reference(work, key, width, train)
    calib = splits.train.x[:128]
    out: dict = {"width": width, "train": train, "train_seconds": round(train_s, 1),
                 "fp32_test": _acc(fp32, splits.test, threads), "methods": {}}
    artifacts = {"fp32": fp32}
    for method, kw in METHODS:
        res = quantize(fp32, {"target": "cpu", "method": method, **kw}, calib=calib,
                       out_path=work / f"digits_{key}_int8_cpu_{method}.onnx")
        if method == "minmax":
            artifacts["int8-cpu"] = res.artifact
        out["methods"][method] = {"int8_test": _acc(res.artifact, splits.test, threads),
                                  "int8_mac_fraction": res.int8_mac_fraction}
    trt = quantize(fp32, {"target": "tensorrt"}, calib=calib, out_path=work / f"digits_{key}_int8_tensorrt.onnx")
    artifacts["int8-tensorrt"] = trt.artifact
    out["tensorrt"] = {"int8_test": _acc(trt.artifact, splits.test, threads),
                       "int8_mac_fraction": trt.int8_mac_fraction,
                       "runtime_float_layers": len(trt.runtime_float_layers)}
    if key == ACCEPTANCE["model"]:
        x = splits.val.x[:8]
        pr = prune(model, PRUNE, example_input=x, train=splits.train, val=splits.val, teacher=model, seed=0)
        pf = export_onnx(pr.model, x, work / f"digits_{key}_pruned_fp32.onnx").path
        pq = quantize(pf, {"target": "cpu"}, calib=calib, out_path=work / f"digits_{key}_pruned_int8_cpu.onnx")
        artifacts["pruned-fp32"], artifacts["pruned-int8-cpu"] = pf, pq.artifact
        out["pruned"] = {"macs_fraction": pr.macs_fraction, "params_after": pr.params_after,
                         "params_before": pr.params_before, "fp32_test": _acc(pf, splits.test, threads),
                         "int8_test": _acc(pq.artifact, splits.test, threads),
                         "int8_mac_fraction": pq.int8_mac_fraction}
    specs = [ModelSpec(name, {"onnx": str(p)}) for name, p in artifacts.items()]
    bench = benchmark(specs, backends=("ort-cpu",), batches=(1, 8), threads=threads, baseline="fp32", plots=False,
                      **ctx.timing())
    out["latency"] = {f"{m}@b{b}": v for (m, b), v in _speed_rows(bench).items()}
    out["load_avg_1m"] = bench.config.get("load_avg_1m")
    x1 = splits.val.x[:1]
    pairs = {"fp32 → int8": ("fp32", "int8-cpu")}
    if "pruned-fp32" in artifacts:
        pairs["pruned fp32 → pruned int8"] = ("pruned-fp32", "pruned-int8-cpu")
    out["batch1"] = {label: [_paired_b1(artifacts[f], artifacts[q], x1, t, ctx.quick) for t in (1, threads)]
                     for label, (f, q) in pairs.items()}
    return out


def measure(ctx) -> dict:
    """Run every measurement; return plain numbers (also written to results/quantize.json)."""
    from edgekit.bench import ModelSpec, benchmark
    from edgekit.data import load_data
    from edgekit.export import export_onnx
    from edgekit.models import create_model
    from edgekit.techniques.quantize.dynamic import quantize_dynamic_model
    from edgekit.techniques.quantize.ptq import quantize

    work, threads = Path(ctx.work_dir), ctx.threads
    out: dict = {"threads": threads, "digits": {key: _digits_model(work, key, width, train, threads, ctx)
                                                for key, width, _, train in DIGITS_MODELS}}

    # LSTM, dynamic quantisation
    import torch

    from edgekit.core.train import fit

    seq = load_data({"name": "digits_seq"}, 0)
    torch.manual_seed(0)
    lstm = create_model("rnn_classifier", input_size=8, hidden_size=128, num_classes=10)
    fit(lstm, seq.train, seq.val, {"epochs": 8, "lr": 0.01, "optimizer": "adam"}, seed=0, desc="train lstm")
    lstm_fp32 = export_onnx(lstm, seq.val.x[:32], work / "lstm_fp32.onnx").path
    lstm_int8 = quantize_dynamic_model(lstm_fp32, out_path=work / "lstm_int8.onnx").artifact
    lb = benchmark([ModelSpec("lstm-fp32", {"onnx": str(lstm_fp32)}), ModelSpec("lstm-int8", {"onnx": str(lstm_int8)})],
                   backends=("ort-cpu",), batches=(1, 8), threads=threads, baseline="lstm-fp32", plots=False,
                   **ctx.timing())
    out["lstm"] = {"fp32_test": _acc(lstm_fp32, seq.test, threads), "int8_test": _acc(lstm_int8, seq.test, threads),
                   "fp32_bytes": lstm_fp32.stat().st_size, "int8_bytes": lstm_int8.stat().st_size,
                   "latency": {f"{m}@b{b}": v for (m, b), v in _speed_rows(lb).items()}}

    # 224x224 reference nets, random weights, synthetic calibration
    out["big"] = {}
    rng = np.random.default_rng(0)
    for name, arch, kw in (("mobilenetv2", "mobilenetv2", {}), ("resnet18", "resnet18", {})):
        torch.manual_seed(0)
        m = create_model(arch, num_classes=1000, **kw).eval()
        x = rng.standard_normal((32, 3, 224, 224)).astype(np.float32)
        f = export_onnx(m, x[:2], work / f"{name}_fp32.onnx").path
        q = quantize(f, {"target": "cpu", "samples": 32}, calib=x, out_path=work / f"{name}_int8.onnx")
        b = benchmark([ModelSpec(f"{name}-fp32", {"onnx": str(f)}),
                       ModelSpec(f"{name}-int8", {"onnx": str(q.artifact)})],
                      backends=("ort-cpu",), batches=(1,), threads=threads, baseline=f"{name}-fp32", plots=False,
                      **ctx.timing())
        out["big"][name] = {"int8_mac_fraction": q.int8_mac_fraction,
                            "latency": {f"{mm}@b{bb}": v for (mm, bb), v in _speed_rows(b).items()}}
    return out


def _fmt_speed(v) -> str:
    return f"{v[1]:.2f}× ({v[2]:.2f}–{v[3]:.2f})"


def _fmt_eff(v) -> str:
    return "–" if v[5] is None else f"{v[5]:.0%}"


def _title(key: str) -> str:
    return next(t for k, _, t, _ in DIGITS_MODELS if k == key)


def _render_digits(key: str, d: dict) -> list:
    tr = d["train"]
    lines = [f"### Digits {_title(key)}, 3×32×32", "",
             f"Trained here in {d['train_seconds']} s: {tr['epochs']} epochs, SGD lr {tr['lr']}, batch "
             f"{tr.get('batch_size', 64)}, warm-up {tr.get('warmup_epochs', 0)} epoch(s).", "",
             "| artifact | calibration | test accuracy | Δ vs fp32 | int8 MACs (ORT CPU) |", "|---|---|---|---|---|",
             f"| fp32 | – | {d['fp32_test']:.2f}% | – | 0% |"]
    for method, v in d["methods"].items():
        lines.append(f"| int8 `target: cpu` | {method} | {v['int8_test']:.2f}% | "
                     f"{v['int8_test'] - d['fp32_test']:+.2f} | {v['int8_mac_fraction']:.1%} |")
    t = d["tensorrt"]
    lines.append(f"| int8 `target: tensorrt` | minmax | {t['int8_test']:.2f}% | {t['int8_test'] - d['fp32_test']:+.2f} "
                 f"| {t['int8_mac_fraction']:.1%} ({t['runtime_float_layers']} layers float on ORT CPU) |")
    p = d.get("pruned")
    if p:
        lines += [f"| pruned fp32 (−{1 - p['macs_fraction']:.0%} MACs, ×16, KD fine-tune) | – | "
                  f"{p['fp32_test']:.2f}% | {p['fp32_test'] - d['fp32_test']:+.2f} | 0% |",
                  f"| pruned int8 `target: cpu` | minmax | {p['int8_test']:.2f}% | "
                  f"{p['int8_test'] - d['fp32_test']:+.2f} ({p['int8_test'] - p['fp32_test']:+.2f} vs pruned fp32) | "
                  f"{p['int8_mac_fraction']:.1%} |"]
    lat = d["latency"]
    lines += ["", "| artifact on ORT CPU | batch 1 p50 | speed-up vs ORT fp32 | efficiency | batch 8 p50 | "
              "speed-up vs ORT fp32 | efficiency |", "|---|---|---|---|---|---|---|"]
    for m in [k[:-3] for k in lat if k.endswith("@b1")]:
        b1, b8 = lat[f"{m}@b1"], lat[f"{m}@b8"]
        lines.append(f"| {m} | {b1[0]:.3f} ms | {_fmt_speed(b1)} | {_fmt_eff(b1)} | {b8[0]:.3f} ms | "
                     f"{_fmt_speed(b8)} | {_fmt_eff(b8)} |")
    lines += ["", f"Load average (1 min) at start and end of the table's timing: {d.get('load_avg_1m')}. Efficiency: "
              "achieved GOP/s over the GEMM peak of the same precision measured in the same rounds.", ""]
    return lines


def _render_batch1(r: dict) -> list:
    rounds = sorted({c["rounds"] for d in r["digits"].values() for cells in d["batch1"].values() for c in cells})
    lines = ["### Batch 1, fp32 vs int8 only, 1 and 2 threads", "",
             f"Two artifacts per pair, interleaved in {'/'.join(map(str, rounds))} rounds; per-round latency is the "
             "block's fastest iteration (as in every table here) or its median (what a loaded machine delivers).", "",
             "| model | pair | threads | fp32 p50 | int8 p50 | speed-up (fastest-of-block) | speed-up (block median) |",
             "|---|---|---|---|---|---|---|"]
    for key, d in r["digits"].items():
        for label, cells in d["batch1"].items():
            for c in cells:
                mn, md = c["min"], c["median"]
                lines.append(f"| {key} | {label} | {c['threads']} | {mn['fp32_ms']:.3f} ms | {mn['int8_ms']:.3f} ms | "
                             f"{mn['speedup']:.2f}× ({mn['min']:.2f}–{mn['max']:.2f}) | "
                             f"{md['speedup']:.2f}× ({md['min']:.2f}–{md['max']:.2f}) |")
    return lines + [""]


def _acceptance(r: dict) -> list:
    key, thr = ACCEPTANCE["model"], ACCEPTANCE["threads"]
    d = r["digits"][key]
    drop = d["fp32_test"] - d["methods"]["minmax"]["int8_test"]
    cell = next(c for c in d["batch1"]["fp32 → int8"] if c["threads"] == thr)
    spd = cell["min"]["speedup"]
    acc_ok, spd_ok = drop <= ACCEPTANCE["accuracy_drop"], spd >= ACCEPTANCE["speedup"]
    small = r["digits"].get("resnet18-w0.5")
    lines = [f"**Acceptance** (digits {_title(key)}, `target: cpu`, MinMax, {thr} threads): test accuracy Δ "
             f"{0.0 - drop:+.2f} points ({'meets' if acc_ok else 'does NOT meet'}: at most "
             f"{ACCEPTANCE['accuracy_drop']} lost); ORT CPU batch-1 speed-up "
             f"over ORT fp32 of the same model {spd:.2f}× (paired median of {cell['rounds']} rounds, min–max "
             f"{cell['min']['min']:.2f}–{cell['min']['max']:.2f}×; block-median statistic "
             f"{cell['median']['speedup']:.2f}×) — "
             f"{'meets' if spd_ok else 'does NOT meet'} ≥ {ACCEPTANCE['speedup']}×."]
    if small:
        s1 = {c["threads"]: c["min"]["speedup"] for c in small["batch1"]["fp32 → int8"]}
        lines += ["", f"The width-0.5 model gains less at 2 threads ({s1.get(thr, float('nan')):.2f}× vs "
                  f"{s1.get(1, float('nan')):.2f}× at 1 thread): its int8 convolutions are too small (down to 4×4 "
                  "pixels × 256 channels at batch 1) for ONNX Runtime to keep a second core busy, while its fp32 "
                  "convolutions still split well. Smaller models and pruned ones show the same effect: at batch 1, "
                  "int8's advantage grows with the work per layer."]
    return lines + [""]


def render(r: dict) -> str:
    """Markdown section from :func:`measure`'s numbers."""
    lines = ["## INT8 quantisation (issue 6)", "",
             f"ONNX Runtime CPU, {r['threads']} threads unless stated. Speed-ups are medians of per-round paired "
             "ratios (fp32 time / int8 time, interleaved rounds) with their min–max; accuracy is top-1 on the "
             "held-out test split through the deployed artifact (ORT runner). Calibration: 128 training samples.", ""]
    for key in r["digits"]:
        lines += _render_digits(key, r["digits"][key])
    lines += _render_batch1(r) + _acceptance(r)
    lines += ["The `tensorrt` artifact (symmetric int8 activations, explicit Relu, Q/DQ for TensorRT) is the right "
              "file for TensorRT, but on ORT CPU the Convs followed by an explicit Relu are not fused into int8 "
              "kernels, so part of it runs in float between Quantize/Dequantize nodes: the target matters.", ""]
    lm = r["lstm"]
    l1, l8 = lm["latency"]["lstm-int8@b1"], lm["latency"]["lstm-int8@b8"]
    lines += ["### LSTM (hidden 128, digits as 8×8 sequences), dynamic int8", "",
              "| artifact | test accuracy | file size | batch 1 p50 | batch 8 p50 |", "|---|---|---|---|---|",
              f"| fp32 | {lm['fp32_test']:.2f}% | {lm['fp32_bytes'] / 1024:.0f} KiB | "
              f"{lm['latency']['lstm-fp32@b1'][0]:.3f} ms | {lm['latency']['lstm-fp32@b8'][0]:.3f} ms |",
              f"| int8 dynamic | {lm['int8_test']:.2f}% | {lm['int8_bytes'] / 1024:.0f} KiB | {l1[0]:.3f} ms "
              f"({_fmt_speed(l1)}) | {l8[0]:.3f} ms ({_fmt_speed(l8)}) |", ""]
    lines += ["### 224×224 reference nets (random weights, 32 synthetic calibration samples), batch 1", "",
              "| model | fp32 p50 | int8 p50 | ratio of pooled p50s | paired speed-up (min–max) | int8 MACs |",
              "|---|---|---|---|---|---|"]
    for name, v in r["big"].items():
        f, q = v["latency"][f"{name}-fp32@b1"], v["latency"][f"{name}-int8@b1"]
        lines.append(f"| {name} | {f[0]:.2f} ms | {q[0]:.2f} ms | {f[0] / q[0]:.2f}× | {_fmt_speed(q)} | "
                     f"{v['int8_mac_fraction']:.1%} |")
    lines += ["", "When the paired speed-up and the ratio of pooled p50s disagree, the machine's load moved during "
              "the rounds (see the load average above): trust neither digit. Depthwise-heavy MobileNetV2 is expected "
              "to gain less from int8 than ResNet-18 (DESIGN §4: 1.4× measured on a quiet machine).", ""]
    return "\n".join(lines)


def run(ctx) -> str:
    """``benchmarks/run_all.py`` entry point: measure, save raw numbers, return the Markdown section."""
    from edgekit._io import write_json_atomic

    r = measure(ctx)
    write_json_atomic(Path(ctx.results_dir) / "quantize.json", r)
    return render(r)


class _Ctx:
    def __init__(self, work_dir: Path, quick: bool = False, threads: int = 2):
        self.work_dir, self.quick, self.threads = work_dir, quick, threads
        self.results_dir = Path(__file__).resolve().parent / "results"
        self.img_dir = self.docs_dir = Path(__file__).resolve().parent.parent / "docs"

    def timing(self) -> dict:
        if self.quick:
            return {"warmup": 3, "min_time": 0.3, "rounds": 4}
        return {"warmup": 10, "min_time": 3.0, "rounds": 12}


def section(quick: bool = False, threads: int = 2) -> str:
    """Measure and return the Markdown section (standalone use; run_all.py calls :func:`run`)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="bench-quantize-") as d:
        return run(_Ctx(Path(d), quick, threads))


if __name__ == "__main__":
    print(section(quick="--quick" in sys.argv))
