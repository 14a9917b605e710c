"""Configuration of knowledge distillation: logit KD, attention transfer, feature hints, teacher cache, and
transformer transfer (hidden states and attention distributions through a layer map).

``attention`` is Zagoruyko & Komodakis' *spatial* attention of CNN/ViT feature maps; ``attention_maps`` is the
transformer's own attention distributions (TinyBERT / MiniLM) — two different losses.

Example:
    >>> cfg = DistillConfig(temperature=4.0, alpha=0.9, attention={"weight": 2.0},
    ...                     train={"epochs": 10, "lr": 0.05})
    >>> cfg = DistillConfig(hidden=1.0, attention_maps={"weight": 1.0, "kind": "probs"}, layer_map=[[0, 1], [1, 3]])
"""
from __future__ import annotations

from typing import Any, List, Literal, Optional, Tuple

from pydantic import BaseModel, ConfigDict, Field, field_validator

from edgekit.core.train import TrainConfig
from edgekit.techniques.base import TechniqueConfig
from edgekit.techniques.recovery import alpha_field, temperature_field

LayerPair = Tuple[str, str]


class WeightedLossConfig(BaseModel):
    """A distillation loss term: on when its ``weight`` is positive (subclasses declare ``weight``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    weight: float

    @property
    def enabled(self) -> bool:
        """True when the loss contributes (weight > 0)."""
        return self.weight > 0


class FeatureLossConfig(WeightedLossConfig):
    """One feature-matching loss: its weight and the (student layer, teacher layer) pairs it matches."""

    weight: float = Field(0.0, ge=0, description="weight of this loss in the total (0 = off)")
    pairs: Optional[List[LayerPair]] = Field(
        None, description="[[student_layer, teacher_layer], ...] module names; default: the feature stages the "
                          "architectures declare (e.g. ResNet layer1..layer4), matched by relative depth")


class HiddenTransferConfig(WeightedLossConfig):
    """Hidden-state transfer between transformers: MSE of mapped blocks' outputs (TinyBERT)."""

    weight: float = Field(0.0, ge=0, description="weight of the hidden-state MSE in the total (0 = off)")
    embeddings: bool = Field(True, description="also match the embedding outputs (the input of block 0)")


class AttentionMapsConfig(WeightedLossConfig):
    """Attention-distribution transfer between transformers (TinyBERT / MiniLM)."""

    weight: float = Field(0.0, ge=0, description="weight of the attention KL in the total (0 = off)")
    kind: Literal["probs", "relation"] = Field(
        "probs", description="probs: KL between the mapped blocks' attention distributions per head (needs equal "
                             "head counts); relation: MiniLM-v2 self-attention relations softmax(QQ^T), softmax(KK^T), "
                             "softmax(VV^T) per relation head (any head counts and widths)")
    relation_heads: Optional[int] = Field(None, ge=1, description="relation heads for kind 'relation' (must divide "
                                                                  "both widths); default: the student's head count")


class DistillConfig(TechniqueConfig):
    """Settings of :func:`edgekit.techniques.distill.distill.distill` (and of the ``distill`` recipe stage)."""

    temperature: float = temperature_field(4.0)
    alpha: float = alpha_field(0.9)
    attention: FeatureLossConfig = Field(default_factory=FeatureLossConfig,
                                         description="attention transfer (Zagoruyko & Komodakis): weight, pairs")
    attention_p: float = Field(2.0, gt=0, description="exponent p of the attention map mean_c |f|^p")
    hints: FeatureLossConfig = Field(default_factory=FeatureLossConfig,
                                     description="FitNets feature hints (L2 through a 1x1 adapter): weight, pairs")
    hidden: HiddenTransferConfig = Field(
        default_factory=HiddenTransferConfig,
        description="transformers: hidden-state MSE of mapped blocks (+ embeddings), through a learned Linear "
                    "projection when widths differ: weight, embeddings")
    attention_maps: AttentionMapsConfig = Field(
        default_factory=AttentionMapsConfig,
        description="transformers: KL between attention distributions (or MiniLM relations) of mapped blocks: "
                    "weight, kind, relation_heads")
    layer_map: Optional[List[Tuple[int, int]]] = Field(
        None, description="transformers: [[student_block, teacher_block], ...] (0-based) for hidden/attention_maps "
                          "transfer and init_from_teacher; default uniform: student block i <-> teacher block "
                          "(i+1)*k-1, k = teacher depth / student depth")
    init_from_teacher: Optional[bool] = Field(
        None, description="start the student from the teacher's weights (embeddings, head, the mapped blocks for "
                          "encoders, evenly spaced blocks for causal LMs) when every shape matches; null = yes for "
                          "Hugging Face transformers (left random, with the reason recorded, when shapes differ)")
    cache_teacher_logits: bool = Field(True, description="precompute teacher outputs once when augmentation is "
                                                         "off (ignored when it is on, or when hints, hidden or "
                                                         "attention_maps are used)")
    train: TrainConfig = Field(default_factory=TrainConfig, description="training of the student")
    compare_scratch: bool = Field(False, description="also train the student architecture alone (no teacher, fresh "
                                                     "weights) with the same budget and report both accuracies")

    @field_validator("attention", "hints", "hidden", "attention_maps", mode="before")
    @classmethod
    def _weight_shorthand(cls, v: Any) -> Any:
        """Accept a bare number as ``{"weight": number}``."""
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return {"weight": float(v)}
        return v
