"""Unstructured and 2:4 semi-structured sparsity, made permanent (no masks left in the model).

- :func:`sparsify_unstructured`: global magnitude pruning across Conv/Linear weights. Dense runtimes
  (ONNX Runtime CPU, TensorRT dense kernels) do **not** run the result faster; the gain is a smaller
  file after compression, which the result reports.
- :func:`sparsify_2to4`: two zeros in every group of four weights along the input dimension (for Conv2d:
  along input channels at each kernel position, as TensorRT's sparse tensor cores want), with
  fine-tuning under fixed masks to recover accuracy.
- :func:`is_2to4_sparse` / :func:`check_2to4`: checkers for the TensorRT stage.

Example:
    >>> res = sparsify_unstructured(model, 0.8)
    >>> res.sparsity, res.compressed_bytes_after / res.compressed_bytes_before
"""
from __future__ import annotations

import contextlib
import copy
import zlib
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from edgekit.errors import ConfigError

DENSE_NOTE = ("unstructured zeros are stored densely: ONNX Runtime and TensorRT dense kernels run this model at the "
              "same speed as the unpruned one; the gain is the compressed file size")
NOTE_2TO4 = ("2:4 sparsity runs faster only on GPUs with sparse tensor cores (Ampere or newer) through TensorRT "
             "with sparse weights enabled; CPU runtimes run it at dense speed")


@dataclass
class SparsityResult:
    """A sparsified model: per-layer zeros, overall sparsity and sizes (bytes) of the weights."""

    model: nn.Module
    kind: str  # "unstructured" | "2:4"
    sparsity: float  # fraction of zeros over the sparsified weights
    layers: List[dict]
    dense_bytes: int
    compressed_bytes_before: int
    compressed_bytes_after: int
    note: str
    history: List[dict] = field(default_factory=list)
    val_accuracy: Optional[float] = None

    def to_dict(self) -> dict:
        """JSON-able summary (everything but the module)."""
        return {"kind": self.kind, "sparsity": self.sparsity, "layers": self.layers, "dense_bytes": self.dense_bytes,
                "compressed_bytes_before": self.compressed_bytes_before,
                "compressed_bytes_after": self.compressed_bytes_after, "note": self.note, "history": self.history,
                "val_accuracy": self.val_accuracy}


def _layers(model: nn.Module, exclude: Sequence[str]) -> Dict[str, nn.Module]:
    names = dict(model.named_modules())
    for e in exclude:
        if e not in names:
            from edgekit.errors import did_you_mean

            valid = [n for n, m in names.items() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))]
            raise ConfigError(f"exclude: '{e}' is not a module of {type(model).__name__}{did_you_mean(e, valid)}; "
                              f"layers: {', '.join(valid[:30])}")
    skip = tuple(e + "." for e in exclude)
    return {n: m for n, m in model.named_modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))
            and n not in exclude and not n.startswith(skip)}


def compressed_size(model: nn.Module) -> int:
    """Bytes of all parameters (fp32) after zlib compression: what sparsity saves on disk / over the air."""
    data = b"".join(p.detach().cpu().numpy().astype(np.float32).tobytes() for p in model.parameters())
    return len(zlib.compress(data, 6))


def layer_sparsity(model: nn.Module, names: Sequence[str]) -> List[dict]:
    """Per layer: parameters, zeros and sparsity of its weight."""
    mods = dict(model.named_modules())
    rows = []
    for n in names:
        w = mods[n].weight.detach()
        zeros = int((w == 0).sum())
        rows.append({"layer": n, "params": int(w.numel()), "zeros": zeros, "sparsity": zeros / max(1, w.numel())})
    return rows


def _finetune_masked(model: nn.Module, masks: Dict[str, torch.Tensor], train, val, finetune, teacher, seed: int,
                     kd_alpha: float, kd_temperature: float, desc: str) -> Optional[dict]:
    """Fine-tune with the masks fixed (torch.nn.utils.prune re-applies them every forward), then make permanent."""
    import torch.nn.utils.prune as tprune

    from edgekit.core.train import TrainConfig, fit

    mods = dict(model.named_modules())
    for n, mask in masks.items():
        tprune.custom_from_mask(mods[n], "weight", mask)
    row = None
    cfg = finetune if isinstance(finetune, TrainConfig) else TrainConfig(**(finetune or {"epochs": 0}))
    try:
        if cfg.epochs > 0:
            if train is None:
                raise ConfigError("sparsity fine-tuning needs labelled training data (train=); or set finetune epochs 0")
            from edgekit.techniques.distill.distill import kd_loss_fn, keep_requires_grad

            with keep_requires_grad(teacher) if teacher is not None else contextlib.nullcontext():
                loss = kd_loss_fn(teacher, temperature=kd_temperature, alpha=kd_alpha) if teacher is not None else None
                res = fit(model, train, val, cfg, seed=seed, loss_fn=loss, desc=desc)
            row = {"epochs": cfg.epochs, "val_accuracy": res.best_val_accuracy, "kd": teacher is not None,
                   "finetune": res.history}
    finally:
        for n in masks:
            tprune.remove(mods[n], "weight")
    return row


def _result(model, kind, names, before, note, row) -> SparsityResult:
    rows = layer_sparsity(model, names)
    total = sum(r["params"] for r in rows)
    zeros = sum(r["zeros"] for r in rows)
    dense = sum(p.numel() for p in model.parameters()) * 4
    return SparsityResult(model.eval(), kind, zeros / max(1, total), rows, dense, before, compressed_size(model),
                          note, [row] if row else [], row.get("val_accuracy") if row else None)


def sparsify_unstructured(model: nn.Module, sparsity: float, *, exclude: Sequence[str] = (), train=None, val=None,
                          finetune=None, teacher: Optional[nn.Module] = None, seed: int = 0, kd_alpha: float = 0.7,
                          kd_temperature: float = 4.0) -> SparsityResult:
    """Zero the ``sparsity`` fraction of smallest-magnitude Conv/Linear weights, ranked across the whole model.

    Args:
        model: left unchanged; a sparsified copy is returned.
        sparsity: fraction of weights set to zero, 0 < sparsity < 1.
        exclude: module names (layers or blocks) left dense.
        train / val / finetune / teacher: optional fine-tuning with masks fixed (KD when ``teacher`` is given).

    Example:
        >>> res = sparsify_unstructured(model, 0.7, exclude=["fc"])
        >>> round(res.sparsity, 2)
        0.7
    """
    import torch.nn.utils.prune as tprune

    if not (isinstance(sparsity, (int, float)) and 0 < sparsity < 1):
        raise ConfigError(f"sparsity must be between 0 and 1 (exclusive), got {sparsity!r}")
    work = copy.deepcopy(model).cpu().eval()
    layers = _layers(work, exclude)
    if not layers:
        raise ConfigError(f"{type(model).__name__} has no Conv/Linear weight left to sparsify")
    before = compressed_size(work)
    tprune.global_unstructured([(m, "weight") for m in layers.values()], pruning_method=tprune.L1Unstructured,
                               amount=float(sparsity))
    masks = {n: m.weight_mask.detach().clone() for n, m in layers.items()}
    for m in layers.values():
        tprune.remove(m, "weight")
    row = _finetune_masked(work, masks, train, val, finetune, teacher, seed, kd_alpha, kd_temperature, "sparse finetune")
    return _result(work, "unstructured", list(layers), before, DENSE_NOTE, row)


def _as_rows(w: torch.Tensor) -> torch.Tensor:
    """Weight viewed as [rows, input dim]: Linear [out, in]; Conv [out, kh, kw, in] (input channels innermost)."""
    return w.permute(0, *range(2, w.dim()), 1).reshape(-1, w.shape[1]) if w.dim() > 2 else w


def _mask_2to4(w: torch.Tensor) -> torch.Tensor:
    rows = _as_rows(w.detach().abs())
    g = rows.reshape(rows.shape[0], -1, 4)
    keep = torch.zeros_like(g, dtype=torch.bool)
    keep.scatter_(2, g.topk(2, dim=2).indices, True)
    mask = keep.reshape(rows.shape).to(w.dtype)
    if w.dim() > 2:
        shape = (w.shape[0], *w.shape[2:], w.shape[1])
        mask = mask.reshape(shape).permute(0, w.dim() - 1, *range(1, w.dim() - 1))
    return mask.contiguous()


def eligible_2to4(module: nn.Module) -> bool:
    """A layer can hold a 2:4 pattern when its per-group input dimension is a multiple of 4 (not depthwise)."""
    w = getattr(module, "weight", None)
    return isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)) and w is not None and w.shape[1] % 4 == 0


def check_2to4(model: nn.Module) -> Dict[str, bool]:
    """{layer: holds the 2:4 pattern} for every eligible Conv/Linear layer (see :func:`eligible_2to4`)."""
    out = {}
    for n, m in model.named_modules():
        if eligible_2to4(m):
            rows = _as_rows(m.weight.detach())
            nz = (rows.reshape(rows.shape[0], -1, 4) != 0).sum(dim=2)
            out[n] = bool((nz <= 2).all())
    return out


def is_2to4_sparse(model: nn.Module, min_fraction: float = 1.0) -> bool:
    """True when at least ``min_fraction`` of the eligible layers' weights hold 2 zeros in every 4 (input dim).

    Example:
        >>> is_2to4_sparse(sparsify_2to4(model).model)
        True
    """
    mods = dict(model.named_modules())
    status = check_2to4(model)
    if not status:
        return False
    total = sum(mods[n].weight.numel() for n in status)
    ok = sum(mods[n].weight.numel() for n, s in status.items() if s)
    return ok / total >= min_fraction


def sparsify_2to4(model: nn.Module, *, exclude: Sequence[str] = (), train=None, val=None, finetune=None,
                  teacher: Optional[nn.Module] = None, seed: int = 0, kd_alpha: float = 0.7,
                  kd_temperature: float = 4.0) -> SparsityResult:
    """Apply 2:4 semi-structured sparsity (keep the 2 largest of every 4 weights along the input dim).

    Layers whose input dimension is not a multiple of 4 (e.g. a 3-channel stem, depthwise convs) stay dense
    and are listed with sparsity 0. With ``train`` and ``finetune`` the model is fine-tuned under fixed masks
    (KD from ``teacher`` when given), so the pattern survives.

    Example:
        >>> res = sparsify_2to4(model, train=splits.train, val=splits.val, finetune={"epochs": 2, "lr": 0.01})
        >>> is_2to4_sparse(res.model)
        True
    """
    work = copy.deepcopy(model).cpu().eval()
    layers = {n: m for n, m in _layers(work, exclude).items() if eligible_2to4(m)}
    if not layers:
        raise ConfigError(f"{type(model).__name__} has no layer whose input dimension is a multiple of 4; "
                          "2:4 sparsity needs one")
    before = compressed_size(work)
    masks = {}
    with torch.no_grad():
        for n, m in layers.items():
            masks[n] = _mask_2to4(m.weight)
            m.weight.mul_(masks[n])
    row = _finetune_masked(work, masks, train, val, finetune, teacher, seed, kd_alpha, kd_temperature, "2:4 finetune")
    return _result(work, "2:4", list(layers), before, NOTE_2TO4, row)
