"""Backends on the same files: every CPU backend that runs ONNX against the default one (ONNX Runtime), paired.

- The demo's final INT8 artifact: ``recipes/digits_resnet.yaml`` run as it is (teacher → distilled ResNet-14
  student → 50 %-MACs pruning with KD → INT8 for ``target: cpu``), minus its TensorRT-only parts (the
  ``tensorrt`` quantisation target and the compile stage) and without its own report; and its fp32 parent.
- A pruned MobileNetV2 at 3×224×224 (random weights, −50 % MACs in channels of 16, no fine-tune) as fp32 and
  INT8 (``target: cpu``, 32 synthetic calibration samples): a depthwise-heavy net.

All artifacts on all backends interleaved in the same rounds (``edgekit.bench.benchmark``); per backend pair
(each backend vs the default ONNX backend, ``edgekit.bench.pairs``) the median per-round latency ratio on the
same file with its min–max, at batch 1 and 8.

Run through ``benchmarks/run_all.py`` (``run(ctx)``), or alone: ``python benchmarks/bench_backends.py [--quick]``.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Dict, List

os.environ.setdefault("KMP_BLOCKTIME", "0")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

DEMO = ROOT / "recipes" / "digits_resnet.yaml"
MOBILENET = {"macs_target": 0.5, "round_to": 16, "importance": "l1", "teacher": "none", "finetune": {"epochs": 0}}
BATCHES = (1, 8)


def demo_int8(work: Path, quick: bool) -> Dict[str, Path]:
    """Run the demo recipe's stages up to its CPU INT8 artifact; return {variant: ONNX} of it and its fp32 parent."""
    import yaml

    from edgekit.pipeline import run_recipe
    from edgekit.pipeline.recipe import validate_recipe

    raw = yaml.safe_load(DEMO.read_text(encoding="utf-8"))
    raw["name"] = "digits_resnet"
    raw["stages"] = [s for s in raw["stages"] if s["type"] != "compile"]
    for s in raw["stages"]:
        if s["type"] == "quantize":
            s["targets"] = ["cpu"]
            if s.get("calibration"):  # the recipe's paths are relative to the repository root
                s["calibration"] = str(ROOT / s["calibration"])
        if quick:  # smoke run: one epoch everywhere
            for train in [s] + [s[k] for k in ("train", "finetune") if isinstance(s.get(k), dict)]:
                if "epochs" in train:
                    train["epochs"] = 1
    raw["targets"] = [{"backend": "ort-cpu"}]
    result = run_recipe(validate_recipe(raw, source=str(DEMO)), runs_dir=work / "runs", name="bench", report=False)
    final = result.variants["student-pruned-int8-cpu"]
    parent = result.variants[final.parent]
    return {"demo-int8": Path(final.onnx), "demo-fp32": Path(parent.onnx)}


def mobilenet_int8(work: Path) -> Dict[str, Path]:
    """Pruned MobileNetV2 at 224² (random weights): fp32 and cpu-target INT8 ONNX."""
    import torch

    from edgekit.export import export_onnx
    from edgekit.models import create_model
    from edgekit.techniques.prune.prune import prune
    from edgekit.techniques.quantize.ptq import quantize

    torch.manual_seed(0)
    model = create_model("mobilenetv2", num_classes=1000, in_channels=3).eval()
    x = np.random.default_rng(0).standard_normal((32, 3, 224, 224)).astype(np.float32)
    pruned = prune(model, MOBILENET, example_input=x[:2]).model
    fp32 = export_onnx(pruned, x[:2], work / "mobilenetv2_pruned_fp32.onnx", atol=1e-2, min_top1_agreement=0.0).path
    int8 = quantize(fp32, {"target": "cpu", "samples": 32}, calib=x,
                    out_path=work / "mobilenetv2_pruned_int8.onnx").artifact
    return {"mobilenetv2-pruned-int8": Path(int8), "mobilenetv2-pruned-fp32": Path(fp32)}


def other_backends() -> List[str]:
    """Available CPU backends that run ONNX, other than the default one."""
    from edgekit.backends import BACKENDS, default_backend, load_backends

    load_backends()
    ref = default_backend("onnx", "cpu")
    return [n for n, s in BACKENDS.items()
            if n != ref and s.device == "cpu" and "onnx" in s.artifact_kinds and s.probe()[0]]


def measure(ctx) -> dict:
    """Build the artifacts, benchmark them on every pair, return plain numbers (also results/backends.json)."""
    from edgekit.backends import default_backend
    from edgekit.bench import ModelSpec, benchmark
    from edgekit.bench.pairs import backend_pairs

    work = Path(ctx.work_dir)
    files = {**demo_int8(work, ctx.quick), **mobilenet_int8(work)}
    ref = default_backend("onnx", "cpu")
    backends = [ref, *other_backends()]
    res = benchmark([ModelSpec(k, {"onnx": str(p)}) for k, p in files.items()], backends=backends, batches=BATCHES,
                    threads=ctx.threads, plots=False, **ctx.timing())
    return {"reference": ref, "backends": backends, "threads": ctx.threads,
            "files": {k: p.name for k, p in files.items()},
            "pairs": backend_pairs(res.rows, ref), "environment_line": res.environment_line(),
            "load_warning": res.load_warning(), "load_avg_1m": res.config["load_avg_1m"],
            "timing": {k: res.config[k] for k in ("warmup", "min_time", "rounds", "round_stat", "timing_s")},
            "table": res.table(), "rows": res.rows}


def render(r: dict) -> str:
    """One Markdown section per backend pair, then the full table."""
    from edgekit.backends import backend_spec
    from edgekit.bench.pairs import format_ratio

    t, ref = r["timing"], r["reference"]
    lines: List[str] = []
    for backend in r["backends"][1:]:
        lines += [f"## Backends: {backend_spec(backend).label} vs {backend_spec(ref).label} on the same files", "",
                  f"Each file run by `{backend}` and by `{ref}` in the same process, interleaved in the same rounds "
                  f"(warm-up {t['warmup']}, ≥ {t['min_time']} s per case in {t['rounds']} rounds, {r['threads']} "
                  f"threads, per-round latency = the block's {t['round_stat']}); ratio = {ref} latency / "
                  f"{backend} latency per round, median (min–max over rounds): above 1× `{backend}` is faster.", "",
                  "| file | " + " | ".join(f"batch {b}" for b in BATCHES) + " |", "|---|" + "---|" * len(BATCHES)]
        for model, name in r["files"].items():
            by_b = {p["batch"]: p for p in r["pairs"] if p["model"] == model and p["backend"] == backend}
            cells = [format_ratio(by_b[b]) if b in by_b else "–" for b in BATCHES]
            lines.append(f"| {model} (`{name}`) | " + " | ".join(cells) + " |")
        lines += [""]
    lines += [r["environment_line"], "", f"Load average (1 min) at start and end: {r['load_avg_1m']}."]
    if r.get("load_warning"):
        lines += ["", f"> {r['load_warning']}"]
    lines += ["", "<details><summary>Full table (p50/p90/p99, throughput, size, MACs, efficiency)</summary>", "",
              r["table"], "", "</details>", "", "Raw results: `benchmarks/results/backends.json`."]
    return "\n".join(lines)


def run(ctx) -> str:
    """``benchmarks/run_all.py`` entry point: measure, save raw numbers, return the Markdown section."""
    from edgekit._io import write_json_atomic

    r = measure(ctx)
    write_json_atomic(Path(ctx.results_dir) / "backends.json", r)
    return render(r)


class _Ctx:
    def __init__(self, work_dir: Path, quick: bool = False, threads: int = 2):
        self.work_dir, self.quick, self.threads = work_dir, quick, threads
        self.results_dir = Path(__file__).resolve().parent / "results"

    def timing(self) -> dict:
        return {"warmup": 3, "min_time": 0.3, "rounds": 4} if self.quick else {"warmup": 10, "min_time": 3.0,
                                                                                "rounds": 20}


def section(quick: bool = False, threads: int = 2) -> str:
    """Measure and return the Markdown section (standalone use; run_all.py calls :func:`run`)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="bench-backends-") as d:
        return run(_Ctx(Path(d), quick, threads))


if __name__ == "__main__":
    print(section(quick="--quick" in sys.argv))
