"""The `edgekit` command: run, bench, generate, recipe validate, models, data make-calib, doctor, and per-technique
commands.

Every :class:`edgekit.errors.EdgekitError` (user errors, and :class:`~edgekit.errors.LibraryError` for failures
inside a library) prints as `edgekit: error: ...` with exit code 2 and no traceback; `--debug` adds the traceback.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import traceback
from typing import List, Optional

from edgekit._log import configure_cli_logging
from edgekit.cli._args import Parser, bounded_int
from edgekit.errors import ConfigError, EdgekitError, as_edgekit_error

GATE_FAILED = 3  # `run --gate` found nothing to ship (2 is a user error)
# modules that add their own sub-commands with add_commands(subparsers)
_COMMAND_MODULES = ["edgekit.cli.bench", "edgekit.cli.doctor", "edgekit.cli.compress", "edgekit.cli.search",
                    "edgekit.cli.generate"]


def _cmd_run(args) -> int:
    from edgekit.pipeline import run_recipe
    from edgekit.pipeline.recipe import load_recipe
    from edgekit.pipeline.rundir import check_run_name

    if args.name is not None:
        check_run_name(args.name, "--name")
    if args.gate and args.no_report:
        raise ConfigError("--gate decides from the benchmark report; it cannot go with --no-report")
    recipe = load_recipe(args.recipe)
    result = run_recipe(recipe, recipe_path=args.recipe, runs_dir=args.runs_dir, name=args.name, resume=args.resume,
                        report=not args.no_report, rerun_changed=args.rerun_changed)
    print(f"run directory: {result.run_dir}")
    if result.report:
        print(f"report: {result.report}")
    for line in result.headline:
        print(line)
    if args.gate:
        qualified = result.manifest.get("report", {}).get("qualified", {})
        if not any(qualified.values()):
            print("edgekit: gate: no variant qualifies on any target (accuracy budget report.max_accuracy_drop, "
                  "speed gate report.gate_speedup, INT8 never slower than its parent); see the report", file=sys.stderr)
            return GATE_FAILED
        print("gate: passed (" + ", ".join(f"{b}: {v}" for b, v in qualified.items() if v) + ")")
    return 0


def _cmd_validate(args) -> int:
    from edgekit.pipeline.preflight import imported_modules, preflight
    from edgekit.pipeline.recipe import load_recipe
    from edgekit.pipeline.runner import _lazy_splits

    recipe = load_recipe(args.recipe)
    preflight(recipe, _lazy_splits(recipe))
    print(f"{args.recipe}: valid ({len(recipe.stages)} stage(s): {', '.join(s.type for s in recipe.stages) or 'none'})")
    modules = imported_modules(recipe)
    if modules:
        print(f"running it imports (and so executes) these modules: {', '.join(modules)}")
    return 0


def _cmd_schema(args) -> int:
    from edgekit.pipeline.recipe import recipe_json_schema

    print(json.dumps(recipe_json_schema(), indent=2))
    return 0


def _cmd_template(args) -> int:
    from edgekit._io import write_text_atomic
    from edgekit.pipeline.template import render_template

    text = render_template()
    if args.out:
        from edgekit._io import check_output

        check_output(args.out, "text", force=args.force)
        write_text_atomic(args.out, text)
        print(f"wrote {args.out}")
    else:
        print(text, end="")
    return 0


def _cmd_models(args) -> int:
    from edgekit.models import describe_models

    rows = describe_models()
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        args_txt = ", ".join(f"{k}={v}" for k, v in r["args"].items())
        print(f"{r['name']:<{width}}  {r['summary']}\n{'':<{width}}  args: {args_txt}")
    return 0


def _cmd_make_calib(args) -> int:
    from edgekit._io import check_output
    from edgekit.data import make_calibration

    check_output(args.out, "npz", force=args.force)
    cfg = {"name": args.dataset}
    if args.image_size:
        cfg["image_size"] = args.image_size
    if args.channels:
        cfg["channels"] = args.channels
    out = make_calibration(cfg, args.out, samples=args.samples, seed=args.seed)
    print(f"wrote {out} ({args.samples} samples from the {args.dataset} training split, seed {args.seed})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command."""
    from edgekit.data import DATASETS

    p = Parser(prog="edgekit", description="Make neural networks small and fast for edge devices, "
                                "and prove it with measurements.")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("--quiet", action="store_true", help="no progress bars or status lines")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    r = sub.add_parser("run", help="run a YAML recipe end to end and write its report")
    r.add_argument("recipe")
    r.add_argument("--name", help="run name (default: timestamp); existing runs are never overwritten")
    r.add_argument("--resume", action="store_true", help="continue the named (or latest) run, skipping finished stages")
    r.add_argument("--runs-dir", default="runs", help="parent directory of runs (default: runs)")
    r.add_argument("--rerun-changed", action="store_true",
                   help="with --resume: copy the earlier run's finished stages into a NEW run and run the changed "
                        "stages there (the earlier run is never modified)")
    r.add_argument("--no-report", action="store_true", help="run the stages only")
    r.add_argument("--gate", action="store_true",
                   help=f"exit {GATE_FAILED} when no variant qualifies on any target (for CI): within the recipe's "
                        "report.max_accuracy_drop, at report.gate_speedup, INT8 never slower than its parent")
    r.set_defaults(func=_cmd_run)

    rec = sub.add_parser("recipe", help="recipe tools").add_subparsers(dest="recipe_cmd", metavar="ACTION")
    rec.required = True
    v = rec.add_parser("validate", help="check a recipe and list every problem with its field path")
    v.add_argument("recipe")
    v.set_defaults(func=_cmd_validate)
    sc = rec.add_parser("schema", help="print the recipe's JSON schema")
    sc.set_defaults(func=_cmd_schema)
    tp = rec.add_parser("template", help="print (or write) the commented template of every recipe field")
    tp.add_argument("--out", help="write to this file (.yaml) instead of stdout")
    tp.add_argument("--force", action="store_true", help="replace an existing file that is not YAML text")
    tp.set_defaults(func=_cmd_template)

    m = sub.add_parser("models", help="list the reference architectures")
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=_cmd_models)

    d = sub.add_parser("data", help="data tools").add_subparsers(dest="data_cmd", metavar="ACTION")
    d.required = True
    mc = d.add_parser("make-calib", help="write a calibration npz drawn from a dataset's training split")
    mc.add_argument("--dataset", default="digits", choices=DATASETS.names(),
                    help="a registered dataset (default: digits)")
    mc.add_argument("--image-size", type=bounded_int("--image-size", 1, 4096))
    mc.add_argument("--channels", type=int, choices=[1, 3])
    mc.add_argument("--samples", type=bounded_int("--samples", 1, 1_000_000), default=128)
    mc.add_argument("--seed", type=bounded_int("--seed", 0, 2**32 - 1), default=0)
    mc.add_argument("--out", required=True, help="the .npz to write")
    mc.add_argument("--force", action="store_true", help="replace an existing file that is not an .npz")
    mc.set_defaults(func=_cmd_make_calib)

    for mod in _COMMAND_MODULES:
        importlib.import_module(mod).add_commands(sub)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the `edgekit` console script."""
    argv = sys.argv[1:] if argv is None else argv
    # Intel OpenMP (PyTorch's MKL) workers spin for 200 ms after each parallel region; benchmarks alternate
    # PyTorch and ONNX Runtime blocks in one process, and the spinning took cores from both (make demo: ORT GEMM
    # peak 324 vs 432 GOP/s, PyTorch eager reference 4.9 vs 3.5 ms). Read when torch loads, so set it first.
    os.environ.setdefault("KMP_BLOCKTIME", "0")
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_cli_logging(quiet=args.quiet)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("edgekit: interrupted (finished stages are kept; continue with --resume)", file=sys.stderr)
        return 130
    except Exception as e:  # the one boundary: every failure becomes one line (traceback with --debug)
        if args.debug:
            traceback.print_exc()
        err = e if isinstance(e, EdgekitError) else as_edgekit_error(e)
        print(f"edgekit: error: {one_line(str(err))}", file=sys.stderr)
        return 2


def one_line(message: str, limit: int = 2000) -> str:
    """An error message as printed: several problems joined with '; ', cut to ``limit`` characters."""
    text = ""
    for part in (p.strip() for p in message.splitlines()):
        if part:
            text += part if not text else (" " if text.endswith(":") else "; ") + part
    return text if len(text) <= limit else text[:limit - 1] + "…"


if __name__ == "__main__":
    sys.exit(main())
