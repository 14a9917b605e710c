"""Issue 16 evidence: the `text_gpt` chain measured over seeds, and the LM quantisation forms on two runtimes.

recipes/text_gpt.yaml's models and settings, driven through the library functions its stages call:

1. **Students over seeds.** One GPT-2 teacher (4 blocks × 128, 4 heads, context 64, pydoc text, BPE 2000) is
   trained with seed 0; for each seed, 2-block students of the same width are trained three ways with the same
   optimiser: **scratch** (next-token cross-entropy from random weights, the student's 3 epochs, and again with the
   teacher's 10 epochs), **KD** (``distill``: per-token forward KL at T 2 + CE, alpha 0.5, started from the teacher's
   first and last blocks) and **KD + prune** (``prune``: a quarter of the heads and half the FFN neurons, Minitron
   L2 importance, 2 epochs of KD recovery from the KD student). Test perplexity through PyTorch, mean ± 95 %
   t half-width over seeds, and each method's paired-by-seed difference to KD.
2. **Quantisation forms of the seed-0 KD + prune student** (its KV-cache ONNX graph): fp32, dynamic W8A8, W8A8 +
   SmoothQuant (alpha 0.5), weight-only INT8 and INT4 (MatMulNBits, block 32; INT4 also quantises the
   embeddings): test perplexity, file size, prefill ms (prompt 32 and 64) and decode tokens/s at batch 1 on ONNX
   Runtime and OpenVINO, paired and interleaved with the teacher in PyTorch eager fp32 and in ORT fp32 (median
   of per-round ratios, p10–p90).
3. **Cache vs recompute**: per-token ms at the longest past the context allows (63), one step with the KV cache
   vs the whole sequence recomputed, on the fp32 and INT4 students.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_text_gpt.py [--quick] [--seeds 3] [--threads 1] [--work DIR]
    PYTHONPATH=. .venv/bin/python benchmarks/bench_text_gpt.py --retime --work DIR   # timings only, again
    PYTHONPATH=. .venv/bin/python benchmarks/bench_text_gpt.py --from-json benchmarks/results/text_gpt.json

Raw figures go to ``benchmarks/results/text_gpt.json``.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import torch
from _results_cli import results_main, run_section  # sibling modules in benchmarks/
from _stats import mean_ci, paired_by_seed

from edgekit.core.train import fit
from edgekit.data import load_data
from edgekit.models import create_model, load_checkpoint, save_checkpoint
from edgekit.pipeline.lm import export_lm, perplexities
from edgekit.techniques.distill.distill import distill
from edgekit.techniques.prune.prune import prune

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "text_gpt.json"
SETTINGS = {
    "full": {"layers": 4, "student_layers": 2, "hidden": 128, "heads": 4, "context": 64, "vocab": 2000,
             "teacher_epochs": 10, "student_epochs": 3, "prune_epochs": 2, "seeds": 3, "rounds": 15, "new_tokens": 32},
    "quick": {"layers": 2, "student_layers": 1, "hidden": 128, "heads": 4, "context": 64, "vocab": 500,
              "teacher_epochs": 1, "student_epochs": 1, "prune_epochs": 1, "seeds": 2, "rounds": 3, "new_tokens": 8},
}
OPT = {"optimizer": "adamw", "weight_decay": 0.01, "grad_clip": 1.0, "batch_size": 16}
KD = {"temperature": 2.0, "alpha": 0.5}
PRUNE = {"ffn": 0.5, "heads": 0.25, "head_importance": "l2", "taylor_batches": 8, "round_to": 32, **KD}
QUANT = {  # name -> (function name, config)
    "W8A8 dynamic": ("int8_dynamic", {}),
    "W8A8 + SmoothQuant 0.5": ("int8_dynamic", {"smoothquant": {"alpha": 0.5}}),
    "weight-only INT8": ("int4", {"bits": 8, "block_size": 32}),
    "weight-only INT4": ("int4", {"bits": 4, "block_size": 32, "embeddings": True}),
}
METHODS = ("scratch", "scratch, teacher's epochs", "KD", "KD + prune")
BASE = "KD"


def _gpt(s: dict, layers: int, splits, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("gpt_lm", arch="gpt2", n_layer=layers, n_embd=s["hidden"], n_head=s["heads"],
                        vocab_size=splits.vocab_size, n_positions=s["context"])


def _test_ppl(model_or_path: Any, splits, threads: int) -> float:
    return perplexities(model_or_path, splits, threads, parts=("test",))["test_perplexity"]


def _students(s: dict, teacher, splits, seed: int) -> Dict[str, tuple]:
    """{method: (model, seconds)} for one seed."""
    out = {}
    for name, epochs in (("scratch", s["student_epochs"]), ("scratch, teacher's epochs", s["teacher_epochs"])):
        model, t0 = _gpt(s, s["student_layers"], splits, seed), time.perf_counter()
        fit(model, splits.train, splits.val, {**OPT, "lr": 2e-3, "warmup_epochs": 0.2, "epochs": epochs}, seed=seed,
            desc=f"{name} s{seed}")
        out[name] = (model, time.perf_counter() - t0)
    t0 = time.perf_counter()
    kd = distill(_gpt(s, s["student_layers"], splits, seed),
                 {**KD, "train": {**OPT, "lr": 1e-3, "epochs": s["student_epochs"]}},
                 teacher=teacher, train=splits.train, val=splits.val, seed=seed, desc=f"KD s{seed}").model
    out["KD"] = (kd, time.perf_counter() - t0)
    t0 = time.perf_counter()
    pruned = prune(kd, {**PRUNE, "finetune": {**OPT, "lr": 5e-4, "epochs": s["prune_epochs"]}},
                   train=splits.train, val=splits.val, teacher=kd, seed=seed).model
    out["KD + prune"] = (pruned, time.perf_counter() - t0)
    return out


def _quantised(student_onnx: Path, splits, work: Path, threads: int) -> Dict[str, dict]:
    from edgekit.techniques.quantize.int4 import quantize_dynamic_int8, quantize_int4

    fns = {"int8_dynamic": quantize_dynamic_int8, "int4": quantize_int4}
    rows = {"fp32": {"path": str(student_onnx), "bytes": student_onnx.stat().st_size}}
    for name, (fn, cfg) in QUANT.items():
        out = work / f"{name.replace(' ', '_').replace('+', 'sq').replace('.', '')}.onnx"
        extra = {"train": splits.train} if fn == "int8_dynamic" else {}
        res = fns[fn](student_onnx, cfg, out_path=out, threads=threads, **extra)
        rows[name] = {"path": str(res.artifact), "bytes": res.metrics["size_bytes"]}
    for r in rows.values():
        r["test_perplexity"] = _test_ppl(r["path"], splits, threads)
    return rows


def _timings(s: dict, teacher, teacher_onnx: Path, quant: Dict[str, dict], threads: int) -> dict:
    from edgekit.backends import causal_lm_backends
    from edgekit.bench.decode import (
        OnnxDecoder,
        TorchDecoder,
        cache_vs_recompute,
        decode_speed,
        prefill_speed,
        ratios,
    )

    decoders = {"teacher eager": TorchDecoder(teacher, threads=threads),
                "teacher ort": OnnxDecoder(teacher_onnx, threads=threads)}
    backends = causal_lm_backends()
    for name, r in quant.items():
        for b in backends:
            decoders[f"{name} | {b}"] = OnnxDecoder(r["path"], threads=threads, backend=b)
    prompt = np.random.default_rng(0).integers(0, 100, (1, s["context"])).astype(np.int64)
    out: Dict[str, Any] = {"backends": backends, "decode": {}, "prefill": {}}
    decode_ms = decode_speed(decoders, prompt[:, :16], new_tokens=s["new_tokens"], rounds=s["rounds"])
    for base in ("teacher eager", "teacher ort"):
        out["decode"][base] = ratios(decode_ms, base)
    for n in (32, s["context"]):
        out["prefill"][str(n)] = ratios(prefill_speed(decoders, prompt[:, :n], rounds=s["rounds"]), "teacher ort")
    out["cache"] = {}
    for name in ("fp32", "weight-only INT4"):
        ms = cache_vs_recompute(decoders[f"{name} | {backends[0]}"], past=s["context"] - 1, rounds=s["rounds"])
        r = ratios(ms, "cache")["recompute"]  # cache_ms / recompute_ms per round
        out["cache"][name] = {"cache_ms": float(np.median(ms["cache"])),
                              "recompute_ms": float(np.median(ms["recompute"])), "ratio": r}
    return out


def measure(mode: str = "full", seeds: int | None = None, threads: int = 1, work: Path | None = None) -> dict:
    """Train, quantise and time everything; ``work`` keeps the teacher checkpoint and the ONNX files (for
    :func:`retime`), else they go to a temporary directory."""
    from edgekit.core.platform import environment, load_average

    s = dict(SETTINGS[mode])
    if seeds:
        s["seeds"] = seeds
    torch.set_num_threads(threads)
    splits = load_data({"name": "pydoc_lm", "shape": [s["context"]], "vocab_size": s["vocab"],
                        "split": [0.8, 0.1, 0.1]}, seed=0)
    env = environment()
    out: Dict[str, Any] = {"mode": mode, "settings": s, "threads": threads, "cpu": env["cpu_model"],
                           "load_before": load_average(), "vocab_size": splits.vocab_size,
                           "windows": {k: len(getattr(splits, k)) for k in ("train", "val", "test")}}
    t0 = time.perf_counter()
    teacher = _gpt(s, s["layers"], splits, 0)
    fit(teacher, splits.train, splits.val, {**OPT, "lr": 2e-3, "warmup_epochs": 0.2, "epochs": s["teacher_epochs"]},
        seed=0, desc="teacher")
    teacher.eval()
    out["teacher"] = {"test_perplexity": _test_ppl(teacher, splits, threads),
                      "seconds": round(time.perf_counter() - t0, 1)}
    ppl: Dict[str, List[float]] = {m: [] for m in METHODS}
    secs: Dict[str, List[float]] = {m: [] for m in METHODS}
    pruned0 = None
    for seed in range(s["seeds"]):
        for name, (model, sec) in _students(s, teacher, splits, seed).items():
            ppl[name].append(_test_ppl(model.eval(), splits, threads))
            secs[name].append(round(sec, 1))
            if seed == 0 and name == "KD + prune":
                pruned0 = model
        print({m: v[-1] for m, v in ppl.items()}, flush=True)
    out["students"] = {m: {"test_perplexity": ppl[m], "mean_ci": mean_ci(ppl[m]), "seconds": secs[m],
                           "vs_kd": paired_by_seed(ppl[m], ppl[BASE])} for m in METHODS}
    with tempfile.TemporaryDirectory(prefix="bench-text-gpt-") as d:
        work = Path(work or d)
        work.mkdir(parents=True, exist_ok=True)
        save_checkpoint(teacher, work / "teacher.pt")
        teacher_onnx = export_lm(teacher, work / "teacher.onnx", threads=threads)
        student_onnx = export_lm(pruned0, work / "student.onnx", threads=threads)
        out["teacher"]["bytes"] = teacher_onnx.stat().st_size
        quant = _quantised(student_onnx, splits, work, threads)
        out["timing"] = _timings(s, teacher, teacher_onnx, quant, threads)
        out["quantised"] = {k: {**v, "path": Path(v["path"]).name} for k, v in quant.items()}
    out["load_after"] = load_average()
    return out


def retime(results: dict, work: Path, threads: int, rounds: int | None = None) -> dict:
    """Re-measure only the timings of a saved run from its ``work`` directory (e.g. on a quieter machine, or with
    more ``rounds``)."""
    from edgekit.core.platform import load_average

    teacher, _ = load_checkpoint(work / "teacher.pt")
    quant = {k: {**v, "path": str(work / v["path"])} for k, v in results["quantised"].items()}
    torch.set_num_threads(threads)
    settings = {**results["settings"], **({"rounds": rounds} if rounds else {})}
    out = {**results, "settings": settings, "load_before": load_average(), "retimed": True}
    out["timing"] = _timings(settings, teacher.eval(), work / "teacher.onnx", quant, threads)
    out["load_after"] = load_average()
    return out


def _students_md(res: dict) -> List[str]:
    s, t = res["settings"], res["teacher"]
    lines = [f"Teacher: GPT-2 {s['layers']}×{s['hidden']} ({s['heads']} heads), context {s['context']}, BPE vocabulary "
             f"{res['vocab_size']}, {s['teacher_epochs']} epochs, seed 0: test perplexity "
             f"**{t['test_perplexity']:.2f}** ({t['seconds']:.0f} s). Students: {s['student_layers']} blocks × "
             f"{s['hidden']}, seeds 0–{s['seeds'] - 1}; test perplexity through PyTorch (windows train/val/test "
             f"{res['windows']['train']}/{res['windows']['val']}/{res['windows']['test']}); Δ = paired difference vs "
             "KD (same seed), mean ± 95 % t half-width (lower perplexity is better).", "",
             "| student | test ppl mean ± 95 % CI | per seed | Δ vs KD | vs teacher | s / student |",
             "|---|---|---|---|---|---|"]
    for name, r in res["students"].items():
        m, h = r["mean_ci"]
        d, dh = r["vs_kd"]
        delta = "—" if name == BASE else f"{d:+.2f} ± {dh:.2f}"
        lines.append(f"| {name} | {m:.2f} ± {h:.2f} | {', '.join(f'{v:.2f}' for v in r['test_perplexity'])} | "
                     f"{delta} | {100 * (m / t['test_perplexity'] - 1):+.1f} % | {np.mean(r['seconds']):.0f} |")
    return lines


def _ratio(r: dict) -> str:
    return f"{r['median']:.2f}× ({r['p10']:.2f}–{r['p90']:.2f})"


def _quant_md(res: dict) -> List[str]:
    tm, q, t = res["timing"], res["quantised"], res["teacher"]
    eager, ort = tm["decode"]["teacher eager"], tm["decode"]["teacher ort"]
    s = res["settings"]
    lines = [f"Seed-0 KD + prune student as a KV-cache ONNX graph; batch 1, {res['threads']} thread(s), "
             f"{s['rounds']} interleaved rounds; decode = {s['new_tokens']} greedy tokens after a 16-token prompt; "
             "ratios are medians of per-round ratios (p10–p90) against the teacher in the same rounds. Teacher: "
             f"eager {1000 / eager['teacher eager']['ms']:.0f} tok/s, ORT fp32 {1000 / ort['teacher ort']['ms']:.0f} "
             f"tok/s, {t['bytes'] / 1e6:.2f} MB, test ppl {t['test_perplexity']:.2f}.", "",
             "| student form | backend | test ppl | MB (× teacher) | prefill 32 ms | prefill 64 ms | decode tok/s | "
             "vs eager teacher | vs ORT fp32 teacher |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in q.items():
        for b in tm["backends"]:
            k = f"{name} | {b}"
            lines.append(f"| {name} | {b} | {r['test_perplexity']:.2f} | {r['bytes'] / 1e6:.2f} "
                         f"({r['bytes'] / t['bytes']:.2f}) | {tm['prefill']['32'][k]['ms']:.2f} | "
                         f"{tm['prefill'][str(s['context'])][k]['ms']:.2f} | {1000 / eager[k]['ms']:.0f} | "
                         f"{_ratio(eager[k])} | {_ratio(ort[k])} |")
    lines += ["", f"Decode with vs without the KV cache at past {s['context'] - 1} (ONNX Runtime, per token):", "",
              "| student form | with cache ms | recompute ms | cache / recompute (p10–p90) |", "|---|---|---|---|"]
    for name, c in tm["cache"].items():
        r = c["ratio"]
        lines.append(f"| {name} | {c['cache_ms']:.3f} | {c['recompute_ms']:.3f} | {r['median']:.3f} "
                     f"({r['p10']:.3f}–{r['p90']:.3f}) |")
    return lines


def to_markdown(res: dict) -> str:
    out = ["## Small GPT-style LM: students over seeds, quantisation forms, two runtimes (issue 16)", "",
           f"`benchmarks/bench_text_gpt.py` ({res['mode']}; {res['cpu']}, load {res['load_before']} → "
           f"{res['load_after']}{'; timings re-measured from the saved files (--retime)' if res.get('retimed') else ''}"
           "): recipes/text_gpt.yaml's chain through the library functions its stages call.", "",
           "### Teacher vs students", ""]
    out += _students_md(res) + ["", "### W8A8 vs SmoothQuant vs weight-only INT8 / INT4, ORT and OpenVINO", ""]
    return "\n".join(out + _quant_md(res) + [""])


def run(ctx) -> str:
    """The ``benchmarks/run_all.py`` interface."""
    return run_section(ctx, "text_gpt.json", measure, to_markdown)


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="tiny teacher, 1 epoch, 2 seeds: does it run")
    p.add_argument("--seeds", type=int)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work", type=Path, help="keep the teacher checkpoint and ONNX files here (default: temporary)")
    p.add_argument("--rounds", type=int, help="with --retime: interleaved timing rounds (default: the saved run's)")
    p.add_argument("--retime", action="store_true",
                   help="re-measure only the timings of the results file --out from its --work directory")


def main(argv: List[str] | None = None) -> int:
    def measured(a: argparse.Namespace) -> dict:
        if a.retime:
            return retime(json.loads(a.out.read_text()), a.work, a.threads, a.rounds)
        return measure("quick" if a.quick else "full", a.seeds, a.threads, a.work)

    return results_main(argv, __doc__, RESULTS, to_markdown, _args, measured)


if __name__ == "__main__":
    raise SystemExit(main())
