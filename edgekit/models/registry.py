"""The model registry: build reference architectures from a name and keyword arguments."""
from __future__ import annotations

import inspect
from typing import Any, Callable

import torch.nn as nn

from edgekit.errors import ConfigError
from edgekit.registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")


def register_model(name: str):
    """Decorator registering a model factory; the factory must accept ``num_classes``."""
    return MODELS.register(name)


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered architecture and stamp its config on it (for checkpoints).

    Example:
        >>> model = create_model("resnet_cifar", depth=20, width=0.5, num_classes=10)
    """
    from edgekit.models import _load_architectures  # noqa: F401

    factory = MODELS.get(name)
    sig = inspect.signature(factory)
    unknown = [k for k in kwargs if k not in sig.parameters]
    if unknown:
        allowed = ", ".join(p for p in sig.parameters)
        raise ConfigError(f"model '{name}' has no argument(s) {', '.join(unknown)}; allowed: {allowed}")
    try:
        model = factory(**kwargs)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"model '{name}' with {kwargs}: {e}") from None
    model.edgekit_arch = {"name": name, "kwargs": dict(kwargs)}
    return model


def model_names() -> list[str]:
    """Names of every registered architecture."""
    from edgekit.models import _load_architectures  # noqa: F401

    return MODELS.names()


def describe_models() -> list[dict]:
    """One dict per architecture: name, first docstring line, arguments with defaults."""
    from edgekit.models import _load_architectures  # noqa: F401

    rows = []
    for name, factory in MODELS.items():
        sig = inspect.signature(factory)
        args = {k: (None if p.default is inspect.Parameter.empty else p.default) for k, p in sig.parameters.items()}
        doc = (inspect.getdoc(factory) or "").splitlines()
        rows.append({"name": name, "summary": doc[0] if doc else "", "args": args})
    return rows


def count_params(model: nn.Module) -> int:
    """Number of parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())
