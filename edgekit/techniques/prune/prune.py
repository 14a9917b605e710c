"""Pruning that makes the deployed model smaller *and* faster: structured channel pruning, or a sparsity pattern.

Torch-Pruning (DepGraph) removes coupled channels consistently across residual adds, depthwise convs,
BatchNorm and the Linear head; edgekit picks how many channels each group keeps (aligned to ``round_to``),
searches the ratio for a MACs or a measured speed target, and recovers accuracy by fine-tuning (KD from a
teacher when one is given). The result is a plain, smaller ``nn.Module``: its edgekit checkpoint reloads with
``load_checkpoint`` (no Torch-Pruning code) and it exports to ONNX. ``method: unstructured | 2:4`` hands
over to :func:`edgekit.techniques.sparsity.sparsity.sparsify`.

Example:
    >>> res = prune(model, {"macs_target": 0.5, "finetune": {"epochs": 3, "lr": 0.01}},
    ...             train=splits.train, val=splits.val, teacher=model)
    >>> res.macs_fraction, res.layers[0]
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, List, Optional, Union

import torch.nn as nn

from edgekit.errors import ConfigError, validated_config
from edgekit.techniques.base import Result, Technique, register_technique
from edgekit.techniques.prune.config import PruneConfig

__all__ = ["PruneResult", "prune"]


@dataclass(kw_only=True)
class PruneResult(Result):
    """A structurally pruned model (``model``) and what was done to it.

    ``layers`` has one row per coupled channel group: ``group`` (root layer), ``layers`` (its members),
    ``before``/``after`` channels, ``aligned`` (after % round_to == 0) and ``excluded``. Transformer pruning
    (``heads`` / ``ffn`` / ``layers`` / ``depth``) gives one row per layer and ``kind`` (``heads``: head counts and
    the ``kept`` head indices; ``ffn``: neurons; ``layer``: removed), and ``ratio`` is the scale applied to
    ``heads`` / ``ffn`` (1.0 unless a MACs or speed target searched it).
    """

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
    scratch: Optional[dict] = None  # compare_scratch: the same architecture trained alone with the same budget
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
        """True when every pruned layer's width (every member of every group) is a multiple of ``round_to``."""
        return all(r["aligned"] for r in self.layers)

    @property
    def unaligned_layers(self) -> List[str]:
        """Layers whose width is not a multiple of ``round_to`` (pruned or left as they were)."""
        return sorted({n for r in self.layers for n in r.get("unaligned", [])})

    def __post_init__(self) -> None:
        cfg = self.config
        self.metrics = {"macs": self.macs_after, "macs_before": self.macs_before,
                        "macs_fraction": round(self.macs_fraction, 4), "params_before": self.params_before,
                        "prune_seconds": round(self.seconds, 2), "val_accuracy": self.val_accuracy}
        chosen = [c for c in self.search if "speedup" in c and abs(c["ratio"] - round(self.ratio, 5)) < 1e-9]
        if chosen:
            self.metrics["search_speedup"] = chosen[-1]["speedup"]
        if self.scratch is not None:
            self.metrics["scratch_val_accuracy"] = self.scratch["val_accuracy"]
        self.sidecar = {"method": "structured", "sparsity": "structured", "round_to": cfg.round_to,
                        "aligned": self.aligned, "unaligned_layers": self.unaligned_layers, "channels": self.layers,
                        "ratio": self.ratio, "search": self.search, "prune_target": cfg.target_kind,
                        "history": self.history, "scratch": self.scratch}


def prune(model: nn.Module, config: Union[PruneConfig, dict, None] = None, *, example_input: Any = None,
          train: Any = None, val: Any = None, teacher: Optional[nn.Module] = None, seed: int = 0) -> Result:
    """Prune a copy of ``model`` (left unchanged) to a ratio, a MACs target, a measured speedup target, or a
    sparsity pattern; fine-tune it afterwards (``config.finetune``), with KD from ``teacher`` when given.

    Args:
        model: the trained model.
        config: :class:`PruneConfig` or a dict of its fields.
        example_input: a sample batch (numpy or tensor, [N, ...]) traced at batch 1 (default: ``val`` or ``train``).
        train / val: :class:`edgekit.data.Split`; needed for fine-tuning and taylor importance.
        teacher: KD teacher for fine-tuning (e.g. the unpruned model), or None for plain cross-entropy.
        seed: drives fine-tuning and data sampling.

    Returns:
        :class:`PruneResult` (structured) or :class:`edgekit.techniques.sparsity.sparsity.SparsityResult`.

    Raises:
        ConfigError: bad config, unknown excluded layer, untraceable model, unreachable target.

    Example:
        >>> res = prune(model, {"ratio": 0.3, "finetune": {"epochs": 0}}, example_input=x[:8])
        >>> res.params_after < res.params_before
        True
    """
    cfg = validated_config(PruneConfig, config, "prune")
    if example_input is None:
        source = val if val is not None else train
        if source is None:
            raise ConfigError("prune: give example_input= (a sample batch) or data (val= / train=) to trace the model")
        example_input = source.x[:8]
    if cfg.method != "structured":
        from edgekit.techniques.sparsity.sparsity import sparsify

        return sparsify(model, cfg.sparsity_config(), train=train, val=val, teacher=teacher, seed=seed,
                        example_input=example_input)
    from edgekit.techniques.prune import _rnn

    cfg = cfg.resolved()
    if cfg.transformer:
        return _transformer(model, cfg, example_input, train, val, teacher, seed)
    if _rnn.recurrent_layers(model):  # LSTM/GRU hidden units: Torch-Pruning cannot prune them
        return _rnn.prune_rnn(model, cfg, example_input, train, val, teacher, seed)
    return _structured(model, cfg, example_input, train, val, teacher, seed)


def _structured(model: nn.Module, cfg: PruneConfig, example_input: Any, train: Any, val: Any,
                teacher: Optional[nn.Module], seed: int) -> PruneResult:
    from edgekit.techniques.prune import _graph as pg
    from edgekit.techniques.prune import _plan as pp
    from edgekit.techniques.prune import _structured as st
    from edgekit.techniques.prune.config import IMPORTANCES

    t0 = time.perf_counter()
    w = st.prepare(model, cfg, example_input, train)
    importance = pg.make_importance(cfg.importance)
    if IMPORTANCES.get(cfg.importance).needs_gradients:
        st.fill_taylor_grads(w.model, train, cfg.taylor_batches, seed)
    scores = pg.group_importance(w.model, w.dg, w.groups, importance, w.classifier) if cfg.global_pruning else None
    plan_of = st.plan_fn(cfg, w, scores)
    ratio = st.choose_ratio(w, cfg, plan_of)
    st.prune_and_recover(w, cfg, plan_of(ratio), importance, train=train, val=val,
                         teacher=teacher if cfg.finetune.epochs > 0 else None, seed=seed)
    scratch = None
    if cfg.compare_scratch:
        from edgekit.techniques.recovery import scratch_baseline

        scratch = scratch_baseline(w.model, train, val, cfg.finetune, seed=seed, desc="prune: scratch baseline")
    macs1, params1 = pg.count(w.model, w.example)
    return PruneResult(model=w.model.eval(), config=cfg, ratio=ratio,
                       layers=pp.channel_table(w.model, w.groups, cfg.round_to), macs_before=w.macs0,
                       macs_after=macs1, params_before=w.params0, params_after=params1, history=w.history,
                       search=w.search, val_accuracy=w.val_accuracy, scratch=scratch,
                       seconds=time.perf_counter() - t0)


def _transformer(model: nn.Module, cfg: PruneConfig, example_input: Any, train: Any, val: Any,
                 teacher: Optional[nn.Module], seed: int) -> PruneResult:
    """Heads / FFN neurons / layers of a transformer encoder (see :mod:`._transformer`), then KD recovery."""
    import copy

    from edgekit.techniques.prune import _structured as st
    from edgekit.techniques.prune import _transformer as tr
    from edgekit.techniques.prune.config import HEAD_IMPORTANCES
    from edgekit.techniques.recovery import recover

    t0 = time.perf_counter()
    example = st.as_example(example_input)
    _, excluded = st.validate(model, cfg, train)
    excluded = sorted({*excluded, *cfg.exclude.select_modules(model, "prune.exclude")})  # + GPT-2's Conv1D leaves
    if HEAD_IMPORTANCES.get(cfg.head_importance).needs_labels and (train is None or train.y is None):
        raise ConfigError("prune.head_importance 'taylor' needs labelled training data (train=); use 'l1'")
    blocks = tr.check_blocks(model, cfg, excluded)
    work = copy.deepcopy(model).cpu().eval()
    err = pg_forward_error(work, example)
    if err:
        raise ConfigError(f"prune: {err}")
    macs0, params0 = tr.macs(work, example)
    scores = tr.importance(work, blocks, cfg, example, train, seed)
    drop, layer_kl = (tr.layers_to_drop(work, blocks, cfg, example, train, seed) if cfg.depth
                      else (list(cfg.layers), None))
    plan, s, search = tr.choose(work, blocks, cfg, scores, example, excluded, macs0, drop)
    tr.apply_plan(work, blocks, plan)
    history, val_acc = [{"step": 1, "macs": tr.macs(work, example)[0], "dropped_layers": drop}], None
    if layer_kl is not None:
        history[0]["layer_kl"] = [float(f"{k:.4g}") for k in layer_kl]
    if cfg.finetune.epochs > 0:
        res = recover(work, teacher, train, val, cfg.finetune, temperature=cfg.temperature, alpha=cfg.alpha,
                      seed=seed, desc="prune finetune")
        val_acc = res.best_val_accuracy
        history[0].update(epochs=cfg.finetune.epochs, val_accuracy=val_acc, finetune=res.history,
                          kd=teacher is not None)
    work.zero_grad(set_to_none=True)
    scratch = None
    if cfg.compare_scratch:
        from edgekit.techniques.recovery import scratch_baseline

        scratch = scratch_baseline(work, train, val, cfg.finetune, seed=seed, desc="prune: scratch baseline")
    macs1, params1 = tr.macs(work, example)
    return PruneResult(model=work.eval(), config=cfg, ratio=s, layers=tr.table(blocks, work, plan, cfg.round_to,
                                                                                 excluded),
                       macs_before=macs0, macs_after=macs1, params_before=params0, params_after=params1,
                       history=history, search=search, val_accuracy=val_acc, scratch=scratch,
                       seconds=time.perf_counter() - t0)


def pg_forward_error(model: nn.Module, example: Any) -> Optional[str]:
    """Why ``model`` cannot run ``example`` (with the layer where it failed), or None."""
    from edgekit.techniques.prune._graph import forward_error

    return forward_error(model, example, f"{type(model).__name__} cannot run its example input")


register_technique(Technique(
    "prune", PruneConfig, consumes="module", produces="module", apply=prune,
    description="structured channel pruning to a ratio, MACs or measured speed target, transformer heads / FFN "
                "neurons / layers, or a sparsity pattern, with KD recovery",
    teacher="optional", uses_teacher=lambda config: config.finetune.epochs > 0,
    variant_suffix=lambda config: "pruned" if config.method == "structured" else "sparse"))
