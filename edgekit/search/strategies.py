"""Search strategies: an Optuna sampler, a pruner and the fidelity rungs each trial climbs.

``tpe-hyperband`` (default): TPE with the constraints as a feasibility function, successive halving over
epoch-fraction rungs (short fine-tunes first; the best 1/reduction_factor of each rung is promoted).
``random``: random sampling, every trial at full fidelity (the baseline the default must beat).

Example:
    >>> sampler, pruner, rungs = STRATEGIES.get("tpe-hyperband")(seed=0, trials=16, fidelity=Fidelity())
"""
from __future__ import annotations

from typing import Any, Callable, List, Tuple

from edgekit.registry import Registry

StrategyFn = Callable[..., Tuple[Any, Any, List[float]]]
STRATEGIES: Registry[StrategyFn] = Registry("search strategy")


@STRATEGIES.register("tpe-hyperband")
def tpe_hyperband(seed: int, trials: int, fidelity: Any) -> Tuple[Any, Any, List[float]]:
    """TPE sampler (constraint-aware) + successive-halving pruner over the fidelity rungs."""
    import optuna

    rungs = fidelity.fractions()
    # constraint-aware: each trial records its constraint excesses with Trial.set_constraint (<= 0: met)
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(3, trials // 4), multivariate=True)
    pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=fidelity.reduction_factor,
                                                    min_early_stopping_rate=0)
    return sampler, pruner, rungs


@STRATEGIES.register("random")
def random_search(seed: int, trials: int, fidelity: Any) -> Tuple[Any, Any, List[float]]:
    """Random sampling, full fidelity, no pruning."""
    import optuna

    return optuna.samplers.RandomSampler(seed=seed), optuna.pruners.NopPruner(), [1.0]


__all__ = ["STRATEGIES"]
