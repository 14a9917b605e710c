"""Stage `compile`: build a TensorRT engine from the input variant's ONNX (skipped, with its reason, without a GPU)."""
from __future__ import annotations

from typing import List, Literal

from pydantic import Field, field_validator

from edgekit.backends import probe_backend
from edgekit.errors import BackendUnavailableError
from edgekit.pipeline.stages import StageConfig, StageContext, StageOutput, Variant, register_stage


class CompileStage(StageConfig):
    """TensorRT engine build options."""

    type: Literal["compile"] = "compile"
    precision: Literal["fp32", "fp16", "int8"] = Field("fp16", description="int8 needs a Q/DQ ONNX (quantize target: tensorrt)")
    sparse_weights: bool = Field(False, description="let TensorRT use 2:4 sparse kernels (prune kind: 2:4 first)")
    batch_range: List[int] = Field([1, 1, 32], description="optimisation profile batch sizes [min, opt, max]")
    workspace_mb: int = Field(2048, gt=0, description="builder workspace limit (MiB)")
    required: bool = Field(False, description="fail the run when TensorRT is unavailable (else skip this stage)")

    @field_validator("batch_range")
    @classmethod
    def _ordered(cls, v: List[int]) -> List[int]:
        if len(v) != 3 or not (0 < v[0] <= v[1] <= v[2]):
            raise ValueError(f"batch_range must be [min, opt, max] with 0 < min <= opt <= max, got {v}")
        return v


@register_stage("compile", CompileStage)
def run_compile(ctx: StageContext, cfg: CompileStage) -> StageOutput:
    """Build (or reuse from the engine cache) a TensorRT engine for the input variant."""
    parent = ctx.variant(cfg.input)
    ok, reason = probe_backend("tensorrt")
    if not ok:
        if cfg.required:
            raise BackendUnavailableError(f"compile stage is required but TensorRT is unavailable: {reason}")
        return StageOutput([], {"skipped": reason})
    from edgekit.backends.tensorrt.build import build_engine, current_identity

    name = cfg.name or f"{parent.name}-trt-{cfg.precision}"
    result = build_engine(parent.onnx, ctx.stage_dir / f"{name}.engine", precision=cfg.precision,
                          sparse_weights=cfg.sparse_weights, batch_range=tuple(cfg.batch_range),
                          workspace_mb=cfg.workspace_mb)
    meta = {"target": "tensorrt", "precision": cfg.precision, "identity": current_identity(),
            **{k: v for k, v in parent.meta.items() if k in ("float_layers", "int8_mac_fraction")}}
    return StageOutput([Variant(name, parent.name, None, parent.onnx, str(result.path), meta, dict(parent.metrics))],
                       result.metrics())
