"""Structured pruning of transformers: attention heads, FFN neurons and whole layers, physically removed.

Works on Hugging Face BERT-family encoders (BERT, RoBERTa, ELECTRA...), ViT/DeiT, DistilBERT, edgekit's zoo
ViT and decoder LMs (GPT-2, Llama-style with grouped KV heads removed as whole groups, the zoo ``gpt_lm``), whose
heads are described by :data:`edgekit.models.heads.ATTENTION_LAYOUTS`. No tracing: the query / key /
value rows of a removed head and the matching input columns of the output projection are sliced away (the head
width is unchanged, the head count attributes follow), FFN neurons are rows of the up projection and columns of the
down projection, and dropped layers leave the layer list. Heads and neurons are ranked by a calibration pass
(``head_importance``: output norms, or head-mask gradients as in Michel et al. 2019). A pruned model keeps every
layer a plain ``nn.Linear``, so its edgekit checkpoint rebuilds it (see :mod:`edgekit.models.checkpoint`).
"""
from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from edgekit.core.tensors import call_module, num_samples, prediction, take, to_torch
from edgekit.core.train import flat_tokens
from edgekit.errors import ConfigError
from edgekit.models.heads import (
    FFN_LAYOUTS,
    TransformerBlock,
    in_width,
    out_width,
    set_head_count,
    supported_attention,
    transformer_blocks,
)
from edgekit.techniques.prune import _graph as pg
from edgekit.techniques.prune.config import HEAD_IMPORTANCES, PruneConfig

logger = logging.getLogger(__name__)

Scores = Dict[str, Dict[str, torch.Tensor]]  # block name -> {"heads": [H], "ffn": [I]}


@dataclass
class Plan:
    """What every block keeps: head indices and FFN neuron indices (None: left whole)."""

    heads: Dict[str, List[int]] = field(default_factory=dict)
    ffn: Dict[str, List[int]] = field(default_factory=dict)
    drop: List[int] = field(default_factory=list)


def _where(model: nn.Module) -> str:
    return type(model).__name__


def check_blocks(model: nn.Module, cfg: PruneConfig, excluded: Sequence[str]) -> List[TransformerBlock]:
    """The model's transformer blocks, after checking the config fits them (clear errors before any work)."""
    blocks = transformer_blocks(model)
    if not blocks:
        raise ConfigError(f"prune.heads/ffn/layers: {_where(model)} has no transformer encoder layers edgekit "
                          "recognises (Hugging Face models loaded by edgekit and the zoo 'vit'); supported "
                          f"attention: {supported_attention()}; prune other models by channels (ratio / macs_target)")
    if cfg.heads:
        bad = [b.name for b in blocks if b.layout is None]
        if bad:
            raise ConfigError(f"prune.heads: {_where(model)} layer {bad[0]} has an attention module edgekit cannot "
                              f"prune (supported: {supported_attention()}); drop heads: or prune ffn / layers only")
        for b in blocks:
            _check_consistent(model, b)
            if not _excluded(b, excluded):
                _check_heads(b, cfg.heads)
    if cfg.ffn:
        bad = [b.name for b in blocks if b.ffn is None]
        if bad:
            pairs = ", ".join("/".join(lay) for lay in FFN_LAYOUTS)
            raise ConfigError(f"prune.ffn: {_where(model)} layer {bad[0]} has no FFN edgekit knows (up/down "
                              f"Linear pairs: {pairs})")
        if all(b.intermediate <= cfg.round_to for b in blocks):
            raise ConfigError(f"prune.ffn: every FFN of {_where(model)} has at most round_to={cfg.round_to} "
                              "neurons; nothing to remove (lower round_to)")
    _check_layers(model, blocks, cfg.layers)
    if cfg.depth is not None and cfg.depth >= len(blocks):
        raise ConfigError(f"prune.depth {cfg.depth} keeps all {len(blocks)} encoder layers of {_where(model)}; "
                          f"allowed: 1..{len(blocks) - 1}")
    return blocks


def _check_consistent(model: nn.Module, b: TransformerBlock) -> None:
    widths = [out_width(model.get_submodule(n)) for n in b.qkv]
    out_in = in_width(model.get_submodule(b.out))
    total = widths[0] // (3 if b.layout.fused else 1)
    kv_ok = len(widths) == 3 and b.layout.kv_groups and widths[1] == widths[2] and b.kv_heads \
        and b.heads % b.kv_heads == 0 and b.heads // b.kv_heads == getattr(model.get_submodule(b.attention),
                                                                            b.layout.kv_groups, 0)
    if (len(set(widths)) > 1 and not kv_ok) or total % max(1, b.head_size) or out_in != total:
        raise ConfigError(f"prune.heads: attention {b.attention} is not consistent: q/k/v widths {widths}, head "
                          f"width {b.head_size}, output projection takes {out_in}; its heads cannot be removed "
                          "whole (was it channel-pruned?). Allowed: q/k/v widths equal, a multiple of the head "
                          "width, and equal to the output projection's input")


def _check_heads(b: TransformerBlock, frac: float) -> None:
    if b.grouped:
        remove = heads_removed(b.kv_heads, frac)
        if remove >= b.kv_heads:
            raise ConfigError(f"prune.heads {frac} removes all {b.kv_heads} key/value head groups of layer {b.name} "
                              f"(grouped-query attention: {b.heads} query heads share {b.kv_heads} KV heads and are "
                              f"removed a whole group at a time; {b.kv_heads} x {frac} rounds to {remove}); allowed: "
                              f"heads < {(b.kv_heads - 0.5) / b.kv_heads:.3f} so at least one group stays")
        return
    remove = heads_removed(b.heads, frac)
    if remove >= b.heads:
        raise ConfigError(f"prune.heads {frac} removes all {b.heads} heads of layer {b.name} ({b.heads} x "
                          f"{frac} rounds to {remove}); allowed: heads < {(b.heads - 0.5) / b.heads:.3f} so at "
                          "least one head stays")


def _check_layers(model: nn.Module, blocks: List[TransformerBlock], layers: Sequence[int]) -> None:
    if not layers:
        return
    n = len(blocks)
    outside = [i for i in layers if i >= n]
    if outside:
        raise ConfigError(f"prune.layers {list(layers)}: {_where(model)} has {n} encoder layers (0..{n - 1}); "
                          f"{outside} are outside")
    if len(layers) >= n:
        raise ConfigError(f"prune.layers {list(layers)} removes all {n} encoder layers of {_where(model)}; keep "
                          "at least one")


def _excluded(b: TransformerBlock, excluded: Sequence[str]) -> bool:
    ex = set(excluded)
    return bool(ex & {*b.qkv, b.out or ""})


def heads_removed(heads: int, frac: float, cap: bool = False) -> int:
    """Heads removed from a layer of ``heads``: ``heads * frac`` rounded half up (at most heads - 1 with ``cap``)."""
    n = int(math.floor(heads * frac + 0.5))
    return min(n, heads - 1) if cap else n


def ffn_kept(width: int, frac: float, round_to: int) -> int:
    """FFN neurons kept: ``width * (1 - frac)`` rounded to a multiple of ``round_to`` (at least one multiple)."""
    if width <= round_to or frac <= 0:
        return width
    keep = int(math.floor(width * (1 - frac) / round_to + 0.5)) * round_to
    return int(min(width, max(round_to, keep)))


# ---------------------------------------------------------------------------------------------- importance


def _batches(example: Any, train: Any, batches: int, seed: int, labels: bool, batch_size: int = 32):
    """``(inputs, labels or None)`` torch batches from ``train`` (or the example input when there is no data)."""
    if train is None:
        yield example, None
        return
    n = num_samples(train.x)
    idx = np.random.default_rng(seed).permutation(n)[: batches * batch_size]
    for i in range(0, len(idx), batch_size):
        sel = np.sort(idx[i:i + batch_size])
        y = torch.from_numpy(np.asarray(train.y)[sel]) if labels else None
        yield to_torch(take(train.x, sel)), y


def importance(model: nn.Module, blocks: List[TransformerBlock], cfg: PruneConfig, example: Any, train: Any,
               seed: int) -> Scores:
    """Per block, a score per head and per FFN neuron (higher = keep) from a calibration pass over
    ``cfg.taylor_batches`` training batches: mean |output| (``l1``) or |d loss / d mask| (``taylor``)."""
    taylor = HEAD_IMPORTANCES.get(cfg.head_importance).needs_labels
    l2 = cfg.head_importance == "l2"
    scores: Scores = {b.name: {} for b in blocks}
    masks: Dict[str, torch.Tensor] = {}
    handles = []

    def hook(bname: str, kind: str, groups: int):
        def pre(_mod: nn.Module, args: tuple):
            x = args[0]
            v = x.reshape(*x.shape[:-1], groups, x.shape[-1] // groups)
            if taylor:
                return (v * masks[f"{bname}/{kind}"][:, None]).reshape(x.shape), *args[1:]
            v = v.detach()
            acc = (v.norm(dim=-1) if l2 else v.abs().sum(-1)).reshape(-1, groups).sum(0)
            scores[bname][kind] = scores[bname].get(kind, 0) + acc
            return None
        return pre

    for b in blocks:
        if cfg.heads and b.layout is not None:
            masks[f"{b.name}/heads"] = torch.ones(b.heads, requires_grad=True)
            handles.append(model.get_submodule(b.out).register_forward_pre_hook(hook(b.name, "heads", b.heads)))
        if cfg.ffn and b.ffn is not None:
            masks[f"{b.name}/ffn"] = torch.ones(b.intermediate, requires_grad=True)
            handles.append(model.get_submodule(b.ffn[-1]).register_forward_pre_hook(
                hook(b.name, "ffn", b.intermediate)))
    model.eval()
    try:
        for x, y in _batches(example, train, cfg.taylor_batches, seed, taylor):
            if not taylor:
                with torch.no_grad():
                    call_module(model, x)
                continue
            loss = F.cross_entropy(*flat_tokens(prediction(call_module(model, x)), y))
            grads = torch.autograd.grad(loss, list(masks.values()))
            for key, g in zip(masks, grads):
                bname, kind = key.split("/")
                scores[bname][kind] = scores[bname].get(kind, 0) + g.abs()
    finally:
        for h in handles:
            h.remove()
    return scores


# ---------------------------------------------------------------------------------------------- plan + apply


def make_plan(blocks: List[TransformerBlock], scores: Scores, heads: float, ffn: float, round_to: int,
              excluded: Sequence[str], drop: Sequence[int], cap: bool = False) -> Plan:
    """Keep the highest-scoring heads / neurons of every block (indices in ascending order)."""
    plan = Plan(drop=sorted(drop))
    for i, b in enumerate(blocks):
        if i in plan.drop:
            continue
        if heads and b.layout is not None and not _excluded(b, excluded):
            units, per = (b.kv_heads, b.heads // b.kv_heads) if b.grouped else (b.heads, 1)
            keep = units - heads_removed(units, heads, cap)
            if keep < units:
                score = scores[b.name].get("heads")
                score = None if score is None else torch.as_tensor(score).reshape(units, per).sum(1)
                plan.heads[b.name] = [g * per + j for g in _top(score, units, keep) for j in range(per)]
        if ffn and b.ffn is not None and not set(b.ffn) & set(excluded):
            keep = ffn_kept(b.intermediate, ffn, round_to)
            if keep < b.intermediate:
                plan.ffn[b.name] = _top(scores[b.name].get("ffn"), b.intermediate, keep)
    return plan


def _top(score: Optional[torch.Tensor], n: int, keep: int) -> List[int]:
    if score is None:
        return list(range(keep))
    order = torch.argsort(torch.as_tensor(score, dtype=torch.float64), descending=True, stable=True)
    return sorted(int(i) for i in order[:keep])


def removes_nothing(plan: Plan) -> bool:
    return not (plan.heads or plan.ffn or plan.drop)


def _slice_linear(model: nn.Module, name: str, out_idx: Optional[List[int]] = None,
                  in_idx: Optional[List[int]] = None) -> None:
    """Keep the ``out_idx`` outputs / ``in_idx`` inputs of a Linear or a (GPT-2) Conv1D, whose weight is [in, out]."""
    old = model.get_submodule(name)
    conv1d = not isinstance(old, nn.Linear)
    w = old.weight.detach().t() if conv1d else old.weight.detach()
    b = old.bias.detach() if old.bias is not None else None
    if out_idx is not None:
        w = w[out_idx]
        b = b[out_idx] if b is not None else None
    if in_idx is not None:
        w = w[:, in_idx]
    if conv1d:
        new, w = type(old)(w.shape[0], w.shape[1]).to(device=w.device, dtype=w.dtype), w.t()
    else:
        new = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        if b is not None:
            new.bias.copy_(b)
    new.weight.requires_grad_(old.weight.requires_grad)
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def _prune_heads(model: nn.Module, b: TransformerBlock, keep: List[int]) -> None:
    cols = [h * b.head_size + j for h in keep for j in range(b.head_size)]
    if b.layout.fused:
        width = b.heads * b.head_size
        _slice_linear(model, b.qkv[0], out_idx=[p * width + c for p in range(3) for c in cols])
    elif b.grouped:  # whole KV groups: query heads g*per.. and key/value head g
        per = b.heads // b.kv_heads
        groups = sorted({h // per for h in keep})
        kv_cols = [g * b.head_size + j for g in groups for j in range(b.head_size)]
        _slice_linear(model, b.qkv[0], out_idx=cols)
        for n in b.qkv[1:]:
            _slice_linear(model, n, out_idx=kv_cols)
    else:
        for n in b.qkv:
            _slice_linear(model, n, out_idx=cols)
    _slice_linear(model, b.out, in_idx=cols)
    set_head_count(model.get_submodule(b.attention), b.layout, len(keep))


def apply_plan(model: nn.Module, blocks: List[TransformerBlock], plan: Plan) -> None:
    """Remove the heads, neurons and layers ``plan`` leaves out of ``model`` (in place), and record the new sizes
    in its architecture (``edgekit_arch``) so a checkpoint rebuilds it."""
    by_name = {b.name: b for b in blocks}
    for name, keep in plan.heads.items():
        _prune_heads(model, by_name[name], keep)
    for name, keep in plan.ffn.items():
        *ups, down = by_name[name].ffn
        for up in ups:
            _slice_linear(model, up, out_idx=keep)
        _slice_linear(model, down, in_idx=keep)
    if plan.drop:
        _drop_layers(model, [b.name for b in blocks], plan.drop)
    _record_arch(model)


def _drop_layers(model: nn.Module, names: List[str], drop: Sequence[int]) -> None:
    parent_name = names[0].rpartition(".")[0]
    parent = model.get_submodule(parent_name)
    kept = [m for i, m in enumerate(parent) if i not in set(drop)]
    new = nn.Sequential(*kept) if isinstance(parent, nn.Sequential) else type(parent)(kept)
    for i, layer in enumerate(kept):
        for m in layer.modules():
            if hasattr(m, "layer_idx"):
                m.layer_idx = i
    owner, _, child = parent_name.rpartition(".")
    setattr(model.get_submodule(owner) if owner else model, child, new)
    config = getattr(model, "config", None)  # a Hugging Face model: its cache and masks count layers from here
    if config is not None and hasattr(config, "num_hidden_layers"):
        types = getattr(config, "layer_types", None)  # per-layer attention kinds (Qwen2, Gemma...): drop theirs too
        if isinstance(types, list) and len(types) == config.num_hidden_layers:
            config.layer_types = [t for i, t in enumerate(types) if i not in set(drop)]
        config.num_hidden_layers = len(kept)


def _record_arch(model: nn.Module) -> None:
    """Depth and uniform FFN width into a Hugging Face config (and the checkpoint's copy of it); depth into the zoo
    ``gpt_lm``'s arguments; per-block head counts and depth into the zoo ViT's arguments."""
    arch = getattr(model, "edgekit_arch", None)
    blocks = transformer_blocks(model)
    if arch is None or not blocks:
        return
    kwargs = arch.setdefault("kwargs", {})
    if arch.get("name") == "hf":
        stored = kwargs["config"]  # the config dict's own spelling (GPT-2 writes n_layer / n_inner)
        depth_key = next((k for k in ("n_layers", "n_layer") if k in stored), "num_hidden_layers")
        updates = {depth_key: len(blocks)}
        widths = {b.intermediate for b in blocks if b.ffn is not None}
        width_key = next((k for k in ("hidden_dim", "n_inner") if k in stored), "intermediate_size")
        if len(widths) == 1 and width_key in stored:
            updates[width_key] = widths.pop()
        for k, v in updates.items():
            setattr(model.config, k, v)
            stored[k] = v
        if isinstance(stored.get("layer_types"), list):
            stored["layer_types"] = list(model.config.layer_types)
    elif arch.get("name") == "gpt_lm":  # its FFN / head widths come back from the checkpoint's structure
        kwargs["n_layer"] = len(blocks)
    elif arch.get("name") == "vit":
        kwargs["depth"] = len(blocks)
        kwargs["block_heads"] = [b.heads for b in blocks]


def prune_copy(model: nn.Module, blocks: List[TransformerBlock], plan: Plan) -> nn.Module:
    """A pruned deep copy of ``model`` (the original is left as it is)."""
    m = copy.deepcopy(model)
    apply_plan(m, blocks, plan)
    return m


def table(before: List[TransformerBlock], model: nn.Module, plan: Plan, round_to: int,
          excluded: Sequence[str]) -> List[dict]:
    """One row per block and kind (heads, ffn) in the shape of the channel table: before/after, kept indices."""
    rows = []
    for i, b in enumerate(before):
        if i in plan.drop:
            rows.append({"group": b.name, "kind": "layer", "layers": [b.name], "before": 1, "after": 0,
                         "aligned": True, "unaligned": [], "excluded": False})
            continue
        if b.layout is not None:
            kept = plan.heads.get(b.name, list(range(b.heads)))
            rows.append({"group": b.attention, "kind": "heads", "layers": [*b.qkv, b.out], "before": b.heads,
                         "after": len(kept), "kept": kept, "head_size": b.head_size, "aligned": True,
                         "unaligned": [], "excluded": _excluded(b, excluded)})
        if b.ffn is not None:
            after = out_width(model.get_submodule(_renamed(b.ffn[0], before, plan.drop)))
            rows.append({"group": b.ffn[0], "kind": "ffn", "layers": list(b.ffn), "before": b.intermediate,
                         "after": after, "aligned": after % round_to == 0 or after == b.intermediate,
                         "unaligned": [] if after % round_to == 0 or after == b.intermediate else [b.ffn[0]],
                         "excluded": bool(set(b.ffn) & set(excluded))})
    return rows


def _renamed(name: str, blocks: List[TransformerBlock], drop: Sequence[int]) -> str:
    """``name`` inside block i after the dropped blocks before it were removed (the list re-indexed)."""
    for i, b in enumerate(blocks):
        if name.startswith(b.name + "."):
            new_i = i - sum(1 for d in drop if d < i)
            prefix = b.name.rpartition(".")[0]
            return f"{prefix}.{new_i}{name[len(b.name):]}"
    return name


def macs(model: nn.Module, example: Any) -> Tuple[int, int]:
    """(MACs, params) at batch 1 (Linear/Conv/embedding work counted by Torch-Pruning's counter; GPT-2's Conv1D
    projections are counted as the equal Linear layers)."""
    if any(type(m).__name__ == "Conv1D" for m in model.modules()):
        from edgekit.export.causal_lm import conv1d_to_linear

        model = conv1d_to_linear(copy.deepcopy(model))
    return pg.count(model, example)


def layers_to_drop(model: nn.Module, blocks: List[TransformerBlock], cfg: PruneConfig, example: Any, train: Any,
                   seed: int) -> Tuple[List[int], List[float]]:
    """The ``len(blocks) - depth`` layers whose removal changes the model's outputs least: mean KL divergence of
    the unpruned outputs from those of a copy without that one layer, over the calibration batches."""
    names = [b.name for b in blocks]
    batches = [x for x, _ in _batches(example, train, cfg.taylor_batches, seed, False)]
    model.eval()
    with torch.no_grad():
        ref = [F.log_softmax(prediction(call_module(model, x)).float(), -1) for x in batches]
        kl = []
        for i in range(len(blocks)):
            m = copy.deepcopy(model)
            _drop_layers(m, names, [i])
            kl.append(float(np.mean([F.kl_div(F.log_softmax(prediction(call_module(m, x)).float(), -1), r,
                                              log_target=True, reduction="batchmean").item()
                                     for x, r in zip(batches, ref)])))
    order = sorted(range(len(blocks)), key=lambda i: (kl[i], i))
    return sorted(order[: len(blocks) - cfg.depth]), kl


def choose(model: nn.Module, blocks: List[TransformerBlock], cfg: PruneConfig, scores: Scores, example: Any,
           excluded: Sequence[str], macs0: int, drop: Sequence[int]) -> Tuple[Plan, float, List[dict]]:
    """The plan for the given fractions, or (``macs_target`` / ``speedup_target``) for the scale ``s`` of both
    fractions whose pruned copy comes closest to the target; every candidate is pruned and counted or timed."""
    from edgekit.techniques.prune import _search

    def plan_of(s: float, cap: bool) -> Plan:
        return make_plan(blocks, scores, min(cfg.max_ratio, (cfg.heads or 0) * s),
                         min(cfg.max_ratio, (cfg.ffn or 0) * s), cfg.round_to, excluded, drop, cap)

    s, search = 1.0, []
    s_max = cfg.max_ratio / max(cfg.heads or 0, cfg.ffn or 0, 1e-9)
    if cfg.macs_target is not None:
        counted: Dict[str, float] = {}

        def macs_fraction(s: float) -> float:
            plan = plan_of(s, True)
            key = repr((plan.heads, plan.ffn))
            if key not in counted:
                counted[key] = macs(prune_copy(model, blocks, plan), example)[0] / macs0
            return counted[key]

        s, search = _search.search_macs(macs_fraction, cfg.macs_target, s_max, list(excluded), cfg.round_to)
    elif cfg.speedup_target is not None:
        sample = {k: np.repeat(v.numpy(), cfg.speed_batch, axis=0) for k, v in example.items()} \
            if isinstance(example, dict) else np.repeat(example.numpy(), cfg.speed_batch, axis=0)
        s, search = _search.search_speed(lambda s: prune_copy(model, blocks, plan_of(s, True)), model, sample,
                                         cfg.speedup_target, s_max, cfg.speed_backend, cfg.speed_threads,
                                         cfg.speed_rounds)
    searched = cfg.macs_target is not None or cfg.speedup_target is not None
    plan = plan_of(s, searched)
    if removes_nothing(plan):
        raise ConfigError(f"prune: heads={cfg.heads}, ffn={cfg.ffn} remove nothing from {_where(model)} once heads "
                          f"are rounded to whole heads and FFN widths to multiples of round_to={cfg.round_to}; "
                          "raise them or lower round_to")
    return plan, s, search
