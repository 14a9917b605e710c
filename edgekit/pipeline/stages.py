"""The stage interface: every recipe stage is a registered :class:`Stage` (config class + function).

Every registered technique (:data:`edgekit.techniques.base.TECHNIQUES`) becomes a stage by itself
(:mod:`edgekit.pipeline.technique_stages`); ``train``, ``export`` and ``compile`` are written by hand::

    class ExportStage(StageConfig):
        type: Literal["export"] = "export"
        opset: int = Field(17, ge=17)

    @register_stage("export", ExportStage, needs_torch=True)
    def run_export(ctx: StageContext, cfg: ExportStage) -> StageOutput:
        parent = ctx.variant(cfg.input)                # the model this stage works on
        model = ctx.load_module(parent)                # nn.Module from its checkpoint
        ...
        return StageOutput([replace(parent, onnx=str(path))])
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Type

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edgekit.errors import ConfigError
from edgekit.registry import Registry


class StageConfig(BaseModel):
    """Base of every stage's config: unknown keys are errors; ``input``/``name`` pick variants."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str
    input: Optional[str] = Field(None, description="variant to work on (default: the latest one)")
    name: Optional[str] = Field(None, description="name of the variant this stage produces")


@dataclass
class Variant:
    """A model produced by the run, with its artifacts on disk."""

    name: str
    parent: Optional[str] = None
    checkpoint: Optional[str] = None  # edgekit checkpoint (.pt) for torch backends
    onnx: Optional[str] = None  # ONNX file for ORT (and TensorRT) backends
    engine: Optional[str] = None  # TensorRT engine
    meta: Dict[str, Any] = field(default_factory=dict)  # target, float_layers, int8_mac_fraction, sparsity...
    metrics: Dict[str, Any] = field(default_factory=dict)  # accuracy, params, macs, ...

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Variant:
        return cls(**d)

    def artifacts(self) -> Dict[str, str]:
        """{kind: path} for the artifacts this variant has (kinds as in ``runtime.base.artifact_kind``)."""
        out = {"checkpoint": self.checkpoint, "onnx": self.onnx, "engine": self.engine}
        return {k: v for k, v in out.items() if v}

    @functools.cached_property
    def sidecar(self) -> Dict[str, Any]:
        """The ONNX artifact's sidecar ({} without one), read once."""
        from edgekit._io import read_sidecar

        return read_sidecar(self.onnx) if self.onnx else {}

    def recorded(self, key: str) -> Any:
        """``meta[key]``, else what the ONNX artifact's sidecar records (e.g. for a model loaded as ONNX)."""
        value = self.meta.get(key)
        return value if value is not None else self.sidecar.get(key)


@dataclass
class StageOutput:
    """What a stage returns: new variants plus stage-level metrics for the manifest."""

    variants: List[Variant] = field(default_factory=list)
    metrics: Dict[str, Any] = field(default_factory=dict)


@dataclass
class StageContext:
    """Everything a stage may read; stages write only inside ``stage_dir``."""

    run_dir: Path
    stage_dir: Path
    seed: int
    threads: Optional[int]
    recipe: Any  # edgekit.pipeline.recipe.Recipe
    variants: Dict[str, Variant]
    _splits_loader: Callable[[], Any]
    _splits: Any = None

    @property
    def splits(self):
        """The recipe's data splits (loaded once, on first use)."""
        if self._splits is None:
            self._splits = self._splits_loader()
        return self._splits

    def variant(self, name: Optional[str] = None) -> Variant:
        """The named variant, or the latest one."""
        if not self.variants:
            raise ConfigError("this stage needs a model, but no earlier stage produced one (add a 'train' stage "
                              "or set model.checkpoint / model.onnx)")
        if name is None:
            return list(self.variants.values())[-1]
        if name not in self.variants:
            raise ConfigError(f"stage input '{name}' is not a variant of this run; "
                              f"available: {', '.join(self.variants)}")
        return self.variants[name]

    def reference(self) -> Variant:
        """The first variant: the float reference model."""
        return self.variant(next(iter(self.variants)))

    def load_module(self, variant: Variant):
        """The variant's ``nn.Module`` rebuilt from its checkpoint."""
        from edgekit.models import load_checkpoint

        if not variant.checkpoint:
            raise ConfigError(f"variant '{variant.name}' has no PyTorch checkpoint "
                              f"(it is {', '.join(variant.artifacts())}); "
                              "this stage needs a PyTorch model as input")
        return load_checkpoint(variant.checkpoint)[0]

    def save_module(self, model, stem: str, meta: Optional[dict] = None) -> Path:
        """Save ``model`` as ``stage_dir/<stem>.pt`` with the data's input shape and classes in its meta."""
        from edgekit.models import save_checkpoint

        m = {"input_shape": list(self.splits.input_shape), "num_classes": self.splits.num_classes, **(meta or {})}
        return save_checkpoint(model, self.stage_dir / f"{stem}.pt", m)

    def export(self, model, stem: str, **kwargs) -> Path:
        """Export ``model`` to ``stage_dir/<stem>.onnx`` with a parity check on validation samples (a causal LM:
        the KV-cache graph, parity of prefill + decode steps vs PyTorch, see :mod:`edgekit.pipeline.lm`)."""
        from edgekit.export import export_onnx
        from edgekit.pipeline.lm import export_lm, is_lm

        if is_lm(self.splits):
            opts = {k: kwargs[k] for k in ("atol", "opset") if k in kwargs}
            return export_lm(model, self.stage_dir / f"{stem}.onnx", threads=self.threads, **opts)
        x = self.splits.val.x[:64]
        return export_onnx(model, x, self.stage_dir / f"{stem}.onnx", **kwargs).path

    def calibration_data(self, samples: int = 128, path: Optional[str] = None) -> np.ndarray:
        """Calibration inputs: from ``path`` (npz) or drawn from the training split (never val/test)."""
        from edgekit.data import check_calibration, load_calibration

        if path:
            return load_calibration(path, self.splits.input_shape, max_samples=samples)
        rng = np.random.default_rng(self.seed)
        n = min(samples, len(self.splits.train))
        idx = np.sort(rng.choice(len(self.splits.train), n, replace=False))
        return check_calibration(self.splits.train.x[idx], self.splits.input_shape, "training split")

    def teacher_variant(self, spec: Optional[str], parent: Variant) -> Optional[Variant]:
        """Resolve a ``teacher:`` field: null → None, 'parent' → ``parent``, 'reference' → the run's first
        model, else the variant of that name."""
        if spec is None:
            return None
        if spec == "parent":
            return parent
        if spec == "reference":
            return self.reference()
        return self.variant(spec)


StageFn = Callable[[StageContext, StageConfig], StageOutput]


@dataclass(frozen=True)
class Stage:
    """A registered recipe stage: its config class, its function, whether it needs PyTorch models."""

    config: Type[StageConfig]
    run: StageFn
    needs_torch: bool = False
    description: str = ""


STAGES: Registry[Stage] = Registry("stage")


def register_stage(name: str, config_cls: Type[StageConfig], *, needs_torch: bool = False):
    """Decorator registering a stage function with its config class (its docstring's first line describes it)."""

    def deco(fn: StageFn) -> StageFn:
        doc = (fn.__doc__ or "").strip().splitlines()
        STAGES.register(name)(Stage(config_cls, fn, needs_torch, doc[0] if doc else ""))
        return fn

    return deco


def load_stage_modules() -> None:
    """Register every stage: the hand-written ones (train, export, compile) and one per registered technique."""
    import importlib

    for mod in _HAND_WRITTEN:
        importlib.import_module(mod)
    from edgekit.pipeline.technique_stages import sync_technique_stages

    sync_technique_stages()


_HAND_WRITTEN = ("edgekit.pipeline.stage_train", "edgekit.pipeline.stage_export", "edgekit.pipeline.stage_compile")
