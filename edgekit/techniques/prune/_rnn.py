"""Structured pruning of LSTM / GRU hidden units (plain torch; Torch-Pruning 1.6 cannot do it).

A hidden unit j of layer l, direction d owns the G gate rows ``j + g*H`` of ``weight_ih``/``weight_hh``/``bias_*``
(G = 4 for LSTM [i f g o], 3 for GRU [r z n]), column j of its own direction's ``weight_hh``, column ``d*H + j`` of
the next layer's ``weight_ih`` (both directions) and, after the last layer, of the Linear reading the sequence
output. Every gate of a unit goes together, so the pruned layer computes exactly what the unpruned one computes with
the dropped units' outgoing weights zeroed. ``nn.LSTM``/``nn.GRU`` have one ``hidden_size``, so every layer and
direction keeps the same count (a multiple of ``round_to``), each with its own most important units.

The layer reading the output is found by tracing (``torch.fx``): the RNN's sequence output may pass through
indexing over batch/time (``out[:, -1]``), element-wise activations and dropout before reaching one ``nn.Linear``.
Anything else (the final state ``h_n`` used, a caller-given ``h0``, ``proj_size``) is refused with the reason.

Example:
    >>> res = prune_rnn(model, PruneConfig(ratio=0.5, finetune={"epochs": 5, "lr": 3e-3}), x[:8], train, val,
    ...                 teacher=model, seed=0)
    >>> res.model.rnn.hidden_size
    64
"""
from __future__ import annotations

import copy
import logging
import operator
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn as nn

from edgekit.errors import ConfigError
from edgekit.techniques.prune.config import PruneConfig

logger = logging.getLogger(__name__)

GATES = {nn.LSTM: 4, nn.GRU: 3}
_PASS_MODULES = (nn.Dropout, nn.ReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.Identity)
_PASS_FUNCTIONS = (torch.relu, torch.tanh, torch.sigmoid, torch.nn.functional.relu, torch.nn.functional.dropout,
                   torch.nn.functional.gelu)
_PASS_METHODS = ("contiguous", "relu", "tanh", "sigmoid")


def recurrent_layers(model: nn.Module) -> List[str]:
    """Names of the ``nn.LSTM`` / ``nn.GRU`` modules of ``model`` (what :func:`prune_rnn` prunes)."""
    return [name for name, m in model.named_modules() if type(m) in GATES]


@dataclass
class RnnSite:
    """One prunable recurrent layer and the Linear reading its sequence output."""

    name: str
    consumer: str


def _suffix(layer: int, direction: int) -> str:
    return f"_l{layer}{'_reverse' if direction else ''}"


def _keeps_features(node: Any) -> bool:
    """True when ``node`` passes each feature (last dim) through unchanged: indexing over batch/time, activations."""
    if node.op == "call_function" and node.target is operator.getitem:
        idx = node.args[1]
        idx = idx if isinstance(idx, tuple) else (idx,)
        return Ellipsis not in idx and None not in idx and len(idx) < 3
    if node.op == "call_function":
        return node.target in _PASS_FUNCTIONS
    if node.op == "call_method":
        return node.target in _PASS_METHODS
    return False


def find_sites(model: nn.Module, names: Sequence[str]) -> List[RnnSite]:
    """Trace ``model`` and pair every recurrent layer in ``names`` with the Linear reading its output.

    Raises:
        ConfigError: the model does not trace, or a layer's output reaches anything but one Linear.
    """
    import torch.fx as fx

    try:
        graph = fx.symbolic_trace(model).graph
    except Exception as e:  # fx raises many types for untraceable Python control flow
        raise ConfigError(f"prune: could not trace {type(model).__name__} to find what reads its LSTM/GRU outputs "
                          f"({str(e).splitlines()[0][:160]}); LSTM/GRU unit pruning needs a torch.fx-traceable "
                          "forward") from None
    modules = dict(model.named_modules())
    sites = []
    for node in graph.nodes:
        if node.op != "call_module" or node.target not in names:
            continue
        rnn = modules[node.target]
        where = f"prune: layer '{node.target}' (nn.{type(rnn).__name__})"
        if getattr(rnn, "proj_size", 0):
            raise ConfigError(f"{where} has proj_size={rnn.proj_size}; LSTM projections are not pruned")
        if len(node.args) + len(node.kwargs) > 1:
            raise ConfigError(f"{where} is called with an initial state; unit pruning needs h0/c0 left to default")
        sites.append(RnnSite(node.target, _consumer(node, modules, where)))
    return sites


def _consumer(rnn_node: Any, modules: Dict[str, nn.Module], where: str) -> str:
    users = list(rnn_node.users)
    outputs = [u for u in users if u.op == "call_function" and u.target is operator.getitem]
    if len(outputs) != len(users) or any(u.args[1] not in (0, 1) for u in outputs):
        raise ConfigError(f"{where}: its output tuple is used whole; unpack it as `out, _ = rnn(x)`")
    if any(u.args[1] == 1 and u.users for u in outputs):
        raise ConfigError(f"{where}: the final state h_n is used; unit pruning follows only the sequence output "
                          "(use out[:, -1] instead of h_n)")
    frontier = [u for u in outputs if u.args[1] == 0]
    found = []
    while frontier:
        node = frontier.pop()
        for user in node.users:
            mod = modules.get(user.target) if user.op == "call_module" else None
            if isinstance(mod, nn.Linear):
                found.append(user.target)
            elif isinstance(mod, _PASS_MODULES) or _keeps_features(user):
                frontier.append(user)
            else:
                raise ConfigError(f"{where}: its output reaches '{user.name}' ({user.op} {user.target}), which "
                                  "unit pruning cannot follow; allowed between the RNN and its Linear: indexing "
                                  "over batch/time, element-wise activations, dropout")
    if len(set(found)) != 1:
        raise ConfigError(f"{where}: its output must reach exactly one nn.Linear, found {sorted(set(found)) or 'none'}")
    return found[0]


def unit_importance(rnn: nn.RNNBase, layer: int, direction: int, p: int = 1) -> torch.Tensor:
    """Per hidden unit: the L``p`` norm of all its gate rows (input and recurrent weights, both biases)."""
    gates, hidden = GATES[type(rnn)], rnn.hidden_size
    total = torch.zeros(hidden)
    for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
        param = getattr(rnn, name + _suffix(layer, direction), None)
        if param is not None:
            total += param.detach().abs().pow(p).reshape(gates, hidden, -1).sum(dim=(0, 2))
    return total.pow(1.0 / p)


def keep_count(hidden: int, ratio: float, round_to: int, max_ratio: float) -> int:
    """Units kept when ``ratio`` of ``hidden`` is removed: a multiple of ``round_to`` (at least one multiple), never
    below ``(1 - max_ratio) * hidden`` unless that is under one multiple."""
    step = min(round_to, hidden)
    n = int(round(hidden * (1 - ratio) / step)) * step
    floor = -(-int(hidden * (1 - max_ratio) + 0.999) // step) * step
    return min(hidden, max(step, n, floor))


def plan_units(rnn: nn.RNNBase, count: int, p: int = 1) -> List[List[torch.Tensor]]:
    """``keep[layer][direction]``: the sorted indices of the ``count`` most important units."""
    dirs = 2 if rnn.bidirectional else 1
    return [[torch.sort(torch.topk(unit_importance(rnn, layer, d, p), count).indices).values for d in range(dirs)]
            for layer in range(rnn.num_layers)]


def prune_units(rnn: nn.RNNBase, keep: Sequence[Sequence[torch.Tensor]], consumer: Optional[nn.Linear]) -> nn.RNNBase:
    """A new LSTM/GRU keeping units ``keep[l][d]``; ``consumer``'s input columns are pruned to match (in place)."""
    gates, hidden, dirs = GATES[type(rnn)], rnn.hidden_size, 2 if rnn.bidirectional else 1
    n = len(keep[0][0])
    new = type(rnn)(rnn.input_size, n, num_layers=rnn.num_layers, bias=rnn.bias, batch_first=rnn.batch_first,
                    dropout=rnn.dropout, bidirectional=rnn.bidirectional)

    def out_cols(layer: int) -> torch.Tensor:  # surviving columns of layer's output [fwd H | rev H]
        return torch.cat([keep[layer][d] + d * hidden for d in range(dirs)])

    with torch.no_grad():
        for layer in range(rnn.num_layers):
            in_cols = torch.arange(rnn.input_size) if layer == 0 else out_cols(layer - 1)
            for d in range(dirs):
                s, k = _suffix(layer, d), keep[layer][d]
                rows = torch.cat([k + g * hidden for g in range(gates)])
                getattr(new, "weight_ih" + s).copy_(getattr(rnn, "weight_ih" + s)[rows][:, in_cols])
                getattr(new, "weight_hh" + s).copy_(getattr(rnn, "weight_hh" + s)[rows][:, k])
                if rnn.bias:
                    getattr(new, "bias_ih" + s).copy_(getattr(rnn, "bias_ih" + s)[rows])
                    getattr(new, "bias_hh" + s).copy_(getattr(rnn, "bias_hh" + s)[rows])
        if consumer is not None:
            cols = out_cols(rnn.num_layers - 1)
            consumer.weight = nn.Parameter(consumer.weight.detach()[:, cols].clone())
            consumer.in_features = len(cols)
    new.train(rnn.training)
    return new


def _check_config(cfg: PruneConfig, model: nn.Module, names: List[str], train: Any) -> None:
    kind = type(model).__name__
    if cfg.target_kind not in ("ratio", "macs"):
        raise ConfigError(f"prune: {kind} has LSTM/GRU layers ({', '.join(names)}), whose hidden units are pruned "
                          f"to a ratio or a macs_target; {cfg.target_kind} targets are not supported for them")
    if cfg.importance not in ("l1", "l2"):
        raise ConfigError(f"prune: importance '{cfg.importance}' is not available for LSTM/GRU units; use l1 or l2")
    if cfg.finetune.epochs > 0 and (train is None or getattr(train, "y", None) is None):
        raise ConfigError(f"prune: fine-tuning ({cfg.finetune.epochs} epochs) needs labelled training data; pass "
                          "train= (and val=), or set finetune: {epochs: 0}")


def _apply(model: nn.Module, sites: List[RnnSite], ratio: float, cfg: PruneConfig) -> List[dict]:
    """Prune every site of ``model`` in place to ``ratio``; one table row per recurrent layer."""
    p = 2 if cfg.importance == "l2" else 1
    rows = []
    for site in sites:
        rnn = model.get_submodule(site.name)
        count = keep_count(rnn.hidden_size, ratio, cfg.round_to, cfg.max_ratio)
        rows.append({"group": site.name, "layers": [site.name, site.consumer], "before": rnn.hidden_size,
                     "after": count, "aligned": count % cfg.round_to == 0, "excluded": False, "kind": "rnn_units"})
        if count == rnn.hidden_size:
            continue
        new = prune_units(rnn, plan_units(rnn, count, p), model.get_submodule(site.consumer))
        parent, _, child = site.name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, new)
    return rows


def _choose_ratio(work: nn.Module, sites: List[RnnSite], cfg: PruneConfig, example: torch.Tensor, macs0: int
                  ) -> tuple:
    """The configured ratio, or for a macs_target the ratio (among the round_to steps) whose pruned MACs come
    closest to it from below (else the closest above); every candidate is pruned and counted."""
    from edgekit.techniques.prune._graph import count

    if cfg.macs_target is None:
        return float(cfg.ratio), []
    hidden = max(work.get_submodule(s.name).hidden_size for s in sites)
    step = min(cfg.round_to, hidden)
    search = []
    for kept in range(hidden - step, 0, -step):
        ratio = 1 - kept / hidden
        if ratio > cfg.max_ratio + 1e-9:
            break
        candidate = copy.deepcopy(work)
        _apply(candidate, sites, ratio, cfg)
        search.append({"ratio": round(ratio, 5), "macs_fraction": round(count(candidate, example)[0] / macs0, 4)})
    if not search:
        raise ConfigError(f"prune: hidden size {hidden} cannot lose a multiple of round_to={cfg.round_to} units")
    below = [c for c in search if c["macs_fraction"] <= cfg.macs_target]
    best = below[0] if below else search[-1]
    return best["ratio"], search


def prune_rnn(model: nn.Module, cfg: PruneConfig, example_input: Any, train: Any, val: Any,
              teacher: Optional[nn.Module], seed: int) -> Any:
    """Prune a copy of ``model``'s LSTM/GRU hidden units to ``cfg.ratio`` or ``cfg.macs_target`` in ``cfg.steps``
    steps, fine-tuning after each (KD from ``teacher`` on the logits when given). Other layers are left as they are.

    Returns:
        :class:`edgekit.techniques.prune.prune.PruneResult` (``layers``: one row per recurrent layer, its hidden
        units before/after).

    Example:
        >>> res = prune_rnn(model, PruneConfig(ratio=0.5, finetune={"epochs": 0}), x[:8], None, None, None, 0)
    """
    from edgekit.techniques.prune._graph import count
    from edgekit.techniques.prune._structured import as_example
    from edgekit.techniques.prune.prune import PruneResult
    from edgekit.techniques.recovery import recover

    t0 = time.perf_counter()
    excluded = set(cfg.exclude.select_modules(model, "prune.exclude", tuple(GATES))) if cfg.exclude else set()
    names = [n for n in recurrent_layers(model) if n not in excluded]
    _check_config(cfg, model, names, train)
    if not names:
        raise ConfigError(f"prune: every LSTM/GRU layer of {type(model).__name__} is excluded; nothing to prune")
    example = as_example(example_input)
    work = copy.deepcopy(model).cpu().eval()
    sites = find_sites(work, names)
    macs0, params0 = count(work, example)
    ratio, search = _choose_ratio(work, sites, cfg, example, macs0)
    history, val_acc, rows = [], None, []
    for i in range(cfg.steps):
        rows = _apply(work, sites, ratio * (i + 1) / cfg.steps, cfg)
        epochs = cfg.finetune.epochs // cfg.steps + (cfg.finetune.epochs % cfg.steps if i == cfg.steps - 1 else 0)
        row: Dict[str, Any] = {"step": i + 1, "macs": count(work, example)[0]}
        if epochs > 0:
            res = recover(work, teacher, train, val, cfg.finetune.model_copy(update={"epochs": epochs}),
                          temperature=cfg.temperature, alpha=cfg.alpha, seed=seed + i,
                          desc=f"prune finetune {i + 1}/{cfg.steps}")
            val_acc = res.best_val_accuracy
            row.update(epochs=epochs, val_accuracy=val_acc, finetune=res.history, kd=teacher is not None)
        history.append(row)
    for r, site in zip(rows, sites):
        r["before"] = model.get_submodule(site.name).hidden_size
    macs1, params1 = count(work, example)
    logger.info(f"prune: LSTM/GRU units {[(r['group'], r['before'], r['after']) for r in rows]}, MACs "
                f"{macs1 / max(1, macs0):.3f} of original")
    return PruneResult(model=work.eval(), config=cfg, ratio=ratio, layers=rows, macs_before=macs0, macs_after=macs1,
                       params_before=params0, params_after=params1, history=history, search=search,
                       val_accuracy=val_acc, seconds=time.perf_counter() - t0)
