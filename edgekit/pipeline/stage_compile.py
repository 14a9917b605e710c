"""Stage `compile`: turn the input variant's ONNX into a deployable artifact with a backend's ``compile`` hook.

The backend is a field: any registered backend that declares ``BackendSpec.compile`` (a TensorRT engine,
OpenVINO IR (.xml/.bin), ...); without it, the compiling backend of lowest priority (TensorRT, as before the
field existed). An unavailable backend skips the stage with its reason, unless ``required: true``.
"""
from __future__ import annotations

from typing import Any, Dict, List, Literal, Optional

from pydantic import Field, field_validator, model_validator

from edgekit.backends import backend_spec, compiling_backends
from edgekit.errors import BackendUnavailableError, ConfigError
from edgekit.pipeline.stages import StageConfig, StageContext, StageOutput, Variant, register_stage

_STAGE_FIELDS = ("type", "input", "name", "backend", "required")  # the rest are options of the compile hook


class CompileStage(StageConfig):
    """Compile options: which backend, and its settings (the TensorRT ones apply to TensorRT only)."""

    type: Literal["compile"] = "compile"
    backend: Optional[str] = Field(None, description="backend whose compile step makes the artifact (see `edgekit "
                                   "doctor`), e.g. tensorrt (engine) or openvino (IR); default: the compiling "
                                   "backend of lowest priority (tensorrt)")
    precision: Optional[str] = Field(None, description="precision of the compiled artifact; default: the backend's "
                                     "(TensorRT fp16; OpenVINO the artifact's own). int8 needs a Q/DQ ONNX")
    sparse_weights: bool = Field(False, description="TensorRT: let it use 2:4 sparse kernels (prune kind: 2:4 first)")
    batch_range: List[int] = Field([1, 1, 32], description="TensorRT: optimisation profile batch sizes [min, opt, max]")
    axis_ranges: Optional[Dict[str, List[int]]] = Field(
        None, description="TensorRT: [min, opt, max] of named dynamic axes besides the batch, e.g. {sequence: [16, "
                          "128, 256]} for a transformer (default for token inputs: 1 to the position table size)")
    workspace_mb: int = Field(2048, gt=0, description="TensorRT: builder workspace limit (MiB)")
    required: bool = Field(False, description="fail the run when the backend is unavailable (else skip this stage)")

    @field_validator("batch_range")
    @classmethod
    def _ordered(cls, v: List[int]) -> List[int]:
        if len(v) != 3 or not (0 < v[0] <= v[1] <= v[2]):
            raise ValueError(f"batch_range must be [min, opt, max] with 0 < min <= opt <= max, got {v}")
        return v

    @field_validator("axis_ranges")
    @classmethod
    def _ordered_axes(cls, v: Optional[Dict[str, List[int]]]) -> Optional[Dict[str, List[int]]]:
        for axis, r in (v or {}).items():
            if len(r) != 3 or not (0 < r[0] <= r[1] <= r[2]):
                raise ValueError(f"axis_ranges.{axis} must be [min, opt, max] with 0 < min <= opt <= max, got {r}")
        return v

    @field_validator("backend")
    @classmethod
    def _compiles(cls, v: Optional[str]) -> Optional[str]:
        if v is None:
            return v
        try:
            spec = backend_spec(v)
        except ConfigError as e:
            raise ValueError(str(e)) from None
        if spec.compile is None:
            raise ValueError(f"backend '{v}' has no compile step; backends that compile: "
                             f"{', '.join(compiling_backends())}")
        return v

    @model_validator(mode="after")
    def _precision_of_backend(self) -> CompileStage:
        spec = backend_spec(self.backend_name())
        if self.precision is not None and self.precision not in spec.precisions:
            raise ValueError(f"backend '{spec.name}' compiles precisions {', '.join(spec.precisions)}, "
                             f"not '{self.precision}'")
        return self

    def backend_name(self) -> str:
        """``backend``, or the default compiling backend."""
        return self.backend or compiling_backends()[0]

    def backend_options(self) -> Dict[str, Any]:
        """The options the recipe set for the backend's compile hook (defaults are the backend's own)."""
        return {k: getattr(self, k) for k in sorted(self.model_fields_set) if k not in _STAGE_FIELDS}


@register_stage("compile", CompileStage)
def run_compile(ctx: StageContext, cfg: CompileStage) -> StageOutput:
    """Compile the input variant's ONNX into a deployable artifact with a backend's compile step (engine, IR)."""
    from edgekit._io import read_sidecar
    from edgekit.backends.base import unfused_sibling

    parent = ctx.variant(cfg.input)
    backend = cfg.backend_name()
    spec = backend_spec(backend)
    ok, reason = spec.probe()
    if not ok:
        if cfg.required:
            raise BackendUnavailableError(f"compile stage is required but {backend} is unavailable: {reason}")
        return StageOutput([], {"skipped": reason})
    if not parent.onnx:
        raise ConfigError(f"compile: variant '{parent.name}' has no ONNX artifact to compile (it has "
                          f"{', '.join(parent.artifacts()) or 'nothing'}); add an export stage first")
    options = cfg.backend_options()
    source = unfused_sibling(parent.onnx, spec)  # a fused transformer graph's unfused twin for TensorRT
    path = spec.compile(source, ctx.stage_dir, **{k: v for k, v in options.items() if v is not None})
    side = read_sidecar(path)
    precision = side.get("precision") or options.get("precision") or "unknown"
    name = cfg.name or f"{parent.name}-{spec.tag or spec.name}-{precision}"
    meta = {"target": spec.quant_target, "precision": precision, "backend": backend, "compiled": side,
            **{k: v for k, v in parent.meta.items() if k in ("float_layers", "int8_mac_fraction")}}
    metrics = {"artifact": str(path), "artifact_bytes": path.stat().st_size, "backend": backend,
               **{k: v for k, v in side.items() if isinstance(v, (str, int, float, bool))}}
    return StageOutput([Variant(name, parent.name, None, parent.onnx, str(path), meta, dict(parent.metrics))], metrics)
