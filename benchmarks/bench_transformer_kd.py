"""Issue 15 evidence: does hidden-state + attention-map transfer beat logit-only KD for a 2-layer BERT student?

A Hugging Face BERT teacher (4 layers × 128, 4 heads, FFN 512) is trained on the built-in documentation-topics
text (5 classes, max_length 64); 2-layer students of the same width are then trained, for each seed, three ways:

1. **scratch**: cross-entropy alone from a random initialisation;
2. **logit KD**: ``distill`` with alpha 0.9, T 4 (the student starts from the teacher's embeddings, head and mapped
   blocks 1 and 3: ``init_from_teacher``'s default for HF models; ``--no-init`` starts it from random weights);
3. **logit KD + hidden + attention**: the same, plus hidden-state MSE (embeddings and mapped blocks) and KL of the
   mapped blocks' attention distributions (weight 1 each, uniform layer map student i ↔ teacher 2i+1).

Same optimiser, epochs and seeds for all (the seed sets the student init, data order and dropout). Test accuracy
per seed; each method is compared to logit KD **paired by seed**: mean difference ± 95 % t-interval half-width.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_transformer_kd.py [--quick] [--seeds 3] [--no-init]
    PYTHONPATH=. .venv/bin/python benchmarks/bench_transformer_kd.py --from-json benchmarks/results/transformer_kd.json

Raw figures go to ``benchmarks/results/transformer_kd.json``.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch
from _results_cli import results_main, run_section  # sibling modules in benchmarks/
from _stats import paired_by_seed

from edgekit.core.train import evaluate, fit
from edgekit.data import load_data
from edgekit.models import create_model
from edgekit.techniques.distill.distill import distill

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "transformer_kd.json"
SETTINGS = {
    "full": {"teacher_layers": 4, "student_layers": 2, "hidden": 128, "heads": 4, "seq": 64, "teacher_epochs": 8,
             "student_epochs": 6, "seeds": 3},
    "quick": {"teacher_layers": 2, "student_layers": 1, "hidden": 32, "heads": 2, "seq": 32, "teacher_epochs": 1,
              "student_epochs": 1, "seeds": 2},
}
TEACHER_OPT = {"optimizer": "adamw", "lr": 2e-4, "weight_decay": 0.01, "batch_size": 32, "warmup_epochs": 1}
STUDENT_OPT = {"optimizer": "adamw", "lr": 3e-4, "weight_decay": 0.01, "batch_size": 32, "warmup_epochs": 1}
KD = {"temperature": 4.0, "alpha": 0.9}
METHODS = {
    "scratch": None,
    "logit KD": {},
    "logit KD + hidden + attention": {"hidden": {"weight": 1.0}, "attention_maps": {"weight": 1.0, "kind": "probs"}},
}
BASE = "logit KD"


def _bert(s: dict, layers: int, splits, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = {"model_type": "bert", "num_hidden_layers": layers, "hidden_size": s["hidden"],
              "num_attention_heads": s["heads"], "intermediate_size": 4 * s["hidden"],
              "max_position_embeddings": s["seq"]}
    return create_model("hf", config=config, num_classes=splits.num_classes, vocab_size=splits.vocab_size)


def _student(name: str, s: dict, teacher, splits, seed: int, init: bool) -> tuple:
    """Train one student; (test accuracy, seconds, sidecar extras)."""
    model = _bert(s, s["student_layers"], splits, seed)
    t0 = time.perf_counter()
    train = {**STUDENT_OPT, "epochs": s["student_epochs"]}
    if METHODS[name] is None:
        fit(model, splits.train, splits.val, train, seed=seed, desc=name)
        return evaluate(model, splits.test), time.perf_counter() - t0, {}
    cfg = {**KD, **METHODS[name], "init_from_teacher": init, "train": train}
    res = distill(model, cfg, teacher=teacher, train=splits.train, val=splits.val, seed=seed, desc=name)
    extras = {k: res.sidecar[k] for k in ("losses", "layer_map", "student_init") if k in res.sidecar}
    return evaluate(res.model, splits.test), time.perf_counter() - t0, extras


def measure(mode: str = "full", seeds: int | None = None, init: bool = True, threads: int = 2) -> dict:
    s = dict(SETTINGS[mode])
    if seeds:
        s["seeds"] = seeds
    torch.set_num_threads(threads)
    splits = load_data({"name": "doc_topics", "max_length": s["seq"]}, seed=0)
    t0 = time.perf_counter()
    teacher = _bert(s, s["teacher_layers"], splits, 0)
    fit(teacher, splits.train, splits.val, {**TEACHER_OPT, "epochs": s["teacher_epochs"]}, seed=0, desc="teacher")
    teacher.eval()
    out = {"mode": mode, "settings": s, "init_from_teacher": init, "threads": threads,
           "teacher_test": evaluate(teacher, splits.test), "teacher_seconds": round(time.perf_counter() - t0, 1),
           "splits": {k: len(getattr(splits, k)) for k in ("train", "val", "test")}, "methods": {}}
    acc: Dict[str, List[float]] = {}
    for name in METHODS:
        acc[name], secs, extras = [], [], {}
        for seed in range(s["seeds"]):
            a, sec, extras = _student(name, s, teacher, splits, seed, init)
            acc[name].append(a)
            secs.append(round(sec, 1))
        out["methods"][name] = {"test": acc[name], "mean": float(np.mean(acc[name])), "seconds": secs, **extras}
    for name, row in out["methods"].items():
        row["vs_logit_kd"] = paired_by_seed(acc[name], acc[BASE])
    return out


def to_markdown(res: dict) -> str:
    s = res["settings"]
    init = "from the teacher (embeddings, head, mapped blocks)" if res["init_from_teacher"] else "random"
    out = ["## Transformer distillation: hidden-state and attention transfer (issue 15)", "",
           f"doc_topics (5 classes, max_length {s['seq']}; train/val/test {res['splits']['train']}/"
           f"{res['splits']['val']}/{res['splits']['test']}). Teacher: HF BERT {s['teacher_layers']}×{s['hidden']} "
           f"({s['heads']} heads), {s['teacher_epochs']} epochs, test {res['teacher_test']:.1f} %. Students: "
           f"BERT {s['student_layers']}×{s['hidden']}, {s['student_epochs']} epochs AdamW lr 3e-4, seeds "
           f"0–{s['seeds'] - 1}; KD students start {init}; KD alpha 0.9, T 4. Δ = paired difference vs logit KD "
           "(same seed), mean ± 95 % t half-width; test accuracy %.", "",
           "| student | test % mean | per seed | Δ vs logit KD | s / student |", "|---|---|---|---|---|"]
    for name, r in res["methods"].items():
        d, h = r["vs_logit_kd"]
        delta = "—" if name == BASE else f"{d:+.2f} ± {h:.2f}"
        out.append(f"| {name} | {r['mean']:.2f} | {', '.join(f'{v:.1f}' for v in r['test'])} | {delta} | "
                   f"{np.mean(r['seconds']):.0f} |")
    best = res["methods"]["logit KD + hidden + attention"]["vs_logit_kd"]
    verdict = ("beats logit-only KD by more than the CI half-width" if best[0] > best[1] else
               "does not beat logit-only KD by more than the CI half-width at this budget")
    out += ["", f"Hidden + attention transfer {verdict} (Δ {best[0]:+.2f} ± {best[1]:.2f}).", ""]
    return "\n".join(out)


def run(ctx) -> str:
    """The ``benchmarks/run_all.py`` interface."""
    return run_section(ctx, "transformer_kd.json", measure, to_markdown)


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="teacher 2×32, student 1 layer, 1 epoch: does it run")
    p.add_argument("--seeds", type=int)
    p.add_argument("--no-init", action="store_true", help="KD students start from random weights")
    p.add_argument("--threads", type=int, default=2)


def main(argv: List[str] | None = None) -> int:
    def measured(a: argparse.Namespace) -> dict:
        return measure("quick" if a.quick else "full", a.seeds, init=not a.no_init, threads=a.threads)

    return results_main(argv, __doc__, RESULTS, to_markdown, _args, measured)


if __name__ == "__main__":
    raise SystemExit(main())
