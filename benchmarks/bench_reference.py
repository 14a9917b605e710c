"""Reference models, PyTorch eager fp32 vs ONNX Runtime fp32, batch 1 and 8, with efficiency.

Random weights (latency does not depend on them): the digits ResNet (ResNet-20, CIFAR-style, 3x32x32),
ResNet-18 and MobileNetV2 at 3x224x224. Each model is exported with ``edgekit.export.export_onnx`` (the
product path, parity-checked) and timed with ``edgekit.bench.benchmark`` on both backends, interleaved,
so the ORT/PyTorch ratio is a paired, per-round ratio. Run through ``benchmarks/run_all.py``.
"""
from __future__ import annotations

import numpy as np

# (name, architecture, constructor kwargs, per-sample input shape)
MODELS = [
    ("digits-resnet20", "resnet_cifar", {"depth": 20, "width": 1.0, "num_classes": 10, "in_channels": 3}, (3, 32, 32)),
    ("resnet18", "resnet18", {"num_classes": 1000}, (3, 224, 224)),
    ("mobilenetv2", "mobilenetv2", {"num_classes": 1000}, (3, 224, 224)),
]
BATCHES = (1, 8)


def measure(ctx, models=MODELS):
    """Export and benchmark every model; return one BenchResult per model (baseline: its PyTorch run)."""
    import torch

    from edgekit.bench import ModelSpec, benchmark
    from edgekit.export.onnx import export_onnx
    from edgekit.models import create_model

    results = []
    for name, arch, kwargs, shape in models:
        torch.manual_seed(0)
        module = create_model(arch, **kwargs).eval()
        sample = np.random.default_rng(0).standard_normal((4, *shape)).astype(np.float32)
        path = export_onnx(module, sample, ctx.work_dir / f"{name}.onnx").path
        spec = ModelSpec(name, {"module": module, "onnx": str(path)}, input_shape=shape)
        results.append(benchmark(spec, backends=("torch", "ort-cpu"), batches=BATCHES, threads=ctx.threads,
                                 baseline=f"{name}@torch", plots=False, **ctx.timing()))
    return results


def merge(results):
    """One BenchResult holding every model's rows (peaks: median over the runs), for tables and plots."""
    from edgekit.bench import BenchResult

    cpu_peaks = [r.peak.get("cpu") or {} for r in results]
    peak = dict(cpu_peaks[0]) if cpu_peaks and cpu_peaks[0] else {}
    for key in ("fp32_gops", "int8_gops"):
        vals = [p[key] for p in cpu_peaks if p.get(key)]
        if vals:
            peak[key] = round(float(np.median(vals)), 1)
    loads = [v for r in results for v in r.config.get("load_avg_1m") or [] if v is not None]
    config = {**results[0].config, "load_avg_1m": [min(loads), max(loads)] if loads else [None, None],
              "timing_s": round(sum(r.config.get("timing_s", 0) for r in results), 1)}
    return BenchResult(rows=[row for r in results for row in r.rows], skipped=[s for r in results for s in r.skipped],
                       environment=results[0].environment, peak={"cpu": peak or None, "gpu": None},
                       config=config, baseline={"model": "each model", "backend": "torch"})


def _gops_cell(r: dict) -> str:
    """``GOP/s (% of peak)`` of a benchmark row, "–" without MACs."""
    if r.get("gops") is None:
        return "–"
    pct = f" ({100 * r['efficiency']:.0f}%)" if r.get("efficiency") is not None else ""
    return f"{r['gops']:.0f}{pct}"


def summary_table(merged) -> str:
    """Per model and batch: PyTorch vs ORT p50, the paired ORT/PyTorch ratio, GOP/s and % of peak."""
    from edgekit.bench.results import format_speedup

    head = ("| model | input | GMACs/sample | batch | PyTorch p50 ms | ORT p50 ms | ORT vs PyTorch (min–max) "
            "| PyTorch GOP/s (% peak) | ORT GOP/s (% peak) |")
    lines = [head, "|---|---|---|---|---|---|---|---|---|"]
    shapes = {name: shape for name, _, _, shape in MODELS}
    for name in dict.fromkeys(r["model"] for r in merged.rows):
        for b in BATCHES:
            t, o = merged.row(name, "torch", b), merged.row(name, "ort-cpu", b)
            shape = "×".join(map(str, shapes.get(name, ()))) or "?"
            macs = f"{o['macs'] / 1e9:.3f}" if o.get("macs") else "–"
            lines.append(f"| {name} | {shape} | {macs} | {b} | {t['p50_ms']:.2f} | {o['p50_ms']:.2f} | "
                         f"{format_speedup(o)} | {_gops_cell(t)} | {_gops_cell(o)} |")
    return "\n".join(lines)


def run(ctx) -> str:
    """Benchmark the reference models and return the Markdown section (plots into ``ctx.img_dir``)."""
    from edgekit._io import write_json_atomic
    from edgekit.bench.plots import write_plots

    merged = merge(measure(ctx))
    plots = write_plots(merged, ctx.img_dir, prefix="reference_")
    write_json_atomic(ctx.results_dir / "reference.json", merged.to_dict())
    c = merged.config
    parts = [
        "## Reference models: PyTorch eager fp32 vs ONNX Runtime fp32",
        "",
        "Random weights (latency only): the digits ResNet (`resnet_cifar`, depth 20, 3×32×32), ResNet-18 and "
        "MobileNetV2 at 3×224×224. Each model is exported with `edgekit.export.export_onnx` and timed on both "
        f"backends in the same process: warm-up {c['warmup']}, ≥ {c['min_time']} s per case in {c['rounds']} "
        f"interleaved rounds, {c['threads']} threads. The ratio column is ORT's speedup over PyTorch eager "
        "(median of per-round ratios, min–max): the gain from the runtime alone, before any compression. "
        "GOP/s = 2 × MACs × batch / per-round latency (fastest iteration of each round's block, median over "
        "rounds); % peak compares it with the fp32 GEMM peak measured in the same rounds.",
        "",
        merged.environment_line(),
        "",
        *([f"> {merged.load_warning()}", ""] if merged.load_warning() else []),
        summary_table(merged),
        "",
        *[f"![{k}](img/{p.name})" for k, p in plots.items()],
        "",
        "<details><summary>Full table (p90/p99, throughput, size, MACs)</summary>",
        "",
        merged.table(),
        "",
        "</details>",
        "",
        "Raw results: `benchmarks/results/reference.json`.",
    ]
    return "\n".join(parts)
