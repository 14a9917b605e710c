"""Export to ONNX (with parity check); TensorRT engines live in ``edgekit.backends.tensorrt.build`` (lazy)."""
from edgekit.errors import ExportError
from edgekit.export.onnx import ExportResult, export_onnx

__all__ = ["ExportError", "ExportResult", "export_onnx"]
