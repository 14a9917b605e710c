"""CLI commands for single files: `edgekit export`, `edgekit prune` (incl. --sensitivity), `edgekit quantize`.

Data for accuracy and fine-tuning comes from a dataset spec: ``digits`` (images, sized to the model's input),
``digits_seq``, or an ``.npz`` with ``x``/``y`` (split deterministically with --seed).
"""
from __future__ import annotations

import argparse
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

    from edgekit._io import read_sidecar
    from edgekit.export import export_onnx

    check_output(args.out, "onnx", inputs=[args.checkpoint, args.data], force=args.force)
    model, meta = _load(args.checkpoint)
    if args.data:
        sample = _splits_for(args.data, meta["input_shape"], args.seed).val.x[:32]
    else:
        sample = np.random.default_rng(args.seed).standard_normal((4, *meta["input_shape"])).astype(np.float32)
    fuse = {"auto": "auto", "on": True, "off": False}[args.fuse]
    res = export_onnx(model, sample, args.out, opset=args.opset, exporter=args.exporter, fuse=fuse)
    print(f"wrote {res.path} (max |ONNX − PyTorch| {res.max_abs_diff:.1e}, top-1 agreement {res.top1_agreement:.1f}%)")
    fusion = read_sidecar(res.path).get("fusion") or {}
    if fusion.get("applied"):
        print(f"fused {fusion['counts']}; unfused graph for backends without ONNX Runtime contrib ops: "
              f"{fusion['unfused']}")
    return 0


def _prune_config(args, with_data: bool) -> dict:
    """The prune config from the command line: only what was given, so every default is PruneConfig's (the recipe's)."""
    given = [k for k in ("ratio", "macs_target", "speedup_target", "sparsity") if getattr(args, k) is not None]
    transformer = {k: getattr(args, k) for k in ("heads", "ffn", "depth") if getattr(args, k) is not None}
    if args.layers:
        transformer["layers"] = _int_list(args.layers, "--layers")
    if len(given) > 1 or not (given or transformer):
        raise ConfigError("give exactly one of --ratio, --macs-target, --speedup-target (structured) or --sparsity "
                          "(--method unstructured); or, for a transformer, --heads / --ffn / --layers / --depth (with "
                          "--macs-target to scale --heads / --ffn)")
    cfg: dict = {**{k: getattr(args, k) for k in given}, **transformer, "method": args.method,
                 "finetune": {"epochs": args.finetune_epochs if with_data else 0, "lr": args.lr}}
    for key in ("importance", "round_to", "steps", "max_ratio", "alpha", "temperature", "head_importance"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    for key in ("global_pruning", "compare_scratch"):
        if getattr(args, key):
            cfg[key] = True
    if args.exclude:
        cfg["exclude"] = args.exclude.split(",")
    return cfg


def _int_list(text: str, flag: str) -> list:
    try:
        return [int(i) for i in text.split(",") if i.strip()]
    except ValueError:
        raise ConfigError(f"{flag} takes comma-separated layer indices (e.g. 1,3), got '{text}'") from None


def _example(meta: dict, splits: Any) -> Any:
    """A sample batch: the data's, else synthetic inputs of the checkpoint's signature (token ids stay int64),
    else zeros of its input_shape."""
    import numpy as np

    if splits is not None:
        return splits.val.x[:8]
    if meta.get("signature"):
        from edgekit.core.signature import Signature

        return Signature.from_dict(meta["signature"]).synthetic(1, sequence=16)
    if not meta.get("input_shape"):
        raise ConfigError("the checkpoint has neither a signature nor an input_shape in its meta; give --data")
    return np.zeros((1, *meta["input_shape"]), np.float32)


def _cmd_prune(args) -> int:

    from edgekit.models import save_checkpoint

    if args.out:
        kind = "dir" if args.sensitivity else "checkpoint"
        check_output(args.out, kind, inputs=[args.checkpoint, args.data], force=args.force)
    from edgekit.models import load_checkpoint

    model, meta = load_checkpoint(args.checkpoint) if args.heads or args.ffn or args.layers or args.depth \
        else _load(args.checkpoint)
    splits = _splits_for(args.data, meta.get("input_shape") or [], args.seed) if args.data else None
    if args.sensitivity:
        from edgekit.techniques.prune.config import default_round_to
        from edgekit.techniques.prune.sensitivity import sensitivity

        if splits is None:
            raise ConfigError("--sensitivity measures accuracy: give --data (digits, digits_seq or an .npz)")
        out_dir = Path(args.out or "sensitivity")
        res = sensitivity(model, splits.val.x[:8], splits.val, ratios=[float(r) for r in args.ratios.split(",")],
                          importance=args.importance or "l1", round_to=args.round_to or default_round_to("ort-cpu")[0],
                          out_dir=out_dir)
        print(res.to_markdown())
        print(f"wrote {', '.join(res.files.values()) or out_dir}")
        return 0
    if not args.out:
        raise ConfigError("--out is required: where the pruned checkpoint goes (e.g. pruned.pt)")
    from edgekit.techniques.prune.prune import prune

    cfg = _prune_config(args, splits is not None)
    if args.compare_scratch and splits is None:
        raise ConfigError("--compare-scratch trains the pruned architecture from scratch: give --data")
    res = prune(model, cfg, example_input=_example(meta, splits), train=splits.train if splits else None,
                val=splits.val if splits else None, teacher=model if splits else None, seed=args.seed)
    save_checkpoint(res.model, args.out, {**meta, "pruned": {"macs_fraction": res.macs_fraction}
                                          if hasattr(res, "macs_fraction") else res.sidecar})
    acc = f", val accuracy {res.val_accuracy:.1f}%" if getattr(res, "val_accuracy", None) is not None else ""
    if hasattr(res, "macs_fraction"):
        scratch = getattr(res, "scratch", None)
        acc += f" (same architecture from scratch: {scratch['val_accuracy']:.1f}%)" if scratch else ""
        aligned = "aligned" if res.aligned else f"NOT aligned: {', '.join(res.unaligned_layers[:5])}"
        print(f"wrote {args.out}: MACs {res.macs_before:,} → {res.macs_after:,} ({res.macs_fraction:.1%}), "
              f"params {res.params_before:,} → {res.params_after:,}, widths multiples of round_to="
              f"{res.config.round_to} ({aligned}){acc}")
    else:
        print(f"wrote {args.out}: {res.metrics}{acc}")
    return 0


def _exclude_scope(text: str) -> dict:
    """``--exclude`` text → Scope fields: ``type:MatMul`` entries are op types, entries with ``*?[`` globs."""
    entries = [t.strip() for t in text.split(",") if t.strip()]
    scope: dict = {"names": [], "patterns": [], "types": []}
    for e in entries:
        if e.startswith("type:"):
            scope["types"].append(e[5:])
        elif any(c in e for c in "*?["):
            scope["patterns"].append(e)
        else:
            scope["names"].append(e)
    return {k: v for k, v in scope.items() if v}


def _cmd_quantize(args) -> int:
    from edgekit.bench.data import as_split
    from edgekit.techniques.quantize.ptq import quantize

    if args.mode == "static" and not args.calib:
        raise ConfigError("static quantisation needs --calib: an .npz drawn from training data, with an array x "
                          "(one-input models) or one array per model input name (input_ids, attention_mask, ...)")
    if args.max_accuracy_drop is not None and not args.val:
        raise ConfigError("--max-accuracy-drop needs --val (labelled validation data: an .npz with y)")
    config: dict = {"mode": args.mode, "target": args.target, "method": args.method, "samples": args.samples,
                    "max_accuracy_drop": args.max_accuracy_drop}
    if args.exclude:
        config["exclude"] = _exclude_scope(args.exclude)
    if args.op_types:
        config["op_types"] = [t.strip() for t in args.op_types.split(",") if t.strip()]
    if args.mode == "static":
        config["speed_fallback"] = args.speed_fallback
        if args.smoothquant:
            config["smoothquant"] = {"alpha": args.smoothquant}
        if args.all_ops:
            config["transformer_scope"] = False
        if args.speed_batches:
            config["speed_batches"] = _batches(args.speed_batches)
    val = as_split(args.val) if args.val else None
    if val is not None and val.y is None:
        raise ConfigError(f"--val {args.val} has no labels: add an integer array y")
    res = quantize(args.model, config, calib=args.calib, out_path=args.out, val=val, threads=args.threads)
    acc = res.accuracy
    extra = (f"; val accuracy fp32 {acc['fp32_val']:.2f}% → int8 {acc['int8_val']:.2f}%"
             if "fp32_val" in acc and "int8_val" in acc else "")
    floats = f"; {len(res.float_layers)} node(s) kept float" if res.float_layers else ""
    print(f"wrote {res.artifact} ({res.mode} int8 for target {res.target}, int8 MAC coverage "
          f"{res.int8_mac_fraction:.0%}{floats}{extra})")
    if res.speed:
        chosen = res.speed["speedup_vs_fp32"][res.speed["policy"]]
        shown = ", ".join(f"{v['median']:.2f}× ({v['p10']:.2f}–{v['p90']:.2f}) vs fp32 at batch {b}"
                          for b, v in chosen.items())
        slow = res.speed["slower_than_fp32"]
        print(f"speed check: policy {res.speed['policy']}, {len(res.speed['float_nodes'])} node(s) kept float for "
              f"speed; {shown}" + (f"; STILL SLOWER than fp32 at batch {slow}" if slow else ""))
    return 0


def _cmd_quantize_checked(args) -> int:
    """`edgekit quantize` after its input and output paths are checked (never over its input, suffix .onnx)."""
    from edgekit._io import require_file
    from edgekit.errors import InputFileError

    if require_file(args.model, "ONNX model").stat().st_size == 0:  # ONNX Runtime would print its own traceback
        raise InputFileError(f"{args.model}: the file is empty (0 bytes), not an ONNX model")
    check_output(args.out, "onnx", inputs=[args.model, args.calib, args.val], force=args.force)
    return _cmd_quantize(args)


def _batches(text: str) -> list:
    parts = [t.strip() for t in text.split(",") if t.strip()]
    if not parts or not all(t.isdigit() and int(t) > 0 for t in parts):
        raise ConfigError(f"--speed-batches must be positive integers like 1,8,32; got '{text}'")
    return [int(t) for t in parts]


def _add_prune(subparsers: Any) -> None:
    from edgekit.techniques.prune.config import HEAD_IMPORTANCES, IMPORTANCES
    from edgekit.techniques.sparsity.config import SPARSITY_PATTERNS

    p = subparsers.add_parser("prune", help="structured pruning of a checkpoint (channels, or transformer heads / "
                                            "FFN / layers), or --sensitivity analysis")
    p.add_argument("checkpoint")
    p.add_argument("--out", help="pruned checkpoint (.pt), or the folder for --sensitivity results")
    p.add_argument("--force", action="store_true", help="replace an existing file that is not a checkpoint")
    p.add_argument("--data", help="digits | digits_seq | file.npz: KD fine-tune and accuracy")
    p.add_argument("--method", choices=["structured", *SPARSITY_PATTERNS.names()], default="structured")
    p.add_argument("--ratio", type=bounded_float("--ratio", 0, 1), help="channel fraction removed from every group")
    p.add_argument("--macs-target", type=bounded_float("--macs-target", 0, 1),
                   help="fraction of the original MACs to keep (searched, measured)")
    p.add_argument("--speedup-target", type=bounded_float("--speedup-target", 0, 1000),
                   help="measured ORT CPU speedup to reach")
    p.add_argument("--sparsity", type=bounded_float("--sparsity", 0, 1),
                   help="fraction of weights zeroed (--method unstructured)")
    p.add_argument("--importance", choices=IMPORTANCES.names(), help="channel importance (default: as in recipes)")
    p.add_argument("--heads", type=bounded_float("--heads", 0, 1),
                   help="transformers: fraction of the attention heads removed from every layer")
    p.add_argument("--ffn", type=bounded_float("--ffn", 0, 1),
                   help="transformers: fraction of the FFN neurons removed from every layer")
    p.add_argument("--layers", help="transformers: comma-separated encoder layer indices removed whole (e.g. 1,3)")
    p.add_argument("--depth", type=bounded_int("--depth", 1, 10_000),
                   help="transformers: encoder layers kept (the least important ones are removed)")
    p.add_argument("--head-importance", choices=HEAD_IMPORTANCES.names(),
                   help="transformers: l1 (output norms) or taylor (head-mask gradients, needs --data)")
    p.add_argument("--round-to", type=bounded_int("--round-to", 1, 1024),
                   help="widths are multiples of this (default: the backend's channel "
                                                "alignment, 16 on AVX-512 CPUs)")
    p.add_argument("--global", dest="global_pruning", action="store_true", help="rank channels across layers")
    p.add_argument("--steps", type=bounded_int("--steps", 1, 1000),
                   help="iterative pruning steps, fine-tuning after each")
    p.add_argument("--max-ratio", type=bounded_float("--max-ratio", 0, 1),
                   help="no group loses more than this fraction")
    p.add_argument("--alpha", type=bounded_float("--alpha", 0, 1), help="KD soft-loss weight during fine-tuning")
    p.add_argument("--temperature", type=bounded_float("--temperature", 0, 1000),
                   help="KD temperature during fine-tuning")
    p.add_argument("--compare-scratch", action="store_true",
                   help="also train the pruned architecture from scratch with the same budget and report both")
    p.add_argument("--exclude", help="comma-separated module names to leave untouched")
    p.add_argument("--finetune-epochs", type=bounded_int("--finetune-epochs", 0, 100_000), default=3)
    p.add_argument("--lr", type=bounded_float("--lr", 0, 10), default=0.01)
    p.add_argument("--sensitivity", action="store_true", help="per-layer accuracy vs pruning ratio (table + plot)")
    p.add_argument("--ratios", default="0.25,0.5,0.75", help="ratios for --sensitivity")
    p.add_argument("--seed", type=bounded_int("--seed", 0, 2**32 - 1), default=0)
    p.set_defaults(func=_cmd_prune)


def add_commands(subparsers: Any) -> None:
    """Add `export`, `prune` and `quantize` to the `edgekit` CLI."""
    e = subparsers.add_parser("export", help="export an edgekit checkpoint to ONNX (parity-checked)")
    e.add_argument("checkpoint")
    e.add_argument("--out", required=True, help="the .onnx file to write (never the input checkpoint)")
    e.add_argument("--force", action="store_true", help="replace an existing file that is not ONNX")
    e.add_argument("--data", help="samples for the parity check: digits | digits_seq | file.npz (default: random)")
    e.add_argument("--opset", type=bounded_int("--opset", 7, 30), default=17)
    e.add_argument("--exporter", choices=["torchscript", "dynamo"], default="torchscript")
    e.add_argument("--seed", type=bounded_int("--seed", 0, 2**32 - 1), default=0)
    e.add_argument("--fuse", choices=["auto", "on", "off"], default="auto", help="ORT transformer fusion")
    e.set_defaults(func=_cmd_export)
    _add_prune(subparsers)
    _add_quantize(subparsers)


def _add_quantize(subparsers: Any) -> None:
    """The `quantize` command's arguments."""
    from edgekit.techniques.quantize.config import CALIBRATION_METHODS, TARGETS

    q = subparsers.add_parser("quantize", help="INT8 quantisation of an ONNX file for a target")
    q.add_argument("model", help="float ONNX model (one or several named inputs)")
    q.add_argument("--out", required=True, help="where the int8 .onnx goes (with a .json sidecar; never the input)")
    q.add_argument("--force", action="store_true", help="replace an existing file that is not ONNX")
    q.add_argument("--calib", help="calibration .npz from training data: array x, or one array per model input "
                                   "name (input_ids, attention_mask, ...); needed for --mode static")
    q.add_argument("--target", choices=TARGETS.names(), default="cpu", help="quantisation target")
    q.add_argument("--mode", choices=["static", "dynamic"], default="static",
                   help="static (calibrated QDQ) | dynamic (int8 weights, activations at run time: transformers, "
                        "LSTM/GRU)")
    q.add_argument("--method", choices=CALIBRATION_METHODS.names(), default="minmax")
    q.add_argument("--samples", type=bounded_int("--samples", 1, 1_000_000), default=128,
                   help="calibration samples used (default 128)")
    q.add_argument("--exclude", help="nodes kept float, comma-separated: names, globs ('/m/*/attention/*') or "
                                     "op types ('type:MatMul')")
    q.add_argument("--op-types", help="op types quantised in --mode dynamic, e.g. MatMul,Gemm (default: "
                                      "LSTM,GRU,MatMul,Gemm,Attention)")
    q.add_argument("--val", help="labelled validation .npz (x or named arrays, plus y): measures fp32/int8 accuracy")
    q.add_argument("--max-accuracy-drop", type=float, default=None,
                   help="accuracy budget in points on --val; the most sensitive layers fall back to float")
    q.add_argument("--speed-fallback", action=argparse.BooleanOptionalAction, default=True,
                   help="static: profile fp32 vs int8 kernels on ONNX Runtime CPU, keep slower-in-int8 layers float "
                        "and ship the fastest policy, timed against fp32 (default on)")
    q.add_argument("--speed-batches", help="batch sizes the speed check measures (default 1,8,32)")
    q.add_argument("--smoothquant", type=bounded_float("--smoothquant", 0, 1), metavar="ALPHA",
                   help="static: SmoothQuant with this alpha (0 < alpha <= 1) before quantising")
    q.add_argument("--all-ops", action="store_true",
                   help="static on a transformer: quantise every op (naive; default keeps LayerNorm, Softmax, GELU, "
                        "residual Adds, embeddings and attention products float)")
    q.add_argument("--threads", type=bounded_int("--threads", 1, 1024), default=2,
                   help="ONNX Runtime threads for accuracy and speed measurements")
    q.set_defaults(func=_cmd_quantize_checked)
