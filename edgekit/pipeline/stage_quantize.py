"""Stage `quantize`: INT8 post-training quantisation of the input variant's ONNX model.

Example recipe stage::

    - type: quantize
      name: int8                     # variant name (default: <input>-int8-<target>)
      target: cpu                    # cpu (ORT x86, U8S8) | tensorrt (symmetric S8S8)
      targets: [cpu, tensorrt]       # optional: one artifact per target (overrides target)
      mode: static                   # static (calibrated QDQ) | dynamic (LSTM/GRU/Transformer, CPU)
      method: minmax                 # minmax | entropy | percentile
      percentile: 99.99
      samples: 128
      calibration: null              # npz path, or null = drawn from the training split
      max_accuracy_drop: 0.5         # points on the validation split; null = no budget
      allow_qat: false               # escalate to QAT when layer fallback cannot meet the budget
      exclude: []                    # ONNX node names kept in float
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Literal, Optional, Tuple

from pydantic import Field

from edgekit.errors import AccuracyBudgetError, ConfigError
from edgekit.pipeline.stages import StageConfig, StageContext, StageOutput, Variant, register_stage

logger = logging.getLogger(__name__)


class QuantizeStage(StageConfig):
    """INT8 quantisation of the input variant (its ONNX file)."""

    type: Literal["quantize"] = "quantize"
    target: Literal["cpu", "tensorrt"] = Field("cpu", description="cpu (ORT x86: uint8 act., int8 per-channel "
                                                                  "weights) | tensorrt (symmetric int8, zero point 0)")
    targets: Optional[List[Literal["cpu", "tensorrt"]]] = Field(
        None, description="produce one artifact per target (e.g. [cpu, tensorrt]); overrides target")
    mode: Literal["static", "dynamic"] = Field("static", description="static (calibrated) | dynamic (RNN/Transformer)")
    method: Literal["minmax", "entropy", "percentile"] = Field("minmax", description="calibration method")
    percentile: float = Field(99.99, gt=0, le=100, description="percentile for method 'percentile'")
    samples: int = Field(128, gt=0, description="calibration samples")
    calibration: Optional[str] = Field(None, description="calibration npz (array x); null = the training split")
    per_channel: bool = Field(True, description="per-channel weight scales")
    max_accuracy_drop: Optional[float] = Field(None, ge=0, description="budget in points on the validation split")
    max_fallback_layers: int = Field(8, ge=0, description="most layers fallen back to float for the budget")
    allow_qat: bool = Field(False, description="escalate to QAT when fallback cannot meet the budget")
    qat_epochs: int = Field(2, ge=0, description="QAT epochs when escalating")
    exclude: Tuple[str, ...] = Field((), description="ONNX node names kept in float")


def _measure(ctx: StageContext, path: Path) -> dict:
    from edgekit.backends import open_runner
    from edgekit.core.train import evaluate

    splits = ctx.splits
    if not splits.labelled:
        return {}
    runner = open_runner(path, "ort-cpu", threads=ctx.threads)
    return {"val_accuracy": evaluate(runner, splits.val), "test_accuracy": evaluate(runner, splits.test)}


def _escalate_qat(ctx: StageContext, cfg: QuantizeStage, parent: Variant, target: str, out: Path,
                  err: AccuracyBudgetError) -> Tuple[Path, dict]:
    from edgekit.techniques.quantize.qat import qat

    if not parent.checkpoint:
        raise AccuracyBudgetError(f"{err} — QAT escalation needs a PyTorch checkpoint, but variant "
                                  f"'{parent.name}' has only {', '.join(parent.artifacts())}") from None
    logger.info(f"quantize: fallback could not meet max_accuracy_drop={cfg.max_accuracy_drop}; escalating to QAT")
    splits = ctx.splits
    res = qat(ctx.load_module(parent), splits.train, splits.val, out,
              config={"target": target, "epochs": cfg.qat_epochs}, teacher="float", seed=ctx.seed, threads=ctx.threads)
    fp32 = getattr(err, "measured", {}).get("fp32_accuracy")
    if fp32 is not None and fp32 - res.val_accuracy > cfg.max_accuracy_drop:
        from edgekit._io import sidecar_path

        res.path.unlink(missing_ok=True)  # a failed stage leaves no artifact behind
        sidecar_path(res.path).unlink(missing_ok=True)
        raise AccuracyBudgetError(f"{err}; QAT reached {res.val_accuracy:.2f}% (drop {fp32 - res.val_accuracy:.2f}) "
                                  "and does not meet it either") from None
    return res.path, {**res.sidecar, "escalated_to_qat": True, "fallback_error": str(err),
                      "fallback": getattr(err, "measured", {}).get("steps", [])}


@register_stage("quantize", QuantizeStage)
def run_quantize(ctx: StageContext, cfg: QuantizeStage) -> StageOutput:
    """Quantise the input variant's ONNX for each target; every artifact is measured through ORT CPU."""
    from edgekit.techniques.quantize.ptq import quantize, quantize_dynamic_model

    parent = ctx.variant(cfg.input)
    if not parent.onnx:
        raise ConfigError(f"stage quantize: variant '{parent.name}' has no ONNX file (add an 'export' stage first)")
    targets = list(dict.fromkeys(cfg.targets or [cfg.target]))
    if cfg.mode == "dynamic" and targets != ["cpu"]:
        raise ConfigError("stage quantize: mode 'dynamic' runs on the CPU only; use target: cpu "
                          "(TensorRT needs static, calibrated quantisation)")
    if cfg.name and len(targets) > 1:
        raise ConfigError("stage quantize: 'name' names one variant, but targets lists several; drop 'name'")
    splits = ctx.splits
    val = splits.val if splits.labelled else None
    if cfg.max_accuracy_drop is not None and val is None:
        raise ConfigError("stage quantize: max_accuracy_drop needs labelled data (this dataset has no labels)")
    calib = None if cfg.mode == "dynamic" else ctx.calibration_data(cfg.samples, cfg.calibration)
    variants, stage_metrics = [], {}
    for target in targets:
        suffix = "int8" if cfg.mode == "static" else "int8-dynamic"
        name = cfg.name or f"{parent.name}-{suffix}-{target}"
        if name in ctx.variants:
            raise ConfigError(f"stage quantize: a variant named '{name}' already exists; set 'name' to a new one")
        out = ctx.stage_dir / f"{name}.onnx"
        if cfg.mode == "dynamic":
            res = quantize_dynamic_model(parent.onnx, out, per_channel=cfg.per_channel, exclude_nodes=cfg.exclude,
                                         val=val, threads=ctx.threads)
            path, side = res.path, res.sidecar()
        else:
            try:
                res = quantize(parent.onnx, calib, out, target=target, method=cfg.method, percentile=cfg.percentile,
                               samples=cfg.samples, per_channel=cfg.per_channel, exclude_nodes=cfg.exclude, val=val,
                               max_accuracy_drop=cfg.max_accuracy_drop, max_fallback_layers=cfg.max_fallback_layers,
                               threads=ctx.threads)
                path, side = res.path, res.sidecar()
            except AccuracyBudgetError as err:
                if not cfg.allow_qat:
                    raise
                path, side = _escalate_qat(ctx, cfg, parent, target, out, err)
        meta = {k: side.get(k) for k in ("target", "mode", "quant_scheme", "calibration", "float_layers",
                                         "runtime_float_layers", "int8_mac_fraction", "fallback", "accuracy",
                                         "escalated_to_qat", "fallback_error", "qat") if side.get(k) is not None}
        meta["precision"] = "int8"
        metrics = {**_measure(ctx, path), "int8_mac_fraction": side.get("int8_mac_fraction"),
                   "float_layers": len(side.get("float_layers") or [])}
        variants.append(Variant(name, parent.name, None, str(path), meta=meta, metrics=metrics))
        stage_metrics[name] = metrics
    return StageOutput(variants, stage_metrics)
