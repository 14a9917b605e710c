"""Preflight checks of transformer distillation (part of :func:`edgekit.pipeline.preflight.preflight`).

A ``distill`` stage with ``hidden`` or ``attention_maps`` transfer is checked before any work: its student (built
from ``student:`` and the data, random weights) must be a transformer the transfer can tap and ``layer_map`` must fit
it; when the teacher is the recipe's reference model (only ``train`` stages before it), the teacher's depth and head
count are checked too (a layer map naming a teacher block it lacks, ``kind: probs`` with different head counts).

Example:
    >>> distill_problems(recipe, splits)
    ['stages[1].layer_map: 3 pairs but the student has only 2 blocks (...); give at most one pair per student block']
"""
from __future__ import annotations

from typing import Any, Callable, List, Optional

import torch.nn as nn

from edgekit.errors import EdgekitError


def _reference_teacher(recipe: Any, index: int, splits: Callable[[], Any]) -> Optional[nn.Module]:
    """The teacher of stage ``index`` when it is shaped like the reference model (else None); never writes files."""
    from pathlib import Path

    from edgekit.models import create_model
    from edgekit.pipeline.model_source import build_module

    st = recipe.stages[index]
    if st.teacher not in ("parent", "reference") or any(s.type != "train" for s in recipe.stages[:index]):
        return None
    m = recipe.model
    if m.onnx:
        return None
    if getattr(m, "hf", None) and not Path(m.hf).exists():
        if not m.config:
            return None
        s = splits()
        return create_model("hf", config=m.config, task=m.task, num_classes=s.num_classes or None,
                            vocab_size=getattr(s, "vocab_size", None))
    return build_module(m, splits(), seed=0)


def _check_stage(recipe: Any, index: int, splits: Callable[[], Any]) -> None:
    from edgekit.models import create_model
    from edgekit.pipeline.model_source import zoo_kwargs
    from edgekit.techniques.distill._transformer import (
        Geometry,
        TransformerTransfer,
        resolve_layer_map,
        transformer_blocks,
    )

    st = recipe.stages[index]
    spec = dict(st.student)
    arch = spec.pop("name")
    student = create_model(arch, **zoo_kwargs(arch, spec, splits()))
    teacher = _reference_teacher(recipe, index, splits)
    if teacher is not None:
        TransformerTransfer(student, teacher, st.hidden, st.attention_maps, st.layer_map).remove()
        return
    geo = transformer_blocks(student, "student", "hidden" if st.hidden.enabled else "attention_maps")
    if st.layer_map is not None:  # the teacher is only known at run time: check the student's side
        deep = Geometry([f"<teacher block {t}>" for t in range(max([0] + [t for _, t in st.layer_map]) + 1)], 0, 0)
        resolve_layer_map(st.layer_map, geo, deep)


def distill_problems(recipe: Any, splits: Callable[[], Any]) -> List[str]:
    """One line per distill stage whose transformer transfer cannot work, with its field path."""
    problems: List[str] = []
    for i, st in enumerate(recipe.stages):
        if st.type != "distill" or not (st.hidden.enabled or st.attention_maps.enabled):
            continue
        try:
            _check_stage(recipe, i, splits)
        except EdgekitError as e:
            problems.append(f"stages[{i}].{e}")
    return problems
