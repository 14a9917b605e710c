"""Configuration of knowledge distillation: logit KD, attention transfer, feature hints, teacher cache.

Example:
    >>> cfg = DistillConfig(temperature=4.0, alpha=0.9, attention={"weight": 2.0},
    ...                     train={"epochs": 10, "lr": 0.05})
"""
from __future__ import annotations

from typing import Any, List, Optional, Tuple

from pydantic import BaseModel, ConfigDict, Field, field_validator

from edgekit.core.train import TrainConfig
from edgekit.techniques.base import TechniqueConfig
from edgekit.techniques.recovery import alpha_field, temperature_field

LayerPair = Tuple[str, str]


class FeatureLossConfig(BaseModel):
    """One feature-matching loss: its weight and the (student layer, teacher layer) pairs it matches."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    weight: float = Field(0.0, ge=0, description="weight of this loss in the total (0 = off)")
    pairs: Optional[List[LayerPair]] = Field(
        None, description="[[student_layer, teacher_layer], ...] module names; default: the feature stages the "
                          "architectures declare (e.g. ResNet layer1..layer4), matched by relative depth")

    @property
    def enabled(self) -> bool:
        """True when the loss contributes (weight > 0)."""
        return self.weight > 0


class DistillConfig(TechniqueConfig):
    """Settings of :func:`edgekit.techniques.distill.distill.distill` (and of the ``distill`` recipe stage)."""

    temperature: float = temperature_field(4.0)
    alpha: float = alpha_field(0.9)
    attention: FeatureLossConfig = Field(default_factory=FeatureLossConfig,
                                         description="attention transfer (Zagoruyko & Komodakis): weight, pairs")
    attention_p: float = Field(2.0, gt=0, description="exponent p of the attention map mean_c |f|^p")
    hints: FeatureLossConfig = Field(default_factory=FeatureLossConfig,
                                     description="FitNets feature hints (L2 through a 1x1 adapter): weight, pairs")
    cache_teacher_logits: bool = Field(True, description="precompute teacher outputs once when augmentation is "
                                                         "off (ignored when it is on, or when hints are used)")
    train: TrainConfig = Field(default_factory=TrainConfig, description="training of the student")
    compare_scratch: bool = Field(False, description="also train the student architecture alone (no teacher, fresh "
                                                     "weights) with the same budget and report both accuracies")

    @field_validator("attention", "hints", mode="before")
    @classmethod
    def _weight_shorthand(cls, v: Any) -> Any:
        """Accept a bare number as ``{"weight": number}``."""
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return {"weight": float(v)}
        return v
