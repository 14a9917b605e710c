"""Search strategies: an Optuna sampler, a pruner and the fidelity rungs each trial climbs.

``tpe-bound`` (default): TPE (multivariate, constraint-aware); every trial first fine-tunes for the short rung's
fraction of its epochs and is measured there; it is stopped at that rung only when it already cannot win:
expected to miss a constraint (its accuracy excess less the gain trials of its student made from that rung to full
length), or, for a latency objective, slower than the fastest in-budget full-length trial by more than
``fidelity.stop_margin`` (the short rung measures the final architecture's latency; only accuracy grows with more
epochs). Everything else is promoted and rebuilt at full length.
``tpe-hyperband``: the same TPE with successive halving (Optuna's ``SuccessiveHalvingPruner``): only the best
1/``reduction_factor`` of each rung, by score, is promoted.
``random``: random sampling, every trial at full fidelity (the baseline the default must beat).

Why ``tpe-bound`` is the default: successive halving stops a trial by its rank among the trials that reached the
rung, and on the digits search the ranks of the fast students were decided by timing noise (a trial's latency
figure moves by ±14 % between trials, the fastest configurations differ by ~10 %), so it stopped configurations
that would have been chosen, each one a trial spent. Stopping only what is known to lose keeps every candidate for
the chosen model (benchmarks/bench_search_table.py replays both on a measured table of the whole space).

Example:
    >>> sampler, pruner, rungs = STRATEGIES.get("tpe-bound")(seed=0, trials=16, fidelity=Fidelity())
"""
from __future__ import annotations

from typing import Any, Callable, List, Optional, Tuple

from edgekit.registry import Registry

StrategyFn = Callable[..., Tuple[Any, Any, List[float]]]
STRATEGIES: Registry[StrategyFn] = Registry("search strategy")


def _tpe(seed: int, trials: int) -> Any:
    import optuna

    # constraint-aware: each trial records its constraint excesses with Trial.set_constraint (<= 0: met)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(3, trials // 4), multivariate=True)


def _bound_pruner(objective: str, margin: float) -> Any:
    import optuna

    class BoundPruner(optuna.pruners.BasePruner):
        """Stop a trial at a short rung only when it cannot become the chosen model (see the module docstring)."""

        def prune(self, study: Any, trial: Any) -> bool:
            if any(v > 0 for v in (trial.user_attrs.get("excess") or {}).values()):
                return True  # judged excess: the accuracy one already net of the expected gain
            metrics, best = trial.user_attrs.get("metrics") or {}, best_in_budget(study, objective)
            if best is None or not metrics:
                return False
            if objective == "latency":
                return metrics["latency_ratio"] > best * (1.0 + margin)
            slack = metrics.get("accuracy_slack")  # accuracy objective: bound only once the gain is known
            return slack is not None and metrics["val_accuracy"] + slack < best

    return BoundPruner()


def best_in_budget(study: Any, objective: str) -> Optional[float]:
    """The best full-length trial that met every constraint: its latency ratio (latency objective) or validation
    accuracy (accuracy objective); None until there is one."""
    from optuna.trial import TrialState

    vals = [t.user_attrs["metrics"]["latency_ratio" if objective == "latency" else "val_accuracy"]
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if (t.user_attrs.get("metrics") or {}).get("fidelity") == 1.0 and "duplicate_of" not in t.user_attrs
            and all(v <= 0 for v in (t.user_attrs.get("excess") or {}).values())]
    if not vals:
        return None
    return min(vals) if objective == "latency" else max(vals)


@STRATEGIES.register("tpe-bound")
def tpe_bound(seed: int, trials: int, fidelity: Any, objective: str = "latency") -> Tuple[Any, Any, List[float]]:
    """TPE sampler (constraint-aware) + short-rung stopping of trials that cannot win."""
    return _tpe(seed, trials), _bound_pruner(objective, fidelity.stop_margin), fidelity.fractions()


@STRATEGIES.register("tpe-hyperband")
def tpe_hyperband(seed: int, trials: int, fidelity: Any, objective: str = "latency") -> Tuple[Any, Any, List[float]]:
    """TPE sampler (constraint-aware) + successive-halving pruner over the fidelity rungs."""
    import optuna

    pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=fidelity.reduction_factor,
                                                    min_early_stopping_rate=0)
    return _tpe(seed, trials), pruner, fidelity.fractions()


@STRATEGIES.register("random")
def random_search(seed: int, trials: int, fidelity: Any, objective: str = "latency") -> Tuple[Any, Any, List[float]]:
    """Random sampling, full fidelity, no pruning."""
    import optuna

    return optuna.samplers.RandomSampler(seed=seed), optuna.pruners.NopPruner(), [1.0]


__all__ = ["STRATEGIES", "best_in_budget"]
