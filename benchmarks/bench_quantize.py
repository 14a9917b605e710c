"""INT8 quantisation evidence (issue 6): accuracy per calibration method, ORT CPU speed-ups, targets, LSTM, 224².

- Digits ResNet (ResNet-18, CIFAR stem, width 0.5, 3×32×32) trained 5 epochs here; fp32 vs int8 test accuracy
  for MinMax / Entropy / Percentile calibration (128 training samples), int8 MAC coverage after ORT optimisation.
- ORT CPU latency fp32 vs int8 at batch 1 and 8 as paired interleaved ratios (``edgekit.bench.benchmark``),
  ``target: cpu`` (U8S8) vs ``target: tensorrt`` (symmetric S8S8) artifacts on ORT CPU.
- LSTM (digits as 8-step sequences) dynamic int8: accuracy, size and latency.
- MobileNetV2 / ResNet-18 at 3×224×224 (random weights, synthetic calibration): fp32 vs int8 latency.

Run through ``benchmarks/run_all.py`` (``run(ctx)``), or alone: ``python benchmarks/bench_quantize.py``.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

METHODS = [("minmax", {}), ("entropy", {}), ("percentile", {"percentile": 99.99})]
DIGITS = {"name": "digits", "image_size": 32, "channels": 3}


def _train_reference(work: Path, seed: int = 0):
    import torch

    from edgekit.data import load_data
    from edgekit.export import export_onnx
    from edgekit.models import create_model
    from edgekit.train import fit

    splits = load_data(DIGITS, seed)
    torch.manual_seed(seed)
    model = create_model("resnet18", stem="cifar", width=0.5, in_channels=3, num_classes=10)
    t0 = time.perf_counter()
    fit(model, splits.train, splits.val, {"epochs": 5, "lr": 0.05}, seed=seed, desc="train digits resnet18")
    train_s = time.perf_counter() - t0
    path = export_onnx(model, splits.val.x[:32], work / "digits_resnet18_fp32.onnx").path
    return splits, path, train_s


def _acc(path, split, threads):
    from edgekit.runtime import open_runner
    from edgekit.train import evaluate

    return evaluate(open_runner(path, "ort-cpu", threads=threads), split)


def _speed_rows(res, base_name):
    """{(model, batch): (p50_ms, speedup, min, max)} from a BenchResult."""
    out = {}
    for r in res.rows:
        out[(r["model"], r["batch"])] = (r["p50_ms"], r["speedup"], r["speedup_min"], r["speedup_max"],
                                         r.get("rounds"))
    return out


def _acceptance_ratio(fp32, int8, x1, threads: int, quick: bool) -> dict:
    """fp32 vs int8 only, batch 1, many short interleaved rounds: the paired ratio the acceptance asks for.

    On a shared 2-core machine a few long rounds are easily hit by another process's burst; 30 rounds of
    100 iterations each give a stable median (and an honest spread).
    """
    from edgekit.bench.latency import Case, paired_ratios, run_interleaved
    from edgekit.runtime import open_runner

    a, b = open_runner(fp32, "ort-cpu", threads=threads), open_runner(int8, "ort-cpu", threads=threads)
    rounds, iters = (6, 300) if quick else (30, 3000)
    res = run_interleaved([Case("fp32", a, a.prepare(x1)), Case("int8", b, b.prepare(x1))], warmup=50, iters=iters,
                          min_time=None, rounds=rounds, desc="acceptance")
    r = paired_ratios(res.round_medians[0], res.round_medians[1])
    return {"rounds": rounds, "iters_per_round": iters // rounds, "speedup": float(np.median(r)),
            "p25": float(np.percentile(r, 25)), "p75": float(np.percentile(r, 75)), "min": float(r.min()),
            "max": float(r.max()), "fp32_p50_ms": float(np.median(res.all_times(0))),
            "int8_p50_ms": float(np.median(res.all_times(1))), "load_avg_1m": os.getloadavg()[0]}


def measure(ctx) -> dict:
    """Run every measurement; return plain numbers (also written to results/quantize.json)."""
    from edgekit.bench import ModelSpec, benchmark
    from edgekit.compress.quantize import quantize, quantize_dynamic_model
    from edgekit.data import load_data
    from edgekit.export import export_onnx
    from edgekit.models import create_model

    work, threads = Path(ctx.work_dir), ctx.threads
    out: dict = {"threads": threads}
    splits, fp32, train_s = _train_reference(work)
    out["train_seconds"] = round(train_s, 1)
    calib = splits.train.x[:128]
    fp32_test = _acc(fp32, splits.test, threads)
    out["digits"] = {"fp32_test": fp32_test, "methods": {}}
    artifacts = {}
    for method, kw in METHODS:
        res = quantize(fp32, calib, work / f"digits_int8_cpu_{method}.onnx", target="cpu", method=method, **kw)
        artifacts[f"int8-cpu-{method}"] = res.path
        out["digits"]["methods"][method] = {"int8_test": _acc(res.path, splits.test, threads),
                                            "int8_mac_fraction": res.int8_mac_fraction}
    trt = quantize(fp32, calib, work / "digits_int8_tensorrt.onnx", target="tensorrt")
    out["digits"]["tensorrt"] = {"int8_test": _acc(trt.path, splits.test, threads),
                                 "int8_mac_fraction": trt.int8_mac_fraction,
                                 "runtime_float_layers": len(trt.runtime_float_layers)}
    specs = [ModelSpec("fp32", {"onnx": str(fp32)}), ModelSpec("int8-cpu", {"onnx": str(artifacts["int8-cpu-minmax"])}),
             ModelSpec("int8-tensorrt", {"onnx": str(trt.path)})]
    bench = benchmark(specs, backends=("ort-cpu",), batches=(1, 8), threads=threads, baseline="fp32", plots=False,
                      **ctx.timing())
    out["digits"]["latency"] = {f"{m}@b{b}": v for (m, b), v in _speed_rows(bench, "fp32").items()}
    out["digits"]["acceptance"] = _acceptance_ratio(fp32, artifacts["int8-cpu-minmax"], splits.val.x[:1], threads,
                                                    ctx.quick)
    out["digits"]["load_avg_1m"] = bench.config.get("load_avg_1m")

    # LSTM, dynamic quantisation
    import torch

    from edgekit.train import fit

    seq = load_data({"name": "digits_seq"}, 0)
    torch.manual_seed(0)
    lstm = create_model("rnn_classifier", input_size=8, hidden_size=128, num_classes=10)
    fit(lstm, seq.train, seq.val, {"epochs": 8, "lr": 0.01, "optimizer": "adam"}, seed=0, desc="train lstm")
    lstm_fp32 = export_onnx(lstm, seq.val.x[:32], work / "lstm_fp32.onnx").path
    lstm_int8 = quantize_dynamic_model(lstm_fp32, work / "lstm_int8.onnx").path
    lb = benchmark([ModelSpec("lstm-fp32", {"onnx": str(lstm_fp32)}), ModelSpec("lstm-int8", {"onnx": str(lstm_int8)})],
                   backends=("ort-cpu",), batches=(1, 8), threads=threads, baseline="lstm-fp32", plots=False,
                   **ctx.timing())
    out["lstm"] = {"fp32_test": _acc(lstm_fp32, seq.test, threads), "int8_test": _acc(lstm_int8, seq.test, threads),
                   "fp32_bytes": lstm_fp32.stat().st_size, "int8_bytes": lstm_int8.stat().st_size,
                   "latency": {f"{m}@b{b}": v for (m, b), v in _speed_rows(lb, "lstm-fp32").items()}}

    # 224x224 reference nets, random weights, synthetic calibration
    out["big"] = {}
    rng = np.random.default_rng(0)
    for name, arch, kw in (("mobilenetv2", "mobilenetv2", {}), ("resnet18", "resnet18", {})):
        torch.manual_seed(0)
        m = create_model(arch, num_classes=1000, **kw).eval()
        x = rng.standard_normal((32, 3, 224, 224)).astype(np.float32)
        f = export_onnx(m, x[:2], work / f"{name}_fp32.onnx").path
        q = quantize(f, x, work / f"{name}_int8.onnx", target="cpu", samples=32)
        b = benchmark([ModelSpec(f"{name}-fp32", {"onnx": str(f)}), ModelSpec(f"{name}-int8", {"onnx": str(q.path)})],
                      backends=("ort-cpu",), batches=(1,), threads=threads, baseline=f"{name}-fp32", plots=False,
                      **ctx.timing())
        out["big"][name] = {"int8_mac_fraction": q.int8_mac_fraction,
                            "latency": {f"{mm}@b{bb}": v for (mm, bb), v in _speed_rows(b, f"{name}-fp32").items()}}
    return out


def _fmt_speed(v) -> str:
    return f"{v[1]:.2f}× ({v[2]:.2f}–{v[3]:.2f})"


def render(r: dict) -> str:
    """Markdown section from :func:`measure`'s numbers."""
    d = r["digits"]
    lines = ["## INT8 quantisation (issue 6)", "",
             f"ONNX Runtime CPU, {r['threads']} threads. Speed-ups are medians of per-round paired ratios "
             "(fp32 time / int8 time, interleaved rounds) with their min–max; accuracy is top-1 on the held-out "
             "test split through the deployed artifact (ORT runner). Calibration: 128 training samples.", "",
             f"### Digits ResNet-18 (CIFAR stem, width 0.5, 3×32×32; trained 5 epochs here in {r['train_seconds']} s)", "",
             "| artifact | calibration | test accuracy | Δ vs fp32 | int8 MACs (ORT CPU) |", "|---|---|---|---|---|",
             f"| fp32 | – | {d['fp32_test']:.2f}% | – | 0% |"]
    for method, v in d["methods"].items():
        lines.append(f"| int8 `target: cpu` | {method} | {v['int8_test']:.2f}% | {v['int8_test'] - d['fp32_test']:+.2f} | "
                     f"{v['int8_mac_fraction']:.1%} |")
    t = d["tensorrt"]
    lines.append(f"| int8 `target: tensorrt` | minmax | {t['int8_test']:.2f}% | {t['int8_test'] - d['fp32_test']:+.2f} | "
                 f"{t['int8_mac_fraction']:.1%} ({t['runtime_float_layers']} layers float on ORT CPU) |")
    lat = d["latency"]
    lines += ["", "| artifact on ORT CPU | batch 1 p50 | speed-up vs ORT fp32 | batch 8 p50 | speed-up vs ORT fp32 |",
              "|---|---|---|---|---|"]
    for m in ("fp32", "int8-cpu", "int8-tensorrt"):
        b1, b8 = lat[f"{m}@b1"], lat[f"{m}@b8"]
        lines.append(f"| {m} | {b1[0]:.3f} ms | {_fmt_speed(b1)} | {b8[0]:.3f} ms | {_fmt_speed(b8)} |")
    lines.append(f"\nRatio of pooled p50s, batch 1: int8-cpu {lat['fp32@b1'][0] / lat['int8-cpu@b1'][0]:.2f}×, "
                 f"int8-tensorrt {lat['fp32@b1'][0] / lat['int8-tensorrt@b1'][0]:.2f}×.")
    acc_ok = d["fp32_test"] - d["methods"]["minmax"]["int8_test"] <= 0.5
    a = d["acceptance"]
    spd = a["speedup"]
    lines += ["", f"**Acceptance** (`target: cpu`, MinMax): test accuracy Δ {d['methods']['minmax']['int8_test'] - d['fp32_test']:+.2f} "
              f"points ({'within' if acc_ok else 'NOT within'} 0.5); ORT CPU batch-1 speed-up over ORT fp32 of the same "
              f"model {spd:.2f}× (paired median of {a['rounds']} interleaved rounds × {a['iters_per_round']} iterations; "
              f"interquartile {a['p25']:.2f}–{a['p75']:.2f}×, min–max {a['min']:.2f}–{a['max']:.2f}×; p50 "
              f"{a['fp32_p50_ms']:.3f} → {a['int8_p50_ms']:.3f} ms) — {'meets' if spd >= 2.5 else 'does NOT meet'} ≥ 2.5×. "
              f"Load average (1 min) during timing: {d.get('load_avg_1m')} (table), {a['load_avg_1m']:.1f} (acceptance).",
              "", "The `tensorrt` artifact (symmetric int8 activations, explicit Relu, Q/DQ for TensorRT) is the right "
              "file for TensorRT, but on ORT CPU the Convs followed by an explicit Relu are not fused into int8 "
              "kernels, so part of it runs in float between Quantize/Dequantize nodes: the target matters.", ""]
    lm = r["lstm"]
    l1, l8 = lm["latency"]["lstm-int8@b1"], lm["latency"]["lstm-int8@b8"]
    lines += ["### LSTM (hidden 128, digits as 8×8 sequences), dynamic int8", "",
              "| artifact | test accuracy | file size | batch 1 p50 | batch 8 p50 |", "|---|---|---|---|---|",
              f"| fp32 | {lm['fp32_test']:.2f}% | {lm['fp32_bytes'] / 1024:.0f} KiB | {lm['latency']['lstm-fp32@b1'][0]:.3f} ms | "
              f"{lm['latency']['lstm-fp32@b8'][0]:.3f} ms |",
              f"| int8 dynamic | {lm['int8_test']:.2f}% | {lm['int8_bytes'] / 1024:.0f} KiB | {l1[0]:.3f} ms ({_fmt_speed(l1)}) | "
              f"{l8[0]:.3f} ms ({_fmt_speed(l8)}) |", ""]
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
    from edgekit.fileio import write_json_atomic

    r = measure(ctx)
    write_json_atomic(Path(ctx.results_dir) / "quantize.json", r)
    return render(r)


class _Ctx:
    def __init__(self, work_dir: Path, quick: bool = False, threads: int = 2):
        self.work_dir, self.quick, self.threads = work_dir, quick, threads
        self.results_dir = Path(__file__).resolve().parent / "results"
        self.img_dir = self.docs_dir = Path(__file__).resolve().parent.parent / "docs"

    def timing(self) -> dict:
        return {"warmup": 3, "min_time": 0.3, "rounds": 4} if self.quick else {"warmup": 10, "min_time": 3.0, "rounds": 12}


def section(quick: bool = False, threads: int = 2) -> str:
    """Measure and return the Markdown section (standalone use; run_all.py calls :func:`run`)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="bench-quantize-") as d:
        return run(_Ctx(Path(d), quick, threads))


if __name__ == "__main__":
    print(section(quick="--quick" in sys.argv))
