"""Issue 4 evidence: a small student trained from scratch, with logit KD, and with KD + attention transfer.

On digits (3×16×16 by default, 3×32×32 with ``--large``), a ResNet-18 teacher (CIFAR stem, width 0.5) is
trained to ≥ 97 % test accuracy, then a ResNet-8 (width 0.25) student is trained three ways with the same
epochs, learning rate and seeds. The teacher-output cache is timed against running the teacher on every batch.

    .venv/bin/python benchmarks/bench_distill.py            # prints the markdown section
    .venv/bin/python benchmarks/bench_distill.py --quick    # fewer epochs and seeds (smoke run)
    .venv/bin/python benchmarks/bench_distill.py --large    # 32×32 images, more epochs (~4× the time)

``run(ctx)`` (the ``benchmarks/run_all.py`` interface) returns the markdown for
``docs/BENCHMARKS.md``; raw figures go to ``benchmarks/results/distill.json``.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch

from edgekit.core.train import evaluate, fit
from edgekit.data import load_data
from edgekit.models import count_params, create_model
from edgekit.techniques.distill.distill import distill

SETTINGS = {  # "full" uses 16×16 images to stay within ~5 min on 2 shared cores; "large" is the 32×32 variant
    "full": {"image_size": 16, "teacher_epochs": 5, "student_epochs": 5, "seeds": (0, 1, 2), "cache_epochs": 3},
    "quick": {"image_size": 16, "teacher_epochs": 3, "student_epochs": 2, "seeds": (0, 1), "cache_epochs": 1},
    "large": {"image_size": 32, "teacher_epochs": 8, "student_epochs": 6, "seeds": (0, 1, 2), "cache_epochs": 3},
}
STUDENT = {"name": "resnet_cifar", "depth": 8, "width": 0.25}
TEACHER = {"name": "resnet18", "stem": "cifar", "width": 0.5}
STUDENT_TRAIN = {"lr": 0.1, "batch_size": 64, "schedule": "cosine"}
TEACHER_TRAIN = {"lr": 0.05, "batch_size": 64, "schedule": "cosine"}
KD = {"temperature": 4.0, "alpha": 0.9}
ATTENTION_WEIGHT = 2.0
METHODS = ("scratch", "logit KD", "KD + attention")


def _model(spec: dict, splits, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    kw = {k: v for k, v in spec.items() if k != "name"}
    return create_model(spec["name"], num_classes=splits.num_classes, in_channels=splits.input_shape[0], **kw)


def _train_student(method: str, teacher, splits, seed: int, epochs: int) -> dict:
    student = _model(STUDENT, splits, seed)
    train = {**STUDENT_TRAIN, "epochs": epochs}
    t0 = time.perf_counter()
    if method == "scratch":
        fit(student, splits.train, splits.val, train, seed=seed, desc="scratch")
    else:
        cfg = {**KD, "train": train, "attention": {"weight": ATTENTION_WEIGHT if method == "KD + attention" else 0.0}}
        student = distill(student, cfg, teacher=teacher, train=splits.train, val=splits.val, seed=seed,
                          desc=method).model
    return {"method": method, "seed": seed, "test_accuracy": evaluate(student, splits.test),
            "seconds": time.perf_counter() - t0, "params": count_params(student)}


def _cache_speedup(teacher, splits, epochs: int = 1) -> dict:
    """Wall time of the same logit-KD run with and without the teacher-output cache (alternating, best of 2)."""
    times: Dict[bool, List[float]] = {True: [], False: []}
    for _ in range(2):
        for cache in (True, False):
            student = _model(STUDENT, splits, 0)
            t0 = time.perf_counter()
            distill(student, {**KD, "cache_teacher_logits": cache, "train": {**STUDENT_TRAIN, "epochs": epochs}},
                    teacher=teacher, train=splits.train, seed=0)
            times[cache].append(time.perf_counter() - t0)
    on, off = min(times[True]), min(times[False])
    return {"epochs": epochs, "cached_s": on, "uncached_s": off, "speedup": off / on}


def measure(mode: str = "full", seeds: Optional[tuple] = None, threads: int = 2) -> dict:
    """Train the teacher and the 3 × len(seeds) students; returns every figure as a dict."""
    s = SETTINGS[mode]
    seeds = tuple(seeds or s["seeds"])
    torch.set_num_threads(threads)
    splits = load_data({"name": "digits", "image_size": s["image_size"], "channels": 3}, seed=0)
    t0 = time.perf_counter()
    teacher = _model(TEACHER, splits, 0)
    fit(teacher, splits.train, splits.val, {**TEACHER_TRAIN, "epochs": s["teacher_epochs"]}, seed=0, desc="teacher")
    teacher_row = {"test_accuracy": evaluate(teacher, splits.test), "params": count_params(teacher),
                   "seconds": time.perf_counter() - t0}
    rows = [_train_student(m, teacher, splits, seed, s["student_epochs"]) for seed in seeds for m in METHODS]
    summary = {}
    for m in METHODS:
        accs = [r["test_accuracy"] for r in rows if r["method"] == m]
        summary[m] = {"mean": statistics.mean(accs), "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                      "runs": accs, "seconds": statistics.mean(r["seconds"] for r in rows if r["method"] == m)}
    return {"mode": mode, "settings": {**s, "seeds": list(seeds)}, "image_shape": list(splits.input_shape),
            "teacher": teacher_row, "students": rows, "summary": summary,
            "cache": _cache_speedup(teacher, splits, s["cache_epochs"]), "threads": torch.get_num_threads()}


def to_markdown(res: dict) -> str:
    """The markdown section for docs/BENCHMARKS.md."""
    s, t, summ = res["settings"], res["teacher"], res["summary"]
    shape = "×".join(str(d) for d in res["image_shape"])
    student_params = res["students"][0]["params"]
    lines = [
        "## Knowledge distillation (issue 4)", "",
        f"Digits ({shape}, 1078 train / 359 val / 360 test). Teacher: ResNet-18 (CIFAR stem, width 0.5, "
        f"{t['params']:,} params) trained {s['teacher_epochs']} epochs (SGD lr {TEACHER_TRAIN['lr']}) → "
        f"**{t['test_accuracy']:.1f} %** test "
        f"accuracy ({'meets' if t['test_accuracy'] >= 97 else 'BELOW'} the 97 % bar). Student: ResNet-8 width 0.25 "
        f"({student_params:,} params, {t['params'] / student_params:.0f}× smaller), {s['student_epochs']} epochs, "
        f"SGD lr {STUDENT_TRAIN['lr']} cosine, batch {STUDENT_TRAIN['batch_size']}, identical for all three; "
        f"seeds {', '.join(map(str, s['seeds']))} (student init + shuffling). KD: T = {KD['temperature']}, "
        f"alpha = {KD['alpha']}; attention transfer weight {ATTENTION_WEIGHT} on the default stage pairs "
        f"(layer1↔layer1, layer2↔layer3, layer3↔layer4). {res['threads']} threads.", "",
        "| student training | test accuracy % (mean ± std) | per-seed | wall s (mean; shared machine, noisy) |",
        "|---|---|---|---|",
    ]
    for m, v in summ.items():
        lines.append(f"| {m} | **{v['mean']:.2f} ± {v['std']:.2f}** | {', '.join(f'{a:.1f}' for a in v['runs'])} "
                     f"| {v['seconds']:.1f} |")
    gain = summ["logit KD"]["mean"] - summ["scratch"]["mean"]
    c = res["cache"]
    verdict = ("quick smoke run: too few epochs for the comparison to be evidence" if res["mode"] == "quick" else
               f"{'meets' if gain >= 0 else 'FAILS'} the acceptance bar: KD mean ≥ scratch mean")
    lines += [
        "", f"Logit KD vs scratch: {gain:+.2f} points ({verdict}).", "",
        f"Teacher-output cache (augmentation off): {c['epochs']} epoch(s) of logit KD take {c['cached_s']:.2f} s "
        f"with the cache vs {c['uncached_s']:.2f} s running the teacher on every batch → "
        f"**{c['speedup']:.1f}× faster** (cache build included).", "",
    ]
    return "\n".join(lines)


def run(ctx) -> str:
    """``benchmarks/run_all.py`` entry point: measure (quick mode with ``ctx.quick``), save JSON, return markdown."""
    from edgekit._io import write_json_atomic

    res = measure("quick" if ctx.quick else "full", threads=ctx.threads)
    write_json_atomic(Path(ctx.results_dir) / "distill.json", res)
    return to_markdown(res)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer epochs and seeds (smoke run)")
    p.add_argument("--large", action="store_true", help="32×32 images, more epochs")
    p.add_argument("--json", help="also write every figure to this JSON file")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    args = p.parse_args(argv)
    res = measure("quick" if args.quick else "large" if args.large else "full", threads=args.threads)
    if args.json:
        from edgekit._io import write_json_atomic

        write_json_atomic(args.json, res)
    print(to_markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
