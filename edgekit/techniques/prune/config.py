"""Configuration of structured (channel) pruning: one frozen pydantic model, typos rejected.

Exactly one target picks how much to prune:

- ``ratio``: fraction of the channels removed from every prunable group (0 < ratio < 1);
- ``macs_target``: fraction of the original MACs to **keep** (0.5 = remove half the MACs);
- ``speedup_target``: measured latency speedup over the unpruned model on ``speed_backend``;
- ``per_layer_ratios`` alone: explicit per-layer ratios (e.g. from :func:`edgekit.techniques.prune.sensitivity.allocate_ratios`).

``per_layer_ratios`` combined with ``macs_target`` / ``speedup_target`` is scaled by one factor until the target is met.

Example:
    >>> PruneConfig(macs_target=0.5, importance="l1", round_to=8, finetune={"epochs": 3, "lr": 0.01})
"""
from __future__ import annotations

from typing import Dict, List, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edgekit.core.train import TrainConfig

IMPORTANCES = ("l1", "l2", "bn_scale", "taylor")


class PruneConfig(BaseModel):
    """Structured pruning settings for :func:`edgekit.techniques.prune.prune.prune`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ratio: Optional[float] = Field(None, gt=0, lt=1, description="channel fraction removed from every prunable group")
    macs_target: Optional[float] = Field(None, gt=0, lt=1, description="fraction of the original MACs to keep "
                                         "(0.5 = remove half); the channel ratio is searched to meet it")
    speedup_target: Optional[float] = Field(None, gt=1, description="measured latency speedup over the unpruned model "
                                            "on speed_backend; the ratio is searched by exporting and timing candidates")
    speed_backend: str = Field("ort-cpu", description="backend timing speedup_target candidates: "
                               "ort-cpu | torch | ort-cuda | torch-cuda")
    speed_batch: int = Field(1, gt=0, description="batch size timed for speedup_target")
    speed_threads: Optional[int] = Field(2, gt=0, description="intra-op threads when timing speedup_target")
    speed_rounds: int = Field(5, ge=2, description="interleaved timing rounds per speed candidate")
    importance: Literal["l1", "l2", "bn_scale", "taylor"] = Field(
        "l1", description="channel importance: l1/l2 group weight magnitude, bn_scale (|gamma|), taylor (first-order, needs data)")
    round_to: int = Field(8, ge=1, description="pruned channel counts are multiples of this (hardware-friendly alignment)")
    protect: List[str] = Field(default_factory=list, description="module names left untouched (neither input nor output "
                               "channels pruned); the classifier's outputs are always kept")
    steps: int = Field(1, ge=1, le=20, description="iterative schedule: prune in this many steps, fine-tuning after each")
    finetune: TrainConfig = Field(default_factory=lambda: TrainConfig(epochs=3, lr=0.01),
                                  description="fine-tuning after pruning (epochs split over the steps); epochs 0 = none")
    teacher: Literal["original", "none"] = Field("original", description="KD recovery from the unpruned model, or plain CE")
    kd_alpha: float = Field(0.7, ge=0, le=1, description="weight of the soft KD loss (1 - alpha on the labels)")
    kd_temperature: float = Field(4.0, gt=0, description="KD softmax temperature")
    global_pruning: bool = Field(False, description="rank channels across groups (non-uniform) instead of per group")
    per_layer_ratios: Dict[str, float] = Field(default_factory=dict, description="per-layer channel ratios "
                                               "{module name: ratio}, e.g. from sensitivity analysis")
    max_ratio: float = Field(0.9, gt=0, lt=1, description="no group loses more than this fraction of its channels")
    taylor_batches: int = Field(4, ge=1, description="training batches whose gradients feed taylor importance")

    @field_validator("per_layer_ratios")
    @classmethod
    def _check_per_layer(cls, v: Dict[str, float]) -> Dict[str, float]:
        bad = {k: r for k, r in v.items() if not (0 <= r < 1)}
        if bad:
            raise ValueError(f"per_layer_ratios must lie in [0, 1); got {bad}")
        return v

    @field_validator("speed_backend")
    @classmethod
    def _check_backend(cls, v: str) -> str:
        allowed = ("ort-cpu", "torch", "ort-cuda", "torch-cuda")
        if v not in allowed:
            raise ValueError(f"speed_backend '{v}' is not one of {', '.join(allowed)}")
        return v

    @model_validator(mode="after")
    def _one_target(self) -> PruneConfig:
        given = [k for k in ("ratio", "macs_target", "speedup_target") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"give one pruning target, not {' and '.join(given)}")
        if not given and not self.per_layer_ratios:
            raise ValueError("give a pruning target: ratio (channels removed), macs_target (fraction of MACs kept), "
                             "speedup_target (measured) or per_layer_ratios")
        if self.global_pruning and self.per_layer_ratios:
            raise ValueError("global_pruning ranks channels across layers itself; drop per_layer_ratios or global_pruning")
        return self

    @property
    def target_kind(self) -> str:
        """'ratio', 'macs', 'speed' or 'per_layer'."""
        if self.macs_target is not None:
            return "macs"
        if self.speedup_target is not None:
            return "speed"
        return "ratio" if self.ratio is not None else "per_layer"
