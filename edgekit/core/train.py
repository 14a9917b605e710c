"""One training loop shared by training, distillation, pruning fine-tune and QAT; evaluation via modules or runners.

Optimisers and learning-rate schedules are ``torch.optim`` / ``torch.optim.lr_scheduler`` objects picked by name
from :data:`OPTIMIZERS` and :data:`SCHEDULES` (register your own there); under ``torch.distributed`` each rank
reads its shard through ``DistributedSampler``.
"""
from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, List, Optional, Protocol, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch.optim import lr_scheduler
from torch.utils.data import BatchSampler
from torch.utils.data.distributed import DistributedSampler

from edgekit._log import progress
from edgekit.core.tensors import Inputs, call_module, contiguous, is_named, num_samples, prediction, take, to_torch
from edgekit.errors import ConfigError, ShapeError, TrainingDivergedError, first_line, validated_config
from edgekit.registry import Registry

logger = logging.getLogger(__name__)

#: ``loss_fn(model, x, y) -> (loss, logits)``; ``x`` is one tensor or a dict of named tensors
LossFn = Callable[[nn.Module, Any, torch.Tensor], Tuple[torch.Tensor, torch.Tensor]]


class Arrays(Protocol):
    """What :func:`fit`, :func:`evaluate` and :func:`predict` read: an :class:`edgekit.data.Split` or any object with
    ``x`` (one array [N, ...], or a mapping of input name to array, e.g. int64 token ids and masks) and ``y``
    (int64 [N], or None when unlabelled)."""

    @property
    def x(self) -> Inputs: ...

    @property
    def y(self) -> Optional[np.ndarray]: ...


# name -> make(params, config) -> torch optimiser
OPTIMIZERS: Registry[Callable[[list, TrainConfig], torch.optim.Optimizer]] = Registry("optimizer")
# name -> make(optimizer, steps) -> torch LR scheduler over the ``steps`` after warm-up, stepped once per batch
SCHEDULES: Registry[Callable[[torch.optim.Optimizer, int], lr_scheduler.LRScheduler]] = Registry("schedule")


class TrainConfig(BaseModel):
    """Optimiser, schedule and loop settings for :func:`fit`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    epochs: int = Field(5, ge=0, description="passes over the training split")
    batch_size: int = Field(64, gt=0, description="samples per optimisation step (per process under DDP)")
    lr: float = Field(0.05, gt=0, description="peak learning rate")
    optimizer: OPTIMIZERS.name_type() = Field("sgd", description="sgd (momentum, nesterov) | adam | adamw")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    weight_decay: float = Field(5e-4, ge=0, description="L2 / decoupled weight decay")
    schedule: SCHEDULES.name_type() = Field("cosine", description="learning-rate schedule")
    warmup_epochs: float = Field(0.0, ge=0, description="linear warm-up length in epochs")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="cross-entropy label smoothing")
    augment: bool = Field(False, description="random ±2 pixel shifts for image inputs")
    grad_clip: Optional[float] = Field(None, gt=0, description="clip gradient norm to this value")
    keep_best: bool = Field(True, description="restore the weights of the best validation epoch")
    find_lr: bool = Field(False, description="run a learning-rate range test first (about 100 batches) and train at "
                                             "its suggestion instead of lr (for models whose lr you don't know)")


@dataclass
class FitResult:
    """What :func:`fit` did: per-epoch history, the best validation accuracy (%) and wall time."""

    history: List[dict] = field(default_factory=list)
    best_val_accuracy: Optional[float] = None
    seconds: float = 0.0
    lr: Optional[float] = None  # the peak learning rate used (the range test's suggestion with find_lr)


@dataclass
class LRFindResult:
    """A learning-rate range test: the rates tried, their smoothed losses, and the suggested peak rate."""

    lrs: List[float]
    losses: List[float]
    suggestion: float


def find_lr(model: nn.Module, train: Arrays, config: TrainConfig | dict | None = None, *, seed: int = 0,
            loss_fn: Optional[LossFn] = None, extra_parameters: Iterable[nn.Parameter] = (),
            start: float = 1e-6, end: float = 1.0, steps: int = 100) -> LRFindResult:
    """Leslie Smith's learning-rate range test: train ``steps`` batches while the rate grows exponentially from
    ``start`` to ``end``; the suggestion is a tenth of the rate at the lowest smoothed loss (the rate at the minimum
    is already too high to train at). The model's weights are restored afterwards.

    Example:
        >>> find_lr(model, splits.train, {"optimizer": "sgd"}).suggestion
        0.0316...
    """
    cfg = validated_config(TrainConfig, config, "train").model_copy(update={"lr": start})
    extra = list(extra_parameters)
    saved = copy.deepcopy(model.state_dict()), [p.detach().clone() for p in extra]
    params = [p for p in model.parameters() if p.requires_grad] + extra
    opt = make_optimizer(params, cfg)
    sched = lr_scheduler.ExponentialLR(opt, gamma=(end / start) ** (1 / max(1, steps - 1)))
    loss_fn = loss_fn or cross_entropy_loss(cfg.label_smoothing)
    gen = torch.Generator().manual_seed(seed + 1)
    x_all, y_all = to_torch(contiguous(train.x)), torch.from_numpy(np.ascontiguousarray(train.y))
    lrs, losses, avg, best = [], [], 0.0, math.inf
    model.train()
    try:
        for step in range(steps):
            idx = torch.randint(0, len(y_all), (min(cfg.batch_size, len(y_all)),), generator=gen)
            loss, _ = loss_fn(model, take(x_all, idx), y_all[idx])
            value = float(loss.detach())
            if not math.isfinite(value):
                break
            avg = 0.98 * avg + 0.02 * value  # exponential moving average, bias-corrected below
            smooth = avg / (1 - 0.98 ** (step + 1))
            lrs.append(opt.param_groups[0]["lr"])
            losses.append(smooth)
            if smooth > 4 * best:
                break
            best = min(best, smooth)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    finally:
        model.load_state_dict(saved[0])
        with torch.no_grad():
            for p, v in zip(extra, saved[1]):
                p.copy_(v)
        model.eval()
    if not losses:
        raise TrainingDivergedError(f"learning-rate range test: the loss is not finite even at lr {start:g}")
    return LRFindResult(lrs, losses, lrs[int(np.argmin(losses))] / 10)


def cross_entropy_loss(label_smoothing: float = 0.0) -> LossFn:
    """The default loss: cross-entropy on the model's logits (read from a tensor, tuple, dict or HF ModelOutput)."""

    def loss_fn(model: nn.Module, x: Any, y: torch.Tensor):
        logits = prediction(call_module(model, x))
        check_labels(y, logits)
        return F.cross_entropy(*flat_tokens(logits, y), label_smoothing=label_smoothing), logits

    return loss_fn


def flat_tokens(logits: torch.Tensor, y: Optional[torch.Tensor]) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Per-token logits ``[N, T, V]`` and targets ``[N, T]`` (a causal LM's next tokens) as ``[N·T, V]`` and
    ``[N·T]``; classifier logits ``[N, C]`` and labels ``[N]`` unchanged."""
    if logits.dim() > 2 and (y is None or y.dim() == logits.dim() - 1):
        return logits.flatten(0, -2), (None if y is None else y.flatten())
    return logits, y


def _correct(logits: Any, y: Any) -> int:
    """Top-1 hits: one per sample (classifier) or one per token (``[N, T, V]`` logits, ``[N, T]`` targets)."""
    pred = logits.argmax(-1) if logits.ndim == y.ndim + 1 else logits.argmax(1)
    return int((pred.reshape(y.shape) == y).sum())


def check_labels(y: torch.Tensor, logits: torch.Tensor) -> None:
    """Raise ShapeError when a label is negative or not below the model's number of classes."""
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= logits.shape[-1]):
        bad = int(y.min()) if int(y.min()) < 0 else int(y.max())
        raise ShapeError(f"label {bad} is out of range: the model predicts {logits.shape[-1]} classes "
                         f"(labels must lie in [0, {logits.shape[-1]}))")


@OPTIMIZERS.register("sgd")
def _sgd(params: list, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                           nesterov=cfg.momentum > 0)


@OPTIMIZERS.register("adam")
def _adam(params: list, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


@OPTIMIZERS.register("adamw")
def _adamw(params: list, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


@SCHEDULES.register("cosine")
def _cosine(opt: torch.optim.Optimizer, steps: int) -> lr_scheduler.LRScheduler:
    return lr_scheduler.CosineAnnealingLR(opt, T_max=steps)


@SCHEDULES.register("step")
def _step(opt: torch.optim.Optimizer, steps: int) -> lr_scheduler.LRScheduler:
    """÷10 at the first step past one third and past two thirds of the run."""
    return lr_scheduler.MultiStepLR(opt, milestones=[steps // 3 + 1, 2 * steps // 3 + 1], gamma=0.1)


@SCHEDULES.register("constant")
def _constant(opt: torch.optim.Optimizer, steps: int) -> lr_scheduler.LRScheduler:
    return lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)


@SCHEDULES.register("onecycle")
def _onecycle(opt: torch.optim.Optimizer, steps: int) -> lr_scheduler.LRScheduler:
    """Linear ramp from 0.1× to the peak over the first 45 %, hold to half-way, cosine to zero. torch's OneCycleLR
    has another shape (cosine ramp from peak/25, ending at peak/1e4), so this one keeps edgekit's as a LambdaLR."""

    def factor(step: int) -> float:
        t = step / steps
        return min(1.0, 2 * t + 0.1) if t < 0.5 else 0.5 * (1 + math.cos(math.pi * (2 * t - 1)))

    return lr_scheduler.LambdaLR(opt, factor)


def make_optimizer(params: Iterable[nn.Parameter], config: TrainConfig | dict | None = None) -> torch.optim.Optimizer:
    """The ``torch.optim`` optimiser named by ``config.optimizer``, at the peak learning rate.

    Example:
        >>> opt = make_optimizer(model.parameters(), {"optimizer": "adamw", "lr": 1e-3})
    """
    cfg = validated_config(TrainConfig, config, "train")
    return OPTIMIZERS.get(cfg.optimizer)(list(params), cfg)


def make_scheduler(opt: torch.optim.Optimizer, config: TrainConfig | dict | None,
                   steps_per_epoch: int) -> lr_scheduler.LRScheduler:
    """Linear warm-up over ``warmup_epochs`` (from 1/warm-up steps of the peak), then ``config.schedule``;
    call ``.step()`` after every batch.

    Example:
        >>> sched = make_scheduler(opt, {"epochs": 10, "warmup_epochs": 1}, steps_per_epoch=50)
    """
    cfg = validated_config(TrainConfig, config, "train")
    total = steps_per_epoch * cfg.epochs
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    main = SCHEDULES.get(cfg.schedule)(opt, max(1, total - warmup))
    if not warmup:
        return main
    warm = lr_scheduler.LinearLR(opt, start_factor=1 / warmup, end_factor=1.0, total_iters=max(1, warmup - 1))
    return lr_scheduler.SequentialLR(opt, [warm, main], milestones=[warmup])


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


@dataclass
class _Epochs:
    """The optimisation state :func:`fit` carries from batch to batch."""

    net: nn.Module  # the model, DDP-wrapped under torch.distributed
    loss_fn: LossFn
    opt: torch.optim.Optimizer
    cfg: TrainConfig
    params: List[nn.Parameter]
    extra: List[nn.Parameter]
    world: int
    gen: torch.Generator  # the epoch permutations and augmentation draws, one seeded stream

    def run(self, x_all: Any, y_all: torch.Tensor, batches: BatchSampler,
            sched: lr_scheduler.LRScheduler) -> dict:
        """One pass over this rank's batches of a fresh permutation; returns the mean loss and accuracy (%)."""
        self.net.train()
        perm = torch.randperm(len(y_all), generator=self.gen)
        seen, tokens, correct, loss_sum = 0, 0, 0, 0.0
        for positions in batches:
            idx = perm[positions]
            x, y = take(x_all, idx), y_all[idx]
            if self.cfg.augment and not is_named(x):
                x = _shift(x, self.gen)
            loss, logits = self.loss_fn(self.net, x, y)
            if not math.isfinite(float(loss.detach())):  # a diverged model would train on silently to chance
                raise TrainingDivergedError(f"training diverged: the loss is {float(loss.detach())} after {seen} "
                                            f"samples of this epoch (lr {self.cfg.lr}); lower lr or set grad_clip")
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self._sync_extra_grads()
            if self.cfg.grad_clip:
                nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
            self.opt.step()
            sched.step()
            seen += len(y)
            tokens += y.numel()  # = seen for a classifier; next-token targets count every position
            correct += _correct(logits.detach(), y)
            loss_sum += float(loss.detach()) * len(y)
        return {"train_loss": loss_sum / max(1, seen), "train_accuracy": 100.0 * correct / max(1, tokens)}

    def _sync_extra_grads(self) -> None:
        """DDP averages the model's gradients only: average those of tensors outside it (adapters) by hand."""
        if self.world > 1:
            for p in self.extra:
                if p.grad is not None:
                    torch.distributed.all_reduce(p.grad)
                    p.grad /= self.world


def fit(model: nn.Module, train: Arrays, val: Optional[Arrays], config: TrainConfig | dict | None = None, *,
        seed: int = 0, loss_fn: Optional[LossFn] = None, extra_parameters: Iterable[nn.Parameter] = (),
        desc: str = "train") -> FitResult:
    """Train ``model`` in place on ``train``; evaluate on ``val`` after each epoch.

    Under ``torch.distributed`` (e.g. ``torchrun``), the model is wrapped in DistributedDataParallel, each rank
    trains on its ``DistributedSampler`` shard of the same seeded permutation (padded so every rank runs the same
    number of batches), and all ranks end with identical weights.

    Args:
        model: the module to train (modified in place).
        train / val: :class:`edgekit.data.Split` or anything with ``.x`` / ``.y`` arrays; ``val`` may be None.
        config: :class:`TrainConfig` or a dict of its fields (a misspelt key raises ConfigError).
        seed: drives shuffling, augmentation and initial RNG state.
        loss_fn: ``loss_fn(model, x, y) -> (loss, logits)``; default cross-entropy.
        extra_parameters: trainable tensors outside ``model`` (e.g. distillation adapters).

    Example:
        >>> result = fit(model, splits.train, splits.val, {"epochs": 5, "lr": 0.05}, seed=0)
        >>> result.best_val_accuracy
    """
    cfg = validated_config(TrainConfig, config, "train")
    if train.y is None:
        raise ConfigError("training needs labelled data; this dataset has no labels (synthetic/latency-only)")
    n = num_samples(train.x)
    if len(train.y) != n:
        raise ShapeError(f"training data has {n} inputs but {len(train.y)} labels")
    rank, world = _dist_info()
    torch.manual_seed(seed)
    extra = list(extra_parameters)
    if cfg.find_lr and cfg.epochs:
        found = find_lr(model, train, cfg, seed=seed, loss_fn=loss_fn, extra_parameters=extra)
        logger.info("%s: learning-rate range test suggests lr %.3g", desc, found.suggestion)
        cfg = cfg.model_copy(update={"lr": found.suggestion})
        torch.manual_seed(seed)
    net = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    params = [p for p in model.parameters() if p.requires_grad] + extra
    opt = make_optimizer(params, cfg)
    loop = _Epochs(net, loss_fn or cross_entropy_loss(cfg.label_smoothing), opt, cfg, params, extra, world,
                   torch.Generator().manual_seed(seed + 1))
    # DistributedSampler shards and pads positions in the epoch's permutation (every rank runs the same number of
    # batches, else collectives hang); the permutation itself comes from the seeded stream, as without DDP
    shard = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=False)
    batches = BatchSampler(shard, cfg.batch_size, drop_last=False)
    sched = make_scheduler(opt, cfg, max(1, len(batches)))
    x_all, y_all = to_torch(contiguous(train.x)), torch.from_numpy(np.ascontiguousarray(train.y))
    result, best_state, t0 = FitResult(), None, time.perf_counter()
    bar = progress(range(cfg.epochs), desc=desc, total=cfg.epochs, leave=False)
    for epoch in bar:
        row = {"epoch": epoch + 1, **loop.run(x_all, y_all, batches, sched)}
        if world > 1:  # BatchNorm running statistics are per process: make every rank use rank 0's
            for buf in model.buffers():
                torch.distributed.broadcast(buf, src=0)
        row["seconds"] = time.perf_counter() - t0
        if val is not None and val.y is not None:
            row["val_accuracy"] = evaluate(model, val)
            if result.best_val_accuracy is None or row["val_accuracy"] > result.best_val_accuracy:
                result.best_val_accuracy = row["val_accuracy"]
                best_state = copy.deepcopy(model.state_dict()) if cfg.keep_best else None
        result.history.append(row)
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{row['train_loss']:.3f}", val=f"{row.get('val_accuracy', float('nan')):.1f}")
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    result.seconds = time.perf_counter() - t0
    result.lr = cfg.lr
    return result


def predict(model_or_runner: Union[nn.Module, Any], x: Inputs, batch_size: int = 256) -> np.ndarray:
    """Predictions (logits) for ``x`` from an ``nn.Module`` (eval mode, no grad) or an edgekit ``Runner``.

    ``x`` is one array or a mapping of named arrays (token ids stay integers). Module outputs may be tensors,
    tuples, dicts or Hugging Face ``ModelOutput`` objects (the ``logits`` field is read). Runners whose input has
    a fixed batch size (e.g. a static TensorRT engine) get padded batches.

    Example:
        >>> logits = predict(model, {"input_ids": ids, "attention_mask": mask, "token_type_ids": types})
    """
    if isinstance(model_or_runner, nn.Module):
        outs = _predict_module(model_or_runner, x, batch_size)
    else:  # a runner; an engine built for one fixed batch size gets its last batch padded
        outs = []
        shape = getattr(model_or_runner, "input_shape", None)
        fixed = shape[0] if shape and isinstance(shape[0], int) else None
        step = fixed or batch_size
        for i in range(0, num_samples(x), step):
            xb = take(x, slice(i, i + step))
            n = num_samples(xb)
            if fixed and n < fixed:
                xb = take(xb, np.r_[np.arange(n), np.full(fixed - n, n - 1)])
            out = np.asarray(prediction(model_or_runner(contiguous(xb))))
            outs.append(out[:n].reshape(n, -1) if out.ndim != 2 else out[:n])
    return np.concatenate(outs) if outs else np.empty((0,))


def _predict_module(model: nn.Module, x: Inputs, batch_size: int) -> List[np.ndarray]:
    was_training = model.training
    model.eval()
    device = next(iter(model.parameters()), torch.empty(0)).device
    outs = []
    try:
        with torch.no_grad():
            for i in range(0, num_samples(x), batch_size):
                out = prediction(call_module(model, to_torch(take(x, slice(i, i + batch_size)), device)))
                outs.append(out.float().cpu().numpy())
    except (RuntimeError, TypeError, IndexError) as e:
        what = (", ".join(f"{k}: {v.dtype}{list(v.shape[1:])}" for k, v in x.items()) if is_named(x)
                else f"per-sample shape {list(np.shape(x)[1:])}")
        raise ShapeError(f"model cannot take inputs ({what}): {first_line(e, 200)}") from None
    finally:
        model.train(was_training)
    return outs


def evaluate(model_or_runner: Union[nn.Module, Any], split: Arrays, batch_size: int = 256) -> float:
    """Top-1 accuracy in percent of a module or runner on a labelled split.

    Targets ``[N, T]`` (a causal LM's next tokens) give next-token accuracy over every position; those splits are
    read a few windows at a time (``batch_size`` tokens per chunk), so ``[N, T, vocab]`` logits are never held.
    """
    if split.y is None:
        raise ConfigError("accuracy needs labelled data; this split has no labels")
    y = np.asarray(split.y)
    if y.ndim == 1:
        logits = predict(model_or_runner, split.x, batch_size)
        return float(100.0 * (logits.argmax(1) == y).mean())
    step = max(1, batch_size // y.shape[1])
    correct = 0
    for i in range(0, len(y), step):
        logits = predict(model_or_runner, take(split.x, slice(i, i + step)), step)
        correct += _correct(logits, y[i:i + step])
    return float(100.0 * correct / max(1, y.size))
