"""Knowledge distillation: a frozen teacher trains a student through the shared :func:`edgekit.core.train.fit` loop.

Two entry points:

``distill(teacher, student, train, val, config, *, seed=0) -> DistillResult``
    The whole job: validates everything (classes, layer names, temperature, alpha) before any training,
    freezes the teacher, optionally caches its outputs, trains the student, restores the teacher's flags.

``kd_loss_fn(teacher, temperature=4.0, alpha=0.9, *, label_smoothing=0.0, student=None, sample=None,
attention=None, hints=None, attention_p=2.0, cache_inputs=None, seed=0) -> KDLoss``
    A ``loss_fn(model, x, y) -> (loss, logits)`` for ``fit``; this is what pruning fine-tune and QAT use
    for recovery with ``teacher: original``::

        loss_fn = kd_loss_fn(original_model, temperature=4.0, alpha=0.9,
                             student=model, sample=train.x[:2])     # sample: checks classes up front
        try:
            fit(model, train, val, cfg, seed=seed, loss_fn=loss_fn, extra_parameters=loss_fn.extra_parameters)
        finally:
            loss_fn.close()                                         # removes feature hooks (if any)

    Logit KD needs only ``teacher``; attention transfer and hints (``attention={"weight": 2.0}``,
    ``hints={"weight": 1.0, "pairs": [["layer2", "layer3"]]}``) also need ``student`` and ``sample``.
    The teacher is put in eval mode with ``requires_grad=False`` and run under ``no_grad``.
"""
from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn

from edgekit.core.train import FitResult, fit
from edgekit.data.splits import Split
from edgekit.errors import ConfigError, ShapeError, first_line
from edgekit.techniques.distill._cache import TeacherCache
from edgekit.techniques.distill._features import FeatureTap, arch_name, check_pairs, unwrap
from edgekit.techniques.distill._losses import (
    HintAdapter,
    attention_map,
    attention_transfer_loss,
    feature_channels,
    hint_loss,
    logit_kd_loss,
)
from edgekit.techniques.distill.config import DistillConfig, FeatureLossConfig

logger = logging.getLogger(__name__)

__all__ = ["DistillResult", "KDLoss", "distill", "kd_loss_fn"]


def _feature_cfg(value: Any, field_name: str) -> FeatureLossConfig:
    if value is None:
        return FeatureLossConfig()
    if isinstance(value, FeatureLossConfig):
        return value
    return getattr(DistillConfig.parse({field_name: value}), field_name)


@contextlib.contextmanager
def keep_requires_grad(module: nn.Module):
    """Restore ``module``'s ``requires_grad`` flags on exit (:func:`kd_loss_fn` freezes the teacher it is given).

    Example:
        >>> with keep_requires_grad(teacher):
        ...     fit(student, train, val, cfg, loss_fn=kd_loss_fn(teacher, temperature=4.0, alpha=0.7))
    """
    flags = [p.requires_grad for p in module.parameters()]
    try:
        yield module
    finally:
        for p, flag in zip(module.parameters(), flags):
            p.requires_grad_(flag)


@contextlib.contextmanager
def _eval_no_grad(*models: nn.Module):
    modes = [m.training for m in models]
    try:
        for m in models:
            m.eval()
        with torch.no_grad():
            yield
    finally:
        for m, mode in zip(models, modes):
            m.train(mode)


class KDLoss:
    """``loss_fn(model, x, y) -> (loss, logits)`` combining logit KD, attention transfer and hints.

    Build it with :func:`kd_loss_fn`. ``extra_parameters`` holds the hint adapters' weights (pass them to
    ``fit``); ``terms`` names the losses in use; ``last`` holds the last batch's loss terms.
    """

    def __init__(self, teacher: nn.Module, temperature: float, alpha: float, label_smoothing: float):
        self.teacher = teacher
        self.temperature, self.alpha, self.label_smoothing = float(temperature), float(alpha), label_smoothing
        self.attention_pairs: List[Tuple[str, str]] = []
        self.hint_pairs: List[Tuple[str, str]] = []
        self.attention_weight = self.hint_weight = 0.0
        self.attention_p = 2.0
        self.adapters = nn.ModuleDict()
        self.student_tap: Optional[FeatureTap] = None
        self.teacher_tap: Optional[FeatureTap] = None
        self.cache: Optional[TeacherCache] = None
        self.last: Dict[str, float] = {}

    @property
    def extra_parameters(self) -> List[nn.Parameter]:
        """Trainable tensors outside the student (hint adapters)."""
        return list(self.adapters.parameters())

    @property
    def terms(self) -> List[str]:
        """Names of the losses in use, e.g. ``["kd", "ce", "attention"]``."""
        out = ["kd"] if self.alpha > 0 else []
        out += ["ce"] if self.alpha < 1 else []
        out += ["attention"] if self.attention_pairs else []
        return out + (["hints"] if self.hint_pairs else [])

    def _teacher_targets(self, x: torch.Tensor):
        if self.cache is not None:
            hit = self.cache.lookup(x)
            if hit is not None:
                logits, maps = hit
                return logits, {t: maps[f"attention:{t}"] for _, t in self.attention_pairs}, {}
        self.teacher.eval()
        with torch.no_grad():
            logits = self.teacher(x)
        feats = self.teacher_tap.pop() if self.teacher_tap else {}
        maps = {t: attention_map(feats[t], self.attention_p) for _, t in self.attention_pairs}
        return logits, maps, feats

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor):
        t_logits, t_maps, t_feats = self._teacher_targets(x)
        logits = model(x)
        loss = logit_kd_loss(logits, t_logits, y, self.temperature, self.alpha, self.label_smoothing)
        self.last = {"logit": float(loss.detach())}
        if self.student_tap is not None:
            s_feats = self.student_tap.pop()
            if self.attention_pairs:
                at = sum(attention_transfer_loss(attention_map(s_feats[s], self.attention_p), t_maps[t])
                         for s, t in self.attention_pairs)
                self.last["attention"] = float(at.detach())
                loss = loss + self.attention_weight * at
            if self.hint_pairs:
                h = sum(hint_loss(s_feats[s], t_feats[t], self.adapters[f"{s}->{t}".replace(".", "_")])
                        for s, t in self.hint_pairs)
                self.last["hints"] = float(h.detach())
                loss = loss + self.hint_weight * h
        return loss, logits

    def close(self) -> None:
        """Remove the forward hooks this loss put on the student and teacher."""
        for tap in (self.student_tap, self.teacher_tap):
            if tap is not None:
                tap.remove()
        self.student_tap = self.teacher_tap = None

    def __enter__(self) -> KDLoss:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _check_outputs(teacher: nn.Module, student: nn.Module, sample: np.ndarray) -> int:
    """Run both models on ``sample``; raise before training if they cannot be distilled. Returns classes."""
    x = torch.from_numpy(np.ascontiguousarray(sample[:2]))
    outs = {}
    for role, m in (("teacher", teacher), ("student", student)):
        try:
            with _eval_no_grad(m):
                outs[role] = m(x)
        except RuntimeError as e:
            raise ShapeError(f"{role} '{arch_name(m)}' cannot take inputs of per-sample shape "
                             f"{list(sample.shape[1:])}: {first_line(e, 200)}") from None
        if outs[role].dim() != 2:
            raise ShapeError(f"{role} '{arch_name(m)}' returns {list(outs[role].shape)}; distillation needs "
                             "logits shaped [batch, classes]")
    kt, ks = outs["teacher"].shape[1], outs["student"].shape[1]
    if kt != ks:
        raise ConfigError(f"teacher '{arch_name(teacher)}' predicts {kt} classes but student "
                          f"'{arch_name(student)}' predicts {ks}; build the student with num_classes={kt}")
    return int(ks)


def kd_loss_fn(teacher: nn.Module, temperature: float = 4.0, alpha: float = 0.9, *, label_smoothing: float = 0.0,
               student: Optional[nn.Module] = None, sample: Optional[np.ndarray] = None, attention: Any = None,
               hints: Any = None, attention_p: float = 2.0, cache_inputs: Optional[np.ndarray] = None,
               seed: int = 0) -> KDLoss:
    """A distillation ``loss_fn(model, x, y) -> (loss, logits)`` for :func:`edgekit.core.train.fit`.

    Args:
        teacher: the frozen reference (set to eval mode and ``requires_grad=False`` here).
        temperature: softmax temperature T (> 0); the soft loss is scaled by T².
        alpha: weight of the soft loss; (1 − alpha) weights cross-entropy with the labels (0..1).
        label_smoothing: of the hard-label cross-entropy.
        student: the model ``fit`` will train; needed for attention/hints (hooks) and class checks.
        sample: a few training inputs (numpy); with ``student``, checks classes/shapes and sizes adapters.
        attention: attention-transfer weight, or ``{"weight": w, "pairs": [[student, teacher], ...]}``.
        hints: FitNets hint weight or ``{"weight", "pairs"}``; adapters go to ``extra_parameters``.
        attention_p: exponent of the attention map.
        cache_inputs: the training inputs, to precompute teacher outputs once (only when ``fit``
            feeds the exact rows, i.e. augmentation off; batches that miss run the teacher).
        seed: initialises the hint adapters (identically on every DDP rank).

    Raises:
        ConfigError: bad temperature/alpha, class mismatch, unknown layer names (lists available ones).

    Example:
        >>> loss_fn = kd_loss_fn(teacher, temperature=4.0, alpha=0.9)
        >>> fit(student, splits.train, splits.val, {"epochs": 5}, loss_fn=loss_fn)
    """
    cfg = DistillConfig.parse({"temperature": temperature, "alpha": alpha, "attention_p": attention_p})
    att, hnt = _feature_cfg(attention, "attention"), _feature_cfg(hints, "hints")
    teacher.eval().requires_grad_(False)
    loss = KDLoss(teacher, cfg.temperature, cfg.alpha, label_smoothing)
    loss.attention_p = cfg.attention_p
    if (att.enabled or hnt.enabled) and (student is None or sample is None):
        raise ConfigError("attention transfer and feature hints need the student model and a few training "
                          "inputs: kd_loss_fn(teacher, ..., student=model, sample=train.x[:2])")
    if student is not None:
        student = unwrap(student)
        if att.enabled:
            loss.attention_pairs = check_pairs(student, teacher, att.pairs, "attention.pairs")
            loss.attention_weight = att.weight
        if hnt.enabled:
            loss.hint_pairs = check_pairs(student, teacher, hnt.pairs, "hints.pairs")
            loss.hint_weight = hnt.weight
    if sample is not None and student is not None:
        _check_outputs(teacher, student, sample)
    pairs = loss.attention_pairs + loss.hint_pairs
    if pairs:
        loss.student_tap = FeatureTap(student, [s for s, _ in pairs])
        loss.teacher_tap = FeatureTap(teacher, [t for _, t in pairs])
        try:
            _build_and_check_features(loss, student, sample, seed)
        except BaseException:
            loss.close()
            raise
    if cache_inputs is not None and not loss.hint_pairs:
        extras_fn = (lambda: {f"attention:{t}": attention_map(f, loss.attention_p) for t, f in
                              loss.teacher_tap.pop().items()}) if loss.teacher_tap else None
        loss.cache = TeacherCache.build(teacher, cache_inputs, extras_fn=extras_fn)
    return loss


def _build_and_check_features(loss: KDLoss, student: nn.Module, sample: np.ndarray, seed: int) -> None:
    """Dry-run both models on ``sample`` (eval mode, no grad): check feature shapes, create hint adapters."""
    x = torch.from_numpy(np.ascontiguousarray(sample[:2]))
    with _eval_no_grad(student, loss.teacher):
        student(x)
        loss.teacher(x)
    s_feats, t_feats = loss.student_tap.pop(), loss.teacher_tap.pop()
    for s, t in loss.attention_pairs:
        attention_transfer_loss(attention_map(s_feats[s]), attention_map(t_feats[t]))  # raises ShapeError
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for s, t in loss.hint_pairs:
            fs, ft = s_feats[s], t_feats[t]
            if fs.dim() != ft.dim():
                raise ShapeError(f"hints.pairs: student '{s}' gives {list(fs.shape)} but teacher '{t}' gives "
                                 f"{list(ft.shape)}; pair layers of the same kind")
            adapter = HintAdapter(feature_channels(fs), feature_channels(ft), tokens=fs.dim() == 3)
            hint_loss(fs, ft, adapter)  # raises ShapeError if the features cannot be matched
            loss.adapters[f"{s}->{t}".replace(".", "_")] = adapter
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        for p in loss.adapters.parameters():
            torch.distributed.broadcast(p.data, src=0)


@dataclass
class DistillResult:
    """What :func:`distill` did: the training history, the losses used, the teacher cache's statistics."""

    fit: FitResult
    losses: List[str]
    attention_pairs: List[Tuple[str, str]] = field(default_factory=list)
    hint_pairs: List[Tuple[str, str]] = field(default_factory=list)
    teacher_cache: Optional[dict] = None
    seconds: float = 0.0

    @property
    def best_val_accuracy(self) -> Optional[float]:
        """Best validation accuracy (%) of the student during training."""
        return self.fit.best_val_accuracy

    @property
    def history(self) -> List[dict]:
        """Per-epoch rows from :func:`edgekit.core.train.fit`."""
        return self.fit.history


def distill(teacher: nn.Module, student: nn.Module, train: Split, val: Optional[Split],
            config: DistillConfig | dict | None = None, *, seed: int = 0, desc: str = "distill") -> DistillResult:
    """Train ``student`` (in place) to match the frozen ``teacher`` on ``train``.

    Everything is checked before training starts: the config (temperature > 0, 0 ≤ alpha ≤ 1, train
    fields), that both models accept the inputs and predict the same number of classes, and that every
    named layer exists. The teacher runs in eval mode without gradients; its ``requires_grad`` flags are
    restored afterwards and its weights are never changed.

    Args:
        teacher: the trained reference model.
        student: the model to train (modified in place).
        train / val: labelled :class:`edgekit.data.Split` arrays (``val`` may be None).
        config: :class:`DistillConfig` or a dict of its fields (``train`` holds TrainConfig fields).
        seed: drives shuffling, augmentation and the hint adapters' initialisation.

    Raises:
        ConfigError: invalid config, class mismatch, unknown layer name, unlabelled data.
        ShapeError: a model cannot take the data's inputs, or paired features cannot be matched.

    Example:
        >>> result = distill(teacher, create_model("resnet_cifar", depth=8, width=0.25, num_classes=10),
        ...                  splits.train, splits.val, {"temperature": 4, "alpha": 0.9, "attention": 2.0,
        ...                  "train": {"epochs": 10}})
        >>> result.best_val_accuracy, result.losses
    """
    cfg = DistillConfig.parse(config)
    tcfg = cfg.train_config()
    if train.y is None or len(train) == 0:
        raise ConfigError("distillation needs a non-empty labelled training split (this one has no labels)")
    classes = _check_outputs(teacher, student, train.x)
    if int(train.y.max()) >= classes:
        raise ConfigError(f"training labels go up to {int(train.y.max())} but the models predict {classes} classes")
    use_cache = cfg.cache_teacher_logits and not tcfg.augment
    t0, loss = time.perf_counter(), None
    try:
        with keep_requires_grad(teacher):
            loss = kd_loss_fn(teacher, cfg.temperature, cfg.alpha, label_smoothing=tcfg.label_smoothing,
                              student=student, sample=train.x[:2], attention=cfg.attention, hints=cfg.hints,
                              attention_p=cfg.attention_p, cache_inputs=train.x if use_cache else None, seed=seed)
            if cfg.cache_teacher_logits and loss.cache is None:
                logger.info("distill: teacher outputs not cached (" + ("augmentation is on" if tcfg.augment else
                    "feature hints need the teacher's full features") + ")")
            result = fit(student, train, val, tcfg, seed=seed, loss_fn=loss,
                         extra_parameters=loss.extra_parameters, desc=desc)
    finally:
        if loss is not None:
            loss.close()
        teacher.eval()
    return DistillResult(result, loss.terms, loss.attention_pairs, loss.hint_pairs,
                         loss.cache.stats() if loss.cache else None, time.perf_counter() - t0)
