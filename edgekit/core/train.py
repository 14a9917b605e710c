"""One training loop shared by training, distillation, pruning fine-tune and QAT; evaluation via modules or runners."""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, List, Literal, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from edgekit._log import progress
from edgekit.data.splits import Split
from edgekit.errors import ConfigError, ShapeError, first_line

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], Tuple[torch.Tensor, torch.Tensor]]


class TrainConfig(BaseModel):
    """Optimiser, schedule and loop settings for :func:`fit`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    epochs: int = Field(5, ge=0, description="passes over the training split")
    batch_size: int = Field(64, gt=0, description="samples per optimisation step (per process under DDP)")
    lr: float = Field(0.05, gt=0, description="peak learning rate")
    optimizer: Literal["sgd", "adam", "adamw"] = Field("sgd", description="sgd (momentum, nesterov) | adam | adamw")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    weight_decay: float = Field(5e-4, ge=0, description="L2 / decoupled weight decay")
    schedule: Literal["cosine", "step", "constant", "onecycle"] = Field("cosine", description="learning-rate schedule")
    warmup_epochs: float = Field(0.0, ge=0, description="linear warm-up length in epochs")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="cross-entropy label smoothing")
    augment: bool = Field(False, description="random ±2 pixel shifts for image inputs")
    grad_clip: Optional[float] = Field(None, gt=0, description="clip gradient norm to this value")
    keep_best: bool = Field(True, description="restore the weights of the best validation epoch")


@dataclass
class FitResult:
    """What :func:`fit` did: per-epoch history, the best validation accuracy (%) and wall time."""

    history: List[dict] = field(default_factory=list)
    best_val_accuracy: Optional[float] = None
    seconds: float = 0.0


def cross_entropy_loss(label_smoothing: float = 0.0) -> LossFn:
    """The default loss: cross-entropy on the model's logits."""

    def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
        logits = model(x)
        return F.cross_entropy(logits, y, label_smoothing=label_smoothing), logits

    return loss_fn


def _optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               nesterov=cfg.momentum > 0)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    if warmup and step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * t))
    if schedule == "step":
        return 0.1 ** int(t * 3 - 1e-9)  # ÷10 at 1/3 and 2/3
    if schedule == "onecycle":
        return min(1.0, 2 * t + 0.1) if t < 0.5 else 0.5 * (1 + math.cos(math.pi * (2 * t - 1)))
    return 1.0


def _shift(x: torch.Tensor, gen: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Random translation by up to ``max_shift`` pixels with zero padding (4-D image batches only)."""
    if x.dim() != 4:
        return x
    n, _, h, w = x.shape
    pad = F.pad(x, (max_shift,) * 4)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    return torch.stack([pad[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])


def _dist_info() -> Tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def fit(model: nn.Module, train: Split, val: Optional[Split], config: TrainConfig | dict | None = None, *,
        seed: int = 0, loss_fn: Optional[LossFn] = None, extra_parameters: Iterable[nn.Parameter] = (),
        desc: str = "train") -> FitResult:
    """Train ``model`` in place on ``train``; evaluate on ``val`` after each epoch.

    Under ``torch.distributed`` (e.g. ``torchrun``), the model is wrapped in DistributedDataParallel,
    each rank trains on its shard of the same seeded permutation, and all ranks end with identical weights.

    Args:
        model: the module to train (modified in place).
        train / val: :class:`edgekit.data.Split` arrays; ``val`` may be None.
        config: :class:`TrainConfig` or a dict of its fields.
        seed: drives shuffling, augmentation and initial RNG state.
        loss_fn: ``loss_fn(model, x, y) -> (loss, logits)``; default cross-entropy.
        extra_parameters: trainable tensors outside ``model`` (e.g. distillation adapters).

    Example:
        >>> result = fit(model, splits.train, splits.val, {"epochs": 5, "lr": 0.05}, seed=0)
        >>> result.best_val_accuracy
    """
    cfg = config if isinstance(config, TrainConfig) else TrainConfig(**(config or {}))
    if train.y is None:
        raise ConfigError("training needs labelled data; this dataset has no labels (synthetic/latency-only)")
    rank, world = _dist_info()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    extra = list(extra_parameters)
    net: nn.Module = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model)
    loss_fn = loss_fn or cross_entropy_loss(cfg.label_smoothing)
    params = [p for p in model.parameters() if p.requires_grad] + extra
    opt = _optimizer(params, cfg)
    x_all, y_all = torch.from_numpy(train.x), torch.from_numpy(train.y)
    steps_per_epoch = max(1, math.ceil(len(train) / world / cfg.batch_size))
    total = steps_per_epoch * cfg.epochs
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    result, best_state, step, t0 = FitResult(), None, 0, time.perf_counter()
    bar = progress(range(cfg.epochs), desc=desc, total=cfg.epochs, leave=False)
    for epoch in bar:
        net.train()
        perm = torch.randperm(len(train), generator=gen)
        if world > 1:  # pad so every rank runs the same number of batches (else collectives hang)
            perm = torch.cat([perm, perm[:(-len(perm)) % world]])[rank::world]
        seen, correct, loss_sum = 0, 0, 0.0
        for i in range(0, len(perm), cfg.batch_size):
            idx = perm[i:i + cfg.batch_size]
            x, y = x_all[idx], y_all[idx]
            if cfg.augment:
                x = _shift(x, gen)
            for g in opt.param_groups:
                g["lr"] = cfg.lr * _lr_factor(step, total, warmup, cfg.schedule)
            loss, logits = loss_fn(net, x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if world > 1 and extra:
                for p in extra:
                    if p.grad is not None:
                        torch.distributed.all_reduce(p.grad)
                        p.grad /= world
            if cfg.grad_clip:
                nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            step += 1
            seen += len(y)
            correct += int((logits.argmax(1) == y).sum())
            loss_sum += float(loss.detach()) * len(y)
        if world > 1:  # BatchNorm running statistics are per process: make every rank use rank 0's
            for buf in model.buffers():
                torch.distributed.broadcast(buf, src=0)
        row = {"epoch": epoch + 1, "train_loss": loss_sum / max(1, seen), "train_accuracy": 100.0 * correct / max(1, seen),
               "seconds": time.perf_counter() - t0}
        if val is not None and val.y is not None:
            row["val_accuracy"] = evaluate(model, val)
            if result.best_val_accuracy is None or row["val_accuracy"] > result.best_val_accuracy:
                result.best_val_accuracy = row["val_accuracy"]
                if cfg.keep_best:
                    best_state = copy.deepcopy(model.state_dict())
        result.history.append(row)
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{row['train_loss']:.3f}", val=f"{row.get('val_accuracy', float('nan')):.1f}")
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    result.seconds = time.perf_counter() - t0
    return result


def predict(model_or_runner: Union[nn.Module, Any], x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Logits for ``x`` from an ``nn.Module`` (eval mode, no grad) or an edgekit ``Runner``.

    Runners whose input has a fixed batch size (e.g. a static TensorRT engine) get padded batches.
    """
    outs = []
    if isinstance(model_or_runner, nn.Module):
        was_training = model_or_runner.training
        model_or_runner.eval()
        device = next(iter(model_or_runner.parameters()), torch.empty(0)).device
        try:
            with torch.no_grad():
                for i in range(0, len(x), batch_size):
                    outs.append(model_or_runner(torch.from_numpy(x[i:i + batch_size]).to(device)).float().cpu().numpy())
        except RuntimeError as e:
            raise ShapeError(f"model cannot take inputs of per-sample shape {list(x.shape[1:])}: "
                             f"{first_line(e, 200)}") from None
        finally:
            model_or_runner.train(was_training)
    else:  # a runner; an engine built for one fixed batch size gets its last batch padded
        shape = getattr(model_or_runner, "input_shape", None)
        fixed = shape[0] if shape and isinstance(shape[0], int) else None
        step = fixed or batch_size
        for i in range(0, len(x), step):
            xb = x[i:i + step]
            n = len(xb)
            if fixed and n < fixed:
                xb = np.concatenate([xb, np.repeat(xb[-1:], fixed - n, axis=0)])
            outs.append(np.asarray(model_or_runner(np.ascontiguousarray(xb)))[:n].reshape(n, -1))
    return np.concatenate(outs) if outs else np.empty((0,))


def evaluate(model_or_runner: Union[nn.Module, Any], split: Split, batch_size: int = 256) -> float:
    """Top-1 accuracy in percent of a module or runner on a labelled split."""
    if split.y is None:
        raise ConfigError("accuracy needs labelled data; this split has no labels")
    logits = predict(model_or_runner, split.x, batch_size)
    return float(100.0 * (logits.argmax(1) == split.y).mean())
