"""The distillation loss for :func:`edgekit.core.train.fit`: logit KD + attention transfer + FitNets hints
(+ hidden-state and attention-map transfer for transformers, :mod:`._transformer`).

``kd_loss_fn(teacher, temperature, alpha, *, student=None, sample=None, attention=None, hints=None, ...)``
returns a :class:`KDLoss`: a ``loss_fn(model, x, y) -> (loss, logits)``. Logit KD needs only ``teacher``;
attention transfer and hints also need ``student`` and ``sample`` (a few training inputs). The teacher is put
in eval mode with ``requires_grad=False`` while the loss is open; ``close()`` (or leaving a ``with`` block)
removes the feature hooks and gives the teacher its ``requires_grad`` flags back::

    with kd_loss_fn(teacher, temperature=4.0, alpha=0.9, student=model, sample=train.x[:2]) as loss_fn:
        fit(model, train, val, cfg, loss_fn=loss_fn, extra_parameters=loss_fn.extra_parameters)
"""
from __future__ import annotations

import contextlib
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn

from edgekit.core.tensors import Inputs, call_module, contiguous, is_named, prediction, take, to_torch
from edgekit.core.train import check_labels
from edgekit.errors import ConfigError, ShapeError, first_line, validated_config
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
from edgekit.techniques.distill._transformer import TransformerTransfer
from edgekit.techniques.distill.config import (
    AttentionMapsConfig,
    DistillConfig,
    FeatureLossConfig,
    HiddenTransferConfig,
)

__all__ = ["KDLoss", "check_outputs", "kd_loss_fn"]


def _feature_cfg(value: Any, field_name: str) -> Any:
    if value is None:
        return DistillConfig.model_fields[field_name].default_factory()
    if isinstance(value, (FeatureLossConfig, HiddenTransferConfig, AttentionMapsConfig)):
        return value
    return getattr(validated_config(DistillConfig, {field_name: value}, "distill"), field_name)


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
        self._teacher_flags: Optional[List[bool]] = [p.requires_grad for p in teacher.parameters()]
        teacher.eval().requires_grad_(False)
        self.temperature, self.alpha, self.label_smoothing = float(temperature), float(alpha), label_smoothing
        self.attention_pairs: List[Tuple[str, str]] = []
        self.hint_pairs: List[Tuple[str, str]] = []
        self.attention_weight = self.hint_weight = 0.0
        self.attention_p = 2.0
        self.adapters = nn.ModuleDict()
        self.student_tap: Optional[FeatureTap] = None
        self.teacher_tap: Optional[FeatureTap] = None
        self.cache: Optional[TeacherCache] = None
        self.transfer: Optional[TransformerTransfer] = None
        self.last: Dict[str, float] = {}

    @property
    def extra_parameters(self) -> List[nn.Parameter]:
        """Trainable tensors outside the student (hint adapters, hidden-state projections)."""
        extra = list(self.transfer.projections.parameters()) if self.transfer is not None else []
        return list(self.adapters.parameters()) + extra

    @property
    def terms(self) -> List[str]:
        """Names of the losses in use, e.g. ``["kd", "ce", "attention"]``."""
        out = ["kd"] if self.alpha > 0 else []
        out += ["ce"] if self.alpha < 1 else []
        out += ["attention"] if self.attention_pairs else []
        out += ["hints"] if self.hint_pairs else []
        return out + (self.transfer.terms if self.transfer is not None else [])

    def _teacher_targets(self, x: torch.Tensor):
        if self.cache is not None:
            hit = self.cache.lookup(x)
            if hit is not None:
                logits, maps = hit
                return logits, {t: maps[f"attention:{t}"] for _, t in self.attention_pairs}, {}
        self.teacher.eval()
        with torch.no_grad():
            logits = prediction(call_module(self.teacher, x))
        feats = self.teacher_tap.pop() if self.teacher_tap else {}
        maps = {t: attention_map(feats[t], self.attention_p) for _, t in self.attention_pairs}
        return logits, maps, feats

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor):
        t_logits, t_maps, t_feats = self._teacher_targets(x)
        logits = prediction(call_module(model, x))
        check_labels(y, logits)
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
        if self.transfer is not None:
            mask = x.get("attention_mask") if isinstance(x, dict) else None
            for name, value in self.transfer.losses(mask).items():
                self.last[name] = float(value.detach())
                loss = loss + getattr(self.transfer, name if name == "hidden" else "maps").weight * value
        return loss, logits

    def close(self) -> None:
        """Remove the forward hooks this loss put on the student and teacher; give the teacher back its
        ``requires_grad`` flags (it stays in eval mode)."""
        for tap in (self.student_tap, self.teacher_tap, self.transfer):
            if tap is not None:
                tap.remove()
        self.student_tap = self.teacher_tap = None
        if self._teacher_flags is not None:
            for p, flag in zip(self.teacher.parameters(), self._teacher_flags):
                p.requires_grad_(flag)
            self._teacher_flags = None

    def __enter__(self) -> KDLoss:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _described(sample: Inputs) -> str:
    if is_named(sample):
        return ", ".join(f"{k}: {np.asarray(v).dtype}{list(np.shape(v)[1:])}" for k, v in sample.items())
    return f"per-sample shape {list(np.shape(sample)[1:])}"


def check_outputs(teacher: nn.Module, student: nn.Module, sample: Inputs) -> int:
    """Run both models on ``sample``; raise before training if they cannot be distilled. Returns classes (the
    vocabulary for causal LMs)."""
    x = to_torch(contiguous(take(sample, slice(0, 2))))
    outs = {}
    for role, m in (("teacher", teacher), ("student", student)):
        try:
            with _eval_no_grad(m):
                outs[role] = prediction(call_module(m, x))
        except (RuntimeError, TypeError, IndexError) as e:
            raise ShapeError(f"{role} '{arch_name(m)}' cannot take inputs of {_described(sample)}: "
                             f"{first_line(e, 200)}") from None
        if outs[role].dim() not in (2, 3):
            raise ShapeError(f"{role} '{arch_name(m)}' returns {list(outs[role].shape)}; distillation needs "
                             "logits shaped [batch, classes] (or [batch, tokens, vocab] for a causal LM)")
    if outs["teacher"].dim() != outs["student"].dim():
        raise ShapeError(f"teacher logits {list(outs['teacher'].shape)} and student logits "
                         f"{list(outs['student'].shape)} are of different kinds (classifier vs language model)")
    kt, ks = outs["teacher"].shape[-1], outs["student"].shape[-1]
    if kt != ks:
        raise ConfigError(f"teacher '{arch_name(teacher)}' predicts {kt} classes but student "
                          f"'{arch_name(student)}' predicts {ks}; build the student with num_classes={kt}")
    return int(ks)


def kd_loss_fn(teacher: nn.Module, temperature: float = 4.0, alpha: float = 0.9, *, label_smoothing: float = 0.0,
               student: Optional[nn.Module] = None, sample: Optional[np.ndarray] = None, attention: Any = None,
               hints: Any = None, attention_p: float = 2.0, cache_inputs: Optional[Inputs] = None,
               seed: int = 0, hidden: Any = None, attention_maps: Any = None,
               layer_map: Optional[List[Tuple[int, int]]] = None) -> KDLoss:
    """A distillation ``loss_fn(model, x, y) -> (loss, logits)`` for :func:`edgekit.core.train.fit`.

    Args:
        teacher: the frozen reference (eval mode and ``requires_grad=False`` until the loss is closed).
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
        seed: initialises the hint adapters and hidden projections (identically on every DDP rank).
        hidden: transformers: hidden-state MSE weight, or ``{"weight": w, "embeddings": bool}``.
        attention_maps: transformers: attention KL weight, or ``{"weight", "kind": probs|relation,
            "relation_heads"}``.
        layer_map: transformers: ``[[student_block, teacher_block], ...]``; default uniform.

    Raises:
        ConfigError: bad temperature/alpha, class mismatch, unknown layer names (lists available ones).

    Example:
        >>> loss_fn = kd_loss_fn(teacher, temperature=4.0, alpha=0.9)
        >>> fit(student, splits.train, splits.val, {"epochs": 5}, loss_fn=loss_fn)
    """
    cfg = validated_config(DistillConfig, {"temperature": temperature, "alpha": alpha, "attention_p": attention_p},
                           "distill")
    att, hnt = _feature_cfg(attention, "attention"), _feature_cfg(hints, "hints")
    hid, maps = _feature_cfg(hidden, "hidden"), _feature_cfg(attention_maps, "attention_maps")
    if layer_map is not None:
        layer_map = validated_config(DistillConfig, {"layer_map": layer_map}, "distill").layer_map
    if any(c.enabled for c in (att, hnt, hid, maps)) and (student is None or sample is None):
        raise ConfigError("attention transfer, feature hints and hidden/attention-map transfer need the student "
                          "model and a few training inputs: kd_loss_fn(teacher, ..., student=model, "
                          "sample=train.x[:2])")
    loss = KDLoss(teacher, cfg.temperature, cfg.alpha, label_smoothing)
    try:
        if hid.enabled or maps.enabled:
            loss.transfer = TransformerTransfer(unwrap(student), teacher, hid, maps, layer_map)
        _configure(loss, student, sample, att, hnt, cfg.attention_p, cache_inputs, seed)
    except BaseException:
        loss.close()
        raise
    return loss


def _configure(loss: KDLoss, student: Optional[nn.Module], sample: Optional[np.ndarray], att: FeatureLossConfig,
               hnt: FeatureLossConfig, attention_p: float, cache_inputs: Optional[Inputs], seed: int) -> None:
    """Check the pairs and the models' outputs, hook the feature layers, build the teacher cache."""
    teacher = loss.teacher
    loss.attention_p = attention_p
    if student is not None:
        student = unwrap(student)
        if att.enabled:
            loss.attention_pairs = check_pairs(student, teacher, att.pairs, "attention.pairs")
            loss.attention_weight = att.weight
        if hnt.enabled:
            loss.hint_pairs = check_pairs(student, teacher, hnt.pairs, "hints.pairs")
            loss.hint_weight = hnt.weight
    if sample is not None and student is not None:
        check_outputs(teacher, student, sample)
    pairs = loss.attention_pairs + loss.hint_pairs
    if pairs:
        loss.student_tap = FeatureTap(student, [s for s, _ in pairs])
        loss.teacher_tap = FeatureTap(teacher, [t for _, t in pairs])
    if pairs or loss.transfer is not None:
        _build_and_check_features(loss, student, sample, seed)
    if cache_inputs is not None and not loss.hint_pairs and loss.transfer is None:
        extras_fn = (lambda: {f"attention:{t}": attention_map(f, loss.attention_p) for t, f in
                              loss.teacher_tap.pop().items()}) if loss.teacher_tap else None
        loss.cache = TeacherCache.build(teacher, cache_inputs, extras_fn=extras_fn)


def _build_and_check_features(loss: KDLoss, student: nn.Module, sample: Inputs, seed: int) -> None:
    """Dry-run both models on ``sample`` (eval mode, no grad): check feature shapes, create hint adapters."""
    x = to_torch(contiguous(take(sample, slice(0, 2))))
    with _eval_no_grad(student, loss.teacher):
        call_module(student, x)
        call_module(loss.teacher, x)
    if loss.transfer is not None:
        loss.transfer.build(seed)
        if loss.student_tap is None:
            _broadcast(loss.extra_parameters)
            return
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
    _broadcast(loss.extra_parameters)


def _broadcast(params: List[nn.Parameter]) -> None:
    """Give every DDP rank rank 0's adapter weights."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        for p in params:
            torch.distributed.broadcast(p.data, src=0)


