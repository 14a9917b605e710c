"""Issue 15 evidence: head / FFN pruning of a BERT encoder, with and without KD recovery, timed against the fused
ONNX Runtime fp32 teacher over sequence length and batch.

A ``bert_classifier`` teacher (4 layers × 128, 4 heads, FFN 512, position table 512) is trained on the built-in
documentation-topics text (5 classes, max_length 64), then pruned three ways (``heads`` 25 %, ``heads`` 50 %,
``ffn`` 50 %; Taylor head importance, ``round_to`` 16) and recovered three ways:

1. **none**: no fine-tune (one seed: pruning with Taylor importance is deterministic given the data);
2. **CE**: 3 epochs AdamW lr 2e-4, cross-entropy alone (``teacher=None``);
3. **KD**: the same, with KD from the unpruned teacher (alpha 0.9, T 4).

Seeds drive the fine-tune; test accuracy mean ± 95 % t half-width; KD − CE paired by seed.

Latency (``edgekit.bench.benchmark``, interleaved rounds, 1 thread, paired ratios vs the fused ORT fp32 teacher):

- sequence 64, batch 1 and 8, ORT CPU: every seed-0 KD model (real test paragraphs; accuracy through the runner);
- a sequence sweep (32, 128, 512; batch 1 and 8) on ORT CPU and OpenVINO of the teacher, the heads-50 % KD model
  and its dynamic INT8 (synthetic token ids), with prediction agreement vs the teacher and test accuracy at each
  length on the same test paragraphs re-tokenised to that length.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_bert_prune.py [--quick] [--seeds 3]
    PYTHONPATH=. .venv/bin/python benchmarks/bench_bert_prune.py --from-json benchmarks/results/bert_prune.json

Raw figures go to ``benchmarks/results/bert_prune.json``.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import torch
from _results_cli import results_main, run_section  # sibling modules in benchmarks/
from _stats import mean_ci, paired_by_seed

from edgekit._io import read_sidecar
from edgekit.backends import open_runner
from edgekit.bench import ModelSpec, benchmark
from edgekit.bench.results import format_speedup
from edgekit.core.platform import load_average
from edgekit.core.tensors import take
from edgekit.core.train import evaluate, fit, predict
from edgekit.data import load_data
from edgekit.errors import EdgekitError, first_line
from edgekit.export import export_onnx
from edgekit.models import create_model
from edgekit.techniques.prune.prune import prune
from edgekit.techniques.quantize.dynamic import quantize_dynamic_model

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "bert_prune.json"
SETTINGS = {
    "full": {"n_layer": 4, "hidden": 128, "heads": 4, "intermediate": 512, "seq": 64, "teacher_epochs": 8,
             "finetune_epochs": 3, "seeds": 3, "rounds": 5, "min_time": 0.5, "sweep": [32, 128, 512]},
    "quick": {"n_layer": 1, "hidden": 64, "heads": 4, "intermediate": 128, "seq": 32, "teacher_epochs": 2,
              "finetune_epochs": 1, "seeds": 2, "rounds": 2, "min_time": 0.05, "sweep": [32, 128, 512]},
}
TEACHER_OPT = {"optimizer": "adamw", "lr": 2e-4, "weight_decay": 0.01, "batch_size": 32, "warmup_epochs": 1}
FINETUNE = {"optimizer": "adamw", "lr": 2e-4, "weight_decay": 0.01, "batch_size": 32}
PRUNE = {"head_importance": "taylor", "round_to": 16, "temperature": 4.0, "alpha": 0.9}
CASES = {"heads 25 %": {"heads": 0.25}, "heads 50 %": {"heads": 0.5}, "FFN 50 %": {"ffn": 0.5}}
RECOVERY = ("none", "CE", "KD")
BATCHES = (1, 8)
BACKENDS = ("ort-cpu", "openvino")
TEACHER = "teacher fp32"
SWEEP_PRUNED, SWEEP_INT8 = "heads 50 % KD", "heads 50 % KD int8"
ROW_KEYS = ("model", "backend", "batch", "sequence", "precision", "artifact", "p50_ms", "round_ms", "macs",
            "accuracy", "accuracy_delta", "accuracy_delta_ci", "speedup", "speedup_min", "speedup_max", "speedup_ci")


def _teacher(s: dict, splits) -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model("bert_classifier", num_classes=splits.num_classes, vocab_size=splits.vocab_size,
                         n_layer=s["n_layer"], hidden=s["hidden"], heads=s["heads"], intermediate=s["intermediate"])
    fit(model, splits.train, splits.val, {**TEACHER_OPT, "epochs": s["teacher_epochs"]}, seed=0, desc="teacher")
    return model.eval()


def _pruned(teacher, splits, case: str, recovery: str, seed: int, s: dict):
    """One prune + recovery run: (PruneResult, seconds)."""
    epochs = 0 if recovery == "none" else s["finetune_epochs"]
    cfg = {**PRUNE, **CASES[case], "finetune": {**FINETUNE, "epochs": epochs}}
    t0 = time.perf_counter()
    res = prune(teacher, cfg, train=splits.train, val=splits.val, teacher=teacher if recovery == "KD" else None,
                seed=seed)
    res.model.eval()
    return res, time.perf_counter() - t0


def _accuracy_grid(teacher, splits, s: dict) -> tuple:
    """Test accuracy of every case × recovery × seed; the seed-0 KD models by case."""
    grid: Dict[str, dict] = {}
    kd_models: Dict[str, torch.nn.Module] = {}
    for case in CASES:
        row: Dict[str, Any] = {}
        for recovery in RECOVERY:
            acc, secs = [], []
            for seed in range(1 if recovery == "none" else s["seeds"]):
                res, sec = _pruned(teacher, splits, case, recovery, seed, s)
                acc.append(evaluate(res.model, splits.test))
                secs.append(round(sec, 1))
                if recovery == "KD" and seed == 0:
                    kd_models[case] = res.model
                row.setdefault("macs_fraction", round(res.macs_fraction, 4))
                row.setdefault("params_fraction", round(res.params_fraction, 4))
                row.setdefault("kept", [{k: r.get(k) for k in ("kind", "before", "after")} for r in res.layers])
            row[recovery] = {"test": acc, "mean_ci": list(mean_ci(acc)), "seconds": secs}
        row["kd_minus_ce"] = list(paired_by_seed(row["KD"]["test"], row["CE"]["test"]))
        grid[case] = row
    return grid, kd_models


def _export(models: Dict[str, torch.nn.Module], splits, work: Path) -> tuple:
    """Fused ONNX export of every model: ({name: path}, {name: fusion counts})."""
    paths, fusion = {}, {}
    sample = take(splits.val.x, slice(0, 32))
    for i, (name, m) in enumerate(models.items()):
        path = export_onnx(m, sample, work / f"m{i}.onnx").path
        paths[name] = path
        side = read_sidecar(path).get("fusion") or {}
        fusion[name] = {k: side.get(k) for k in ("applied", "counts", "backends")}
    return paths, fusion


def _rows(res) -> List[dict]:
    return [{k: r.get(k) for k in ROW_KEYS} for r in res.rows]


def _timing(specs: List[ModelSpec], s: dict, threads: int, **kw) -> dict:
    load = load_average()
    res = benchmark(specs, batches=BATCHES, threads=threads, warmup=3, min_time=s["min_time"], rounds=s["rounds"],
                    baseline=TEACHER, plots=False, **kw)
    return {"rows": _rows(res), "skipped": res.skipped, "timing_s": res.config.get("timing_s"),
            "load_average": [load, load_average()]}


def _agreement(paths: Dict[str, Path], s: dict, threads: int) -> Dict[str, Any]:
    """Per sequence length, per backend, per artifact: test accuracy and top-1 agreement with the teacher."""
    out: Dict[str, Any] = {}
    for seq in s["sweep"]:
        split = load_data({"name": "doc_topics", "max_length": seq}, seed=0).test
        per_backend: Dict[str, Any] = {}
        for backend in BACKENDS:
            ref, rows = None, {}
            for name, p in paths.items():
                try:
                    with open_runner(str(p), backend, threads=threads) as r:
                        pred = predict(r, split.x, batch_size=64).argmax(1)
                except (EdgekitError, RuntimeError) as e:
                    rows[name] = {"error": first_line(e, 200)}
                    continue
                ref = pred if name == TEACHER else ref
                rows[name] = {"accuracy": float(100.0 * (pred == split.y).mean()),
                              "agreement": None if ref is None else float(100.0 * (pred == ref).mean())}
            per_backend[backend] = rows
        out[str(seq)] = per_backend
    return out


def measure(mode: str = "full", seeds: int | None = None, threads: int = 1) -> dict:
    """Train, prune × recover over seeds, export, quantise, time and check agreement; the results dict."""
    s = dict(SETTINGS[mode])
    if seeds:
        s["seeds"] = seeds
    torch.set_num_threads(threads)
    splits = load_data({"name": "doc_topics", "max_length": s["seq"]}, seed=0)
    t0 = time.perf_counter()
    teacher = _teacher(s, splits)
    out: Dict[str, Any] = {"mode": mode, "settings": s, "threads": threads, "load_average_start": load_average(),
                           "teacher_test": evaluate(teacher, splits.test),
                           "teacher_seconds": round(time.perf_counter() - t0, 1),
                           "splits": {k: len(getattr(splits, k)) for k in ("train", "val", "test")}}
    out["cases"], kd_models = _accuracy_grid(teacher, splits, s)
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-bert-prune-") as d:
        work = Path(d)
        paths, out["fusion"] = _export({TEACHER: teacher, **{f"{c} KD": m for c, m in kd_models.items()}},
                                       splits, work)
        specs = [ModelSpec(n, {"onnx": str(p)}) for n, p in paths.items()]
        out["latency_seq"] = _timing(specs, s, threads, backends=["ort-cpu"], data=splits.test)
        q = quantize_dynamic_model(paths[SWEEP_PRUNED], {"mode": "dynamic"}, out_path=work / "h50_int8.onnx",
                                   val=splits.val, threads=threads)
        out["int8"] = {**{k: q.sidecar.get(k) for k in ("int8_mac_fraction", "accuracy")},
                       "backends": (q.sidecar.get("fusion") or {}).get("backends")}
        sweep = {TEACHER: paths[TEACHER], SWEEP_PRUNED: paths[SWEEP_PRUNED], SWEEP_INT8: work / "h50_int8.onnx"}
        out["agreement"] = _agreement(sweep, s, threads)
        out["sweep"] = _timing([ModelSpec(n, {"onnx": str(p)}) for n, p in sweep.items()], s, threads,
                               backends=list(BACKENDS), sequences=s["sweep"])
    out["load_average_end"] = load_average()
    return out


def _pm(mc: List[float]) -> str:
    return f"{mc[0]:.2f}" + ("" if np.isnan(mc[1]) else f" ± {mc[1]:.2f}")


def _accuracy_table(res: dict) -> List[str]:
    out = ["| case | MACs fraction | none | CE (per seed) | KD (per seed) | KD − CE (paired) |",
           "|---|---|---|---|---|---|"]
    for case, r in res["cases"].items():
        cells = [f"{_pm(r[k]['mean_ci'])} ({', '.join(f'{v:.1f}' for v in r[k]['test'])})" for k in ("CE", "KD")]
        d, h = r["kd_minus_ce"]
        out.append(f"| {case} | {r['macs_fraction']:.3f} | {r['none']['test'][0]:.2f} | {cells[0]} | {cells[1]} | "
                   f"{d:+.2f} ± {h:.2f} |")
    return out


def _latency_table(t: dict, seq: Any = None) -> List[str]:
    head = "| sequence | batch | artifact | backend | ms (round) | speed-up vs teacher ORT fp32 | accuracy % |"
    out = [head, "|---|---|---|---|---|---|---|"]
    for r in t["rows"]:
        acc = "–" if r.get("accuracy") is None else f"{r['accuracy']:.2f}"
        speed = "1.00× (baseline)" if r["model"] == TEACHER and r["backend"] == "ort-cpu" else format_speedup(r)
        out.append(f"| {r.get('sequence') or seq} | {r['batch']} | {r['model']} | {r['backend']} | "
                   f"{r['round_ms']:.3f} | {speed} | {acc} |")
    out += [f"| | | {sk.get('model', sk)} | {sk.get('backend', '')} | not run: {sk.get('reason', '')} | | |"
            for sk in t["skipped"] if isinstance(sk, dict)]
    return out + ["", f"load average (1 min) before/after timing: {t['load_average']}; timing {t['timing_s']} s.", ""]


def _fusion_table(res: dict) -> List[str]:
    ops = sorted({op for f in res["fusion"].values() for op in (f.get("counts") or {})})
    out = ["Fused ops per export (ONNX Runtime transformer optimizer):", "", "| artifact | " + " | ".join(ops) + " |",
           "|---|" + "---|" * len(ops)]
    for name, f in res["fusion"].items():
        counts = f.get("counts") or {}
        out.append(f"| {name} | " + " | ".join(str(counts.get(op, 0)) for op in ops) + " |")
    files = {**{n: f.get("backends") for n, f in res["fusion"].items()}, SWEEP_INT8: res["int8"].get("backends")}
    if any(files.values()):  # which graph each backend opens: the fused file or its unfused sibling
        out += ["", "Graph each backend runs: " + "; ".join(
            f"{n}: " + ", ".join(f"{b} {(f or {}).get(b, 'fused')}" for b in BACKENDS) for n, f in files.items()
            if n in (TEACHER, SWEEP_PRUNED, SWEEP_INT8)) + "."]
    return out


def _agreement_table(res: dict) -> List[str]:
    out = ["| sequence | backend | artifact | test accuracy % | agreement with teacher % |", "|---|---|---|---|---|"]
    for seq, per_backend in res["agreement"].items():
        for backend, rows in per_backend.items():
            for name, r in rows.items():
                if "error" in r:
                    out.append(f"| {seq} | {backend} | {name} | not run: {r['error']} | |")
                else:
                    agr = "–" if r["agreement"] is None else f"{r['agreement']:.1f}"
                    out.append(f"| {seq} | {backend} | {name} | {r['accuracy']:.2f} | {agr} |")
    return out + [""]


def to_markdown(res: dict) -> str:
    s = res["settings"]
    out = ["## BERT head / FFN pruning with and without KD recovery (issue 15)", "",
           f"doc_topics (5 classes, max_length {s['seq']}; train/val/test {res['splits']['train']}/"
           f"{res['splits']['val']}/{res['splits']['test']}). Teacher: bert_classifier {s['n_layer']}×{s['hidden']} "
           f"({s['heads']} heads, FFN {s['intermediate']}), {s['teacher_epochs']} epochs, test "
           f"{res['teacher_test']:.2f} %. Pruned with Taylor head importance, round_to 16; recovery "
           f"{s['finetune_epochs']} epochs AdamW lr 2e-4 (CE alone, or KD from the unpruned teacher, alpha 0.9, "
           f"T 4), seeds 0–{s['seeds'] - 1}. Test accuracy %, mean ± 95 % t half-width; KD − CE paired by seed.", "",
           *_accuracy_table(res), "",
           *_fusion_table(res), "",
           f"**Latency at sequence {s['seq']}** (ORT CPU, {res['threads']} thread, seed-0 KD models, real test "
           "paragraphs; speed-up = median of per-round ratios (min–max) [95 % CI]):", "",
           *_latency_table(res["latency_seq"], s["seq"]),
           f"**Sequence sweep** (synthetic token ids; dynamic INT8 of the heads-50 % KD model: int8 MAC fraction "
           f"{res['int8'].get('int8_mac_fraction')}):", "",
           *_latency_table(res["sweep"]),
           "**Accuracy and agreement per length** (the same test paragraphs tokenised to each length):", "",
           *_agreement_table(res)]
    return "\n".join(out)


def run(ctx) -> str:
    """The ``benchmarks/run_all.py`` interface."""
    return run_section(ctx, "bert_prune.json", measure, to_markdown)


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="1-layer teacher, 2 epochs, 2 seeds: does it run")
    p.add_argument("--seeds", type=int)
    p.add_argument("--threads", type=int, default=1)


def main(argv: List[str] | None = None) -> int:
    def measured(a: argparse.Namespace) -> dict:
        return measure("quick" if a.quick else "full", a.seeds, threads=a.threads)

    return results_main(argv, __doc__, RESULTS, to_markdown, _args, measured)


if __name__ == "__main__":
    raise SystemExit(main())
