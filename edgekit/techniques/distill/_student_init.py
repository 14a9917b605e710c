"""Start a shallower student from its teacher: embeddings, final norm, head and a subset of the teacher's blocks
(the layer map's for encoders, evenly spaced ones for causal LMs).

A student of the same family and width as its teacher but with fewer blocks (e.g. a 2-layer GPT-2 from a 4-layer
one) learns much faster from the teacher's own weights than from random ones; blocks ``0, …, n-1`` spread evenly
(first and last kept) are what depth pruning by block importance keeps for GPT-style decoders too.

Example:
    >>> info = init_from_teacher(student, teacher)
    >>> info["teacher_blocks"]        # e.g. [0, 3] for 2 of 4 blocks
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import torch.nn as nn


def spread(n: int, k: int) -> List[int]:
    """``k`` of ``n`` block indices spread evenly, first and last included (``k == 1``: the first)."""
    if k == 1:
        return [0]
    return [round(i * (n - 1) / (k - 1)) for i in range(k)]


def mapped_blocks(student: nn.Module, teacher: nn.Module,
                  layer_map: Optional[Sequence[Sequence[int]]] = None) -> Optional[List[int]]:
    """The teacher block each student block starts from: the layer map's (default uniform ``(i+1)·k − 1``; student
    blocks the map leaves out take the uniform choice); None when either model has no block list."""
    from edgekit.models.hf import encoder_layers
    from edgekit.techniques.distill._transformer import Geometry, resolve_layer_map, uniform_layer_map

    s_blocks, t_blocks = encoder_layers(student), encoder_layers(teacher)
    if not s_blocks or not t_blocks:
        return None
    keep = dict(uniform_layer_map(len(s_blocks), len(t_blocks)))
    if layer_map is not None:
        keep.update(resolve_layer_map(layer_map, Geometry(s_blocks, 0, 0), Geometry(t_blocks, 0, 0)))
    return [keep[i] for i in range(len(s_blocks))]


def init_from_teacher(student: nn.Module, teacher: nn.Module, blocks: Optional[List[int]] = None) -> Dict[str, Any]:
    """Copy ``teacher``'s weights into ``student`` when every student tensor has a same-shaped teacher tensor
    (student block i from teacher block ``blocks[i]``; default :func:`spread`); otherwise leave the student
    untouched. Returns what was done.

    Returns:
        ``{"from_teacher": True, "teacher_blocks": [...]}`` or ``{"from_teacher": False, "reason": "..."}``.
    """
    from edgekit.models.hf import encoder_layers

    s_blocks, t_blocks = encoder_layers(student), encoder_layers(teacher)
    if not s_blocks or not t_blocks:
        return {"from_teacher": False, "reason": "no transformer block list in the student or the teacher"}
    prefix = s_blocks[0].rsplit(".", 1)[0]
    if t_blocks[0].rsplit(".", 1)[0] != prefix or len(s_blocks) > len(t_blocks):
        return {"from_teacher": False, "reason": f"student blocks {prefix} x{len(s_blocks)} do not map onto the "
                                                 f"teacher's {t_blocks[0].rsplit('.', 1)[0]} x{len(t_blocks)}"}
    keep = list(blocks) if blocks is not None else spread(len(t_blocks), len(s_blocks))
    t_sd, new = teacher.state_dict(), {}
    for key, value in student.state_dict().items():
        src = key
        if key.startswith(prefix + "."):
            index, tail = key[len(prefix) + 1:].split(".", 1)
            src = f"{prefix}.{keep[int(index)]}.{tail}"
        if src not in t_sd or t_sd[src].shape != value.shape:
            got = list(t_sd[src].shape) if src in t_sd else "missing"
            return {"from_teacher": False, "reason": f"{key} {list(value.shape)} vs teacher {src} {got}"}
        new[key] = t_sd[src].detach().clone()
    student.load_state_dict(new)
    return {"from_teacher": True, "teacher_blocks": keep}


__all__ = ["init_from_teacher", "mapped_blocks", "spread"]
