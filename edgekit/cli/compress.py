"""CLI commands for single files: `edgekit export`, `edgekit prune` (incl. --sensitivity), `edgekit quantize`.

Data for accuracy and fine-tuning comes from a dataset spec: ``digits`` (images, sized to the model's input),
``digits_seq``, or an ``.npz`` with ``x``/``y`` (split deterministically with --seed).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from edgekit._io import check_output
from edgekit.cli._args import bounded_float, bounded_int
from edgekit.errors import ConfigError


def _splits_for(spec: str, input_shape: Sequence[int], seed: int):
    """Splits from a data spec, shaped for a model input of per-sample ``input_shape``."""
    from edgekit.data import load_data

    if spec.endswith(".npz"):
        return load_data({"name": "npz", "path": spec}, seed)
    if spec == "digits_seq":
        return load_data({"name": "digits_seq"}, seed)
    if spec == "digits":
        shape = list(input_shape)
        if len(shape) != 3:
            raise ConfigError(f"--data digits gives images, but the model takes per-sample shape {shape}")
        return load_data({"name": "digits", "channels": shape[0], "image_size": shape[1]}, seed)
    raise ConfigError(f"--data must be 'digits', 'digits_seq' or a .npz file, got '{spec}'")


def _load(path: str):
    from edgekit.models import load_checkpoint

    model, meta = load_checkpoint(path)
    if not meta.get("input_shape"):
        raise ConfigError(f"{path}: checkpoint has no input_shape in its meta; re-save it with "
                          "save_checkpoint(model, path, {'input_shape': [...]})")
    return model, meta


def _cmd_export(args) -> int:
    import numpy as np

    from edgekit.export import export_onnx

    check_output(args.out, "onnx", inputs=[args.checkpoint, args.data], force=args.force)
    model, meta = _load(args.checkpoint)
    if args.data:
        sample = _splits_for(args.data, meta["input_shape"], args.seed).val.x[:32]
    else:
        sample = np.random.default_rng(args.seed).standard_normal((4, *meta["input_shape"])).astype(np.float32)
    res = export_onnx(model, sample, args.out, opset=args.opset, exporter=args.exporter)
    print(f"wrote {res.path} (max |ONNX − PyTorch| {res.max_abs_diff:.1e}, top-1 agreement {res.top1_agreement:.1f}%)")
    return 0


def _cmd_prune(args) -> int:
    from edgekit.models import save_checkpoint

    if args.out:
        kind = "dir" if args.sensitivity else "checkpoint"
        check_output(args.out, kind, inputs=[args.checkpoint, args.data], force=args.force)
    model, meta = _load(args.checkpoint)
    splits = _splits_for(args.data, meta["input_shape"], args.seed) if args.data else None
    if args.sensitivity:
        from edgekit.techniques.prune.sensitivity import sensitivity

        if splits is None:
            raise ConfigError("--sensitivity measures accuracy: give --data (digits, digits_seq or an .npz)")
        out_dir = Path(args.out or "sensitivity")
        res = sensitivity(model, splits.val.x[:8], splits.val, ratios=[float(r) for r in args.ratios.split(",")],
                          importance=args.importance, round_to=args.round_to, out_dir=out_dir)
        print(res.to_markdown())
        print(f"wrote {', '.join(res.files.values()) or out_dir}")
        return 0
    if not args.out:
        raise ConfigError("--out is required: where the pruned checkpoint goes (e.g. pruned.pt)")
    from edgekit.techniques.prune.prune import prune

    cfg: dict = {"importance": args.importance, "round_to": args.round_to,
                 "finetune": {"epochs": args.finetune_epochs if splits else 0, "lr": args.lr}}
    given = [k for k in ("ratio", "macs_target", "speedup_target") if getattr(args, k) is not None]
    if len(given) != 1:
        raise ConfigError("give exactly one of --ratio, --macs-target, --speedup-target")
    cfg[given[0]] = getattr(args, given[0])
    if args.exclude:
        cfg["exclude"] = args.exclude.split(",")
    import numpy as np

    example = splits.val.x[:8] if splits else np.zeros((1, *meta["input_shape"]), np.float32)
    res = prune(model, cfg, example_input=example, train=splits.train if splits else None,
                val=splits.val if splits else None, teacher=model if splits else None, seed=args.seed)
    save_checkpoint(res.model, args.out, {**meta, "pruned": {"macs_fraction": res.macs_fraction}})
    acc = f", val accuracy {res.val_accuracy:.1f}%" if res.val_accuracy is not None else ""
    print(f"wrote {args.out}: MACs {res.macs_before:,} → {res.macs_after:,} ({res.macs_fraction:.0%}), "
          f"params {res.params_before:,} → {res.params_after:,}{acc}")
    return 0


def _cmd_quantize(args) -> int:
    from edgekit.techniques.quantize.ptq import quantize

    if args.mode == "static" and not args.calib:
        raise ConfigError("static quantisation needs --calib (an .npz with array x drawn from training data)")
    config = {"mode": args.mode, "target": args.target, "method": args.method, "samples": args.samples}
    res = quantize(args.model, config, calib=args.calib, out_path=args.out, threads=args.threads)
    print(f"wrote {res.artifact} (int8 MAC coverage {res.int8_mac_fraction:.0%})")
    return 0


def _cmd_quantize_checked(args) -> int:
    """`edgekit quantize` after its input and output paths are checked (never over its input, suffix .onnx)."""
    from edgekit._io import require_file
    from edgekit.errors import InputFileError

    if require_file(args.model, "ONNX model").stat().st_size == 0:  # ONNX Runtime would print its own traceback
        raise InputFileError(f"{args.model}: the file is empty (0 bytes), not an ONNX model")
    check_output(args.out, "onnx", inputs=[args.model, args.calib], force=args.force)
    return _cmd_quantize(args)


def add_commands(subparsers: Any) -> None:
    """Add `export`, `prune` and `quantize` to the `edgekit` CLI."""
    from edgekit.techniques.prune.config import IMPORTANCES
    from edgekit.techniques.quantize.config import CALIBRATION_METHODS, TARGETS

    e = subparsers.add_parser("export", help="export an edgekit checkpoint to ONNX (parity-checked)")
    e.add_argument("checkpoint")
    e.add_argument("--out", required=True, help="the .onnx file to write (never the input checkpoint)")
    e.add_argument("--force", action="store_true", help="replace an existing file that is not ONNX")
    e.add_argument("--data", help="samples for the parity check: digits | digits_seq | file.npz (default: random)")
    e.add_argument("--opset", type=bounded_int("--opset", 7, 30), default=17)
    e.add_argument("--exporter", choices=["torchscript", "dynamo"], default="torchscript")
    e.add_argument("--seed", type=bounded_int("--seed", 0, 2**32 - 1), default=0)
    e.set_defaults(func=_cmd_export)

    p = subparsers.add_parser("prune", help="structured channel pruning of a checkpoint, or --sensitivity analysis")
    p.add_argument("checkpoint")
    p.add_argument("--out", help="pruned checkpoint (.pt), or the folder for --sensitivity results")
    p.add_argument("--force", action="store_true", help="replace an existing file that is not a checkpoint")
    p.add_argument("--data", help="digits | digits_seq | file.npz: KD fine-tune and accuracy")
    p.add_argument("--ratio", type=bounded_float("--ratio", 0, 1))
    p.add_argument("--macs-target", type=bounded_float("--macs-target", 0, 1),
                   help="fraction of the original MACs to keep")
    p.add_argument("--speedup-target", type=bounded_float("--speedup-target", 0, 1000),
                   help="measured ORT CPU speedup to reach")
    p.add_argument("--importance", choices=IMPORTANCES.names(), default="l2")
    p.add_argument("--round-to", type=bounded_int("--round-to", 1, 1024), default=8)
    p.add_argument("--exclude", help="comma-separated module names to leave untouched")
    p.add_argument("--finetune-epochs", type=bounded_int("--finetune-epochs", 0, 100_000), default=3)
    p.add_argument("--lr", type=bounded_float("--lr", 0, 10), default=0.01)
    p.add_argument("--sensitivity", action="store_true", help="per-layer accuracy vs pruning ratio (table + plot)")
    p.add_argument("--ratios", default="0.25,0.5,0.75", help="ratios for --sensitivity")
    p.add_argument("--seed", type=bounded_int("--seed", 0, 2**32 - 1), default=0)
    p.set_defaults(func=_cmd_prune)

    q = subparsers.add_parser("quantize", help="INT8 quantisation of an ONNX file for a target")
    q.add_argument("model")
    q.add_argument("--out", required=True, help="the .onnx file to write (never the input)")
    q.add_argument("--force", action="store_true", help="replace an existing file that is not ONNX")
    q.add_argument("--calib", help="calibration .npz (array x), e.g. calib_data/digits32_rgb.npz")
    q.add_argument("--target", choices=TARGETS.names(), default="cpu", help="quantisation target")
    q.add_argument("--mode", choices=["static", "dynamic"], default="static")
    q.add_argument("--method", choices=CALIBRATION_METHODS.names(), default="minmax")
    q.add_argument("--samples", type=bounded_int("--samples", 1, 1_000_000), default=128)
    q.add_argument("--threads", type=bounded_int("--threads", 1, 1024), default=2)
    q.set_defaults(func=_cmd_quantize_checked)
