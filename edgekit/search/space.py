"""The search space: ``'<stage>.<field>[.<sub>...]'`` paths over the stages' own config fields.

A stage is named by its ``name``, by its ``type`` when only one stage has it, or as ``stages[i]``. The field must
be one of that stage's config fields (a misspelt one gets a did-you-mean); nested config models (``train``,
``finetune``) are checked the same way, free mappings (a distill stage's ``student`` arguments) against the
architecture's arguments.

Example:
    >>> space = resolve_space(cfg.space, raw_recipe)
    >>> trial_raw = apply_params(raw_recipe, space, {"student-pruned.macs_target": 0.4})
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from pydantic import BaseModel

from edgekit.errors import ConfigError, did_you_mean

_INDEXED = re.compile(r"^stages\[(\d+)\]$")


@dataclass(frozen=True)
class Dimension:
    """One searched field: where it lives in the recipe and which values it may take."""

    path: str  # as written in the recipe
    stage_index: int
    keys: Tuple[str, ...]  # field, then nested keys
    choices: Optional[Tuple[Any, ...]] = None  # categorical
    low: Optional[float] = None
    high: Optional[float] = None
    step: Optional[float] = None
    log: bool = False
    integer: bool = False

    def suggest(self, trial: Any) -> Any:
        """Draw this dimension's value from an Optuna trial."""
        if self.choices is not None:
            return trial.suggest_categorical(self.path, list(self.choices))
        if self.integer:
            return trial.suggest_int(self.path, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return self.tidy(trial.suggest_float(self.path, self.low, self.high, step=self.step, log=self.log))

    def tidy(self, value: Any) -> Any:
        """A stepped float as written (0.6000000000000001 -> 0.6, as Optuna stores a stepped draw) for recipes and
        tables; other values unchanged."""
        return round(value, 10) if self.step and isinstance(value, float) else value

    def contains(self, value: Any) -> bool:
        """Whether the dimension can draw ``value``."""
        if self.choices is not None:
            return value in self.choices
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not self.low <= value <= self.high:
            return False
        if self.integer and value != int(value):
            return False
        return not self.step or abs((value - self.low) / self.step - round((value - self.low) / self.step)) < 1e-9

    def probes(self) -> List[Any]:
        """Values checked against the stage schema before the search starts."""
        return list(self.choices) if self.choices is not None else [self.low, self.high]


def _stage_index(ref: str, stages: List[dict], path: str) -> int:
    m = _INDEXED.match(ref)
    if m:
        i = int(m.group(1))
        if i >= len(stages):
            raise ConfigError(f"search.space['{path}']: the recipe has {len(stages)} stages, no stages[{i}]")
        return i
    by_name = [i for i, s in enumerate(stages) if isinstance(s, dict) and s.get("name") == ref]
    by_type = [i for i, s in enumerate(stages) if isinstance(s, dict) and s.get("type") == ref]
    if by_name:
        return by_name[0]
    if len(by_type) == 1:
        return by_type[0]
    names = [s.get("name") or s.get("type") for s in stages if isinstance(s, dict)]
    if len(by_type) > 1:
        raise ConfigError(f"search.space['{path}']: {len(by_type)} stages have type '{ref}'; name one by its "
                          f"'name' or as stages[i] (stages: {', '.join(map(str, names))})")
    raise ConfigError(f"search.space['{path}']: no stage '{ref}'{did_you_mean(ref, names)}; stages: "
                      f"{', '.join(map(str, names))} (or stages[i])")


def _check_keys(path: str, stage: dict, keys: List[str]) -> None:
    """Every key names a field of the stage's config (or of its nested config / model arguments)."""
    from edgekit.pipeline.stages import STAGES, load_stage_modules

    load_stage_modules()
    if stage.get("type") not in STAGES:
        return  # the recipe's own validation reports the unknown stage type
    model: Any = STAGES.get(stage["type"]).config
    where = f"stage '{stage.get('name') or stage['type']}' ({stage['type']})"
    value: Any = stage
    for depth, key in enumerate(keys):
        fields = getattr(model, "model_fields", None)
        if fields is not None:
            allowed = sorted(k for k in fields if k not in ("type", "input", "name"))
            if key not in fields:
                raise ConfigError(f"search.space['{path}']: {where} has no field '{key}'{did_you_mean(key, allowed)}; "
                                  f"allowed: {', '.join(allowed)}")
            ann = fields[key].annotation
            model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
        elif isinstance(value, dict) and "name" in value and depth == len(keys) - 1:
            _check_model_argument(path, value["name"], key)
        value = value.get(key, {}) if isinstance(value, dict) else {}


def _check_model_argument(path: str, arch: str, key: str) -> None:
    from edgekit.models import describe_models

    args = {r["name"]: r["args"] for r in describe_models()}.get(arch)
    if args is not None and key not in args and key != "name":
        raise ConfigError(f"search.space['{path}']: architecture '{arch}' has no argument '{key}'"
                          f"{did_you_mean(key, list(args))}; allowed: {', '.join(args)}")


def _dimension(path: str, index: int, keys: Tuple[str, ...], entry: Any) -> Dimension:
    if isinstance(entry, list):
        if not entry:
            raise ConfigError(f"search.space['{path}']: an empty list of values; give at least one")
        bad = [v for v in entry if not (v is None or isinstance(v, (bool, int, float, str)))]
        if bad:
            raise ConfigError(f"search.space['{path}']: values must be numbers, strings, booleans or null, "
                              f"got {bad[0]!r}")
        return Dimension(path, index, keys, choices=tuple(entry))
    extra = set(entry) - {"low", "high", "step", "log"}
    if extra or "low" not in entry or "high" not in entry:
        raise ConfigError(f"search.space['{path}']: a range is {{low, high[, step][, log]}}"
                          + (f"; unknown key {sorted(extra)[0]!r}" if extra else "; low and high are required"))
    low, high, step = entry["low"], entry["high"], entry.get("step")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) or low >= high:
        raise ConfigError(f"search.space['{path}']: low and high must be numbers with low < high, "
                          f"got low={low!r} high={high!r}")
    integer = all(isinstance(v, int) for v in (low, high)) and (step is None or isinstance(step, int))
    return Dimension(path, index, keys, low=low, high=high, step=step, log=bool(entry.get("log", False)),
                     integer=integer)


def resolve_space(space: Dict[str, Any], raw: dict) -> List[Dimension]:
    """Check every space path against the recipe's stages and build the dimensions (before any work)."""
    stages = raw.get("stages") if isinstance(raw.get("stages"), list) else []
    dims = []
    for path, entry in space.items():
        ref, _, rest = path.partition(".")
        if not rest:
            raise ConfigError(f"search.space['{path}']: write '<stage>.<field>', e.g. 'student-pruned.macs_target'")
        index = _stage_index(ref, stages, path)
        keys = tuple(rest.split("."))
        _check_keys(path, stages[index], list(keys))
        dims.append(_dimension(path, index, keys, entry))
    return dims


def apply_params(raw: dict, dims: List[Dimension], params: Dict[str, Any]) -> dict:
    """A copy of the raw recipe with each dimension's value from ``params`` written into its stage."""
    out = copy.deepcopy(raw)
    for d in dims:
        if d.path not in params:
            continue
        node = out["stages"][d.stage_index]
        for key in d.keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"search.space['{d.path}']: '{key}' is not a mapping in the recipe")
        node[d.keys[-1]] = params[d.path]
    return out


def recipe_values(recipe: Any, dims: List[Dimension]) -> Tuple[Dict[str, Any], List[str]]:
    """The validated recipe's own value of every searched field (defaults included), and the fields whose value
    lies outside its dimension (``"path = value"``)."""
    values, outside = {}, []
    for d in dims:
        node: Any = recipe.stages[d.stage_index]
        for key in d.keys:
            node = node.get(key) if isinstance(node, dict) else getattr(node, key, None)
        values[d.path] = node
        if not d.contains(node):
            outside.append(f"{d.path} = {node!r}")
    return values, outside


def check_space_values(raw: dict, dims: List[Dimension], source: str) -> None:
    """Validate the recipe with every listed value (and each range's ends), one dimension at a time."""
    from edgekit.pipeline.recipe import validate_recipe

    problems = []
    for d in dims:
        for value in d.probes():
            try:
                validate_recipe(apply_params(raw, dims, {d.path: value}), source=source)
            except ConfigError as e:
                detail = str(e).split("\n", 1)[-1].strip()
                problems.append(f"search.space['{d.path}'] = {value!r}: {detail}")
    if problems:
        raise ConfigError(f"{source}: {len(problems)} search-space value(s) the stages reject:\n  "
                          + "\n  ".join(problems))


def first_searched_stage(dims: List[Dimension]) -> int:
    """Index of the earliest stage the space touches (stages before it are shared by every trial)."""
    return min(d.stage_index for d in dims)


def scale_epochs(raw: dict, recipe: Any, start: int, fraction: float) -> dict:
    """Copy of ``raw`` with the epochs of every stage from ``start`` on scaled by ``fraction`` (at least 1)."""
    if fraction >= 1.0:
        return raw
    out = copy.deepcopy(raw)
    for i in range(start, len(recipe.stages)):
        cfg, node = recipe.stages[i], out["stages"][i]
        for name in type(cfg).model_fields:
            value = getattr(cfg, name)
            if name == "epochs" and isinstance(value, int):
                node["epochs"] = max(1, round(value * fraction))
            elif isinstance(value, BaseModel) and isinstance(getattr(value, "epochs", None), int):
                node[name] = {**(node.get(name) or {}), "epochs": max(1, round(value.epochs * fraction))}
    return out


__all__ = ["Dimension", "apply_params", "check_space_values", "first_searched_stage", "recipe_values", "resolve_space",
           "scale_epochs"]
