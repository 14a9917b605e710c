"""The ``search:`` section of a recipe: objective, constraints, search space, budget, strategy, fidelity.

The section is read from the recipe YAML by this module and removed before the rest of the recipe is validated
by :func:`edgekit.pipeline.recipe.validate_recipe`, so the base recipe stays a plain recipe.

Example::

    search:
      objective: {minimize: latency, batch: 1}   # backend: the default ONNX backend on CPU
      constraints: {max_accuracy_drop: 0.5}
      space:
        student.student.width: [0.5, 0.75, 1.0]          # a list: one of these values
        student-pruned.macs_target: {low: 0.3, high: 0.8, step: 0.1}
      budget: {trials: 16, wall_time_s: 900}
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Dict, List, Optional, Tuple, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edgekit.backends import BACKENDS, default_backend
from edgekit.errors import ConfigError, InputFileError, format_validation_error
from edgekit.registry import Registry
from edgekit.techniques.base import OneOf

# objective name -> (optuna direction of the raw metric, the trial metric it reads)
OBJECTIVES: Registry[Tuple[str, str]] = Registry("search objective")
OBJECTIVES.register("latency")(("minimize", "latency_ratio"))
OBJECTIVES.register("accuracy")(("maximize", "val_accuracy"))



def _load_backends() -> None:
    from edgekit.backends import _builtin  # noqa: F401  (fills the registry)

class Objective(BaseModel):
    """What the search optimises: minimise latency (default) or maximise accuracy, at one batch on one backend."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    minimize: Optional[str] = Field(None, description="metric to minimise: latency")
    maximize: Optional[str] = Field(None, description="metric to maximise: accuracy")
    batch: int = Field(1, gt=0, description="batch size the latency is measured at")
    backend: Annotated[str, OneOf(BACKENDS, _load_backends)] = Field(
        default_factory=lambda: default_backend("onnx", "cpu"),
        description="backend the artifacts are deployed and timed on (default: the ONNX backend for CPU)")

    @field_validator("minimize", "maximize")
    @classmethod
    def _known(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and v not in OBJECTIVES:
            from edgekit.errors import did_you_mean

            raise ValueError(f"unknown metric '{v}'{did_you_mean(v, OBJECTIVES.names())}; "
                             f"allowed: {', '.join(OBJECTIVES.names())}")
        return v

    @property
    def metric(self) -> str:
        """The objective's metric name (``latency`` or ``accuracy``)."""
        return self.minimize or self.maximize or "latency"


class Constraints(BaseModel):
    """Limits every chosen model must meet (on the validation split; re-checked on the test split)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_accuracy_drop: Optional[float] = Field(None, ge=0, description="points below the teacher's accuracy")
    max_latency_ms: Optional[float] = Field(None, gt=0, description="latency at the objective's batch and backend")
    max_size_mb: Optional[float] = Field(None, gt=0, description="size of the deployed artifact")


class Budget(BaseModel):
    """How much the search may spend: trials (distinct configurations finished or stopped) and wall time per
    invocation."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    trials: int = Field(16, gt=0, description="distinct configurations to finish (those stopped early or refused by "
                        "a stage count; a configuration drawn again does not)")
    wall_time_s: Optional[float] = Field(None, gt=0, description="stop starting trials after this many seconds")


class Fidelity(BaseModel):
    """Multi-fidelity: trials first fine-tune for a fraction of their epochs; the promising ones are promoted."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_fraction: float = Field(0.25, gt=0, le=1, description="epochs fraction of the first rung")
    reduction_factor: int = Field(2, ge=2, description="each rung has this many times the epochs of the previous "
                                                       "(tpe-hyperband: the best 1/reduction_factor of a rung is "
                                                       "promoted)")
    stop_margin: float = Field(0.1, ge=0, description="tpe-bound: a short rung stops a trial whose latency ratio is "
                               "over the fastest in-budget full-length trial's by more than this fraction (a trial's "
                               "latency figure moves by ~±14 % between trials on a shared 2-core machine)")

    def fractions(self) -> List[float]:
        """Epoch fractions of the rungs, smallest first, ending at 1.0 (e.g. [0.25, 0.5, 1.0])."""
        out, f = [1.0], 1.0
        while f / self.reduction_factor >= self.min_fraction * (1 - 1e-9):
            f /= self.reduction_factor
            out.insert(0, f)
        return out


class Measure(BaseModel):
    """How each trial is timed (paired, interleaved with the float baseline)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rounds: int = Field(5, gt=0, description="interleaved rounds per trial (one paired ratio each)")
    warmup: int = Field(5, ge=0, description="untimed iterations before the rounds")
    warmup_s: float = Field(0.3, ge=0, description="untimed seconds each artifact runs (interleaved) before the "
                            "rounds: a fresh ONNX Runtime session runs ~10 % slow for its first second, which "
                            "biased the float baseline of every trial")
    min_time: float = Field(0.2, gt=0, description="timed seconds per variant, over all rounds")
    final_rounds: int = Field(15, gt=1, description="rounds of the final re-measurement of the Pareto set")


SpaceEntry = Union[List[Any], Dict[str, Any]]


class SearchConfig(BaseModel):
    """The recipe's ``search:`` section."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    objective: Objective = Field(default_factory=Objective, description="what to optimise")
    constraints: Constraints = Field(default_factory=Constraints, description="limits on the chosen model")
    space: Dict[str, SpaceEntry] = Field(default_factory=dict, description="'<stage>.<field>[.<sub>]': a list of "
                                         "values, or {low, high[, step][, log]} for a number range")
    budget: Budget = Field(default_factory=Budget, description="trials and wall time")
    strategy: str = Field("tpe-bound", description="search strategy (see edgekit.search.STRATEGIES)")
    fidelity: Fidelity = Field(default_factory=Fidelity, description="multi-fidelity rungs")
    seed: Optional[int] = Field(None, description="sampler seed (default: the recipe's seed, which also drives "
                                "data, training and calibration)")
    workers: int = Field(1, gt=0, description="trials run at once (local processes, or Ray tasks with --ray)")
    start_from_recipe: bool = Field(True, description="the first trial is the recipe as written (its values of the "
                                    "searched fields, when every one lies in the space), so the search never returns "
                                    "a model worse than the configuration it started from without saying so")
    measure: Measure = Field(default_factory=Measure, description="timing settings")
    resources: Dict[str, float] = Field(default_factory=dict, description="Ray resources a trial needs, e.g. "
                                        "{jetson-orin: 1} to run where that device is")

    @field_validator("strategy")
    @classmethod
    def _strategy_known(cls, v: str) -> str:
        from edgekit.errors import did_you_mean
        from edgekit.search.strategies import STRATEGIES

        if v not in STRATEGIES:
            raise ValueError(f"unknown strategy '{v}'{did_you_mean(v, STRATEGIES.names())}; "
                             f"allowed: {', '.join(STRATEGIES.names())}")
        return v


def split_search_section(path: str | Path) -> Tuple[dict, dict, Any]:
    """Read a recipe YAML; return (the recipe without ``search``, the raw ``search`` mapping, the YAML node tree).

    Example:
        >>> raw, search_raw, _ = split_search_section("recipes/digits_search.yaml")
    """
    p = Path(path)
    if not p.is_file():
        raise InputFileError(f"recipe not found: {p}")
    text = p.read_text(encoding="utf-8")
    try:
        raw, root = yaml.safe_load(text), yaml.compose(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: malformed YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: a recipe must be a mapping of fields, got {type(raw).__name__}")
    if "search" not in raw:
        raise ConfigError(f"{p}: no 'search:' section; add one with at least a 'space:' (see docs/SEARCH.md)")
    search_raw = raw.pop("search")
    if not isinstance(search_raw, dict):
        raise ConfigError(f"{p}: search: must be a mapping (objective, constraints, space, budget), "
                          f"got {type(search_raw).__name__}")
    raw.setdefault("name", p.stem)
    return raw, search_raw, root


def parse_search_config(search_raw: dict, source: str = "recipe") -> SearchConfig:
    """Validate the ``search:`` mapping; unknown keys get a did-you-mean, an empty space is an error."""
    try:
        cfg = SearchConfig.model_validate(search_raw)
    except ValidationError as e:
        raise ConfigError(f"{source}: {format_validation_error(e, 'search', SearchConfig)}") from None
    if cfg.objective.minimize and cfg.objective.maximize:
        raise ConfigError(f"{source}: search.objective: give one of minimize / maximize, not both")
    if not cfg.space:
        raise ConfigError(f"{source}: search.space is empty: name at least one '<stage>.<field>' with the values "
                          "to try, e.g. 'student-pruned.macs_target: {low: 0.3, high: 0.8}'")
    return cfg
