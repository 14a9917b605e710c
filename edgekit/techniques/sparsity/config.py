"""Configuration of weight sparsity: which pattern, how much, which layers stay dense, recovery fine-tune.

Example:
    >>> SparsityConfig(method="unstructured", sparsity=0.7, exclude=["fc"], finetune={"epochs": 0})
    >>> SparsityConfig(method="2:4", finetune={"epochs": 2, "lr": 0.01})
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Optional

from pydantic import Field, model_validator

from edgekit.registry import Registry
from edgekit.techniques.base import OneOf
from edgekit.techniques.recovery import RecoveryConfig
from edgekit.techniques.scope import Scope, scope_field


@dataclass(frozen=True)
class SparsityPattern:
    """A registered sparsity pattern: whether it takes an amount (``sparsity``) and what it is good for."""

    name: str
    takes_amount: bool
    description: str


SPARSITY_PATTERNS: Registry[SparsityPattern] = Registry("sparsity pattern")
for _p in (SparsityPattern("unstructured", True, "zeros anywhere, ranked by magnitude across the model: a smaller "
                                                 "compressed file, same dense speed"),
           SparsityPattern("2:4", False, "two zeros in every four weights along the input dimension: TensorRT sparse "
                                         "tensor cores (Ampere or newer)")):
    SPARSITY_PATTERNS.register(_p.name)(_p)


def check_amount(method: str, sparsity: Optional[float]) -> None:
    """Raise ValueError when ``sparsity`` (the amount) does not suit the pattern ``method``."""
    pattern = SPARSITY_PATTERNS.get(method)
    if pattern.takes_amount and sparsity is None:
        raise ValueError(f"method '{method}' needs sparsity (fraction of weights zeroed, e.g. 0.7)")
    if not pattern.takes_amount and sparsity is not None:
        raise ValueError(f"method '{method}' fixes the fraction of zeros itself; drop sparsity")


class SparsityConfig(RecoveryConfig):
    """Settings of :func:`edgekit.techniques.sparsity.sparsity.sparsify`."""

    renamed = {**RecoveryConfig.renamed, "protect": "exclude"}

    method: Annotated[str, OneOf(SPARSITY_PATTERNS)] = Field("unstructured", description="sparsity pattern")
    sparsity: Optional[float] = Field(None, gt=0, lt=1, description="fraction of weights zeroed (unstructured)")
    exclude: Scope = scope_field("layers left dense")

    @model_validator(mode="after")
    def _amount(self) -> SparsityConfig:
        check_amount(self.method, self.sparsity)
        return self
