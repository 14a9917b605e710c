"""Stage `export`: (re-)export the input variant to ONNX with explicit options."""
from __future__ import annotations

from dataclasses import replace
from typing import Literal

from pydantic import Field

from edgekit.pipeline.stages import StageConfig, StageContext, StageOutput, register_stage


class ExportStage(StageConfig):
    """ONNX export options."""

    type: Literal["export"] = "export"
    opset: int = Field(17, ge=17, description="ONNX opset")
    exporter: Literal["torchscript", "dynamo"] = Field("torchscript", description="torch.onnx exporter")
    atol: float = Field(1e-3, gt=0, description="max |ONNX - PyTorch| on validation samples")


@register_stage("export", ExportStage, needs_torch=True)
def run_export(ctx: StageContext, cfg: ExportStage) -> StageOutput:
    """Export the input variant's PyTorch model; the variant keeps its name and gains the new ONNX file."""
    parent = ctx.variant(cfg.input)
    model = ctx.load_module(parent)
    path = ctx.export(model, parent.name, opset=cfg.opset, exporter=cfg.exporter, atol=cfg.atol)
    return StageOutput([replace(parent, onnx=str(path))], {"opset": cfg.opset, "exporter": cfg.exporter})
