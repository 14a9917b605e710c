"""Configuration of knowledge distillation: logit KD, attention transfer, feature hints, teacher cache.

Example:
    >>> cfg = DistillConfig(temperature=4.0, alpha=0.9, attention={"weight": 2.0},
    ...                     train={"epochs": 10, "lr": 0.05})
"""
from __future__ import annotations

from typing import Any, List, Optional, Tuple

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edgekit.errors import format_validation_error, validated_config

LayerPair = Tuple[str, str]


class FeatureLossConfig(BaseModel):
    """One feature-matching loss: its weight and the (student layer, teacher layer) pairs it matches."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    weight: float = Field(0.0, ge=0, description="weight of this loss in the total (0 = off)")
    pairs: Optional[List[LayerPair]] = Field(
        None, description="[[student_layer, teacher_layer], ...] module names; default: the ResNet stages "
                          "(layer1..layer4) matched by relative depth")

    @property
    def enabled(self) -> bool:
        """True when the loss contributes (weight > 0)."""
        return self.weight > 0


class DistillConfig(BaseModel):
    """Settings of :func:`edgekit.techniques.distill.distill.distill` (and of the ``distill`` recipe stage)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: float = Field(4.0, gt=0, description="softmax temperature T of the soft targets (> 0)")
    alpha: float = Field(0.9, ge=0, le=1, description="weight of the soft KD loss; 1 - alpha weights the "
                                                       "hard-label cross-entropy (0..1)")
    attention: FeatureLossConfig = Field(default_factory=FeatureLossConfig,
                                         description="attention transfer (Zagoruyko & Komodakis): weight, pairs")
    attention_p: float = Field(2.0, gt=0, description="exponent p of the attention map mean_c |f|^p")
    hints: FeatureLossConfig = Field(default_factory=FeatureLossConfig,
                                     description="FitNets feature hints (L2 through a 1x1 adapter): weight, pairs")
    cache_teacher_logits: bool = Field(True, description="precompute teacher outputs once when augmentation is "
                                                         "off (ignored when it is on, or when hints are used)")
    train: dict = Field(default_factory=dict, description="TrainConfig fields for the student (epochs, lr, ...)")

    @field_validator("attention", "hints", mode="before")
    @classmethod
    def _weight_shorthand(cls, v: Any) -> Any:
        """Accept a bare number as ``{"weight": number}``."""
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return {"weight": float(v)}
        return v

    @field_validator("train")
    @classmethod
    def _check_train(cls, v: dict) -> dict:
        from edgekit.core.train import TrainConfig

        try:
            TrainConfig(**v)
        except ValidationError as e:
            raise ValueError(format_validation_error(e, "train", TrainConfig)) from None
        return dict(v)

    def train_config(self):
        """The student's :class:`edgekit.core.train.TrainConfig`."""
        from edgekit.core.train import TrainConfig

        return TrainConfig(**self.train)

    @classmethod
    def parse(cls, value: DistillConfig | dict | None, where: str = "distill") -> DistillConfig:
        """Build a config from a dict (or pass one through); errors become :class:`ConfigError`.

        Example:
            >>> DistillConfig.parse({"temperature": 0})
            Traceback (most recent call last):
            edgekit.errors.ConfigError: distill.temperature: Input should be greater than 0 (got 0)
        """
        return validated_config(cls, value, where)
