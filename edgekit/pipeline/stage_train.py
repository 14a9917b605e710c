"""Stage `train`: train the reference model (or fine-tune the input variant) with the shared loop."""
from __future__ import annotations

from typing import Literal

import torch

from edgekit.core.train import TrainConfig, evaluate, fit
from edgekit.errors import validated_config
from edgekit.models import count_params
from edgekit.pipeline.lm import is_lm, perplexities
from edgekit.pipeline.model_source import build_module
from edgekit.pipeline.stages import StageConfig, StageContext, StageOutput, Variant, register_stage


class TrainStage(StageConfig, TrainConfig):
    """Train settings (see TrainConfig) plus the stage's input/name."""

    type: Literal["train"] = "train"


@register_stage("train", TrainStage, needs_torch=True)
def run_train(ctx: StageContext, cfg: TrainStage) -> StageOutput:
    """Build the model from the recipe (first stage) or take the input variant, train, checkpoint, export."""
    splits = ctx.splits
    if ctx.variants:
        parent = ctx.variant(cfg.input)
        model, parent_name, name = ctx.load_module(parent), parent.name, cfg.name or f"{parent.name}-ft"
    else:
        torch.manual_seed(ctx.seed)
        model, parent_name, name = build_module(ctx.recipe.model, splits), None, cfg.name or "reference"
    train_cfg = validated_config(TrainConfig, cfg.model_dump(include=set(TrainConfig.model_fields)), "train")
    result = fit(model, splits.train, splits.val, train_cfg, seed=ctx.seed, desc=f"train {name}")
    ckpt = ctx.save_module(model, name)
    onnx_path = ctx.export(model, name)
    metrics = {"params": count_params(model), "val_accuracy": result.best_val_accuracy,
               "test_accuracy_torch": evaluate(model, splits.test), "train_seconds": round(result.seconds, 2)}
    if is_lm(splits):  # next-token accuracy above; perplexity is the LM's metric
        metrics.update(perplexities(model, splits, ctx.threads, suffix="_torch"))
    return StageOutput([Variant(name, parent_name, str(ckpt), str(onnx_path), meta={"history": result.history},
                                metrics=metrics)], metrics)
