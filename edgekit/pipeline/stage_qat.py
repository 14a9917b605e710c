"""Stage `qat`: quantisation-aware fine-tuning of the input variant, exported as QDQ ONNX.

Example recipe stage::

    - type: qat
      name: int8-qat               # default: <input>-qat-<target>
      target: cpu                  # cpu (uint8 asym. activations) | tensorrt (symmetric int8)
      teacher: original            # original = distil from the float input model | none = cross-entropy
      epochs: 2
      lr: 0.001
      calibration_samples: 128
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from edgekit.errors import ConfigError
from edgekit.pipeline.stages import StageConfig, StageContext, StageOutput, Variant, register_stage
from edgekit.techniques.quantize.qat import QatConfig, qat


class QatStage(StageConfig, QatConfig):
    """QAT settings (see QatConfig) plus the teacher choice."""

    type: Literal["qat"] = "qat"
    teacher: Literal["original", "none"] = Field("original", description="original = KD from the float input "
                                                                        "model | none = plain cross-entropy")


@register_stage("qat", QatStage)
def run_qat(ctx: StageContext, cfg: QatStage) -> StageOutput:
    """Fine-tune with fake-quant, export QDQ, check ORT runs it in int8, measure it through ORT CPU."""
    from edgekit.backends import open_runner
    from edgekit.core.train import evaluate

    parent = ctx.variant(cfg.input)
    splits = ctx.splits
    if not splits.labelled:
        raise ConfigError("stage qat: needs labelled data (this dataset has no labels)")
    name = cfg.name or f"{parent.name}-qat-{cfg.target}"
    if name in ctx.variants:
        raise ConfigError(f"stage qat: a variant named '{name}' already exists; set 'name' to a new one")
    model = ctx.load_module(parent)
    qcfg = QatConfig(**cfg.model_dump(include=set(QatConfig.model_fields)))
    res = qat(model, splits.train, splits.val, ctx.stage_dir / f"{name}.onnx", config=qcfg,
              teacher="float" if cfg.teacher == "original" else None, seed=ctx.seed, threads=ctx.threads)
    runner = open_runner(res.path, "ort-cpu", threads=ctx.threads)
    metrics = {"val_accuracy": res.val_accuracy, "test_accuracy": evaluate(runner, splits.test),
               "val_accuracy_before_qat": res.val_accuracy_before, "int8_mac_fraction": res.int8_mac_fraction,
               "qat_seconds": round(res.seconds, 1)}
    meta = {"precision": "int8", "target": cfg.target, "mode": "qat", "float_layers": [],
            "runtime_float_layers": res.float_layers, "int8_mac_fraction": res.int8_mac_fraction,
            "quant_scheme": res.sidecar.get("quant_scheme"), "teacher": cfg.teacher, "history": res.history}
    return StageOutput([Variant(name, parent.name, None, str(res.path), meta=meta, metrics=metrics)], metrics)
