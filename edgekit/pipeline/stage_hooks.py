"""How the built-in techniques' recipe stages differ from the generic technique stage.

- ``distill``: the technique's input is a new student built from ``student:`` (the input variant is the
  teacher by default), and the output descends from the teacher.
- ``quantize``: ``targets:`` makes one variant per target, ``calibration:`` names an npz (default: drawn from
  the training split), and ``allow_qat:`` escalates to QAT when layer fallback cannot meet the budget.

Example recipe stages::

    - type: distill
      student: {name: resnet_cifar, depth: 8, width: 0.5}   # num_classes / in_channels from the data
      teacher: parent                      # the input variant; or 'reference' / a variant name
      attention: {weight: 2.0}
      train: {epochs: 10, lr: 0.1}
    - type: quantize
      targets: [cpu, tensorrt]             # → <input>-int8-cpu, <input>-int8-tensorrt
      calibration: calib_data/digits32_rgb.npz
      max_accuracy_drop: 0.5
"""
from __future__ import annotations

import logging
from typing import Annotated, Any, Dict, List, Optional

import torch
from pydantic import Field, field_validator, model_validator

from edgekit.errors import AccuracyBudgetError, did_you_mean
from edgekit.pipeline.stages import StageContext, Variant
from edgekit.pipeline.technique_stages import STAGE_HOOKS, Job, StageHooks
from edgekit.techniques.base import OneOf, Result
from edgekit.techniques.quantize.config import TARGETS

logger = logging.getLogger(__name__)


def _check_student(cls: Any, v: Dict[str, Any]) -> Dict[str, Any]:
    from edgekit.models import model_names

    name = v.get("name")
    if not isinstance(name, str):
        raise ValueError(f"student needs a 'name' (one of: {', '.join(model_names())}), got {v}")
    if name not in model_names():
        raise ValueError(f"unknown student model '{name}'{did_you_mean(name, model_names())}; "
                         f"valid: {', '.join(model_names())}")
    return dict(v)


def _distill_jobs(ctx: StageContext, cfg: Any, tcfg: Any, parent: Variant, teacher: Optional[Variant]) -> List[Job]:
    return [Job(cfg.name or f"{teacher.name}-distilled", tcfg, teacher, teacher)]


def _student(ctx: StageContext, cfg: Any, job: Job) -> Any:
    from edgekit.models import create_model
    from edgekit.pipeline.model_source import zoo_kwargs

    spec = dict(cfg.student)
    arch = spec.pop("name")
    torch.manual_seed(ctx.seed)
    return create_model(arch, **zoo_kwargs(arch, spec, ctx.splits))


STAGE_HOOKS.register("distill")(StageHooks(
    fields={"student": (Dict[str, Any], Field(
        default_factory=lambda: {"name": "resnet_cifar", "depth": 8, "width": 0.5},
        description="student architecture: {name: <zoo model>, <its arguments>}; num_classes, in_channels, "
                    "input_size and image_size (vocab_size and n_positions for gpt_lm) are taken from the data "
                    "unless given"))},
    validators={"check_student": field_validator("student")(_check_student)},
    jobs=_distill_jobs, model=_student))


def _targets_fit(cfg: Any) -> Any:
    """Every entry of ``targets`` must suit the mode (dynamic quantisation runs on some targets only)."""
    for target in cfg.targets or []:
        if cfg.mode == "dynamic" and not TARGETS.get(target).dynamic:
            able = [n for n, t in TARGETS.items() if t.dynamic]
            raise ValueError(f"mode 'dynamic' runs only on targets {', '.join(able)}, not '{target}' "
                             "(it needs static, calibrated quantisation)")
    if cfg.name and len(set(cfg.targets or [])) > 1:
        raise ValueError("'name' names one variant, but targets lists several; drop 'name'")
    return cfg


def _quantize_jobs(ctx: StageContext, cfg: Any, tcfg: Any, parent: Variant, teacher: Optional[Variant]) -> List[Job]:
    from edgekit.techniques.base import technique

    t = technique("quantize")
    jobs = []
    from edgekit.techniques.quantize.ptq import resolve_mode

    for target in dict.fromkeys(cfg.targets or [tcfg.target]):
        job_cfg = type(tcfg).model_validate({**dict(tcfg), "target": target})
        if job_cfg.mode is None and parent.onnx:  # null: dynamic for a transformer on the cpu target
            job_cfg = resolve_mode(parent.onnx, job_cfg)
        jobs.append(Job(cfg.name or f"{parent.name}-{t.variant_suffix(job_cfg)}", job_cfg, parent))
    return jobs


def _calibration(ctx: StageContext, cfg: Any, job: Job) -> Dict[str, Any]:
    if job.config.mode == "dynamic":
        return {"calib": None}
    return {"calib": ctx.calibration_data(job.config.samples, cfg.calibration)}


def _escalate_to_qat(ctx: StageContext, cfg: Any, job: Job, apply: Any) -> Result:
    """Run the PTQ; when layer fallback cannot meet the budget and ``allow_qat`` is set, run QAT instead."""
    try:
        return apply()
    except AccuracyBudgetError as err:
        if not cfg.allow_qat:
            raise
        return _qat_instead(ctx, cfg, job, err)


def _qat_instead(ctx: StageContext, cfg: Any, job: Job, err: AccuracyBudgetError) -> Result:
    from edgekit._io import sidecar_path
    from edgekit.techniques.base import technique

    parent = job.parent
    if not parent.checkpoint:
        raise AccuracyBudgetError(f"{err} — QAT escalation needs a PyTorch checkpoint, but variant "
                                  f"'{parent.name}' has only {', '.join(parent.artifacts())}") from None
    logger.info(f"quantize: fallback could not meet max_accuracy_drop={cfg.max_accuracy_drop}; escalating to QAT")
    splits, model = ctx.splits, ctx.load_module(parent)
    res = technique("qat").apply(model, {"target": job.config.target, "epochs": cfg.qat_epochs}, train=splits.train,
                                 val=splits.val, out_path=ctx.stage_dir / f"{job.name}.onnx", teacher=model,
                                 seed=ctx.seed, threads=ctx.threads)
    measured = getattr(err, "measured", {})
    fp32 = measured.get("fp32_accuracy")
    if fp32 is not None and fp32 - res.val_accuracy > cfg.max_accuracy_drop:
        res.artifact.unlink(missing_ok=True)  # a failed stage leaves no artifact behind
        sidecar_path(res.artifact).unlink(missing_ok=True)
        raise AccuracyBudgetError(f"{err}; QAT reached {res.val_accuracy:.2f}% (drop {fp32 - res.val_accuracy:.2f}) "
                                  "and does not meet it either") from None
    res.sidecar.update(escalated_to_qat=True, fallback_error=str(err), fallback=measured.get("steps", []))
    return res


STAGE_HOOKS.register("quantize")(StageHooks(
    fields={
        "targets": (Optional[List[Annotated[str, OneOf(TARGETS)]]],
                    Field(None, description="one artifact per target (e.g. [cpu, tensorrt]); overrides target")),
        "calibration": (Optional[str], Field(None, description="calibration npz (array x); null = drawn from the "
                                                               "training split")),
        "allow_qat": (bool, Field(False, description="escalate to QAT when fallback cannot meet the budget")),
        "qat_epochs": (int, Field(2, ge=0, description="QAT epochs when escalating")),
    },
    validators={"targets_fit": model_validator(mode="after")(_targets_fit)},
    jobs=_quantize_jobs, data=_calibration, call=_escalate_to_qat))
