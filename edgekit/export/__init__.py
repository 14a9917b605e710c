"""Export to ONNX (with parity check); TensorRT engines live in ``edgekit.export.tensorrt`` (lazy)."""
from .onnx import ExportError, ExportResult, export_onnx

__all__ = ["ExportError", "ExportResult", "export_onnx"]
