"""Joint search over a recipe's stages (distillation × pruning × INT8 ...) for the fastest model within a budget.

Importing this package is cheap; Optuna, torch and Ray load on first use.

Example:
    >>> from edgekit.search import run_search
    >>> result = run_search("recipes/digits_search.yaml", trials=8)
    >>> result.chosen_recipe
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"run_search": "api", "SearchResult": "api", "SearchConfig": "config", "STRATEGIES": "strategies",
            "OBJECTIVES": "config", "prepare_search": "driver"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'edgekit.search' has no attribute '{name}'")
