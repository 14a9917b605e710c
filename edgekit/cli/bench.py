"""The ``edgekit bench`` command (the main CLI calls ``add_commands(subparsers)``).

Example:
    $ edgekit bench fp32.onnx int8.onnx --batch 1,8 --threads 2 --out bench_out
    $ edgekit bench bert.onnx --input input_ids:int64:1x128 --input attention_mask:int64:1x128 --seq 32,128
"""
from __future__ import annotations

import argparse
import sys

from edgekit.cli._args import bounded_float, bounded_int
from edgekit.core.measure.latency import ROUND_STATS
from edgekit.errors import ConfigError


def add_commands(subparsers) -> argparse.ArgumentParser:
    """Add the ``bench`` sub-command to an argparse ``subparsers`` object; its ``func`` is ``handler``."""
    p = subparsers.add_parser(
        "bench", help="time models on backends: latency, throughput, MACs, efficiency, paired speedups",
        description="Time one or more models (ONNX, edgekit checkpoint, TensorRT engine) interleaved in rounds; "
                    "report p50/p90/p99, throughput, size, MACs, GOP/s vs this machine's measured GEMM peak, "
                    "accuracy (with --data) and speedup vs the baseline as the median of per-round ratios.")
    p.add_argument("models", nargs="+", metavar="MODEL",
                   help="model files, each run by the backends that read its suffix (.onnx, .pt, ...; "
                        "see `edgekit doctor`)")
    p.add_argument("--backend", default=None,
                   help="comma-separated backends, e.g. torch,ort-cpu (default: the default ONNX backend on the CPU, "
                        "ort-cpu); see `edgekit doctor`")
    p.add_argument("--batch", default="1", help="comma-separated batch sizes, e.g. 1,8,32 (default 1)")
    p.add_argument("--threads", type=bounded_int("--threads", 1, 1024), default=None,
                   help="intra-op CPU threads (default: all CPUs this process may use); recorded in the result")
    p.add_argument("--warmup", type=bounded_int("--warmup", 1, 10_000_000), default=10,
                   help="untimed iterations per case (default 10)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--iters", type=bounded_int("--iters", 1, 10_000_000), default=None,
                   help="timed iterations per case")
    g.add_argument("--min-time", type=bounded_float("--min-time", 0, 1e7), default=None,
                   help="minimum timed seconds per case (default 1)")
    p.add_argument("--rounds", type=bounded_int("--rounds", 1, 10_000_000), default=20,
                   help="interleaved rounds, each giving one paired ratio (default 20)")
    p.add_argument("--round-stat", choices=list(ROUND_STATS), default="min",
                   help="per-round latency behind the paired ratios: the block's fastest iteration (default; "
                        "robust on a busy machine), its 25th percentile or its median")
    p.add_argument("--baseline", default=None,
                   help="baseline MODEL (path or name, optionally NAME@backend); default: first")
    p.add_argument("--data", default=None,
                   help="held-out data for accuracy: an .npz with x,y (or one array per model input name, plus y) "
                        "or a dataset name (digits)")
    p.add_argument("--input-shape", default=None,
                   help="per-sample input shape when the model does not fix it, e.g. 3,224,224")
    p.add_argument("--input", action="append", default=None, metavar="NAME:DTYPE:SHAPE", dest="inputs",
                   help="a synthetic input by name, batch first (the --batch sizes replace it), repeatable, e.g. "
                        "--input input_ids:int64:1x128 --input attention_mask:int64:1x128; integer inputs get "
                        "token ids inside the vocabulary and masks of ones")
    p.add_argument("--seq", default=None, metavar="LENGTHS",
                   help="sweep the sequence length of models with a dynamic sequence axis, e.g. 32,128")
    p.add_argument("--ci-target", type=bounded_float("--ci-target", -1e-12, 0.99), default=0.05,
                   help="adaptive rounds: add rounds until every speed-up's 95%% CI half-width is at most this "
                        "fraction of its median (default 0.05), at most 3x --rounds or --max-time per batch; "
                        "0 = exactly --rounds")
    p.add_argument("--max-time", type=bounded_float("--max-time", 0, 86_400), default=120.0,
                   help="seconds of extra rounds per batch size for --ci-target (default 120)")
    p.add_argument("--out", default=None, help="write bench.json, bench.csv, bench.md and plots into this directory")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.set_defaults(func=handler)
    return p


def _parse_shape(text):
    if text is None:
        return None
    parts = [t.strip() for t in text.replace("x", ",").split(",") if t.strip()]
    if not parts or not all(t.isdigit() and int(t) > 0 for t in parts):
        raise ConfigError(f"--input-shape must be positive integers like 3,224,224; got '{text}'")
    return tuple(int(t) for t in parts)


def handler(args: argparse.Namespace) -> int:
    """Run the benchmark described by parsed ``args``; print the table; return the exit code."""
    from edgekit._io import check_output
    from edgekit.bench.api import benchmark

    check_output(args.out, "dir", inputs=args.models)
    res = benchmark(args.models, backends=args.backend, batches=args.batch, threads=args.threads,
                    warmup=args.warmup, iters=args.iters, min_time=args.min_time, rounds=args.rounds,
                    baseline=args.baseline, data=args.data, out_dir=args.out,
                    input_shape=_parse_shape(args.input_shape), plots=not args.no_plots,
                    round_stat=args.round_stat, inputs=args.inputs, sequences=args.seq,
                    ci_target=args.ci_target or None, max_seconds=args.max_time)
    print(res.environment_line())
    print()
    print(res.table())
    for s in res.skipped:
        print(f"skipped: {s['model']} on {s['backend']}: {s['reason']}")
    warning = res.load_warning()
    if warning:
        print(warning, file=sys.stderr)
    if args.out:
        print(f"\nwrote {args.out}/bench.json, bench.csv, bench.md" + ("" if args.no_plots else " and plots"))
    sys.stdout.flush()
    return 0
