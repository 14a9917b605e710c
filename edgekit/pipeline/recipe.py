"""Recipe schema (pydantic v2) and YAML loading.

A recipe names the model, the data, the seed, the ordered compression stages, the deployment targets
and the benchmark settings. Every problem is reported with its field path and YAML line, e.g.
``stages[2].ratio (line 14): must be less than 1``; unknown keys are errors with a "did you mean", keys
that were renamed name their new name (``stages[2].protect (line 9): renamed to 'exclude'``).

Loading goes: read the YAML once through :mod:`edgekit.core.safe_yaml` (size limit, UTF-8, duplicate keys,
alias bombs, non-finite numbers) → check the run name and the numbers a schema bound cannot express → import the
plugin modules of ``model.imports`` (they may register models, datasets, backends, quantisation targets and
techniques; **importing runs their code**) → build the schema from the registries → validate.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Dict, List, Optional, Tuple, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from edgekit.backends import BACKENDS, default_backend
from edgekit.core.safe_yaml import load_yaml
from edgekit.data.datasets import DataConfig
from edgekit.errors import ConfigError, InputFileError, did_you_mean
from edgekit.models.hf import HF_TASKS
from edgekit.pipeline.rundir import check_run_name
from edgekit.pipeline.stages import STAGES, load_stage_modules
from edgekit.techniques.base import OneOf


def _load_backends() -> None:
    from edgekit.backends import _builtin  # noqa: F401  (fills the registry)


class ModelSource(BaseModel):
    """Where the reference model comes from: exactly one of name / checkpoint / onnx / hf."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Optional[str] = Field(None, description="zoo architecture (see `edgekit models`)")
    kwargs: Dict[str, Any] = Field(default_factory=dict, description="architecture arguments, e.g. {depth: 20}")
    checkpoint: Optional[str] = Field(None, description="an edgekit checkpoint (.pt) to start from")
    onnx: Optional[str] = Field(None, description="an ONNX file to start from (no PyTorch stages possible)")
    hf: Optional[str] = Field(None, description="a local Hugging Face model directory (save_pretrained); never "
                              "downloaded. Created from 'config' when it does not exist")
    task: HF_TASKS.name_type() = Field("sequence-classification", description="Hugging Face task of 'hf': "
                                       "sequence-classification | image-classification | causal-lm")
    config: Optional[Dict[str, Any]] = Field(None, description="with 'hf': the transformers config ({model_type: "
                                             "bert, num_hidden_layers: 4, ...}) to build the directory from when it "
                                             "does not exist; num_labels, vocab_size, image size from the data")
    imports: List[str] = Field(default_factory=list, description="plugin modules imported before the recipe is "
                               "validated: your own models, datasets, backends, quantisation targets or techniques "
                               "registered in edgekit's registries (trusted code you name); looked up next to the "
                               "recipe first, then in the current directory")

    @model_validator(mode="after")
    def _exactly_one(self) -> ModelSource:
        given = [k for k in ("name", "checkpoint", "onnx", "hf") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(f"give exactly one of name, checkpoint, onnx, hf (got {', '.join(given) or 'none'})")
        if self.config is not None and not self.hf:
            raise ValueError("'config' builds a Hugging Face model directory: use it with 'hf'")
        return self


class Target(BaseModel):
    """A deployment backend the run benchmarks on."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Annotated[str, OneOf(BACKENDS, _load_backends)] = Field(
        ..., description="registered backend (see `edgekit doctor`)")
    required: bool = Field(False, description="fail the run when this backend is unavailable (else skip it)")


class GenerationSettings(BaseModel):
    """How causal LMs are timed and sampled in the report (``task: causal-lm`` runs only)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt_tokens: Optional[int] = Field(None, gt=0, description="prompt length for prefill timing and decoding "
                                         "(test text); default min(16, context / 4)")
    new_tokens: Optional[int] = Field(None, gt=0, description="tokens generated per decode measurement (batch 1, "
                                      "greedy); default min(32, context - prompt)")
    past: int = Field(128, gt=0, description="past length of the cache-vs-recompute measurement (capped at the "
                                             "context - 1)")
    samples: int = Field(3, ge=0, description="greedy sample generations per variant in the report")
    sample_tokens: Optional[int] = Field(None, gt=0, description="new tokens per sample generation; default "
                                         "min(16, context - prompt)")
    eval_windows: Optional[int] = Field(None, gt=0, description="held-out windows for each variant's perplexity "
                                                                "(default: all)")
    batches: List[Annotated[int, Field(gt=0, le=256)]] = Field(
        [1], description="decode batch sizes: batch 1 is always timed (the variants table, the gate); each other "
                         "size adds a table of decode tokens/s over all its sequences, e.g. [1, 4]")

    @field_validator("batches")
    @classmethod
    def _distinct_batches(cls, v: List[int]) -> List[int]:
        if len(set(v)) != len(v):
            raise ValueError(f"batch sizes must be distinct, got {v}")
        return v


class BenchmarkSettings(BaseModel):
    """How variants are timed (see `edgekit bench`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    batches: List[Annotated[int, Field(gt=0)]] = Field([1, 8], description="batch sizes to time")
    warmup: int = Field(10, ge=0, description="untimed iterations before each measurement")
    iters: Optional[int] = Field(30, gt=0, description="timed iterations per variant per round")
    min_time: Optional[float] = Field(None, gt=0, description="or: minimum seconds per variant per round")
    rounds: int = Field(5, gt=0, description="interleaved rounds (A B C A B C ...) for paired ratios")
    ci_target: Optional[float] = Field(0.05, gt=0, lt=1, description="adaptive rounds: after `rounds`, add rounds "
                                       "until every speed-up's 95% CI half-width is at most this fraction of its "
                                       "median, up to 3 x rounds or max_time; null = exactly `rounds`")
    max_time: float = Field(60.0, gt=0, description="seconds of extra rounds per batch size for ci_target")
    variants: Optional[List[str]] = Field(None, description="variants to benchmark (default: all)")
    accuracy: bool = Field(True, description="measure held-out test accuracy through each runner")
    generation: GenerationSettings = Field(default_factory=GenerationSettings,
                                           description="causal LMs: prefill / decode timing, samples, perplexity")


class ReportSettings(BaseModel):
    """What the report contains."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    plots: bool = Field(True, description="write PNG plots next to report.md")
    min_speedup: float = Field(1.1, gt=0, description="a step faster than its parent by less than this is flagged")
    min_int8_coverage: float = Field(0.8, ge=0, le=1, description="int8 MAC fraction below this is flagged")
    max_accuracy_drop: float = Field(5.0, ge=0, description="ship gate: a variant more than this many accuracy "
                                     "points below the float baseline does not qualify (headline, --gate)")
    gate_speedup: Dict[int, float] = Field(
        default_factory=dict, description="ship gate: {batch: speed-up} a variant must reach over the float "
                                          "baseline at each listed batch to qualify on a backend, e.g. "
                                          "{1: 2.0, 8: 1.5}")

    @field_validator("gate_speedup")
    @classmethod
    def _positive_gate(cls, v: Dict[int, float]) -> Dict[int, float]:
        bad = {b: s for b, s in v.items() if b < 1 or s <= 0}
        if bad:
            raise ValueError(f"gate_speedup needs positive batch sizes and speed-ups, got {bad}")
        return v


_BASE_FIELDS = {
    "name": (Optional[str], Field(None, description="recipe name (default: file stem); runs go to runs/<name>/")),
    "description": (str, Field("", description="free text shown in the report")),
    "seed": (int, Field(0, ge=0, le=2**32 - 1, description="drives every random choice: splits, init, shuffling, "
                        "calibration")),
    "threads": (int, Field(2, gt=0, le=1024, description="CPU threads for training, inference and benchmarks")),
    "model": (ModelSource, Field(..., description="reference model source")),
    "data": (DataConfig, Field(default_factory=DataConfig, description="dataset and splits")),
    "targets": (List[Target], Field(default_factory=lambda: [Target(backend=default_backend("module", "cpu")),
                                                             Target(backend=default_backend("onnx", "cpu"))],
                                    description="backends to benchmark on; torch fp32 of the reference is the "
                                                "baseline")),
    "benchmark": (BenchmarkSettings, Field(default_factory=BenchmarkSettings, description="timing settings")),
    "report": (ReportSettings, Field(default_factory=ReportSettings, description="report settings")),
    "search": (Optional[Dict[str, Any]], Field(None, description="`edgekit search` settings (objective, "
                                               "constraints, space, budget; checked by edgekit search, see "
                                               "docs/SEARCH.md); `edgekit run` ignores them")),
}


def recipe_model() -> type:
    """The Recipe pydantic class, with ``stages`` a union of every registered stage config."""
    load_stage_modules()
    classes = tuple(stage.config for _, stage in STAGES.items())
    stage_union = Annotated[Union[classes], Field(discriminator="type")] if len(classes) > 1 else classes[0]
    fields = dict(_BASE_FIELDS)
    fields["stages"] = (List[stage_union], Field(default_factory=list, description="ordered compression stages"))
    return create_model("Recipe", __config__=ConfigDict(extra="forbid", frozen=True), **fields)


def load_recipe(path: str | Path) -> Any:
    """Read, parse (once) and validate a YAML recipe; raise ConfigError listing every problem.

    Example:
        >>> recipe = load_recipe("recipes/digits_resnet.yaml")
        >>> [s.type for s in recipe.stages]
    """
    p = Path(path)
    if not p.is_file():
        raise InputFileError(f"recipe not found: {p}" if not p.exists() else f"recipe is not a file: {p}")
    doc = load_yaml(p)
    raw = doc.data
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: a recipe must be a mapping of fields (model, data, stages, ...), "
                          f"got {type(raw).__name__}")
    if "name" not in raw:
        raw["name"] = p.stem
        try:
            check_run_name(p.stem, f"{p}: the file name (the default recipe name)")
        except ConfigError as e:
            raise ConfigError(f"{e}; or add a 'name:' to the recipe") from None
    return validate_recipe(raw, source=str(p), root=doc.root)


def import_recipe_plugins(raw: dict, base_dir: Optional[str] = None) -> None:
    """Import the plugin modules a raw recipe names in ``model.imports`` (before its schema is built), looking
    next to the recipe (``base_dir``) first."""
    from edgekit.pipeline.model_source import import_plugins

    imports = (raw.get("model") or {}).get("imports") if isinstance(raw.get("model"), dict) else None
    if isinstance(imports, list) and all(isinstance(m, str) for m in imports):
        import_plugins(imports, base_dir)


def validate_recipe(raw: dict, source: str = "recipe", root: Any = None) -> Any:
    """Validate a recipe dict; raise ConfigError with one line per problem (path, line, message).

    The plugin modules of ``model.imports`` are imported first, so what they register is part of the schema.
    """
    problems = _check_front_door(raw, root)
    if problems:  # a bad import name or run name is refused before any plugin code runs
        raise ConfigError(f"{source}: {len(problems)} problem{'s' if len(problems) > 1 else ''}:\n  "
                          + "\n  ".join(problems))
    import_recipe_plugins(raw, str(Path(source).parent) if Path(source).is_file() else None)
    model_cls = recipe_model()
    problems = _check_stage_types(raw) + _check_numbers(raw, root)
    renamed, stages = _renamed_keys(raw, root)
    problems += renamed
    checked, lines = raw, root
    if problems:  # validate the rest too, so one run reports every problem
        good = [s for s in stages if isinstance(s, dict) and s.get("type") in STAGES]
        checked = {**raw, "stages": good}
        lines = root if isinstance(raw.get("stages"), list) and len(good) == len(raw["stages"]) else None
    try:
        recipe = model_cls.model_validate(checked)
    except ValidationError as e:
        problems += [_format_error(err, model_cls, lines, checked) for err in e.errors()]
    if not problems:
        return recipe
    n = len(problems)
    raise ConfigError(f"{source}: {n} problem{'s' if n > 1 else ''}:\n  " + "\n  ".join(problems))


MODULE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
# (low, low inclusive, high): bounds a schema's own gt/ge cannot express, applied to these keys in any stage
# (also nested, e.g. a prune stage's finetune.lr); beyond them a run trains to chance or overflows.
NUMBER_BOUNDS = {"lr": (0.0, False, 10.0), "weight_decay": (0.0, True, 1.0), "epochs": (0, True, 100_000),
                 "warmup_epochs": (0.0, True, 100_000), "batch_size": (1, True, 1 << 20)}


def _where(path: List[Any], root: Any) -> str:
    text = ""
    for item in path:
        text += f"[{item}]" if isinstance(item, int) else (f".{item}" if text else str(item))
    line = _yaml_line(root, path)
    return f"{text} (line {line})" if line else text


def _check_front_door(raw: dict, root: Any) -> List[str]:
    """The recipe name (it becomes a folder) and the plugin module names, checked before any import."""
    problems = []
    if raw.get("name") is not None:
        try:
            check_run_name(raw["name"], _where(["name"], root))
        except ConfigError as e:
            problems.append(str(e))
    model = raw.get("model") if isinstance(raw.get("model"), dict) else {}
    imports = model.get("imports")
    if imports is not None and not isinstance(imports, list):
        problems.append(f"{_where(['model', 'imports'], root)}: must be a list of module names")
    for i, mod in enumerate(imports if isinstance(imports, list) else []):
        if not isinstance(mod, str) or len(mod) > 200 or not MODULE_RE.match(mod):
            problems.append(f"{_where(['model', 'imports', i], root)}: {str(mod)[:60]!r} is not a module name; "
                            "use a dotted Python module name like my_pkg.models")
    return problems


def _check_numbers(raw: dict, root: Any) -> List[str]:
    """Stage numbers outside :data:`NUMBER_BOUNDS` (e.g. ``weight_decay: 1e300``), with path and line."""
    problems: List[str] = []

    def walk(value: Any, path: List[Any]) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                bounds = NUMBER_BOUNDS.get(k)
                number = _as_number(v)
                if bounds and number is not None:
                    low, inclusive, high = bounds
                    v = number
                    if not ((v >= low if inclusive else v > low) and v <= high):
                        problems.append(f"{_where([*path, k], root)}: {v!r} is out of range; allowed "
                                        f"{low} {'≤' if inclusive else '<'} {k} ≤ {high}")
                else:
                    walk(v, [*path, k])
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, [*path, i])

    walk(raw.get("stages") if isinstance(raw.get("stages"), list) else [], ["stages"])
    return problems


def _as_number(value: Any) -> Optional[float]:
    """A numeric setting as a number: YAML 1.1 reads ``1e300`` (no '.', no exponent sign) as a string that
    pydantic converts later, so strings that parse as numbers count too."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    try:
        return float(value) if isinstance(value, str) else None
    except ValueError:
        return None


def _renamed_keys(raw: dict, root: Any) -> Tuple[List[str], List[Any]]:
    """Problems for stage keys that were renamed (``stages[2].protect: renamed to 'exclude'``), and the stages
    with those keys already renamed, so their other problems are reported in the same run."""
    stages = raw.get("stages") if isinstance(raw.get("stages"), list) else []
    problems, out = [], []
    for i, st in enumerate(stages):
        entry = STAGES.get(st["type"]) if isinstance(st, dict) and st.get("type") in STAGES else None
        renames = getattr(entry.config, "renamed", {}) if entry is not None else {}
        if not any(k in renames for k in st):
            out.append(st)
            continue
        for k in [k for k in st if k in renames]:
            line = _yaml_line(root, ["stages", i, k])
            problems.append(f"stages[{i}].{k}{f' (line {line})' if line else ''}: renamed to '{renames[k]}'")
        out.append({renames.get(k, k): v for k, v in st.items()})
    return problems, out


def _check_stage_types(raw: dict) -> List[str]:
    stages = raw.get("stages") or []
    if not isinstance(stages, list):
        return [f"stages: must be a list of stages, got {type(stages).__name__}"]
    out = []
    for i, st in enumerate(stages):
        if not isinstance(st, dict):
            out.append(f"stages[{i}]: must be a mapping with a 'type', got {type(st).__name__}")
        elif "type" not in st:
            out.append(f"stages[{i}].type: missing; allowed: {', '.join(STAGES.names())}")
        elif st["type"] not in STAGES:
            out.append(f"stages[{i}].type: unknown stage '{st['type']}'{did_you_mean(st['type'], STAGES.names())}; "
                       f"allowed: {', '.join(STAGES.names())}")
    return out


def _format_loc(loc: Tuple[Any, ...]) -> Tuple[str, List[Any]]:
    """('stages', 2, 'prune', 'ratio') -> 'stages[2].ratio' (dropping union tags), plus the clean path."""
    parts: List[Any] = []
    for i, item in enumerate(loc):
        if isinstance(item, str) and i > 0 and isinstance(loc[i - 1], int) and loc[0] == "stages" and i == 2:
            continue  # discriminator tag
        if isinstance(item, str) and "[" in item:  # e.g. 'function-after[...]'
            continue
        parts.append(item)
    text = ""
    for item in parts:
        text += f"[{item}]" if isinstance(item, int) else (f".{item}" if text else str(item))
    return text or "(top level)", parts


def _format_error(err: dict, model_cls: type, root: Any, raw: dict) -> str:
    path, parts = _format_loc(tuple(err["loc"]))
    line = _yaml_line(root, parts)
    where = f"{path} (line {line})" if line else path
    if err["type"] == "extra_forbidden":
        allowed = _allowed_keys(model_cls, parts[:-1], raw)
        hint = did_you_mean(str(parts[-1]), allowed) if allowed else ""
        return f"{where}: unknown key{hint}; allowed: {', '.join(allowed)}"
    msg = err["msg"].replace("Value error, ", "")
    if err["type"] == "literal_error":
        expected = [a.strip(" '") for a in str(err.get("ctx", {}).get("expected", "")).replace(" or ", ",").split(",")]
        msg = f"{msg}, got {err.get('input')!r}{did_you_mean(str(err.get('input')), expected)}"
    return f"{where}: {msg}"


def _allowed_keys(model_cls: type, parts: List[Any], raw: dict) -> List[str]:
    """Field names of the (nested) model at ``parts``; [] when it cannot be resolved."""
    cls: Any = model_cls
    rest = list(parts)
    if rest[:1] == ["stages"] and len(rest) >= 2 and isinstance(rest[1], int):
        try:
            cls = STAGES.get(raw["stages"][rest[1]]["type"]).config
        except (KeyError, IndexError, TypeError, ConfigError):
            return []
        rest = rest[2:]
    for key in rest:
        field = getattr(cls, "model_fields", {}).get(key)
        if field is None:
            return []
        cls = _unwrap_optional(field.annotation)
    return sorted(getattr(cls, "model_fields", {}))


def _unwrap_optional(ann: Any) -> Any:
    import typing

    args = [a for a in typing.get_args(ann) if a is not type(None)]
    return args[0] if typing.get_origin(ann) is Union and len(args) == 1 else ann


def _yaml_line(root: Any, parts: List[Any]) -> Optional[int]:
    node = root
    for key in parts:
        if node is None:
            return None
        if isinstance(node, yaml.MappingNode) and isinstance(key, str):
            match = [v for k, v in node.value if getattr(k, "value", None) == key]
            if not match:
                keys = [k for k, _ in node.value if getattr(k, "value", None) == key]
                return keys[0].start_mark.line + 1 if keys else node.start_mark.line + 1
            node = match[0]
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
        else:
            return node.start_mark.line + 1
    return node.start_mark.line + 1 if node is not None else None


def recipe_json_schema() -> dict:
    """JSON schema of the recipe (for editors and docs)."""
    return recipe_model().model_json_schema()
