"""Channel plans per segment and pruning them: every kept width a multiple of ``round_to``, monotone in the ratio.

A plan maps each segment (see :class:`edgekit.techniques.prune._graph.Segment`) to the channels it keeps. Each
segment is rounded on its own, so every layer's width -- a sum of segments -- is a multiple of ``round_to`` and
every concat member loses channels in proportion (Torch-Pruning 1.6 ranks a merged concat group over its whole
index space and rounds only the root's count: widths like 117 or 13, the first member never pruned, and a member
asked to lose all its channels silently skipped, which made MACs non-monotone in the ratio).

Example:
    >>> plan = uniform_plan(groups, {}, 0.5, round_to=16, max_ratio=0.9)
    >>> apply_plan(model, example, plan, importance, "fc", excluded=[])
"""
from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn as nn

from edgekit.errors import ConfigError
from edgekit.techniques.prune import _graph as pg


def aligned_keep(channels: int, ratio: float, round_to: int, max_ratio: float, offset: float = 0.0) -> int:
    """Channels kept when removing ``ratio`` of ``channels``: nearest multiple of ``round_to`` (the rounding point
    shifted by ``offset`` in (-0.5, 0.5) multiples), at least one multiple.

    Example:
        >>> aligned_keep(64, 0.3, 8, 0.9)   # 44.8 -> 48
        48
    """
    if ratio <= 0 or channels <= round_to:
        return channels
    keep = int(math.floor(channels * (1 - min(ratio, max_ratio)) / round_to + 0.5 + offset)) * round_to
    floor = math.ceil(channels * (1 - max_ratio) / round_to) * round_to
    return int(min(channels, max(round_to, floor, keep)))


def dither(i: int) -> float:
    """The ``i``-th rounding offset in (-0.5, 0.5), spread evenly (golden-ratio sequence).

    With one ratio for every segment, plain rounding makes all segments of proportional sizes jump at the same
    ratio, so MACs fall in a few big steps (a ResNet-8 at round_to 8: 0.77 -> 0.43 of its MACs at ratio 0.25) and a
    target between them is missed. Shifting each segment's rounding point spreads those jumps over the ratio axis;
    each segment stays monotone in the ratio, so the MACs do too.
    """
    return ((i + 1) * 0.6180339887) % 1.0 - 0.5


def uniform_plan(groups: List[pg.Group], ratios: Dict[str, float], default: float, round_to: int,
                 max_ratio: float, dithered: bool = False) -> Dict[str, int]:
    """Kept channels per segment; ``ratios`` maps a layer name (any member of a group) to that group's ratio.
    ``dithered`` spreads the rounding points (see :func:`dither`; for searched targets, not a given ratio)."""
    plan, i = {}, 0
    for g in groups:
        r = next((ratios[m] for m in g.members if m in ratios), default)
        for s in g.segments:
            offset = dither(i) if dithered else 0.0
            i += 1
            plan[s.key] = len(s.idxs) if g.excluded else aligned_keep(len(s.idxs), r, round_to, max_ratio, offset)
    return plan


def segment_scores(groups: List[pg.Group], scores: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Each segment's channel importances divided by the segment's mean (comparable across layers)."""
    out = {}
    for g in groups:
        if g.excluded or g.root not in scores:
            continue
        for s in g.segments:
            imp = scores[g.root][s.idxs]
            out[s.key] = imp / (imp.mean() + 1e-12)
    return out


def global_plan(groups: List[pg.Group], scores: Dict[str, torch.Tensor], ratio: float, round_to: int,
                max_ratio: float) -> Dict[str, int]:
    """Kept channels per segment when the ``ratio`` least important channels *of the whole model* are removed
    (importance normalised per segment), each segment then rounded to ``round_to``."""
    plan = {s.key: len(s.idxs) for g in groups for s in g.segments}
    norm = {k: v for k, v in segment_scores(groups, scores).items() if plan[k] > round_to}
    if not norm:
        return plan
    allimp = torch.cat(list(norm.values()))
    k = int(len(allimp) * ratio)
    thr = torch.kthvalue(allimp, k).values.item() if k > 0 else -math.inf
    for key, imp in norm.items():
        plan[key] = aligned_keep(plan[key], float((imp <= thr).float().mean()), round_to, max_ratio)
    return plan


def removes_nothing(groups: List[pg.Group], plan: Dict[str, int]) -> bool:
    """True when the plan keeps every channel of every segment."""
    return all(plan.get(s.key, len(s.idxs)) >= len(s.idxs) for g in groups for s in g.segments)


def _drops(group: pg.Group, imp: torch.Tensor, plan: Dict[str, int], remaining: int) -> List[int]:
    """Root indices to remove from ``group`` in this step: the least important of each segment; with ``remaining``
    steps left, an even share of what is still to go (the last step lands exactly on the plan)."""
    drop: List[int] = []
    for s in group.segments:
        cur, target = len(s.idxs), plan.get(s.key, len(s.idxs))
        n_drop = cur - target if remaining <= 1 else int(round((cur - target) / remaining))
        if n_drop > 0:
            order = torch.argsort(imp[s.idxs])[:n_drop].tolist()
            drop += [s.idxs[i] for i in order]
    return sorted(drop)


def _prune_step(model: nn.Module, example: torch.Tensor, plan: Dict[str, int], importance, classifier: str,
                excluded: Sequence[str], remaining: int) -> None:
    dg = pg.trace(model, example)
    groups = {g.root: g for g in pg.list_groups(model, dg, classifier, excluded)}
    todo = []  # every index chosen before any pruning: groups are disjoint, each indexed in its own root's space
    for root, root_mod, tpg in pg.tp_groups(model, dg, classifier):
        g = groups[root]
        if g.excluded or removes_nothing([g], plan):
            continue
        imp = importance(tpg)
        if imp is None:
            continue
        drop = _drops(g, imp.detach().float().cpu(), plan, remaining)
        if drop:
            todo.append((root, root_mod, tpg[0].dep.handler, drop))
    for root, root_mod, handler, drop in todo:
        group = dg.get_pruning_group(root_mod, handler, drop)
        if not dg.check_pruning_group(group):
            raise ConfigError(f"prune: Torch-Pruning refuses to remove {len(drop)} channel(s) of group '{root}' "
                              "(a layer would lose all its channels); lower the ratio or `exclude:` that layer")
        group.prune()


def apply_plan(model: nn.Module, example: torch.Tensor, plan: Dict[str, int], importance, classifier: str,
               excluded: Sequence[str], steps: int = 1, before_step: Optional[Callable[[int], None]] = None,
               after_step: Optional[Callable[[int], None]] = None) -> None:
    """Prune ``model`` in place so each segment keeps ``plan[key]`` channels, in ``steps`` iterative steps.

    Every step re-traces the model and re-ranks channels (importance of the current weights). ``before_step(i)``
    runs before step i (e.g. to fill gradients for Taylor importance), ``after_step(i)`` after it (fine-tuning).
    """
    for i in range(steps):
        if before_step:
            before_step(i)
        try:
            _prune_step(model, example, plan, importance, classifier, excluded, steps - i)
        except ConfigError:
            raise
        except Exception as e:  # noqa: BLE001 - Torch-Pruning internals; explain instead of a bare traceback
            raise _tp_failure(model, e) from None
        if after_step:
            after_step(i)
    err = pg.forward_error(model, example, "the pruned model no longer runs")
    if err:
        raise ConfigError(f"Torch-Pruning produced an inconsistent model for {type(model).__name__} ({err}); "
                          "leave the layers around that op alone with `exclude:`")


def _tp_failure(model: nn.Module, e: Exception) -> ConfigError:
    msg = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    return ConfigError(f"Torch-Pruning failed to prune {type(model).__name__}: "
                       f"{type(e).__name__}{pg.user_frame(e.__traceback__)}:"
                       f" {msg}; models with attention heads or bare nn.Parameters (e.g. position embeddings) need "
                       "those layers in `exclude:`, or use unstructured / 2:4 sparsity instead")


def channel_table(model: nn.Module, groups: List[pg.Group], round_to: int) -> List[dict]:
    """Per group: root, member layers, channels before/after, every member's width, segment widths, whether every
    pruned member is a multiple of ``round_to`` (``aligned``; ``unaligned`` names the layers that are not)."""
    rows = []
    for g in groups:
        widths = {n: pg.width(model.get_submodule(n)) for n in g.members}
        changed = {n: w for n, w in widths.items() if w != g.widths.get(n)}
        unaligned = sorted(n for n, w in widths.items() if w % round_to)
        rows.append({"group": g.root, "layers": g.members, "before": g.channels, "after": widths[g.root],
                     "widths": widths, "segments": [len(s.idxs) for s in g.segments],
                     "aligned": all(w % round_to == 0 for w in changed.values()), "unaligned": unaligned,
                     "excluded": g.excluded})
    return rows


def segment_plan(groups: List[pg.Group], keep_ratio: Dict[str, float], round_to: int,
                 max_ratio: float) -> Dict[str, int]:
    """Kept channels per segment with ``keep_ratio[root]`` removed from the groups named (others kept whole)."""
    return {s.key: aligned_keep(len(s.idxs), keep_ratio.get(g.root, 0.0), round_to, max_ratio)
            for g in groups for s in g.segments}


def macs_estimator(model: nn.Module, example: torch.Tensor, groups: List[pg.Group]) -> Callable[[Dict[str, int]], int]:
    """A fast ``segment plan -> Conv/Linear MACs`` estimate (no pruning), for sensitivity-based allocation.

    A member layer's output channels are the kept channels of the segments it owns; a consumer's input channels
    lose what its group loses; depthwise convs scale with their channels only. ``prune()`` itself measures.
    """
    info: Dict[str, tuple] = {}
    handles = []
    for name, m in model.named_modules():
        if isinstance(m, pg.PRUNABLE):
            def hook(mod, _inp, out, name=name):
                lin = isinstance(mod, nn.Linear)
                cout, cin = (mod.out_features, mod.in_features) if lin else (mod.out_channels, mod.in_channels)
                info[name] = (out.numel() // cout, 1 if lin else int(math.prod(mod.kernel_size)), cin, cout,
                              1 if lin else mod.groups)
            handles.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model.eval()(example[:1])
    finally:
        for h in handles:
            h.remove()
    owned = {n: [s for s in g.segments if n in s.owners] for g in groups for n in g.members}
    consumer_of = {n: g for g in groups for n in g.consumers}

    def estimate(plan: Dict[str, int]) -> int:
        total = 0
        for name, (pos, k, cin, cout, g) in info.items():
            segs = owned.get(name, [])
            co = cout - sum(len(s.idxs) - plan.get(s.key, len(s.idxs)) for s in segs)
            grp = consumer_of.get(name)
            ci = cin if grp is None else cin - sum(len(s.idxs) - plan.get(s.key, len(s.idxs)) for s in grp.segments)
            if g == 1:
                total += pos * k * ci * co
            elif g == cin == cout:  # depthwise: stays depthwise at its new width
                total += pos * k * co
            else:
                total += pos * k * ci * co // g
        return int(total)

    return estimate
