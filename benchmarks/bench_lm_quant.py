"""SmoothQuant before dynamic W8A8 and the perplexity budget on the KV-cache graphs of a `text_gpt` run.

Usage (1 thread; no timing, only perplexity through ONNX Runtime, so the shared machine's load does not matter):

    PYTHONPATH=$PWD python benchmarks/bench_lm_quant.py --run runs/text_gpt/<timestamp> --out /tmp/lm_quant \\
        --graphs stages/00-train/reference.onnx stages/02-prune/student-pruned.onnx

The data (``pydoc_lm``, windows of ``--context`` tokens, split 0.8 / 0.1 / 0.1, seed 0) is rebuilt with the run's
``tokenizer.json``, so it is the split the run trained and reported on. Per graph: val / test perplexity over every
window of fp32, W8A8, W8A8 + SmoothQuant (each ``--alphas``), then the budgets ``--w8a8-budgets`` (W8A8) and
``--int4-budgets`` (INT4 block ``--block-size``, with and without embeddings): what each kept float and what it
measured. Writes ``results.json`` to ``--out``.
"""
from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path
from typing import Any, Dict

from edgekit._io import write_json_atomic
from edgekit.data import load_data
from edgekit.errors import AccuracyBudgetError
from edgekit.techniques.quantize.int4 import quantize_dynamic_int8, quantize_int4
from edgekit.techniques.quantize.lm_budget import graph_perplexity


def _ppl(path: Path, s: Any) -> Dict[str, float]:
    return {k: round(graph_perplexity(path, sp.x, sp.y), 3) for k, sp in (("val", s.val), ("test", s.test))}


def _budgeted(fn, src: Path, cfg: dict, out: Path, s: Any) -> Dict[str, Any]:
    t0 = time.perf_counter()
    try:
        r = fn(src, cfg, out_path=out, val=s.val)
    except AccuracyBudgetError as e:
        return {"error": str(e)}
    row = {k: v for k, v in r.metrics.items() if k.startswith("budget") or k in ("float_layers", "size_ratio")}
    row["kept_float"] = [[k["node"], k["val_perplexity_cost"]] for k in r.sidecar["kept_float"]]
    return {**row, "seconds": round(time.perf_counter() - t0, 1), **_ppl(r.artifact, s)}


def measure(src: Path, out: Path, s: Any, args: argparse.Namespace) -> Dict[str, Any]:
    """Every measurement of one graph (see the module docstring)."""
    row: Dict[str, Any] = {"fp32": _ppl(src, s)}
    row["w8a8"] = _ppl(quantize_dynamic_int8(src, out_path=out / f"{src.stem}.int8.onnx").artifact, s)
    for a in args.alphas:
        r = quantize_dynamic_int8(src, {"smoothquant": {"alpha": a}}, out_path=out / f"{src.stem}.sq{a}.onnx",
                                  train=s.train)
        sq = r.sidecar["smoothquant"]
        row[f"w8a8_sq{a}"] = {**_ppl(r.artifact, s), "smoothed_matmuls": sq["matmuls"],
                              "act_max_before_after": [sq["act_max_before"], sq["act_max_after"]]}
    for b in args.w8a8_budgets:
        row[f"w8a8_budget{b}"] = _budgeted(quantize_dynamic_int8, src, {"max_perplexity_increase": b},
                                           out / f"{src.stem}.b{b}.onnx", s)
    for b in args.int4_budgets:
        for emb in (True, False):
            cfg = {"block_size": args.block_size, "embeddings": emb, "max_perplexity_increase": b}
            row[f"int4_b{args.block_size}_emb{emb}_budget{b}"] = _budgeted(quantize_int4, src, cfg,
                                                                           out / f"{src.stem}.int4.onnx", s)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True, help="a text_gpt run directory (tokenizer.json, stages/)")
    p.add_argument("--graphs", nargs="+", required=True, help="KV-cache graphs, relative to --run")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--context", type=int, default=64)
    p.add_argument("--vocab-size", type=int, default=2000)
    p.add_argument("--alphas", type=float, nargs="*", default=[0.5, 0.8])
    p.add_argument("--w8a8-budgets", type=float, nargs="*", default=[0.0, 1.0])
    p.add_argument("--int4-budgets", type=float, nargs="*", default=[1.0])
    p.add_argument("--block-size", type=int, default=32)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    s = load_data({"name": "pydoc_lm", "shape": [args.context], "vocab_size": args.vocab_size,
                   "split": [0.8, 0.1, 0.1], "tokenizer": str(args.run / "tokenizer.json")}, seed=0)
    results = {"windows": {k: len(getattr(s, k).x) for k in ("train", "val", "test")}}
    for g in args.graphs:
        src = args.out / Path(g).name
        shutil.copyfile(args.run / g, src)  # the run directory is read only
        results[Path(g).stem] = measure(src, args.out, s, args)
        write_json_atomic(args.out / "results.json", results)
        print(Path(g).stem, results[Path(g).stem], flush=True)


if __name__ == "__main__":
    main()
