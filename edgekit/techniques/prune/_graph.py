"""Torch-Pruning adapter: trace a model, list its coupled channel groups and their segments, count MACs.

Torch-Pruning's DependencyGraph finds which layers must lose the same channels (residual adds, concatenations,
depthwise convs, BatchNorm, SE gates, the Linear head). Each group is split into *segments* (channels owned by the
same layers: one concat member each); :mod:`edgekit.techniques.prune._plan` decides how many channels every segment
keeps and prunes explicit indices.
``torch_pruning`` is imported inside the functions (lean ``import edgekit``).
"""
from __future__ import annotations

import os
import traceback
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from edgekit.errors import ConfigError
from edgekit.models import model_layout
from edgekit.techniques.prune.config import IMPORTANCES
from edgekit.techniques.scope import Scope

PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Linear)


@dataclass
class Segment:
    """Root channels of a group owned by the same set of layers: one member of a concat, or the whole group.

    Torch-Pruning merges every member of a ``torch.cat`` that feeds a shared consumer (a depthwise conv, a BN over
    the concat) into one group; planning per segment keeps each member's width a multiple of ``round_to`` and
    prunes every member in proportion (the first one too).
    """

    key: str  # the owner layers joined by "+": stable across pruning steps
    idxs: List[int]  # the segment's channels in the group root's index space
    owners: List[str]


@dataclass
class Group:
    """Layers whose output channels are removed together (one residual stage, one conv + its BN...)."""

    root: str
    members: List[str]  # conv/linear layers whose output channels are this group's channels
    consumers: List[str] = field(default_factory=list)  # conv/linear layers reading these channels
    channels: int = 0
    excluded: bool = False
    segments: List[Segment] = field(default_factory=list)
    widths: Dict[str, int] = field(default_factory=dict)  # each member's output channels before pruning


def user_frame(tb) -> str:
    """'file:line: source' of the innermost traceback frame outside torch / torch_pruning / edgekit.techniques."""
    skip = (os.sep + "torch" + os.sep, os.sep + "torch_pruning" + os.sep, os.sep + "techniques" + os.sep)
    frames = [f for f in traceback.extract_tb(tb) if not any(s in f.filename for s in skip)]
    if not frames:
        return ""
    f = frames[-1]
    return f" at {os.path.basename(f.filename)}:{f.lineno} in {f.name}(): `{(f.line or '').strip()}`"


def forward_error(model: nn.Module, example: Any, what: str) -> Optional[str]:
    """Why ``model`` cannot run ``example`` (one tensor or named tensors), located in user code; None if it runs."""
    from edgekit.core.tensors import call_module

    try:
        with torch.no_grad():
            call_module(model.eval(), example)
    except Exception as e:  # noqa: BLE001 - any failure of user code is reported with its location
        msg = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        return f"{what}: {type(e).__name__}{user_frame(e.__traceback__)}: {msg}"
    return None


def trace(model: nn.Module, example: torch.Tensor):
    """Build Torch-Pruning's DependencyGraph of ``model`` (a working copy: its parameters are set trainable,
    which the autograd-based trace needs); an untraceable model raises ConfigError naming the op."""
    import torch_pruning as tp

    for p in model.parameters():
        p.requires_grad_(True)

    err = forward_error(model, example, "the model cannot run its example input")
    if err:
        raise ConfigError(f"structured pruning of {type(model).__name__}: {err}")
    model.eval()
    try:
        dg = tp.DependencyGraph().build_dependency(model, example_inputs=example, verbose=False)
    except Exception as e:  # noqa: BLE001
        msg = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ConfigError(f"Torch-Pruning could not trace {type(model).__name__}: {type(e).__name__}"
                          f"{user_frame(e.__traceback__)}: {msg}; structured pruning needs a forward pass of "
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


def width(module: nn.Module) -> int:
    return int(module.out_channels if isinstance(module, (nn.Conv1d, nn.Conv2d)) else module.out_features)


def tp_groups(model: nn.Module, dg, classifier: str) -> Iterator[Tuple[str, nn.Module, object]]:
    """``(root name, root module, Torch-Pruning group)`` of every prunable group (the classifier's outputs kept)."""
    name_of = {m: n for n, m in model.named_modules()}
    for g in dg.get_all_groups(ignored_layers=[model.get_submodule(classifier)], root_module_types=list(PRUNABLE)):
        root = g[0].dep.target.module
        yield name_of[root], root, g


def list_groups(model: nn.Module, dg, classifier: str, exclude: Sequence[str]) -> List[Group]:
    """Every prunable group of ``dg`` (classifier outputs excluded), with its members, consumers and segments."""
    name_of = {m: n for n, m in model.named_modules()}
    excluded = set(exclude)
    groups = []
    for root, root_mod, g in tp_groups(model, dg, classifier):
        members, consumers, owners_of = set(), set(), {}
        for item in g:
            mod = item.dep.target.module
            if not isinstance(mod, PRUNABLE) or mod not in name_of:
                continue
            if dg.is_out_channel_pruning_fn(item.dep.handler):
                members.add(name_of[mod])
                for r in item.root_idxs:
                    owners_of.setdefault(int(r), set()).add(name_of[mod])
            else:
                consumers.add(name_of[mod])
        channels = int(dg.get_out_channels(root_mod))
        by_owners: Dict[tuple, List[int]] = {}
        for r in range(channels):
            by_owners.setdefault(tuple(sorted(owners_of.get(r, {root}))), []).append(r)
        segments = [Segment("+".join(o), idx, list(o)) for o, idx in sorted(by_owners.items(), key=lambda kv: kv[1][0])]
        groups.append(Group(root, sorted(members), sorted(consumers), channels,
                            bool(excluded & (members | consumers)), segments,
                            {n: width(model.get_submodule(n)) for n in sorted(members)}))
    return groups


def make_importance(name: str):
    """The Torch-Pruning importance registered as ``name`` in :data:`IMPORTANCES`."""
    return IMPORTANCES.get(name).make()


def group_importance(model: nn.Module, dg, groups: List[Group], importance, classifier: str) -> Dict[str, torch.Tensor]:
    """{root: per-channel importance} for the groups not excluded (None from the importance: left out)."""
    roots = {g.root for g in groups if not g.excluded}
    out = {}
    for root, _, g in tp_groups(model, dg, classifier):
        if root in roots:
            imp = importance(g)
            if imp is not None:
                out[root] = imp.detach().float().cpu()
    return out


def count(model: nn.Module, example: Any) -> Tuple[int, int]:
    """(MACs, params) at batch 1, counted by ``torch_pruning.utils.count_ops_and_params``; ``example`` is one
    tensor or a mapping of named tensors (token ids stay integer)."""
    import contextlib
    import io

    import torch_pruning as tp

    one = {k: v[:1] for k, v in example.items()} if isinstance(example, Mapping) else example[:1]
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # its notes on keyword-only inputs
            macs, params = tp.utils.count_ops_and_params(model, one)
    except Exception as e:  # noqa: BLE001 - a pruned model whose forward breaks: say where and what to do
        raise ConfigError(broken_forward_message(model, _rerun_error(model, one) or e)) from None
    return int(macs), int(params)


def _rerun_error(model: nn.Module, example: Any) -> Optional[BaseException]:
    """The error of ``model``'s own forward (the counter runs a copy, whose modules have other names)."""
    from edgekit.core.tensors import call_module

    try:
        with torch.no_grad():
            call_module(model.eval(), example)
    except Exception as e:  # noqa: BLE001
        return e
    return None


def failing_layer(model: nn.Module, tb) -> Optional[str]:
    """Name of the innermost submodule of ``model`` whose ``forward`` is on the traceback ``tb``."""
    names = {id(m): n for n, m in model.named_modules()}
    found = None
    while tb is not None:
        owner = tb.tb_frame.f_locals.get("self")
        if id(owner) in names and names[id(owner)]:
            found = names[id(owner)]
        tb = tb.tb_next
    return found


def broken_forward_message(model: nn.Module, e: BaseException) -> str:
    """The error for a (pruned) model that no longer runs: the layer, the op and the fix."""
    layer = failing_layer(model, e.__traceback__)
    msg = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    where = f"layer '{layer}'" if layer else "its own forward"
    fix = f"{{names: ['{layer}']}}" if layer else "{names: [<the layer whose output it reshapes>]}"
    return (f"prune: {type(model).__name__} no longer runs once pruned: {where} fails{user_frame(e.__traceback__)}"
            f" ({type(e).__name__}: {msg}); its forward pass assumes a width that channel pruning changed (e.g. a "
            f"reshape into attention heads). Protect it (prune.exclude: {fix}), or for a transformer prune "
            "heads: / ffn: / layers: instead of channels")
