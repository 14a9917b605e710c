"""Unstructured and 2:4 semi-structured sparsity, made permanent (no masks left in the model).

``sparsify(model, config, *, train, val, teacher) -> SparsityResult`` with ``config.method``:

- ``unstructured``: global magnitude pruning across Conv/Linear weights. Dense runtimes (ONNX Runtime CPU,
  TensorRT dense kernels) do **not** run the result faster; the gain is a smaller file after compression,
  which the result reports.
- ``2:4``: two zeros in every group of four weights along the input dimension (for Conv2d: along input
  channels at each kernel position, as TensorRT's sparse tensor cores want).

Either way the model is then fine-tuned under fixed masks (``config.finetune``, KD from ``teacher`` when given).
:func:`is_2to4_sparse` / :func:`check_2to4` check the pattern for the TensorRT stage.

Example:
    >>> res = sparsify(model, {"method": "unstructured", "sparsity": 0.8, "finetune": {"epochs": 0}})
    >>> res.sidecar["weight_sparsity"], res.metrics["compressed_bytes"]
"""
from __future__ import annotations

import copy
import zlib
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from edgekit.errors import ConfigError, validated_config
from edgekit.techniques.base import Result, Technique, register_technique
from edgekit.techniques.recovery import recover
from edgekit.techniques.sparsity.config import SparsityConfig

__all__ = ["SparsityResult", "check_2to4", "compressed_size", "is_2to4_sparse", "sparsify"]

LAYERS = (nn.Conv1d, nn.Conv2d, nn.Linear)
DENSE_NOTE = ("unstructured zeros are stored densely: ONNX Runtime and TensorRT dense kernels run this model at the "
              "same speed as the unpruned one; the gain is the compressed file size")
NOTE_2TO4 = ("2:4 sparsity runs faster only on GPUs with sparse tensor cores (Ampere or newer) through TensorRT "
             "with sparse weights enabled; CPU runtimes run it at dense speed")


@dataclass(kw_only=True)
class SparsityResult(Result):
    """A sparsified model (``model``): per-layer zeros, overall sparsity and sizes (bytes) of the weights."""

    kind: str  # "unstructured" | "2:4"
    sparsity: float  # fraction of zeros over the sparsified weights
    layers: List[dict]
    dense_bytes: int
    compressed_bytes_before: int
    compressed_bytes_after: int
    note: str
    history: List[dict] = field(default_factory=list)
    val_accuracy: Optional[float] = None


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


def _finetune_masked(model: nn.Module, masks: Dict[str, torch.Tensor], cfg: SparsityConfig, train: Any, val: Any,
                     teacher: Optional[nn.Module], seed: int) -> Optional[dict]:
    """Fine-tune with the masks fixed (torch.nn.utils.prune re-applies them every forward), then make permanent."""
    import torch.nn.utils.prune as tprune

    if cfg.finetune.epochs <= 0:
        return None
    mods = dict(model.named_modules())
    for n, mask in masks.items():
        tprune.custom_from_mask(mods[n], "weight", mask)
    try:
        res = recover(model, teacher, train, val, cfg.finetune, temperature=cfg.temperature, alpha=cfg.alpha,
                      seed=seed, desc=f"{cfg.method} finetune")
    finally:
        for n in masks:
            tprune.remove(mods[n], "weight")
    return {"epochs": cfg.finetune.epochs, "val_accuracy": res.best_val_accuracy, "kd": teacher is not None,
            "finetune": res.history}


def _unstructured(layers: Dict[str, nn.Module], amount: float) -> Dict[str, torch.Tensor]:
    """Zero the ``amount`` fraction of smallest-magnitude weights, ranked across all ``layers``; their masks."""
    import torch.nn.utils.prune as tprune

    tprune.global_unstructured([(m, "weight") for m in layers.values()], pruning_method=tprune.L1Unstructured,
                               amount=float(amount))
    masks = {n: m.weight_mask.detach().clone() for n, m in layers.items()}
    for m in layers.values():
        tprune.remove(m, "weight")
    return masks


def _two_of_four(layers: Dict[str, nn.Module]) -> Dict[str, torch.Tensor]:
    """Keep the 2 largest of every 4 weights along the input dim of each layer; their masks."""
    masks = {}
    with torch.no_grad():
        for n, m in layers.items():
            masks[n] = _mask_2to4(m.weight)
            m.weight.mul_(masks[n])
    return masks


def sparsify(model: nn.Module, config: SparsityConfig | dict | None = None, *, train: Any = None, val: Any = None,
             teacher: Optional[nn.Module] = None, seed: int = 0, example_input: Any = None) -> SparsityResult:
    """Sparsify a copy of ``model`` (left unchanged) in the pattern ``config.method``, then fine-tune it.

    Layers in ``config.exclude`` stay dense; for 2:4, so do layers whose input dimension is not a multiple of 4
    (e.g. a 3-channel stem, depthwise convs), listed with sparsity 0.

    Args:
        model: the trained model.
        config: :class:`SparsityConfig` or a dict of its fields.
        train / val: labelled splits for the fine-tune (``finetune.epochs`` > 0).
        teacher: KD teacher for the fine-tune, or None for plain cross-entropy.
        example_input: a sample batch; when given, the result's MACs are counted at batch 1.

    Example:
        >>> res = sparsify(model, {"method": "2:4", "finetune": {"epochs": 2, "lr": 0.01}}, train=splits.train,
        ...                val=splits.val, teacher=model)
        >>> is_2to4_sparse(res.model)
        True
    """
    cfg = validated_config(SparsityConfig, config, "sparsity")
    if cfg.finetune.epochs > 0 and (train is None or getattr(train, "y", None) is None):
        raise ConfigError(f"sparsity fine-tuning ({cfg.finetune.epochs} epochs) needs labelled training data "
                          "(train=); or set finetune: {epochs: 0}")
    work = copy.deepcopy(model).cpu().eval()
    layers = _layers(work, cfg)
    before = compressed_size(work)
    masks = _unstructured(layers, cfg.sparsity) if cfg.method == "unstructured" else _two_of_four(layers)
    row = _finetune_masked(work, masks, cfg, train, val, teacher, seed)
    return _result(work, cfg.method, list(layers), before, row, example_input)


def _layers(model: nn.Module, cfg: SparsityConfig) -> Dict[str, nn.Module]:
    from edgekit.techniques.scope import Scope

    excluded = set(Scope.model_validate(cfg.exclude).select_modules(model, "sparsity.exclude", LAYERS))
    layers = {n: m for n, m in model.named_modules() if isinstance(m, LAYERS) and n not in excluded}
    if cfg.method == "2:4":
        layers = {n: m for n, m in layers.items() if eligible_2to4(m)}
        if not layers:
            raise ConfigError(f"{type(model).__name__} has no layer whose input dimension is a multiple of 4; "
                              "2:4 sparsity needs one")
    if not layers:
        raise ConfigError(f"{type(model).__name__} has no Conv/Linear weight left to sparsify")
    return layers


def _result(model: nn.Module, kind: str, names: Sequence[str], before: int, row: Optional[dict],
            example_input: Any) -> SparsityResult:
    rows = layer_sparsity(model, names)
    zeros, total = sum(r["zeros"] for r in rows), sum(r["params"] for r in rows)
    sparsity = zeros / max(1, total)
    after = compressed_size(model)
    note = DENSE_NOTE if kind == "unstructured" else NOTE_2TO4
    val_acc = row.get("val_accuracy") if row else None
    history = [row] if row else []
    metrics: Dict[str, Any] = {"weight_sparsity": round(sparsity, 4), "compressed_bytes": after,
                               "compressed_bytes_before": before, "val_accuracy": val_acc}
    if example_input is not None:
        from edgekit.techniques.prune import _graph as pg
        from edgekit.techniques.prune._structured import as_example

        metrics["macs"] = pg.count(model, as_example(example_input))[0]
    sidecar = {"method": kind, "sparsity": kind, "weight_sparsity": round(sparsity, 4), "layers": rows,
               "note": note, "history": history}
    if kind == "2:4":
        sidecar["sparse_2to4"] = is_2to4_sparse(model)
    return SparsityResult(model=model.eval(), metrics=metrics, sidecar=sidecar, kind=kind, sparsity=sparsity,
                          layers=rows, dense_bytes=sum(p.numel() for p in model.parameters()) * 4,
                          compressed_bytes_before=before, compressed_bytes_after=after, note=note, history=history,
                          val_accuracy=val_acc)


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
        >>> is_2to4_sparse(sparsify(model, {"method": "2:4", "finetune": {"epochs": 0}}).model)
        True
    """
    mods = dict(model.named_modules())
    status = check_2to4(model)
    if not status:
        return False
    total = sum(mods[n].weight.numel() for n in status)
    ok = sum(mods[n].weight.numel() for n, s in status.items() if s)
    return ok / total >= min_fraction


register_technique(Technique(
    "sparsity", SparsityConfig, consumes="module", produces="module", apply=sparsify,
    description="unstructured or 2:4 weight sparsity with a masked KD fine-tune (reached in recipes through the "
                "prune stage's method)",
    teacher="optional", uses_teacher=lambda config: config.finetune.epochs > 0,
    variant_suffix=lambda config: "sparse", stage=False))
