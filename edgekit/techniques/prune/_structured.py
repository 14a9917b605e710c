"""Structured pruning, step by step: validate → trace → choose the ratio (given or searched) → prune → recover.

Everything here works on a private copy of the model; :func:`edgekit.techniques.prune.prune.prune` is the entry.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from edgekit.errors import BackendUnavailableError, ConfigError, ShapeError
from edgekit.techniques.prune import _graph as pg
from edgekit.techniques.prune import _plan as pp
from edgekit.techniques.prune import _search
from edgekit.techniques.prune.config import IMPORTANCES, PruneConfig
from edgekit.techniques.recovery import recover
from edgekit.techniques.scope import Scope

logger = logging.getLogger(__name__)


def as_example(example_input: Any) -> Any:
    """One sample batch ([1, ...]) from a numpy array or tensor batch: float inputs as float32, integer inputs
    (token ids, masks) kept integer; a mapping of named inputs gives a dict of such tensors."""
    if isinstance(example_input, Mapping):
        if not example_input:
            raise ShapeError("example_input is an empty mapping; give at least one named input batch")
        return {k: _one_example(v, f"example_input['{k}']") for k, v in example_input.items()}
    return _one_example(example_input, "example_input")


def _one_example(a: Any, what: str) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(a) if not isinstance(a, torch.Tensor) else a)
    if x.dim() < 1 or x.shape[0] == 0 or (x.dim() < 2 and what == "example_input"):
        raise ShapeError(f"{what} must be a non-empty batch [N, ...], got shape {list(x.shape)}")
    x = x[:1].detach().cpu()
    return (x.float() if x.is_floating_point() else x).contiguous()


@dataclass
class Work:
    """The traced working copy and what is known about it."""

    model: nn.Module
    example: torch.Tensor
    dg: Any
    groups: List[pg.Group]
    classifier: str
    excluded: List[str]
    per_layer: Dict[str, float]
    macs0: int
    params0: int
    history: List[dict] = field(default_factory=list)
    search: List[dict] = field(default_factory=list)
    val_accuracy: Optional[float] = None


def validate(model: nn.Module, cfg: PruneConfig, train: Any) -> Tuple[Dict[str, float], List[str]]:
    """Cheap checks before any work; returns per_layer_ratios expanded to layer names, and the excluded layers."""
    excluded = pg.resolve_names(model, cfg.exclude, "prune.exclude")
    per_layer: Dict[str, float] = {}
    for key, r in cfg.per_layer_ratios.items():
        for name in pg.resolve_names(model, Scope(names=(key,)), "prune.per_layer_ratios"):
            per_layer[name] = r
    needs_grads = IMPORTANCES.get(cfg.importance).needs_gradients
    if (cfg.finetune.epochs > 0 or needs_grads) and (train is None or getattr(train, "y", None) is None):
        why = f"{cfg.importance} importance" if needs_grads else f"fine-tuning ({cfg.finetune.epochs} epochs)"
        raise ConfigError(f"prune: {why} needs labelled training data; pass train= (and val=), or set "
                          "finetune: {epochs: 0} and an importance that needs no gradients")
    if cfg.speedup_target is not None:
        from edgekit.backends import probe_backend

        ok, reason = probe_backend(cfg.speed_backend)
        if not ok:
            raise BackendUnavailableError(f"prune.speed_backend '{cfg.speed_backend}' is unavailable here: {reason}")
    return per_layer, excluded


def _check_attention(model: nn.Module, excluded: List[str]) -> None:
    """Channel pruning would cut a known attention module's q/k/v (heads x head width) and the shared hidden size:
    refuse it, pointing at head / FFN pruning, unless those projections are protected."""
    from edgekit.models.heads import transformer_blocks

    for b in transformer_blocks(model):
        if b.layout is not None and not {*b.qkv, b.out} <= set(excluded):
            raise ConfigError(f"prune: channel pruning (ratio / macs_target / speedup_target) of "
                              f"{type(model).__name__} would cut the attention projections of {b.attention} (their "
                              "widths are heads x head width) and the hidden size every layer shares; prune a "
                              "transformer with heads: / ffn: / layers: (docs/PRUNING.md), or protect its attention "
                              "layers (prune.exclude: {patterns: ['*attention*']})")


def prepare(model: nn.Module, cfg: PruneConfig, example_input: Any, train: Any) -> Work:
    """Validate, copy and trace ``model``; list its channel groups and count its MACs."""
    example = as_example(example_input)
    per_layer, excluded = validate(model, cfg, train)  # layer names hold for the copy below
    _check_attention(model, excluded)
    classifier = pg.find_classifier(model)
    work = copy.deepcopy(model).cpu().eval()
    dg = pg.trace(work, example)
    groups = pg.list_groups(work, dg, classifier, excluded)
    if not any(not g.excluded and any(len(x.idxs) > cfg.round_to for x in g.segments) for g in groups):
        raise ConfigError(f"prune: nothing to prune in {type(model).__name__}: structured pruning removes output "
                          "channels of Conv/Linear layers, and every such group is excluded, is the classifier or has "
                          f"at most round_to={cfg.round_to} channels (LSTM/GRU layers are not pruned structurally)")
    macs0, params0 = pg.count(work, example)
    return Work(work, example, dg, groups, classifier, excluded, per_layer, macs0, params0)


def fill_taylor_grads(model: nn.Module, train: Any, batches: int, seed: int, batch_size: int = 64) -> None:
    """Accumulate cross-entropy gradients of ``batches`` training batches (what Taylor importance reads)."""
    gen = np.random.default_rng(seed)
    idx = gen.permutation(len(train))[: batches * batch_size]
    model.eval()
    model.zero_grad(set_to_none=True)
    for i in range(0, len(idx), batch_size):
        xb = torch.from_numpy(train.x[idx[i:i + batch_size]])
        yb = torch.from_numpy(train.y[idx[i:i + batch_size]])
        F.cross_entropy(model(xb), yb).backward()


def plan_fn(cfg: PruneConfig, w: Work, scores: Optional[Dict[str, torch.Tensor]]) -> Callable[[float], Dict[str, int]]:
    """``s -> {segment: kept channels}`` for the configured kind of target."""
    kind, per_layer, groups = cfg.target_kind, w.per_layer, w.groups
    searched = kind in ("macs", "speed")  # fine MACs steps for a search; a given ratio rounds plainly

    def plan(s: float) -> Dict[str, int]:
        if cfg.global_pruning:
            return pp.global_plan(groups, scores, s, cfg.round_to, cfg.max_ratio)
        if kind == "ratio" or not per_layer:
            return pp.uniform_plan(groups, per_layer, s, cfg.round_to, cfg.max_ratio, searched)
        if kind == "per_layer":
            return pp.uniform_plan(groups, per_layer, 0.0, cfg.round_to, cfg.max_ratio)
        scaled = {k: min(cfg.max_ratio, v * s) for k, v in per_layer.items()}
        return pp.uniform_plan(groups, scaled, 0.0, cfg.round_to, cfg.max_ratio, searched)

    return plan


def choose_ratio(w: Work, cfg: PruneConfig, plan_of: Callable[[float], Dict[str, int]]) -> float:
    """The given ratio, or the one whose pruned copy comes closest to the MACs / speed target (every candidate
    really pruned and measured; candidates recorded in ``w.search``)."""
    s_max = cfg.max_ratio
    if w.per_layer and cfg.target_kind in ("macs", "speed") and any(w.per_layer.values()):
        s_max = cfg.max_ratio / min(v for v in w.per_layer.values() if v > 0)  # every scaled ratio reaches max_ratio
    spec = IMPORTANCES.get(cfg.importance)
    cheap = pg.make_importance(spec.search_proxy or spec.name)
    cache: Dict[tuple, nn.Module] = {}

    def prune_copy(s: float) -> nn.Module:
        plan = plan_of(s)
        key = tuple(sorted(plan.items()))
        if key not in cache:
            m = copy.deepcopy(w.model)
            pp.apply_plan(m, w.example, plan, cheap, w.classifier, w.excluded)
            cache.clear()
            cache[key] = m
        return cache[key]

    macs_of: Dict[tuple, float] = {}

    def macs_fraction(s: float) -> float:
        key = tuple(sorted(plan_of(s).items()))
        if key not in macs_of:
            macs_of[key] = pg.count(prune_copy(s), w.example)[0] / w.macs0
        return macs_of[key]

    s = cfg.ratio if cfg.ratio is not None else 1.0
    if cfg.target_kind == "macs":
        s, w.search = _search.search_macs(macs_fraction, cfg.macs_target, s_max, w.excluded, cfg.round_to)
    elif cfg.target_kind == "speed":
        sample = np.repeat(w.example.numpy(), cfg.speed_batch, axis=0)
        s, w.search = _search.search_speed(prune_copy, w.model, sample, cfg.speedup_target, s_max, cfg.speed_backend,
                                           cfg.speed_threads, cfg.speed_rounds)
    if pp.removes_nothing(w.groups, plan_of(s)):
        raise ConfigError(f"prune: ratio {s:.3f} removes no channel once counts are rounded to multiples of "
                          f"round_to={cfg.round_to}; raise the ratio or lower round_to")
    return float(s)


def prune_and_recover(w: Work, cfg: PruneConfig, plan: Dict[str, int], importance: Any, *, train: Any, val: Any,
                      teacher: Optional[nn.Module], seed: int) -> None:
    """Prune ``w.model`` in place to ``plan`` in ``cfg.steps`` steps, fine-tuning (KD from ``teacher``) after each."""
    per_step = [cfg.finetune.epochs // cfg.steps] * cfg.steps
    per_step[-1] += cfg.finetune.epochs - sum(per_step)
    needs_grads = IMPORTANCES.get(cfg.importance).needs_gradients

    def before(i: int) -> None:
        if needs_grads:
            fill_taylor_grads(w.model, train, cfg.taylor_batches, seed + i)

    def after(i: int) -> None:
        row: Dict[str, Any] = {"step": i + 1, "macs": pg.count(w.model, w.example)[0]}
        w.model.zero_grad(set_to_none=True)
        if per_step[i] > 0:
            ft = cfg.finetune.model_copy(update={"epochs": per_step[i]})
            res = recover(w.model, teacher, train, val, ft, temperature=cfg.temperature, alpha=cfg.alpha,
                          seed=seed + i, desc=f"prune finetune {i + 1}/{cfg.steps}")
            row.update(epochs=per_step[i], val_accuracy=res.best_val_accuracy, finetune=res.history,
                       kd=teacher is not None)
            w.val_accuracy = res.best_val_accuracy
        w.history.append(row)
        logger.info(f"prune: step {i + 1}/{cfg.steps}: MACs {row['macs'] / w.macs0:.3f} of original"
                    + (f", val {w.val_accuracy:.2f}%" if w.val_accuracy is not None else ""))

    pp.apply_plan(w.model, w.example, plan, importance, w.classifier, w.excluded, steps=cfg.steps,
                  before_step=before, after_step=after)
    w.model.zero_grad(set_to_none=True)
