"""Generate the commented recipe template from the schema (one source of truth for fields and defaults)."""
from __future__ import annotations

import json
import typing
from typing import Any, List

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

HEADER = """\
# edgekit recipe template: every field, its default and what it means.
# Generated from the schema by `edgekit recipe template` — do not edit by hand.
# Copy what you need; anything you leave out takes the default shown.
"""


def _default_value(field) -> Any:
    if field.default is not PydanticUndefined:
        return field.default
    if field.default_factory is not None:
        return field.default_factory()
    return PydanticUndefined


def _default_text(field, value: Any = PydanticUndefined) -> str:
    value = _default_value(field) if value is PydanticUndefined else value
    if value is PydanticUndefined:
        return "(required)"
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if isinstance(value, list):
        value = [v.model_dump(mode="json") if isinstance(v, BaseModel) else v for v in value]
    if isinstance(value, tuple):
        value = list(value)
    return json.dumps(value)


def _model_of(annotation: Any):
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    for cand in [annotation, *args]:
        if isinstance(cand, type) and issubclass(cand, BaseModel):
            return cand
    return None


def _emit(cls: type, indent: int, lines: List[str], skip=(), defaults: Any = None) -> None:
    """One line per field of ``cls``; nested configs show the values of their default (``defaults``), which
    may differ from the nested class's own defaults (e.g. prune's ``finetune``)."""
    pad = "  " * indent
    for name, field in cls.model_fields.items():
        if name in skip:
            continue
        desc = field.description or ""
        value = getattr(defaults, name) if defaults is not None else _default_value(field)
        sub = _model_of(field.annotation)
        if sub is not None and name not in ("targets",):
            lines.append(f"{pad}{name}:{'  # ' + desc if desc else ''}")
            _emit(sub, indent + 1, lines, defaults=value if isinstance(value, sub) else None)
        else:
            lines.append(f"{pad}# {name}: {_default_text(field, value)}{'  # ' + desc if desc else ''}")


def render_template() -> str:
    """The commented YAML template covering the recipe and every registered stage."""
    from edgekit.pipeline.recipe import recipe_model
    from edgekit.pipeline.stages import STAGES

    recipe = recipe_model()
    lines = [HEADER]
    _emit(recipe, 0, lines, skip=("stages",))
    lines.append("")
    lines.append("stages:  # run in order; each works on the latest variant unless `input:` names one")
    for name, stage in STAGES.items():
        lines.append(f"  # - type: {name}  # {stage.description}")
        body: List[str] = []
        _emit(stage.config, 0, body, skip=("type",))
        for ln in body:  # the whole stage is commented out: uncomment the block you need
            stripped = ln.lstrip(" ")
            indent = ln[:len(ln) - len(stripped)]
            lines.append("  #   " + indent + (stripped[2:] if stripped.startswith("# ") else stripped))
    return "\n".join(lines) + "\n"
