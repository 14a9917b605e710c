"""Knowledge distillation: a frozen teacher trains a student through the shared :func:`edgekit.core.train.fit` loop.

``distill(student, config, *, teacher, train, val) -> DistillResult`` trains a copy of ``student``; the loss
(logit KD + optional attention transfer and FitNets hints, hidden-state and attention-map transfer for
transformers) is :func:`kd_loss_fn`, also what recovery
(:mod:`edgekit.techniques.recovery`) uses after pruning and QAT.
"""
from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import numpy as np
import torch.nn as nn

from edgekit.core.tensors import take
from edgekit.core.train import FitResult, fit
from edgekit.data.splits import Split
from edgekit.errors import ConfigError, validated_config
from edgekit.techniques.base import Result, Technique, register_technique
from edgekit.techniques.distill._kd import KDLoss, check_outputs, kd_loss_fn
from edgekit.techniques.distill.config import DistillConfig

logger = logging.getLogger(__name__)

#: teacher logits are precomputed only up to this size (a causal LM's [windows, tokens, vocab] soon exceeds it)
CACHE_LIMIT_BYTES = 512 << 20

__all__ = ["DistillResult", "KDLoss", "distill", "kd_loss_fn"]


@dataclass(kw_only=True)
class DistillResult(Result):
    """The trained student (``model``), the training history, the losses used, the teacher cache's statistics."""

    fit: FitResult
    losses: List[str]
    attention_pairs: List[Tuple[str, str]] = field(default_factory=list)
    hint_pairs: List[Tuple[str, str]] = field(default_factory=list)

    @property
    def best_val_accuracy(self) -> Optional[float]:
        """Best validation accuracy (%) of the student during training."""
        return self.fit.best_val_accuracy

    @property
    def history(self) -> List[dict]:
        """Per-epoch rows from :func:`edgekit.core.train.fit`."""
        return self.fit.history


def distill(student: nn.Module, config: DistillConfig | dict | None = None, *, teacher: nn.Module, train: Split,
            val: Optional[Split] = None, seed: int = 0, desc: str = "distill") -> DistillResult:
    """Train a copy of ``student`` to match the frozen ``teacher`` on ``train``; ``student`` is left unchanged.

    Everything is checked before training starts: the config, that both models accept the inputs and predict
    the same number of classes, and that every named layer exists. The teacher runs in eval mode without
    gradients; its weights and ``requires_grad`` flags are left as they were.

    Args:
        student: the (untrained or pre-trained) student architecture.
        config: :class:`DistillConfig` or a dict of its fields (``train`` holds TrainConfig fields).
        teacher: the trained reference model.
        train / val: labelled :class:`edgekit.data.Split` arrays (``val`` may be None).
        seed: drives shuffling, augmentation and the hint adapters' initialisation.

    Raises:
        ConfigError: invalid config, class mismatch, unknown layer name, unlabelled data.
        ShapeError: a model cannot take the data's inputs, or paired features cannot be matched.

    Example:
        >>> res = distill(create_model("resnet_cifar", depth=8, width=0.25, num_classes=10),
        ...               {"temperature": 4, "alpha": 0.9, "attention": 2.0, "train": {"epochs": 10}},
        ...               teacher=teacher, train=splits.train, val=splits.val)
        >>> res.model, res.metrics["val_accuracy"], res.losses
    """
    cfg = validated_config(DistillConfig, config, "distill")
    if not isinstance(teacher, nn.Module):
        raise ConfigError(f"distill needs a teacher nn.Module, got {type(teacher).__name__}")
    if train.y is None or len(train) == 0:
        raise ConfigError("distillation needs a non-empty labelled training split (this one has no labels)")
    classes = check_outputs(teacher, student, train.x)
    if int(train.y.max()) >= classes:
        raise ConfigError(f"training labels go up to {int(train.y.max())} but the models predict {classes} classes")
    untrained = student
    student = copy.deepcopy(student)
    init = _init_student(student, teacher, cfg, lm=np.ndim(train.y) > 1)
    cache_bytes = 4 * classes * len(train) * max(1, int(np.prod(np.shape(train.y)[1:])))
    use_cache = cfg.cache_teacher_logits and not cfg.train.augment and cache_bytes <= CACHE_LIMIT_BYTES
    t0 = time.perf_counter()
    sample = take(train.x, slice(0, 2))
    with kd_loss_fn(teacher, cfg.temperature, cfg.alpha, label_smoothing=cfg.train.label_smoothing, student=student,
                    sample=sample, attention=cfg.attention, hints=cfg.hints, attention_p=cfg.attention_p,
                    cache_inputs=train.x if use_cache else None, seed=seed, hidden=cfg.hidden,
                    attention_maps=cfg.attention_maps, layer_map=cfg.layer_map) as loss:
        if cfg.cache_teacher_logits and loss.cache is None:
            why = ("augmentation is on" if cfg.train.augment else
                   f"{cache_bytes / 2**20:.0f} MiB of logits" if cache_bytes > CACHE_LIMIT_BYTES else
                   "feature hints / hidden / attention-map transfer need the teacher's full features")
            logger.info(f"distill: teacher outputs not cached ({why})")
        result = fit(student, train, val, cfg.train, seed=seed, loss_fn=loss, extra_parameters=loss.extra_parameters,
                     desc=desc)
    out = _result(student, teacher, cfg, result, loss, time.perf_counter() - t0, init)
    if cfg.compare_scratch:
        from edgekit.techniques.recovery import scratch_baseline

        scratch = scratch_baseline(untrained, train, val, cfg.train, seed=seed, desc=f"{desc}: alone")
        out.sidecar["scratch"] = scratch
        out.metrics["scratch_val_accuracy"] = scratch["val_accuracy"]
        logger.info("%s: validation %.2f%% with the teacher, %.2f%% trained alone with the same budget", desc,
                    out.metrics["val_accuracy"] or float("nan"), scratch["val_accuracy"] or float("nan"))
    return out


def _init_student(student: nn.Module, teacher: nn.Module, cfg: DistillConfig, lm: bool) -> Optional[dict]:
    """Start ``student`` from ``teacher``'s weights when ``init_from_teacher`` asks (null: for HF transformers):
    encoders take the layer map's teacher blocks, causal LMs evenly spaced ones (unless a layer map is given)."""
    from edgekit.techniques.distill._student_init import init_from_teacher, mapped_blocks

    hf = all(getattr(m, "edgekit_arch", {}).get("name") in ("hf", "gpt_lm") for m in (student, teacher))
    if not (cfg.init_from_teacher or (cfg.init_from_teacher is None and hf)):
        return None
    blocks = None if lm and cfg.layer_map is None else mapped_blocks(student, teacher, cfg.layer_map)
    info = init_from_teacher(student, teacher, blocks)
    logger.info(f"distill: student initialised {info}")
    return info


def _result(student: nn.Module, teacher: nn.Module, cfg: DistillConfig, fitted: FitResult, loss: KDLoss,
            seconds: float, init: Optional[dict] = None) -> DistillResult:
    sidecar = {"teacher_arch": getattr(teacher, "edgekit_arch", None),
               "student_arch": getattr(student, "edgekit_arch", None), "losses": loss.terms,
               "temperature": cfg.temperature, "alpha": cfg.alpha,
               "attention_pairs": [list(p) for p in loss.attention_pairs],
               "hint_pairs": [list(p) for p in loss.hint_pairs],
               "teacher_cache": loss.cache.stats() if loss.cache else None, "history": fitted.history}
    if loss.transfer is not None:
        sidecar["layer_map"] = [list(p) for p in loss.transfer.layer_map]
    if init is not None:
        sidecar["student_init"] = init
    metrics = {"val_accuracy": fitted.best_val_accuracy, "train_seconds": round(fitted.seconds, 2),
               "seconds": round(seconds, 2)}
    return DistillResult(model=student.eval(), metrics=metrics, sidecar=sidecar, fit=fitted, losses=loss.terms,
                         attention_pairs=loss.attention_pairs, hint_pairs=loss.hint_pairs)


register_technique(Technique(
    "distill", DistillConfig, consumes="module", produces="module", apply=distill,
    description="knowledge distillation: a smaller student learns from a frozen teacher (logit KD, attention "
                "transfer, FitNets hints; hidden-state and attention-map transfer for transformers)",
    needs_labels=True, teacher="required", variant_suffix=lambda config: "distilled"))
