"""Stage `prune`: structured channel pruning (default), or unstructured / 2:4 sparsity, with KD recovery.

Example recipe stage::

    - type: prune
      name: pruned                 # variant name (default: <input>-pruned)
      macs_target: 0.5             # keep half the MACs (or ratio: 0.3, or speedup_target: 2.0)
      importance: l1               # l1 | l2 | bn_scale | taylor
      round_to: 8
      steps: 1
      teacher: original            # KD from the input variant while fine-tuning; 'none' = labels only
      finetune: {epochs: 4, lr: 0.02}

    - type: prune
      method: "2:4"                # semi-structured sparsity for TensorRT sparse tensor cores
      finetune: {epochs: 2, lr: 0.01}
"""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from edgekit.core.train import evaluate
from edgekit.errors import ConfigError
from edgekit.models import count_params
from edgekit.pipeline.stages import StageConfig, StageContext, StageOutput, Variant, register_stage
from edgekit.techniques.prune.config import PruneConfig


class PruneStage(StageConfig, PruneConfig):
    """Pruning settings (see PruneConfig) plus the method and, for unstructured sparsity, its amount."""

    type: Literal["prune"] = "prune"
    method: Literal["structured", "unstructured", "2:4"] = Field(
        "structured", description="structured (channels removed: smaller and faster), unstructured (zeros; "
                                  "smaller compressed file, same dense speed), 2:4 (TensorRT sparse tensor cores)")
    sparsity: Optional[float] = Field(None, gt=0, lt=1, description="fraction of weights zeroed (method unstructured)")

    @model_validator(mode="after")
    def _one_target(self) -> PruneStage:  # replaces PruneConfig's check: only structured pruning needs a target
        if self.method == "structured":
            PruneConfig._one_target(self)
            if self.sparsity is not None:
                raise ValueError("sparsity applies to method 'unstructured'; structured pruning takes ratio, "
                                 "macs_target, speedup_target or per_layer_ratios")
            return self
        given = [k for k in ("ratio", "macs_target", "speedup_target", "per_layer_ratios") if getattr(self, k)]
        if given:
            raise ValueError(f"{', '.join(given)} apply to method 'structured', not '{self.method}'")
        if self.method == "unstructured" and self.sparsity is None:
            raise ValueError("method 'unstructured' needs sparsity (fraction of weights zeroed, e.g. 0.7)")
        if self.method == "2:4" and self.sparsity is not None:
            raise ValueError("method '2:4' always zeroes half the weights; drop sparsity")
        return self

    def prune_config(self) -> PruneConfig:
        """The :class:`PruneConfig` part of these settings (structured method)."""
        return PruneConfig(**self.model_dump(include=set(PruneConfig.model_fields)))


def _structured(ctx: StageContext, cfg: PruneStage, model, teacher):
    from edgekit.techniques.prune.prune import prune

    splits = ctx.splits
    res = prune(model, splits.val.x[:8], cfg.prune_config(), train=splits.train, val=splits.val, teacher=teacher,
                seed=ctx.seed)
    meta = {"sparsity": "structured", "round_to": cfg.round_to, "aligned": res.aligned, "channels": res.layers,
            "ratio": res.ratio, "search": res.search, "target": cfg.target_kind, "history": res.history}
    metrics = {"macs": res.macs_after, "macs_before": res.macs_before, "macs_fraction": round(res.macs_fraction, 4),
               "params_before": res.params_before, "prune_seconds": round(res.seconds, 2)}
    if res.search and "speedup" in res.search[0]:
        chosen = [c for c in res.search if abs(c["ratio"] - round(res.ratio, 5)) < 1e-9]
        if chosen:
            metrics["search_speedup"] = chosen[-1]["speedup"]
    return res.model, meta, metrics, res.val_accuracy


def _sparse(ctx: StageContext, cfg: PruneStage, model, teacher):
    from edgekit.techniques.sparsity.sparsity import is_2to4_sparse, sparsify_2to4, sparsify_unstructured

    splits = ctx.splits
    kw = dict(exclude=cfg.protect, train=splits.train, val=splits.val, finetune=cfg.finetune, teacher=teacher,
              seed=ctx.seed, kd_alpha=cfg.kd_alpha, kd_temperature=cfg.kd_temperature)
    if cfg.method == "unstructured":
        res = sparsify_unstructured(model, cfg.sparsity, **kw)
    else:
        res = sparsify_2to4(model, **kw)
    meta = {"sparsity": res.kind, "weight_sparsity": round(res.sparsity, 4), "layers": res.layers, "note": res.note,
            "history": res.history}
    if res.kind == "2:4":
        meta["sparse_2to4"] = is_2to4_sparse(res.model)
    metrics = {"weight_sparsity": round(res.sparsity, 4), "compressed_bytes": res.compressed_bytes_after,
               "compressed_bytes_before": res.compressed_bytes_before}
    return res.model, meta, metrics, res.val_accuracy


@register_stage("prune", PruneStage)
def run_prune(ctx: StageContext, cfg: PruneStage) -> StageOutput:
    """Prune the input variant, fine-tune with KD from it, checkpoint, export, measure."""
    from edgekit.techniques.prune import _graph as prune_graph
    from edgekit.techniques.prune.prune import as_example

    parent = ctx.variant(cfg.input)
    name = cfg.name or f"{parent.name}-{'pruned' if cfg.method == 'structured' else 'sparse'}"
    if name in ctx.variants:
        raise ConfigError(f"stage prune: a variant named '{name}' already exists; set 'name' to a new one")
    model = ctx.load_module(parent)
    if cfg.finetune.epochs <= 0:
        teacher = None
    elif cfg.teacher in ("original", "parent"):
        teacher = model  # prune and sparsify work on a copy, so the parent as loaded is the teacher
    else:
        teacher = ctx.teacher_module(cfg.teacher, parent)
    if cfg.method == "structured":
        out, meta, metrics, val_acc = _structured(ctx, cfg, model, teacher)
    else:
        out, meta, metrics, val_acc = _sparse(ctx, cfg, model, teacher)
    meta.update(parent=parent.name, teacher=cfg.teacher if teacher is not None else "none", method=cfg.method)
    splits = ctx.splits
    if "macs" not in metrics:
        metrics["macs"] = prune_graph.count(out, as_example(splits.val.x[:1]))[0]
    ckpt = ctx.save_module(out, name, meta={"prune": {k: meta[k] for k in ("sparsity", "method", "parent")}})
    onnx_path = ctx.export(out, name)
    metrics["params"] = count_params(out)
    if splits.val.y is not None and splits.test.y is not None:  # synthetic latency-only data has no labels
        metrics.update(val_accuracy=val_acc if val_acc is not None else evaluate(out, splits.val),
                       test_accuracy_torch=evaluate(out, splits.test),
                       parent_test_accuracy_torch=evaluate(model, splits.test))
    return StageOutput([Variant(name, parent.name, str(ckpt), str(onnx_path), meta=meta, metrics=metrics)], metrics)
