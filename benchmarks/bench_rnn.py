"""Recurrent models (issue 19): each INT8 form of GRU and LSTM, and hidden-unit pruning with KD, on digit sequences.

For each cell (GRU, LSTM) and hidden size (128, 256) an ``rnn_classifier`` is trained on ``digits_seq`` (8 time steps
of 8 pixels), exported, and turned into each INT8 form:

- ``op`` — ONNX Runtime dynamic quantisation of the exported graph: ``DynamicQuantizeLSTM`` for LSTM; for GRU only the
  classifier becomes int8 (ONNX Runtime has no quantised GRU);
- ``unrolled`` (GRU) — each GRU node unrolled into its MatMul/gate graph (``edgekit.techniques.quantize._rnn``), then
  dynamic INT8 (every MatMul int8).

Then the hidden-128 models are pruned to 64 units (``prune`` with ``ratio: 0.5``, KD from the unpruned model) and
quantised the way the quantize stage chooses. Every variant of a model is timed against its fp32 ONNX export in the
same process, interleaved in rounds, at batch 1 and 8; the table gives the median per-round speed-up with its min–max,
test accuracy on the deployed artifact and the share of MACs that runs int8 kernels.

Run through ``benchmarks/run_all.py`` (``run(ctx)``), or alone: ``python benchmarks/bench_rnn.py [--quick]``.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Dict, List

os.environ.setdefault("KMP_BLOCKTIME", "0")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results" / "rnn.json"
BATCHES = (1, 8)
TRAIN = {"epochs": 15, "optimizer": "adam", "lr": 0.005, "weight_decay": 0.0, "batch_size": 32}
PRUNE = {"ratio": 0.5, "alpha": 0.5, "temperature": 2.0,
         "finetune": {"epochs": 15, "optimizer": "adam", "lr": 0.003, "weight_decay": 0.0, "batch_size": 32}}


def _train(cell: str, hidden: int, splits, epochs: int, seed: int = 0):
    import torch

    from edgekit.core.train import fit
    from edgekit.models import create_model

    torch.manual_seed(seed)
    model = create_model("rnn_classifier", hidden_size=hidden, cell=cell)
    fit(model, splits.train, splits.val, {**TRAIN, "epochs": epochs}, seed=seed)
    return model.eval()


def _forms(fp32: Path, work: Path, tag: str, threads: int) -> Dict[str, Path]:
    """{form: int8 ONNX} for every INT8 form of ``fp32`` (op, and unrolled when it has unrollable GRU nodes)."""
    import onnx

    from edgekit.techniques.quantize._rnn import unroll_gru
    from edgekit.techniques.quantize.config import QuantizeConfig
    from edgekit.techniques.quantize.dynamic import quantize_dynamic_model

    cfg = QuantizeConfig(mode="dynamic")
    out = {"op int8": quantize_dynamic_model(fp32, cfg, out_path=work / f"{tag}_op.int8.onnx").artifact}
    unrolled, done, _ = unroll_gru(onnx.load(str(fp32)))
    if done:
        onnx.save(unrolled, str(work / f"{tag}_unrolled.onnx"))
        out["unrolled int8"] = quantize_dynamic_model(work / f"{tag}_unrolled.onnx", cfg,
                                                      out_path=work / f"{tag}_unrolled.int8.onnx").artifact
    return out


def _describe(paths: Dict[str, Path], splits, threads: int, rounds: int, iters: int) -> Dict[str, dict]:
    """Accuracy, int8 MAC share and paired speed-ups over ``paths['fp32']`` of every variant."""
    import numpy as np

    from edgekit.backends import default_backend, open_runner
    from edgekit.core.train import evaluate
    from edgekit.techniques.quantize._rnn import time_forms
    from edgekit.techniques.quantize.coverage import int8_coverage

    backend = default_backend("onnx", "cpu")
    x = {b: np.ascontiguousarray(splits.test.x[:b]) for b in BATCHES}
    speed = time_forms(paths, x, threads, rounds=rounds, iters=iters)
    rows = {}
    for name, path in paths.items():
        with open_runner(path, backend, threads=threads) as runner:
            acc = evaluate(runner, splits.test)
        rows[name] = {"test_accuracy": round(acc, 2), "int8_mac_fraction": round(int8_coverage(path).int8_fraction, 4),
                      "size_kib": round(path.stat().st_size / 1024, 1),
                      "speedup": {str(b): {k: round(v, 4) if isinstance(v, float) else v for k, v in s.items()}
                                  for b, s in speed.get(name, {}).items()}}
    return rows


def _prune_variants(model, splits, work: Path, tag: str, threads: int, quick: bool) -> Dict[str, Path]:
    from edgekit.export import export_onnx
    from edgekit.techniques.prune.prune import prune
    from edgekit.techniques.quantize._rnn import quantize_dynamic_best
    from edgekit.techniques.quantize.config import QuantizeConfig

    cfg = {**PRUNE, "finetune": {**PRUNE["finetune"], "epochs": 3 if quick else PRUNE["finetune"]["epochs"]}}
    pruned = prune(model, cfg, train=splits.train, val=splits.val, teacher=model, seed=0).model
    fp32 = export_onnx(pruned, splits.val.x[:8], work / f"{tag}_pruned.onnx").path
    q = quantize_dynamic_best(fp32, QuantizeConfig(mode="dynamic"), out_path=work / f"{tag}_pruned.int8.onnx",
                              val=splits.val, threads=threads)
    return {f"pruned ½ fp32 ({pruned.rnn.hidden_size})": fp32,
            f"pruned ½ int8 ({q.sidecar['rnn_forms']['chosen']})": q.artifact}


def measure(quick: bool = False, threads: int = 2, work: Path | None = None) -> dict:
    """Every model and variant; raw figures (what ``to_markdown`` renders)."""
    import torch

    from edgekit.data import load_data
    from edgekit.export import export_onnx

    torch.set_num_threads(threads)  # training too: on a shared machine a second spinning thread only wastes CPU
    splits = load_data({"name": "digits_seq"}, seed=0)
    rounds, iters, epochs = (4, 10, 4) if quick else (15, 40, TRAIN["epochs"])
    own = tempfile.TemporaryDirectory(prefix="edgekit-bench-rnn-") if work is None else None
    work = Path(own.name) if own else Path(work)
    res = {"threads": threads, "rounds": rounds, "batches": list(BATCHES), "load_average": list(os.getloadavg()),
           "models": {}}
    for cell in ("gru", "lstm"):
        for hidden in (128, 256):
            tag = f"{cell}{hidden}"
            model = _train(cell, hidden, splits, epochs)
            fp32 = export_onnx(model, splits.val.x[:8], work / f"{tag}.onnx").path
            paths = {"fp32": fp32, **_forms(fp32, work, tag, threads)}
            if hidden == 128:
                paths.update(_prune_variants(model, splits, work, tag, threads, quick))
            res["models"][tag] = _describe(paths, splits, threads, rounds, iters)
    res["load_average_after"] = list(os.getloadavg())
    if own:
        own.cleanup()
    return res


def _cell(row: dict, b: int) -> str:
    s = row["speedup"].get(str(b))
    return "1.00×" if s is None else f"{s['speedup']:.2f}× [{s['speedup_min']:.2f}–{s['speedup_max']:.2f}]"


def to_markdown(res: dict) -> str:
    """The section for docs/BENCHMARKS.md."""
    lines = ["## Recurrent models: INT8 forms and hidden-unit pruning (issue 19)", "",
             f"digits as sequences (8 steps × 8 pixels), ONNX Runtime CPU, {res['threads']} threads, "
             f"{res['rounds']} interleaved rounds; speed-up = median per-round ratio over the model's own fp32 ONNX "
             "export [min–max]; accuracy on the test split through the deployed artifact. Load average during the "
             f"run: {res['load_average'][0]:.1f} → {res['load_average_after'][0]:.1f} (2 cores).", "",
             "| model | variant | test % | int8 MACs | KiB | b1 speed-up | b8 speed-up |",
             "|---|---|---|---|---|---|---|"]
    for tag, rows in res["models"].items():
        for name, row in rows.items():
            lines.append(f"| {tag} | {name} | {row['test_accuracy']:.2f} | {row['int8_mac_fraction']:.1%} | "
                         f"{row['size_kib']:.0f} | {_cell(row, 1)} | {_cell(row, 8)} |")
    return "\n".join(lines) + "\n"


def run(ctx) -> str:
    """``benchmarks/run_all.py`` entry point."""
    from edgekit._io import write_json_atomic

    res = measure(ctx.quick, ctx.threads, ctx.work_dir)
    write_json_atomic(Path(ctx.results_dir) / "rnn.json", res)
    return to_markdown(res)


def main(argv: List[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="short training and timing (checks the script runs)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(RESULTS), help="raw results JSON")
    args = p.parse_args(argv)
    os.environ.setdefault("EDGEKIT_QUIET", "1")
    from edgekit._io import write_json_atomic

    res = measure(args.quick, args.threads)
    write_json_atomic(Path(args.out), res)
    print(to_markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
