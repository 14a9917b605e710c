"""The model registry: build reference architectures from a name and keyword arguments."""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence, Union

import torch.nn as nn

from edgekit.errors import ConfigError
from edgekit.registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")

Names = Union[Sequence[str], Callable[[nn.Module], Sequence[str]]]


@dataclass(frozen=True)
class Layout:
    """What techniques need to know about an architecture's layers, declared where it is registered.

    Attributes:
        features: module names of its feature stages, shallow to deep (or a function of the built model
            returning them); distillation pairs student and teacher stages by relative depth.
        classifier: module name of the output layer (or a function of the built model returning it);
            pruning never removes its outputs.
    """

    features: Names = ()
    classifier: Union[str, Callable[[nn.Module], str], None] = None

    def classifier_name(self, model: nn.Module) -> Optional[str]:
        """The declared output layer of ``model``, or None when the architecture declares none."""
        return self.classifier(model) if callable(self.classifier) else self.classifier

    def feature_stages(self, model: nn.Module) -> List[str]:
        """The declared feature stages that exist in ``model`` and are not ``nn.Identity``."""
        names = self.features(model) if callable(self.features) else self.features
        modules = dict(model.named_modules())
        return [n for n in names if n in modules and not isinstance(modules[n], nn.Identity)]


LAYOUTS: Registry[Layout] = Registry("model layout")


def register_model(name: str, *, features: Names = (),
                   classifier: Union[str, Callable[[nn.Module], str], None] = None):
    """Decorator registering a model factory (it must accept ``num_classes``) and its layer :class:`Layout`.

    Example:
        >>> @register_model("my_net", features=("block1", "block2"), classifier="head")
        ... def my_net(num_classes: int = 10): ...
    """
    def deco(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        MODELS.register(name)(factory)
        LAYOUTS.register(name)(Layout(features, classifier))
        return factory

    return deco


def model_layout(model: nn.Module) -> Layout:
    """The declared :class:`Layout` of a model built by :func:`create_model` (an empty one otherwise)."""
    from edgekit.models import _load_architectures  # noqa: F401

    name = getattr(model, "edgekit_arch", {}).get("name")
    return LAYOUTS.get(name) if name in LAYOUTS else Layout()


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
