"""Torch-Pruning adapter: trace a model, list its coupled channel groups, plan aligned channel counts, prune.

Torch-Pruning's DependencyGraph finds which layers must lose the same channels (residual adds, depthwise
convs, BatchNorm, the Linear head); this module only decides *how many* channels each group keeps
(rounded to a hardware-friendly multiple) and asks Torch-Pruning's ``MetaPruner`` to remove them.
``torch_pruning`` is imported inside the functions (lean ``import edgekit``).
"""
from __future__ import annotations

import math
import os
import traceback
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from edgekit.errors import ConfigError
from edgekit.models import model_layout
from edgekit.techniques.prune.config import IMPORTANCES
from edgekit.techniques.scope import Scope

PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Linear)


@dataclass
class Group:
    """Layers whose output channels are removed together (one residual stage, one conv + its BN...)."""

    root: str
    members: List[str]  # conv/linear layers whose output channels are this group's channels
    consumers: List[str] = field(default_factory=list)  # conv/linear layers reading these channels
    channels: int = 0
    excluded: bool = False


def _user_frame(tb) -> str:
    """'file:line: source' of the innermost traceback frame outside torch / torch_pruning / edgekit.techniques."""
    skip = (os.sep + "torch" + os.sep, os.sep + "torch_pruning" + os.sep, os.sep + "techniques" + os.sep)
    frames = [f for f in traceback.extract_tb(tb) if not any(s in f.filename for s in skip)]
    if not frames:
        return ""
    f = frames[-1]
    return f" at {os.path.basename(f.filename)}:{f.lineno} in {f.name}(): `{(f.line or '').strip()}`"


def _forward_error(model: nn.Module, example: torch.Tensor, what: str) -> Optional[str]:
    try:
        with torch.no_grad():
            model.eval()(example)
    except Exception as e:  # noqa: BLE001 - any failure of user code is reported with its location
        msg = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        return f"{what}: {type(e).__name__}{_user_frame(e.__traceback__)}: {msg}"
    return None


def trace(model: nn.Module, example: torch.Tensor):
    """Build Torch-Pruning's DependencyGraph of ``model`` (a working copy: its parameters are set trainable,
    which the autograd-based trace needs); an untraceable model raises ConfigError naming the op."""
    import torch_pruning as tp

    for p in model.parameters():
        p.requires_grad_(True)

    err = _forward_error(model, example, "the model cannot run its example input")
    if err:
        raise ConfigError(f"structured pruning of {type(model).__name__}: {err}")
    model.eval()
    try:
        dg = tp.DependencyGraph().build_dependency(model, example_inputs=example, verbose=False)
    except Exception as e:  # noqa: BLE001
        msg = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ConfigError(f"Torch-Pruning could not trace {type(model).__name__}: {type(e).__name__}"
                          f"{_user_frame(e.__traceback__)}: {msg}; structured pruning needs a forward pass of "
                          "plain torch ops (unstructured sparsity works on any model)") from None
    missing = [n for n, m in model.named_modules() if isinstance(m, PRUNABLE) and m not in dg.module2node]
    if missing:
        raise ConfigError(f"Torch-Pruning's trace of {type(model).__name__} never reached layer(s) "
                          f"{', '.join(missing[:5])}: an op in the forward pass breaks the autograd graph before "
                          "them (e.g. .detach(), .numpy(), torch.no_grad(), .item()); rewrite it with torch ops")
    return dg


def find_classifier(model: nn.Module) -> str:
    """Name of the output layer, whose outputs are never pruned: the one the architecture declares
    (``Layout.classifier``), else the last Linear, else the last conv."""
    declared = model_layout(model).classifier_name(model)
    if declared is not None:
        return declared
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        names = [n for n, m in model.named_modules() if isinstance(m, PRUNABLE)]
    if not names:
        raise ConfigError(f"{type(model).__name__} has no Conv/Linear layer to prune")
    return names[-1]


def prunable_names(model: nn.Module) -> List[str]:
    """Names of the Conv/Linear layers of ``model`` (what ``exclude`` / ``per_layer_ratios`` select)."""
    return [n for n, m in model.named_modules() if isinstance(m, PRUNABLE)]


def resolve_names(model: nn.Module, scope: Scope, field_name: str) -> List[str]:
    """The Conv/Linear layers a :class:`Scope` selects (naming a block selects its layers); a name, pattern
    or type that selects nothing raises ConfigError."""
    return scope.select_modules(model, field_name, PRUNABLE)


def list_groups(model: nn.Module, dg, classifier: str, exclude: Sequence[str]) -> List[Group]:
    """Every prunable group of ``dg`` (classifier outputs excluded), with its members and consumers."""
    import torch_pruning as tp  # noqa: F401

    name_of = {m: n for n, m in model.named_modules()}
    cls = model.get_submodule(classifier)
    excluded = set(exclude)
    groups = []
    for g in dg.get_all_groups(ignored_layers=[cls], root_module_types=list(PRUNABLE)):
        members, consumers = [], []
        for dep, _ in g:
            mod = dep.target.module
            if not isinstance(mod, PRUNABLE) or mod not in name_of:
                continue
            (members if dg.is_out_channel_pruning_fn(dep.handler) else consumers).append(name_of[mod])
        root = name_of[g[0].dep.target.module]
        members, consumers = sorted(set(members)), sorted(set(consumers))
        groups.append(Group(root, members, consumers, int(dg.get_out_channels(g[0].dep.target.module)),
                            bool(excluded & (set(members) | set(consumers)))))
    return groups


def aligned_keep(channels: int, ratio: float, round_to: int, max_ratio: float) -> int:
    """Channels kept when removing ``ratio`` of ``channels``: nearest multiple of ``round_to``, at least one multiple.

    Example:
        >>> aligned_keep(64, 0.3, 8, 0.9)   # 44.8 -> 48
        48
    """
    if ratio <= 0 or channels <= round_to:
        return channels
    keep = int(round(channels * (1 - min(ratio, max_ratio)) / round_to)) * round_to
    floor = math.ceil(channels * (1 - max_ratio) / round_to) * round_to
    return int(min(channels, max(round_to, floor, keep)))


def make_importance(name: str):
    """The Torch-Pruning importance registered as ``name`` in :data:`IMPORTANCES`."""
    return IMPORTANCES.get(name).make()


def group_importance(model: nn.Module, dg, groups: List[Group], importance, classifier: str) -> Dict[str, torch.Tensor]:
    """{root: per-channel importance (normalised by its mean)} for the not excluded groups."""
    name_of = {m: n for n, m in model.named_modules()}
    cls = model.get_submodule(classifier)
    roots = {g.root for g in groups if not g.excluded}
    out = {}
    for g in dg.get_all_groups(ignored_layers=[cls], root_module_types=list(PRUNABLE)):
        root = name_of[g[0].dep.target.module]
        if root in roots:
            imp = importance(g)
            if imp is not None:
                out[root] = imp.detach().float().cpu()
    return out


def global_plan(groups: List[Group], scores: Dict[str, torch.Tensor], ratio: float, round_to: int,
                max_ratio: float) -> Dict[str, int]:
    """Kept channels per group when the ``ratio`` least important channels *of the whole model* are removed."""
    live = [g for g in groups if not g.excluded and g.root in scores and g.channels > round_to]
    if not live:
        return {g.root: g.channels for g in groups}
    allimp = torch.cat([scores[g.root] for g in live])
    k = int(len(allimp) * ratio)
    thr = torch.kthvalue(allimp, k).values.item() if k > 0 else -math.inf
    plan = {g.root: g.channels for g in groups}
    for g in live:
        frac = float((scores[g.root] <= thr).float().mean())
        plan[g.root] = aligned_keep(g.channels, frac, round_to, max_ratio)
    return plan


def uniform_plan(groups: List[Group], ratios: Dict[str, float], default: float, round_to: int,
                 max_ratio: float) -> Dict[str, int]:
    """Kept channels per group; ``ratios`` maps a layer name (any member of a group) to that group's ratio."""
    plan = {}
    for g in groups:
        r = next((ratios[m] for m in g.members if m in ratios), default)
        plan[g.root] = g.channels if g.excluded else aligned_keep(g.channels, r, round_to, max_ratio)
    return plan


def apply_plan(model: nn.Module, example: torch.Tensor, groups: List[Group], plan: Dict[str, int], importance,
               classifier: str, steps: int = 1, before_step: Optional[Callable[[int], None]] = None,
               after_step: Optional[Callable[[int], None]] = None) -> None:
    """Prune ``model`` in place so each group keeps ``plan[root]`` channels, in ``steps`` iterative steps.

    ``before_step(i)`` runs before step i (e.g. to fill gradients for Taylor importance),
    ``after_step(i)`` after it (e.g. fine-tuning).
    """
    import torch_pruning as tp

    ratio_dict, ignored = {}, [model.get_submodule(classifier)]
    for g in groups:
        keep = plan[g.root]
        mods = [model.get_submodule(n) for n in g.members]
        if g.excluded or keep >= g.channels:
            ignored += mods  # an excluded layer's input and output groups are both marked excluded
        else:
            for m in mods:  # int(C * (1 - r)) == keep exactly; Torch-Pruning then removes C - keep channels
                ratio_dict[m] = 1.0 - (keep + 0.5) / g.channels
    if not ratio_dict:
        return
    model.eval()
    try:
        pruner = tp.pruner.MetaPruner(model, example, importance=importance, pruning_ratio=0.0,
                                      pruning_ratio_dict=ratio_dict, ignored_layers=ignored, iterative_steps=steps)
    except Exception as e:  # noqa: BLE001 - Torch-Pruning internals; explain instead of a bare traceback
        raise _tp_failure(model, e) from None
    for i in range(steps):
        if before_step:
            before_step(i)
        try:
            pruner.step()
        except Exception as e:  # noqa: BLE001
            raise _tp_failure(model, e) from None
        if after_step:
            after_step(i)
    err = _forward_error(model, example, "the pruned model no longer runs")
    if err:
        raise ConfigError(f"Torch-Pruning produced an inconsistent model for {type(model).__name__} ({err}); "
                          "leave the layers around that op alone with `exclude:`")


def _tp_failure(model: nn.Module, e: Exception) -> ConfigError:
    msg = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    return ConfigError(f"Torch-Pruning failed to prune {type(model).__name__}: "
                       f"{type(e).__name__}{_user_frame(e.__traceback__)}:"
                       f" {msg}; models with attention heads or bare nn.Parameters (e.g. position embeddings) need "
                       "those layers in `exclude:`, or use unstructured / 2:4 sparsity instead")


def channel_table(model: nn.Module, groups: List[Group], round_to: int) -> List[dict]:
    """Per group: root, member layers, channels before/after, whether aligned to ``round_to``, excluded."""
    rows = []
    for g in groups:
        m = model.get_submodule(g.root)
        after = int(m.out_channels if isinstance(m, (nn.Conv1d, nn.Conv2d)) else m.out_features)
        rows.append({"group": g.root, "layers": g.members, "before": g.channels, "after": after,
                     "aligned": after % round_to == 0, "excluded": g.excluded})
    return rows


def macs_estimator(model: nn.Module, example: torch.Tensor, groups: List[Group]) -> Callable[[Dict[str, int]], int]:
    """A fast ``plan -> Conv/Linear MACs`` estimate (no pruning), used to bisect a MACs target.

    Each layer's MACs scale with its kept output channels (its group's plan) and kept input channels
    (the plan of the group it reads); depthwise convs scale with their channels only.
    """
    info: Dict[str, tuple] = {}
    handles = []
    for name, m in model.named_modules():
        if isinstance(m, PRUNABLE):
            def hook(mod, _inp, out, name=name):
                cout = mod.out_features if isinstance(mod, nn.Linear) else mod.out_channels
                cin = mod.in_features if isinstance(mod, nn.Linear) else mod.in_channels
                k = 1 if isinstance(mod, nn.Linear) else int(math.prod(mod.kernel_size))
                g = 1 if isinstance(mod, nn.Linear) else mod.groups
                info[name] = (out.numel() // cout, k, cin, cout, g)
            handles.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model.eval()(example[:1])
    finally:
        for h in handles:
            h.remove()
    member_of = {n: g.root for g in groups for n in g.members}
    consumer_of = {n: g.root for g in groups for n in g.consumers}

    def estimate(plan: Dict[str, int]) -> int:
        total = 0
        for name, (pos, k, cin, cout, g) in info.items():
            co = plan.get(member_of.get(name, ""), cout)
            ci = plan.get(consumer_of.get(name, ""), cin)
            if g == 1:
                total += pos * k * ci * co
            elif g == cin == cout:  # depthwise: stays depthwise at its new width
                total += pos * k * co
            else:
                total += pos * k * ci * co // g
        return int(total)

    return estimate


def count(model: nn.Module, example: torch.Tensor) -> Tuple[int, int]:
    """(MACs, params) at batch 1, counted by ``torch_pruning.utils.count_ops_and_params``."""
    import torch_pruning as tp

    macs, params = tp.utils.count_ops_and_params(model, example[:1])
    return int(macs), int(params)
