"""Recovery: the one KD fine-tune glue shared by pruning, sparsity and QAT, and the KD vocabulary they share.

Every technique that damages a model and trains it back says the same three things the same way:
``teacher`` (an ``nn.Module`` or None in the library; in recipes null / ``parent`` / ``reference`` / a variant
name), ``temperature`` and ``alpha``. :func:`recover` is the fine-tune itself: Hinton KD from the teacher
(plain cross-entropy without one) through :func:`edgekit.core.train.fit`.

(DESIGN §1 places this at ``core/recovery.py``; it lives here because it builds on the distillation loss,
and ``core`` may not import ``techniques``.)

Example:
    >>> fit_result = recover(pruned, teacher, splits.train, splits.val, {"epochs": 3, "lr": 0.01},
    ...                      temperature=4.0, alpha=0.7, seed=0)
"""
from __future__ import annotations

from typing import Any, Optional

from pydantic import Field

from edgekit.core.train import FitResult, TrainConfig, fit
from edgekit.techniques.base import TechniqueConfig


def alpha_field(default: float) -> Any:
    """The ``alpha`` field: weight of the soft KD loss."""
    return Field(default, ge=0, le=1, description="weight of the soft KD loss; 1 - alpha weights the hard-label "
                                                  "cross-entropy (0..1)")


def temperature_field(default: float) -> Any:
    """The ``temperature`` field: KD softmax temperature."""
    return Field(default, gt=0, description="softmax temperature T of the soft targets (> 0)")


class RecoveryConfig(TechniqueConfig):
    """Fine-tuning after a model was damaged (pruned, sparsified): schedule and KD weights."""

    renamed = {"kd_alpha": "alpha", "kd_temperature": "temperature"}

    finetune: TrainConfig = Field(default_factory=lambda: TrainConfig(epochs=3, lr=0.01),
                                  description="fine-tuning afterwards (KD from the teacher when there is one); "
                                              "epochs 0 = none")
    alpha: float = alpha_field(0.7)
    temperature: float = temperature_field(4.0)


def recover(model: Any, teacher: Optional[Any], train: Any, val: Any, train_config: TrainConfig | dict, *,
            temperature: float = 4.0, alpha: float = 0.9, seed: int = 0, desc: str = "recover") -> FitResult:
    """Fine-tune ``model`` **in place**: KD from ``teacher`` (logit KD at ``temperature``, soft-loss weight
    ``alpha``), or cross-entropy on the labels when ``teacher`` is None.

    The teacher runs in eval mode without gradients; its weights and ``requires_grad`` flags are left as they were.

    Args:
        model: the module to train (modified in place).
        teacher: the frozen reference, or None.
        train / val: labelled :class:`edgekit.data.Split` arrays (``val`` may be None).
        train_config: :class:`edgekit.core.train.TrainConfig` or a dict of its fields.

    Example:
        >>> recover(student, teacher, splits.train, splits.val, {"epochs": 2, "lr": 0.01}, temperature=4, alpha=0.7)
    """
    if teacher is None:
        return fit(model, train, val, train_config, seed=seed, desc=desc)
    from edgekit.techniques.distill._kd import kd_loss_fn

    with kd_loss_fn(teacher, temperature=temperature, alpha=alpha) as loss:
        return fit(model, train, val, train_config, seed=seed, loss_fn=loss, desc=desc)


def scratch_baseline(model: Any, train: Any, val: Any, train_config: TrainConfig | dict, *, seed: int = 0,
                     desc: str = "scratch") -> dict:
    """Train a copy of ``model``'s architecture from freshly initialised weights (cross-entropy, no teacher) with
    ``train_config``'s budget: the baseline a pruned-and-distilled model has to beat. ``model`` is left unchanged.

    Returns:
        ``{"val_accuracy": best validation accuracy, "epochs": ..., "history": per-epoch records}``.

    Example:
        >>> scratch_baseline(pruned, splits.train, splits.val, {"epochs": 3, "lr": 0.01})["val_accuracy"]
    """
    import copy

    import torch

    fresh = copy.deepcopy(model).cpu()
    torch.manual_seed(seed)
    for m in fresh.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    res = fit(fresh, train, val, train_config, seed=seed, desc=desc)
    return {"val_accuracy": res.best_val_accuracy, "epochs": len(res.history), "history": res.history}
