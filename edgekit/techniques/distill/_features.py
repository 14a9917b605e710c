"""Intermediate features for distillation: layer names, default layer pairs, forward-hook taps.

The default pairs come from the feature stages each architecture declares in the model registry
(:class:`edgekit.models.Layout`), so nothing here knows a particular architecture.

Example:
    >>> pairs = default_layer_pairs(student, teacher)   # [("layer1", "layer1"), ("layer2", "layer3"), ...]
    >>> tap = FeatureTap(student, [s for s, _ in pairs])
    >>> _ = student(x); feats = tap.pop()                # {"layer1": tensor, ...}
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from edgekit.errors import ConfigError, did_you_mean
from edgekit.models import model_layout, model_names
from edgekit.techniques.distill._losses import as_feature


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel / DataParallel wrapper (or the module itself)."""
    inner = getattr(model, "module", None)
    return inner if isinstance(inner, nn.Module) and type(model).__name__ in (
        "DistributedDataParallel", "DataParallel") else model


def arch_name(model: nn.Module) -> str:
    """The zoo name of ``model`` (``edgekit_arch``) or its class name."""
    return getattr(model, "edgekit_arch", {}).get("name", type(model).__name__)


def layer_names(model: nn.Module) -> List[str]:
    """Top-level and stage-level module names (e.g. ``layer2``, ``layer2.0``): what error messages list."""
    names = []
    for name, child in model.named_children():
        names.append(name)
        names.extend(f"{name}.{sub}" for sub, _ in child.named_children())
    return names


def resolve_layer(model: nn.Module, name: str, role: str, field: str) -> nn.Module:
    """The submodule called ``name``, or a ConfigError that lists the available names.

    Args:
        role: "student" or "teacher" (for the message).
        field: the config field that named the layer (for the message), e.g. ``attention.pairs``.
    """
    modules = dict(model.named_modules())
    if not isinstance(name, str) or not name or name not in modules:
        available = layer_names(model)
        raise ConfigError(f"{field}: {role} model '{arch_name(model)}' has no layer '{name}'"
                          f"{did_you_mean(str(name), available)}; available: {', '.join(available)} "
                          "(or any deeper dotted name, e.g. 'layer2.0.conv1')")
    return modules[name]


def feature_stages(model: nn.Module) -> List[str]:
    """The feature stages ``model``'s architecture declares (``Layout.features``), shallow to deep."""
    return model_layout(model).feature_stages(model)


def default_layer_pairs(student: nn.Module, teacher: nn.Module, field: str = "pairs") -> List[Tuple[str, str]]:
    """Pair every student feature stage with the teacher stage at the same relative depth.

    First stage ↔ first stage, last ↔ last, the ones between spread evenly: ResNet-8 (3 stages) from
    ResNet-18 (4 stages) gives ``layer1↔layer1, layer2↔layer3, layer3↔layer4``.

    Raises:
        ConfigError: one of the models declares no feature stages (give the pairs explicitly).
    """
    s_stages, t_stages = feature_stages(student), feature_stages(teacher)
    for role, m, stages in (("student", student, s_stages), ("teacher", teacher, t_stages)):
        if not stages:
            declared = [n for n in model_names() if model_layout_declares(n)]
            raise ConfigError(f"{field}: no default layer pairs for {role} '{arch_name(m)}': its architecture "
                              f"declares no feature stages (these do: {', '.join(declared)}); give "
                              f"[[student_layer, teacher_layer], ...]; available {role} layers: "
                              f"{', '.join(layer_names(m))}")
    if len(s_stages) == 1:
        return [(s_stages[0], t_stages[-1])]
    ratio = (len(t_stages) - 1) / (len(s_stages) - 1)
    return [(s, t_stages[int(i * ratio + 0.5)]) for i, s in enumerate(s_stages)]


def model_layout_declares(name: str) -> bool:
    """True when the registered architecture ``name`` declares feature stages."""
    from edgekit.models import LAYOUTS

    return bool(LAYOUTS.get(name).features)


def check_pairs(student: nn.Module, teacher: nn.Module, pairs: Optional[Sequence[Sequence[str]]],
                field: str) -> List[Tuple[str, str]]:
    """Validate configured ``pairs`` (or build the default ones); every name must exist."""
    if pairs is None:
        pairs = default_layer_pairs(student, teacher, field)
    if not pairs:
        raise ConfigError(f"{field}: the list of layer pairs is empty; give [[student_layer, teacher_layer], ...] "
                          "or leave it out for the architectures' declared feature stages")
    out = []
    for pair in pairs:
        if len(pair) != 2:
            raise ConfigError(f"{field}: each pair is [student_layer, teacher_layer], got {list(pair)}")
        s, t = pair
        resolve_layer(student, s, "student", field)
        resolve_layer(teacher, t, "teacher", field)
        out.append((str(s), str(t)))
    return out


class FeatureTap:
    """Forward hooks that record the outputs of named submodules on every forward pass.

    Hooked outputs must not be modified in place later in the forward pass (hook a block or stage, not a
    convolution followed by an in-place ReLU).
    """

    def __init__(self, model: nn.Module, names: Sequence[str]):
        self.features: Dict[str, torch.Tensor] = {}
        self._handles = []
        modules = dict(model.named_modules())
        for name in dict.fromkeys(names):  # unique, in order
            self._handles.append(modules[name].register_forward_hook(self._hook(name)))

    def _hook(self, name: str):
        def hook(_module, _inputs, output):
            self.features[name] = as_feature(output)

        return hook

    def pop(self) -> Dict[str, torch.Tensor]:
        """The features of the last forward pass (and forget them)."""
        out, self.features = self.features, {}
        return out

    def remove(self) -> None:
        """Remove the hooks."""
        for h in self._handles:
            h.remove()
        self._handles = []
        self.features = {}
