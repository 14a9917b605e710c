"""Structured (channel) pruning that makes the deployed model smaller *and* faster.

Torch-Pruning (DepGraph) removes coupled channels consistently across residual adds, depthwise convs,
BatchNorm and the Linear head; edgekit picks how many channels each group keeps (aligned to ``round_to``),
searches the ratio for a MACs or a measured speed target, and recovers accuracy with KD fine-tuning from
the unpruned model. The result is a plain, smaller ``nn.Module``: its edgekit checkpoint reloads with
``load_checkpoint`` (no Torch-Pruning code) and it exports to ONNX.

Example:
    >>> res = prune(model, splits.val.x[:8], {"macs_target": 0.5, "finetune": {"epochs": 3, "lr": 0.01}},
    ...             train=splits.train, val=splits.val)
    >>> res.macs_fraction, res.layers[0]
"""
from __future__ import annotations

import contextlib
import copy
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from edgekit.errors import ConfigError, ShapeError, validated_config
from edgekit.techniques.prune import _graph as pg
from edgekit.techniques.prune import _search
from edgekit.techniques.prune.config import PruneConfig

logger = logging.getLogger(__name__)


@dataclass
class PruneResult:
    """A pruned model and what was done to it.

    ``layers`` has one row per coupled channel group: ``group`` (root layer), ``layers`` (its members),
    ``before``/``after`` channels, ``aligned`` (after % round_to == 0) and ``protected``.
    """

    model: nn.Module
    config: PruneConfig
    ratio: float  # the channel ratio used (or the scale of per_layer_ratios)
    layers: List[dict]
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    history: List[dict] = field(default_factory=list)  # pruning steps and their fine-tuning
    search: List[dict] = field(default_factory=list)  # candidates tried by a MACs / speed target search
    val_accuracy: Optional[float] = None
    seconds: float = 0.0

    @property
    def macs_fraction(self) -> float:
        """Pruned MACs / original MACs."""
        return self.macs_after / max(1, self.macs_before)

    @property
    def params_fraction(self) -> float:
        """Pruned params / original params."""
        return self.params_after / max(1, self.params_before)

    @property
    def aligned(self) -> bool:
        """True when every pruned group's channel count is a multiple of ``round_to``."""
        return all(r["aligned"] or r["after"] == r["before"] for r in self.layers)

    def to_dict(self) -> dict:
        """JSON-able summary (everything but the module)."""
        return {"config": self.config.model_dump(mode="json"), "ratio": self.ratio, "layers": self.layers,
                "macs_before": self.macs_before, "macs_after": self.macs_after, "macs_fraction": self.macs_fraction,
                "params_before": self.params_before, "params_after": self.params_after, "aligned": self.aligned,
                "history": self.history, "search": self.search, "val_accuracy": self.val_accuracy,
                "seconds": self.seconds}


def as_prune_config(config: Union[PruneConfig, dict, None], where: str = "prune") -> PruneConfig:
    """Validate a dict into :class:`PruneConfig`; errors become ConfigError naming the field.

    Example:
        >>> as_prune_config({"ratio": 0.3}).round_to
        8
    """
    return validated_config(PruneConfig, config, where)


def as_example(example_input: Any) -> torch.Tensor:
    """One float32 sample batch ([1, ...]) from a numpy array or tensor batch."""
    x = torch.as_tensor(np.asarray(example_input) if not isinstance(example_input, torch.Tensor) else example_input)
    if x.dim() < 2 or x.shape[0] == 0:
        raise ShapeError(f"example_input must be a non-empty batch [N, ...], got shape {list(x.shape)}")
    return x[:1].detach().float().cpu().contiguous()


def _plan_fn(cfg: PruneConfig, groups: List[pg.Group], per_layer: Dict[str, float],
             scores: Optional[Dict[str, torch.Tensor]]) -> Callable[[float], Dict[str, int]]:
    """``s -> {group root: kept channels}`` for the configured kind of target."""
    kind = cfg.target_kind

    def plan(s: float) -> Dict[str, int]:
        if cfg.global_pruning:
            return pg.global_plan(groups, scores, s, cfg.round_to, cfg.max_ratio)
        if kind == "ratio" or not per_layer:
            return pg.uniform_plan(groups, per_layer, s, cfg.round_to, cfg.max_ratio)
        if kind == "per_layer":
            return pg.uniform_plan(groups, per_layer, 0.0, cfg.round_to, cfg.max_ratio)
        scaled = {k: min(cfg.max_ratio, v * s) for k, v in per_layer.items()}
        return pg.uniform_plan(groups, scaled, 0.0, cfg.round_to, cfg.max_ratio)

    return plan


def _validate(model: nn.Module, cfg: PruneConfig, train) -> Tuple[Dict[str, float], List[str]]:
    """Cheap checks before any work; returns per_layer_ratios expanded to layer names, and the protected layers."""
    protect = pg.resolve_names(model, cfg.protect, "prune.protect")
    per_layer: Dict[str, float] = {}
    for key, r in cfg.per_layer_ratios.items():
        for name in pg.resolve_names(model, [key], "prune.per_layer_ratios"):
            per_layer[name] = r
    needs_data = cfg.finetune.epochs > 0 or cfg.importance == "taylor"
    if needs_data and (train is None or getattr(train, "y", None) is None):
        why = "taylor importance" if cfg.importance == "taylor" else f"fine-tuning ({cfg.finetune.epochs} epochs)"
        raise ConfigError(f"prune: {why} needs labelled training data; pass train= (and val=), or set "
                          "finetune: {epochs: 0} and an importance other than taylor")
    if cfg.speedup_target is not None:
        from edgekit.backends import probe_backend

        ok, reason = probe_backend(cfg.speed_backend)
        if not ok:
            from edgekit.errors import BackendUnavailableError

            raise BackendUnavailableError(f"prune.speed_backend '{cfg.speed_backend}' is unavailable here: {reason}")
    return per_layer, protect


def _fill_taylor_grads(model: nn.Module, train, batches: int, seed: int, batch_size: int = 64) -> None:
    gen = np.random.default_rng(seed)
    idx = gen.permutation(len(train))[: batches * batch_size]
    model.eval()
    model.zero_grad(set_to_none=True)
    for i in range(0, len(idx), batch_size):
        xb = torch.from_numpy(train.x[idx[i:i + batch_size]])
        yb = torch.from_numpy(train.y[idx[i:i + batch_size]])
        F.cross_entropy(model(xb), yb).backward()


def prune(model: nn.Module, example_input: Any, config: Union[PruneConfig, dict, None] = None, *, train=None, val=None,
          teacher: Optional[nn.Module] = None, seed: int = 0) -> PruneResult:
    """Prune channels of a copy of ``model`` to a ratio, a MACs target or a measured speedup target.

    Args:
        model: the trained model (left unchanged; a pruned copy is returned).
        example_input: a sample batch (numpy or tensor, [N, ...]); traced at batch 1, used for export when timing.
        config: :class:`PruneConfig` or a dict of its fields.
        train / val: :class:`edgekit.data.Split`; needed for fine-tuning and taylor importance.
        teacher: KD teacher for fine-tuning (default: the unpruned ``model`` when ``config.teacher == "original"``).
        seed: drives fine-tuning and data sampling.

    Returns:
        :class:`PruneResult` with the pruned module, per-group channels before/after, MACs/params, history.

    Raises:
        ConfigError: bad config, unknown protected layer, untraceable model, unreachable target.

    Example:
        >>> res = prune(model, x[:8], {"ratio": 0.3, "finetune": {"epochs": 0}})
        >>> res.params_after < res.params_before
        True
    """
    from edgekit.core.train import fit

    t0 = time.perf_counter()
    cfg = as_prune_config(config)
    example = as_example(example_input)
    per_layer, protect = _validate(model, cfg, train)  # layer names hold for the copy below
    classifier = pg.find_classifier(model)
    work = copy.deepcopy(model).cpu().eval()
    dg = pg.trace(work, example)
    groups = pg.list_groups(work, dg, classifier, protect)
    if not any(not g.protected and g.channels > cfg.round_to for g in groups):
        raise ConfigError(f"prune: nothing to prune in {type(model).__name__}: structured pruning removes output channels "
                          f"of Conv/Linear layers, and every such group is protected, is the classifier or has at most "
                          f"round_to={cfg.round_to} channels (LSTM/GRU layers are not pruned structurally)")
    macs0, params0 = pg.count(work, example)
    importance = pg.make_importance(cfg.importance)
    if cfg.importance == "taylor":
        _fill_taylor_grads(work, train, cfg.taylor_batches, seed)
    scores = pg.group_importance(work, dg, groups, importance, classifier) if cfg.global_pruning else None
    plan_of = _plan_fn(cfg, groups, per_layer, scores)
    s_max = cfg.max_ratio
    if per_layer and cfg.target_kind in ("macs", "speed") and any(per_layer.values()):
        s_max = cfg.max_ratio / min(v for v in per_layer.values() if v > 0)  # every scaled ratio reaches max_ratio
    cheap = pg.make_importance("l1" if cfg.importance in ("taylor", "bn_scale") else cfg.importance)
    cache: Dict[tuple, nn.Module] = {}

    def prune_copy(s: float) -> nn.Module:
        plan = plan_of(s)
        key = tuple(sorted(plan.items()))
        if key not in cache:
            m = copy.deepcopy(work)
            pg.apply_plan(m, example, groups, plan, cheap, classifier)
            cache.clear()
            cache[key] = m
        return cache[key]

    search: List[dict] = []
    s = cfg.ratio if cfg.ratio is not None else 1.0
    if cfg.target_kind == "macs":
        est = pg.macs_estimator(work, example, groups)
        full = est({})
        s, search = _search.search_macs(lambda v: est(plan_of(v)) / full,
                                        lambda v: pg.count(prune_copy(v), example)[0] / macs0,
                                        cfg.macs_target, s_max, protect)
    elif cfg.target_kind == "speed":
        sample = np.repeat(example.numpy(), cfg.speed_batch, axis=0)
        s, search = _search.search_speed(prune_copy, work, sample, cfg.speedup_target, s_max, cfg.speed_backend,
                                         cfg.speed_threads, cfg.speed_rounds)
    cache.clear()
    plan = plan_of(s)
    if all(plan[g.root] >= g.channels for g in groups):
        raise ConfigError(f"prune: ratio {s:.3f} removes no channel once counts are rounded to multiples of "
                          f"round_to={cfg.round_to}; raise the ratio or lower round_to")

    teacher_module = teacher
    if teacher_module is None and cfg.teacher == "original" and cfg.finetune.epochs > 0:
        teacher_module = copy.deepcopy(model).cpu().eval()
    loss_fn = None  # built below, while the teacher's requires_grad flags are kept for the caller
    per_step = [cfg.finetune.epochs // cfg.steps] * cfg.steps
    per_step[-1] += cfg.finetune.epochs - sum(per_step)
    history: List[dict] = []
    val_acc: Optional[float] = None

    def before(i: int) -> None:
        if cfg.importance == "taylor":
            _fill_taylor_grads(work, train, cfg.taylor_batches, seed + i)

    def after(i: int) -> None:
        nonlocal val_acc
        row: Dict[str, Any] = {"step": i + 1, "macs": pg.count(work, example)[0]}
        work.zero_grad(set_to_none=True)
        if per_step[i] > 0:
            ft = cfg.finetune.model_copy(update={"epochs": per_step[i]})
            res = fit(work, train, val, ft, seed=seed + i, loss_fn=loss_fn, desc=f"prune finetune {i + 1}/{cfg.steps}")
            row.update(epochs=per_step[i], val_accuracy=res.best_val_accuracy, finetune=res.history,
                       kd=teacher_module is not None)
            val_acc = res.best_val_accuracy
        history.append(row)
        logger.info(f"prune: step {i + 1}/{cfg.steps}: MACs {row['macs'] / macs0:.3f} of original"
            + (f", val {val_acc:.2f}%" if val_acc is not None else ""))

    from edgekit.techniques.distill.distill import kd_loss_fn, keep_requires_grad

    with keep_requires_grad(teacher_module) if teacher_module is not None else contextlib.nullcontext():
        if teacher_module is not None:
            loss_fn = kd_loss_fn(teacher_module, temperature=cfg.kd_temperature, alpha=cfg.kd_alpha)
        pg.apply_plan(work, example, groups, plan, importance, classifier, steps=cfg.steps, before_step=before,
                      after_step=after)
    work.zero_grad(set_to_none=True)
    macs1, params1 = pg.count(work, example)
    return PruneResult(work.eval(), cfg, float(s), pg.channel_table(work, groups, cfg.round_to), macs0, macs1, params0,
                       params1, history, search, val_acc, time.perf_counter() - t0)

