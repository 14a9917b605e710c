"""Export to ONNX with a dynamic batch axis, checked by onnx.checker and a parity test against PyTorch."""
from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch
import torch.nn as nn

from edgekit._io import atomic_path, write_sidecar
from edgekit.errors import ExportError, LibraryError, ShapeError, calling, first_line


@dataclass
class ExportResult:
    """The written ONNX file and how closely it matches the PyTorch model."""

    path: Path
    opset: int
    max_abs_diff: float
    top1_agreement: float  # percent of samples whose argmax matches
    samples: int
    exporter: str

    def parity(self) -> dict:
        d = asdict(self)
        d.pop("path")
        return d


def export_onnx(model: nn.Module, sample: np.ndarray, path: str | Path, *, opset: int = 17,
                parity_data: Optional[np.ndarray] = None, atol: float = 1e-3, min_top1_agreement: float = 99.0,
                exporter: Literal["torchscript", "dynamo"] = "torchscript", extra_meta: Optional[dict] = None
                ) -> ExportResult:
    """Export ``model`` to ONNX at ``path`` and verify it against PyTorch with ONNX Runtime.

    Args:
        model: the module (exported in eval mode, on CPU).
        sample: one batch of real inputs (numpy, [N, ...]); fixes the per-sample shape.
        path: destination; written atomically with a ``.json`` sidecar holding the parity figures.
        opset: ONNX opset (>= 17).
        parity_data: inputs for the parity check (default ``sample``).
        atol: maximum allowed absolute difference between ONNX Runtime and PyTorch outputs.
        min_top1_agreement: minimum percentage of samples whose top-1 class agrees.
        exporter: "torchscript" (fast, default) or "dynamo" (needed for fake-quant → Q/DQ export).

    Raises:
        ShapeError: ``sample`` is not a batch the model accepts.
        ExportError: bad opset, an operator ONNX cannot express, the checker rejected the graph, or parity is
            outside tolerance.
        LibraryError: the PyTorch exporter failed otherwise on a model that runs in PyTorch.

    Example:
        >>> result = export_onnx(model, splits.val.x[:32], "model.onnx")
        >>> result.max_abs_diff, result.top1_agreement
    """
    import onnx

    if opset < 17:
        raise ExportError(f"opset must be >= 17, got {opset}")
    if exporter not in ("torchscript", "dynamo"):
        raise ExportError(f"exporter must be 'torchscript' or 'dynamo', got {exporter!r}")
    sample = np.ascontiguousarray(sample, dtype=np.float32)
    if sample.ndim < 2 or len(sample) == 0:
        raise ShapeError(f"export sample must be a non-empty batch [N, ...], got shape {list(sample.shape)}")
    model = model.eval().cpu()
    x = torch.from_numpy(sample[:2])
    try:
        with torch.no_grad():
            model(x)
    except RuntimeError as e:
        raise ShapeError(f"model cannot take inputs of per-sample shape {list(sample.shape[1:])}: "
                         f"{first_line(e, 200)}") from None
    path = Path(path)
    with atomic_path(path, suffix=".onnx") as tmp:
        _run_exporter(model, x, tmp, opset, exporter)
        try:
            onnx.checker.check_model(str(tmp), full_check=True)
        except Exception as e:
            raise ExportError(f"{path}: onnx.checker rejected the exported graph: {first_line(e, 300)}") from None
        max_diff, agree, n = _parity(model, tmp, sample if parity_data is None else parity_data, path)
        if not (max_diff <= atol) or agree < min_top1_agreement:
            raise ExportError(
                f"{path}: ONNX output disagrees with PyTorch (max |diff| {max_diff:.2e}, allowed {atol:.0e}; "
                f"top-1 agreement {agree:.1f}%, required {min_top1_agreement:.1f}%) — nothing was written")
    result = ExportResult(path, opset, max_diff, agree, n, exporter)
    write_sidecar(path, {"kind": "onnx", "precision": "fp32", "parity": result.parity(), **(extra_meta or {})})
    return result


def _run_exporter(model: nn.Module, x: torch.Tensor, out: Path, opset: int, exporter: str) -> None:
    """Run torch.onnx.export quietly. An operator ONNX cannot express is the model's (ExportError); any other
    failure inside the exporter is PyTorch's (LibraryError)."""
    quiet = io.StringIO()
    try:
        with calling("torch.onnx", where=f"{exporter} export of {type(model).__name__}"), \
                warnings.catch_warnings(), contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
            warnings.simplefilter("ignore")
            if exporter == "dynamo":
                torch.onnx.export(model, (x,), str(out), input_names=["input"], output_names=["logits"],
                                  opset_version=max(opset, 18), dynamo=True, external_data=False,
                                  dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},))
            else:
                torch.onnx.export(model, (x,), str(out), input_names=["input"], output_names=["logits"],
                                  opset_version=opset, dynamo=False,
                                  dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    except LibraryError as e:
        if isinstance(e.__cause__, torch.onnx.errors.UnsupportedOperatorError):
            raise ExportError(f"{type(model).__name__} cannot be exported to ONNX: {first_line(e.__cause__, 300)}; "
                              "replace that operation or register a custom symbolic for it") from e.__cause__
        raise


def _parity(model: nn.Module, onnx_path: Path, data: np.ndarray, final_path: Path, batch: int = 64):
    """Max |ONNX Runtime - PyTorch| and top-1 agreement (%) over ``data``; ``final_path`` names it in errors."""
    from edgekit.backends.ort import OrtRunner

    where = f"parity check of {final_path}"
    with calling("onnxruntime", where=where):
        runner = OrtRunner(str(onnx_path), ["CPUExecutionProvider"], threads=None)
    data = np.ascontiguousarray(data, dtype=np.float32)
    max_diff, agree = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(data), batch):
            xb = data[i:i + batch]
            ref = model(torch.from_numpy(xb)).numpy()
            with calling("onnxruntime", where=where):
                got = runner(xb)
            max_diff = max(max_diff, float(np.abs(ref - got).max()))
            agree += int((ref.argmax(-1) == got.argmax(-1)).sum())
    return max_diff, 100.0 * agree / len(data), len(data)
