"""One registry per pluggable kind (architectures, datasets, backends, stages, ...).

Example:
    >>> MODELS = Registry("model")
    >>> @MODELS.register("tiny")
    ... def tiny(num_classes=10): ...
    >>> MODELS.get("tiny")
"""
from __future__ import annotations

import contextlib
from typing import Callable, Dict, Generic, Iterator, TypeVar

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
            valid = ", ".join(sorted(self._items))
            raise ConfigError(
                f"unknown {self.kind} '{name}'{did_you_mean(name, self._items)}; valid: {valid}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def items(self):
        return sorted(self._items.items())
