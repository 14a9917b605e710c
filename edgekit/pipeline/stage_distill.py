"""Stage `distill`: train a smaller student from a frozen teacher (the input variant by default).

Example recipe stage::

    - type: distill
      name: student                       # variant name (default: <teacher>-distilled)
      student: {name: resnet_cifar, depth: 8, width: 0.5}   # num_classes / in_channels from the data
      teacher: null                        # null = the input variant; or 'reference' / a variant name
      temperature: 4.0
      alpha: 0.9
      attention: {weight: 2.0}             # pairs default to the ResNet stages
      train: {epochs: 10, lr: 0.1}
"""
from __future__ import annotations

from typing import Any, Dict, Literal, Optional

import torch
from pydantic import Field, field_validator

from edgekit.core.train import evaluate
from edgekit.errors import ConfigError
from edgekit.models import count_params, create_model
from edgekit.pipeline.model_source import zoo_kwargs
from edgekit.pipeline.stages import StageConfig, StageContext, StageOutput, Variant, register_stage
from edgekit.techniques.distill.config import DistillConfig
from edgekit.techniques.distill.distill import distill


class DistillStage(StageConfig, DistillConfig):
    """Distillation settings (see DistillConfig) plus the student architecture and the teacher variant."""

    type: Literal["distill"] = "distill"
    student: Dict[str, Any] = Field(
        default_factory=lambda: {"name": "resnet_cifar", "depth": 8, "width": 0.5},
        description="student architecture: {name: <zoo model>, <its arguments>}; num_classes, in_channels, "
                    "input_size and image_size are taken from the data unless given")
    teacher: Optional[str] = Field(None, description="teacher variant: null = the input variant, 'reference' = the "
                                                     "first model of the run, or a variant name")

    @field_validator("student")
    @classmethod
    def _check_student(cls, v: Dict[str, Any]) -> Dict[str, Any]:
        from edgekit.models import model_names

        name = v.get("name")
        if not isinstance(name, str):
            raise ValueError(f"student needs a 'name' (one of: {', '.join(model_names())}), got {v}")
        if name not in model_names():
            from edgekit.errors import did_you_mean

            raise ValueError(f"unknown student model '{name}'{did_you_mean(name, model_names())}; "
                             f"valid: {', '.join(model_names())}")
        return dict(v)

    def distill_config(self) -> DistillConfig:
        """The :class:`DistillConfig` part of this stage's settings."""
        return DistillConfig(**self.model_dump(include=set(DistillConfig.model_fields)))


@register_stage("distill", DistillStage)
def run_distill(ctx: StageContext, cfg: DistillStage) -> StageOutput:
    """Build the student, distil it from the teacher, checkpoint and export it, measure both models."""
    parent = ctx.variant(cfg.input)
    teacher_variant = parent if cfg.teacher in (None, "parent", "original") else (
        ctx.reference() if cfg.teacher == "reference" else ctx.variant(cfg.teacher))
    teacher = ctx.load_module(teacher_variant)
    splits = ctx.splits
    spec = dict(cfg.student)
    arch = spec.pop("name")
    torch.manual_seed(ctx.seed)
    student = create_model(arch, **zoo_kwargs(arch, spec, splits))
    name = cfg.name or f"{teacher_variant.name}-distilled"
    if name in ctx.variants:
        raise ConfigError(f"stage distill: a variant named '{name}' already exists; set 'name' to a new one")
    result = distill(teacher, student, splits.train, splits.val, cfg.distill_config(), seed=ctx.seed,
                     desc=f"distill {name}")
    meta = {"teacher": teacher_variant.name, "teacher_arch": getattr(teacher, "edgekit_arch", None),
            "student_arch": student.edgekit_arch, "losses": result.losses, "temperature": cfg.temperature,
            "alpha": cfg.alpha, "attention_pairs": [list(p) for p in result.attention_pairs],
            "hint_pairs": [list(p) for p in result.hint_pairs], "teacher_cache": result.teacher_cache}
    ckpt = ctx.save_module(student, name, meta={"distill": meta})
    onnx_path = ctx.export(student, name)
    metrics = {"params": count_params(student), "teacher_params": count_params(teacher),
               "val_accuracy": result.best_val_accuracy, "test_accuracy_torch": evaluate(student, splits.test),
               "teacher_test_accuracy_torch": evaluate(teacher, splits.test),
               "train_seconds": round(result.fit.seconds, 2)}
    return StageOutput([Variant(name, teacher_variant.name, str(ckpt), str(onnx_path),
                                meta={**meta, "history": result.history}, metrics=metrics)], metrics)
