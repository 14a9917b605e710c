"""Head / FFN pruning of a Hugging Face BERT: MACs, params and ONNX Runtime fp32 latency (docs/PRUNING.md).

A random-weight ``BertForSequenceClassification`` (2 layers x 128 hidden x 4 heads, FFN 512, vocab 3000) is pruned
with ``heads: 0.5, ffn: 0.5, round_to: 16`` (no fine-tune: this measures speed, not accuracy); both are exported to
ONNX (three int64 inputs) and timed on ORT CPU at batch 1, sequence 64, interleaved rounds (A B A B ...); the
speed-up is the median of the per-round ratios, with their min and max.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_prune_heads.py [--threads 1] [--rounds 7]
"""
from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch


def main() -> None:
    import onnxruntime as ort

    from edgekit.export import export_onnx
    from edgekit.models import create_model
    from edgekit.techniques.prune.prune import prune

    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--seq", type=int, default=64)
    args = ap.parse_args()
    torch.manual_seed(0)
    cfg = {"model_type": "bert", "num_hidden_layers": 2, "hidden_size": 128, "num_attention_heads": 4,
           "intermediate_size": 512, "max_position_embeddings": 128}
    model = create_model("hf", config=cfg, num_classes=5, vocab_size=3000).eval()
    rng = np.random.default_rng(0)
    x = {"input_ids": rng.integers(5, 3000, (8, args.seq)).astype(np.int64),
         "attention_mask": np.ones((8, args.seq), np.int64), "token_type_ids": np.zeros((8, args.seq), np.int64)}
    res = prune(model, {"heads": 0.5, "ffn": 0.5, "round_to": 16, "finetune": {"epochs": 0}}, example_input=x)
    print(f"MACs {res.macs_before:,} -> {res.macs_after:,} ({res.macs_fraction:.3f}); "
          f"params {res.params_before:,} -> {res.params_after:,}")
    feed = {k: v[:1] for k, v in x.items()}
    sessions = []
    with tempfile.TemporaryDirectory() as d:
        for name, m in (("base", model), ("pruned", res.model)):
            path = export_onnx(m, feed, f"{d}/{name}.onnx").path
            so = ort.SessionOptions()
            so.intra_op_num_threads = args.threads
            sessions.append(ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]))
    for s in sessions:
        for _ in range(20):
            s.run(None, feed)
    medians = np.array([[_median_ms(s, feed) for s in sessions] for _ in range(args.rounds)])
    ratio = medians[:, 0] / medians[:, 1]
    print(f"ORT fp32 batch 1 seq {args.seq}, {args.threads} thread(s): {np.median(medians[:, 0]):.3f} ms -> "
          f"{np.median(medians[:, 1]):.3f} ms, speed-up {np.median(ratio):.2f}x "
          f"(rounds {ratio.min():.2f}-{ratio.max():.2f}, n={args.rounds})")


def _median_ms(session, feed, iters: int = 60) -> float:
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1e3)


if __name__ == "__main__":
    main()
