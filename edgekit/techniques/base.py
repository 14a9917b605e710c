"""What every compression technique is: a descriptor in one registry, one entry shape, one result shape.

A technique is ``apply(model_or_artifact, config, *, data...) -> Result``: it takes a ``torch.nn.Module`` or an
ONNX file, its config (a pydantic model or a dict of its fields) and keyword data (``train``, ``val``,
``teacher``, ``calib``, ``out_path``, ``seed``, ``threads``, ``example_input``), and returns a :class:`Result`
whose ``.model`` / ``.artifact``, ``.metrics`` and ``.sidecar`` read the same way for every technique. The
recipe stages are generated from :data:`TECHNIQUES` (ModelOpt's ``ModeDescriptor`` + ``_ModeRegistryCls`` in
spirit): registering a technique makes it a recipe stage.

Example:
    >>> from edgekit.techniques.base import technique
    >>> t = technique("prune")
    >>> res = t.apply(model, {"ratio": 0.3, "finetune": {"epochs": 0}}, example_input=x)
    >>> res.model, res.metrics["macs_fraction"], res.sidecar["channels"]
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Dict, Optional, Tuple, Type

from pydantic import BaseModel, ConfigDict, model_validator
from pydantic_core import core_schema

from edgekit.errors import did_you_mean
from edgekit.registry import Registry

#: keyword arguments a technique's ``apply`` may take; the recipe stage passes the ones its signature names
DATA_KEYWORDS = ("train", "val", "teacher", "calib", "out_path", "seed", "threads", "example_input")

_BUILTIN = ("edgekit.techniques.distill.distill", "edgekit.techniques.prune.prune",
            "edgekit.techniques.sparsity.sparsity", "edgekit.techniques.quantize.ptq",
            "edgekit.techniques.quantize.qat", "edgekit.techniques.quantize.int4")


@dataclass(kw_only=True)
class Result:
    """What every technique returns.

    Attributes:
        model: the new ``nn.Module`` (None for techniques that write an artifact).
        artifact: the written file (None for techniques that return a module).
        metrics: numbers worth comparing across variants (accuracy, MACs, sizes, seconds).
        sidecar: what the output *is* (scheme, layers kept float, channels...): written beside an artifact,
            recorded in the variant's meta by a recipe stage.
    """

    model: Optional[Any] = None
    artifact: Optional[Path] = None
    metrics: Dict[str, Any] = field(default_factory=dict)
    sidecar: Dict[str, Any] = field(default_factory=dict)


class TechniqueConfig(BaseModel):
    """Base of every technique config: frozen, unknown keys refused, old key names refused with their new name."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: keys this config used to call differently: {old: new}; giving an old key is an error naming the new one
    renamed: ClassVar[Dict[str, str]] = {}

    @model_validator(mode="before")
    @classmethod
    def _refuse_renamed(cls, data: Any) -> Any:
        if isinstance(data, dict):
            old = [k for k in data if k in cls.renamed]
            if old:
                raise ValueError("; ".join(f"{k}: renamed to '{cls.renamed[k]}'" for k in old))
        return data


@dataclass(frozen=True)
class OneOf:
    """Pydantic annotation for a string that must name an entry of ``registry``, checked when it is validated
    (so entries registered later, e.g. by a plugin, count) and listed as the JSON schema's ``enum``.

    Example:
        >>> target: Annotated[str, OneOf(TARGETS)] = Field("cpu")
    """

    registry: Registry
    load: Optional[Callable[[], Any]] = None  # fills the registry with its built-ins first
    extra: Tuple[str, ...] = ()  # names allowed besides the registry's
    kind: Optional[str] = None  # what error messages call a name (default: the registry's kind)

    def names(self) -> list:
        if self.load is not None:
            self.load()
        return [*self.extra, *self.registry.names()]

    def check(self, value: str) -> str:
        names = self.names()
        if value not in names:
            raise ValueError(f"unknown {self.kind or self.registry.kind} '{value}'{did_you_mean(value, names)}; "
                             f"valid: {', '.join(names)}")
        return value

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> Any:
        return core_schema.no_info_after_validator_function(self.check, handler(source))

    def __get_pydantic_json_schema__(self, schema: Any, handler: Any) -> Any:
        out = handler(schema)
        out["enum"] = self.names()
        return out


@dataclass(frozen=True)
class Technique:
    """A registered compression technique.

    Attributes:
        name: registry name; also its recipe stage type.
        config: its pydantic config class (the recipe stage's fields are this class's fields).
        consumes / produces: ``"module"`` (an ``nn.Module``) or ``"onnx"`` (an ONNX file).
        apply: ``apply(model_or_artifact, config, *, data...) -> Result`` (data keywords: :data:`DATA_KEYWORDS`).
        description: one line for listings and the recipe template.
        needs_labels: refuses unlabelled data whatever its config.
        needs_torch: works on PyTorch modules (a recipe starting from an ONNX file cannot use it).
        teacher: ``"none"``, ``"optional"`` or ``"required"``: whether ``apply`` takes a KD ``teacher`` module.
        uses_teacher: whether this config would use a teacher (e.g. pruning without fine-tuning does not).
        variant_suffix: the default name of an output variant is ``<input>-<variant_suffix(config)>``.
        stage: generate a recipe stage for it (False for techniques reached through another one's stage).
    """

    name: str
    config: Type[BaseModel]
    consumes: str
    produces: str
    apply: Callable[..., Result]
    description: str
    needs_labels: bool = False
    needs_torch: bool = True
    teacher: str = "none"
    uses_teacher: Callable[[Any], bool] = lambda config: True
    variant_suffix: Callable[[Any], str] = lambda config: "out"
    stage: bool = True

    def __post_init__(self) -> None:
        for attr in ("consumes", "produces"):
            if getattr(self, attr) not in ("module", "onnx"):
                raise ValueError(f"technique '{self.name}': {attr} must be 'module' or 'onnx'")
        if self.teacher not in ("none", "optional", "required"):
            raise ValueError(f"technique '{self.name}': teacher must be 'none', 'optional' or 'required'")


TECHNIQUES: Registry[Technique] = Registry("technique")


def register_technique(t: Technique) -> Technique:
    """Register ``t`` under its name (a duplicate name is refused).

    Example:
        >>> register_technique(Technique("fold_bn", FoldConfig, "module", "module", fold_bn, "fold BatchNorm"))
    """
    TECHNIQUES.register(t.name)(t)
    return t


def load_techniques() -> None:
    """Import the built-in techniques (each registers itself; heavy libraries stay lazy inside them)."""
    for module in _BUILTIN:
        importlib.import_module(module)


def technique(name: str) -> Technique:
    """The registered technique ``name`` (built-ins loaded first); unknown names raise ConfigError."""
    load_techniques()
    return TECHNIQUES.get(name)
