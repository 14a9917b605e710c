"""Stage `export`: (re-)export the input variant to ONNX with explicit options."""
from __future__ import annotations

from dataclasses import replace
from typing import Literal, Union

from pydantic import Field

from edgekit._io import read_sidecar
from edgekit.pipeline.stages import StageConfig, StageContext, StageOutput, register_stage


class ExportStage(StageConfig):
    """ONNX export options."""

    type: Literal["export"] = "export"
    opset: int = Field(17, ge=17, description="ONNX opset")
    exporter: Literal["torchscript", "dynamo"] = Field("torchscript", description="torch.onnx exporter")
    atol: float = Field(1e-3, gt=0, description="max |ONNX - PyTorch| on validation samples")
    fuse: Union[Literal["auto"], bool] = Field(
        "auto", description="fuse the fp32 graph with ONNX Runtime's transformer optimizer (Attention, "
                            "SkipLayerNormalization, Gelu): auto = transformer encoders only; the unfused graph "
                            "stays beside it for backends without ONNX Runtime contrib ops (TensorRT)")


@register_stage("export", ExportStage, needs_torch=True)
def run_export(ctx: StageContext, cfg: ExportStage) -> StageOutput:
    """Export the input variant's PyTorch model; the variant keeps its name and gains the new ONNX file."""
    parent = ctx.variant(cfg.input)
    model = ctx.load_module(parent)
    path = ctx.export(model, parent.name, opset=cfg.opset, exporter=cfg.exporter, atol=cfg.atol, fuse=cfg.fuse)
    fusion = read_sidecar(path).get("fusion") or {}
    metrics = {"opset": cfg.opset, "exporter": cfg.exporter, "fused": bool(fusion.get("applied"))}
    if fusion.get("applied"):
        metrics["fused_ops"] = fusion["counts"]
        metrics["fusion_max_abs_diff"] = (fusion.get("parity") or {}).get("max_abs_diff")
    return StageOutput([replace(parent, onnx=str(path))], metrics)
