"""One way to say "leave these layers alone", shared by prune, sparsity and quantize (NNCF's ``IgnoredScope``).

A :class:`Scope` selects layers by exact ``names``, by ``patterns`` (``fnmatch`` globs such as
``"layer2.*"`` or ``"/blocks.*/attn/*"``) and by ``types`` (torch layer class names such as ``"Linear"``, or
ONNX op types such as ``"MatMul"``). A plain list of names is shorthand for ``{names: [...]}``. Every entry
must select something: a name, pattern or type that matches nothing is a ConfigError listing valid examples.

Example:
    >>> Scope.model_validate(["fc"]).names
    ('fc',)
    >>> Scope(patterns=("layer3.*",), types=("Linear",)).select_modules(model, "prune.exclude")
"""
from __future__ import annotations

import fnmatch
from typing import Any, Dict, List, Mapping, Sequence, Tuple

from pydantic import BaseModel, ConfigDict, Field, model_validator

from edgekit.errors import ConfigError, did_you_mean


class Scope(BaseModel):
    """Layers selected by name, glob pattern or type."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    names: Tuple[str, ...] = Field((), description="exact layer names (torch module names or ONNX node names)")
    patterns: Tuple[str, ...] = Field((), description="fnmatch globs over layer names, e.g. 'layer2.*'")
    types: Tuple[str, ...] = Field((), description="torch layer classes (e.g. Linear) or ONNX op types (e.g. MatMul)")

    @model_validator(mode="before")
    @classmethod
    def _names_shorthand(cls, value: Any) -> Any:
        """Accept a list of names as ``{names: [...]}``."""
        if isinstance(value, (list, tuple)):
            return {"names": list(value)}
        if isinstance(value, str):
            return {"names": [value]}
        return value

    def __bool__(self) -> bool:
        return bool(self.names or self.patterns or self.types)

    def match(self, layers: Mapping[str, str], field: str, what: str) -> List[str]:
        """Names in ``layers`` ({name: type}) that this scope selects, in ``layers`` order.

        Raises:
            ConfigError: a name, pattern or type that selects nothing (with valid examples).
        """
        chosen = set()
        names = list(layers)
        for name in self.names:
            if name not in layers:
                raise ConfigError(f"{field}.names: '{name}' is not a {what}{did_you_mean(name, names)}; "
                                  f"{what}s include: {_examples(names)}")
            chosen.add(name)
        for pattern in self.patterns:
            hit = fnmatch.filter(names, pattern)
            if not hit:
                raise ConfigError(f"{field}.patterns: '{pattern}' matches no {what}; {what}s include: "
                                  f"{_examples(names)}")
            chosen.update(hit)
        kinds = sorted(set(layers.values()))
        for kind in self.types:
            hit = [n for n, t in layers.items() if t == kind]
            if not hit:
                raise ConfigError(f"{field}.types: no {what} is a '{kind}'{did_you_mean(kind, kinds)}; "
                                  f"types present: {', '.join(kinds)}")
            chosen.update(hit)
        return [n for n in names if n in chosen]

    def select_modules(self, model: Any, field: str, layer_types: Sequence[type] = ()) -> List[str]:
        """Names of the ``layer_types`` layers (default: every leaf layer) of a torch ``model`` inside the
        selected modules: naming a block (e.g. ``layer2``) selects every layer in it."""
        modules: Dict[str, str] = {n: type(m).__name__ for n, m in model.named_modules() if n}
        picked = self.match(modules, field, f"module of {type(model).__name__}")
        by_name = dict(model.named_modules())

        def wanted(n: str) -> bool:
            m = by_name[n]
            return isinstance(m, tuple(layer_types)) if layer_types else not any(True for _ in m.children())

        out = set()
        for name in picked:
            prefix = name + "."
            out.update(n for n in modules if (n == name or n.startswith(prefix)) and wanted(n))
        return sorted(out)


def _examples(names: Sequence[str], limit: int = 12) -> str:
    shown = list(names)[:limit]
    return ", ".join(shown) + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def scope_field(description: str) -> Any:
    """The ``exclude`` field every technique config declares (an empty Scope by default)."""
    return Field(default_factory=Scope, description=description + "; {names, patterns, types} or a list of names")
