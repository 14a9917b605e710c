"""The stage interface: every recipe stage is a registered (config class, function) pair.

    class PruneStage(StageConfig):
        type: Literal["prune"] = "prune"
        ratio: float = Field(0.5, gt=0, lt=1)

    @register_stage("prune", PruneStage)
    def run_prune(ctx: StageContext, cfg: PruneStage) -> StageOutput:
        parent = ctx.variant(cfg.input)                # the model this stage works on
        model = ctx.load_module(parent)                # nn.Module from its checkpoint
        ...
        ckpt = ctx.save_module(model, "pruned")        # atomically, in ctx.stage_dir
        return StageOutput([Variant(name=cfg.name or parent.name + "-pruned", parent=parent.name,
                                    checkpoint=str(ckpt), meta={...}, metrics={...})])
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Type

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
            raise ConfigError(f"stage input '{name}' is not a variant of this run; available: {', '.join(self.variants)}")
        return self.variants[name]

    def reference(self) -> Variant:
        """The first variant: the float reference model."""
        return self.variant(next(iter(self.variants)))

    def load_module(self, variant: Variant):
        """The variant's ``nn.Module`` rebuilt from its checkpoint."""
        from edgekit.models import load_checkpoint

        if not variant.checkpoint:
            raise ConfigError(f"variant '{variant.name}' has no PyTorch checkpoint (it is {', '.join(variant.artifacts())}); "
                              "this stage needs a PyTorch model as input")
        return load_checkpoint(variant.checkpoint)[0]

    def save_module(self, model, stem: str, meta: Optional[dict] = None) -> Path:
        """Save ``model`` as ``stage_dir/<stem>.pt`` with the data's input shape and classes in its meta."""
        from edgekit.models import save_checkpoint

        m = {"input_shape": list(self.splits.input_shape), "num_classes": self.splits.num_classes, **(meta or {})}
        return save_checkpoint(model, self.stage_dir / f"{stem}.pt", m)

    def export(self, model, stem: str, **kwargs) -> Path:
        """Export ``model`` to ``stage_dir/<stem>.onnx`` with a parity check on validation samples."""
        from edgekit.export import export_onnx

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

    def teacher_module(self, spec: Optional[str], parent: Variant):
        """Resolve a ``teacher:`` field: None → None, 'original'/'parent' → the parent, else a variant name."""
        if spec is None or spec == "none":
            return None
        if spec in ("original", "parent"):
            return self.load_module(parent)
        if spec == "reference":
            return self.load_module(self.reference())
        return self.load_module(self.variant(spec))


StageFn = Callable[[StageContext, StageConfig], StageOutput]
STAGES: Registry[Tuple[Type[StageConfig], StageFn]] = Registry("stage")


def register_stage(name: str, config_cls: Type[StageConfig]):
    """Decorator registering a stage function with its config class."""

    def deco(fn: StageFn) -> StageFn:
        STAGES.register(name)((config_cls, fn))
        return fn

    return deco


def load_stage_modules() -> None:
    """Import every built-in stage module (each registers itself)."""
    import importlib

    for mod in _STAGE_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:  # a missing dependency inside an existing module is a real error
                raise


_STAGE_MODULES = [
    "edgekit.pipeline.stage_train",
    "edgekit.pipeline.stage_export",
    "edgekit.pipeline.stage_distill",
    "edgekit.pipeline.stage_prune",
    "edgekit.pipeline.stage_quantize",
    "edgekit.pipeline.stage_qat",
    "edgekit.pipeline.stage_compile",
]
