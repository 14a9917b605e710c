"""One registry per pluggable kind (architectures, datasets, backends, stages, ...).

Example:
    >>> MODELS = Registry("model")
    >>> @MODELS.register("tiny")
    ... def tiny(num_classes=10): ...
    >>> MODELS.get("tiny")
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Dict, Generic, Iterator, TypeVar

from edgekit.errors import ConfigError, did_you_mean

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> object mapping filled by a decorator; duplicate names are refused."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: Dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name``."""

        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} '{name}' is already registered")
            self._items[name] = obj
            return obj

        return deco

    def unregister(self, name: str) -> T:
        """Remove ``name`` and return its entry (ConfigError when it is not registered)."""
        entry = self.get(name)
        del self._items[name]
        return entry

    @contextlib.contextmanager
    def temporary(self, name: str, obj: T) -> Iterator[T]:
        """Register ``obj`` as ``name`` for the duration of a ``with`` block (plugins in tests, trials).

        Example:
            >>> with TARGETS.temporary("arm64", scheme):
            ...     load_recipe("recipe.yaml")
        """
        self.register(name)(obj)
        try:
            yield obj
        finally:
            self._items.pop(name, None)

    def get(self, name: str) -> T:
        """Return the entry for ``name`` or raise ConfigError listing the valid names."""
        try:
            return self._items[name]
        except KeyError:
            raise ConfigError(self.unknown_message(name)) from None

    def unknown_message(self, name: object) -> str:
        """``unknown <kind> 'x' (did you mean 'y'?); valid: a, b`` for a name that is not registered."""
        return f"unknown {self.kind} '{name}'{did_you_mean(str(name), self._items)}; valid: {', '.join(self.names())}"

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._items)

    def name_type(self) -> Any:
        """The pydantic type of a config field that names an entry of this registry.

        Validation looks the name up when a config is parsed (so entries registered by plugins count) and
        rejects an unknown one with a "did you mean"; the JSON schema lists the names registered when the
        schema is built.

        Example:
            >>> class DataConfig(BaseModel):
            ...     name: DATASETS.name_type() = "digits"
        """
        from typing import Annotated

        return Annotated[str, _RegisteredName(self)]

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def items(self):
        return sorted(self._items.items())


class _RegisteredName:
    """pydantic ``Annotated`` marker: the string must be a registered name (see :meth:`Registry.name_type`)."""

    def __init__(self, registry: Registry):
        self.registry = registry

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> Any:
        from pydantic_core import core_schema

        return core_schema.no_info_after_validator_function(self._check, handler(source))

    def __get_pydantic_json_schema__(self, schema: Any, handler: Any) -> Any:
        out = handler(schema)
        out["enum"] = self.registry.names()
        return out

    def _check(self, name: str) -> str:
        if name not in self.registry:
            raise ValueError(self.registry.unknown_message(name))
        return name
