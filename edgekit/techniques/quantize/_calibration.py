"""Calibration data for ORT's static quantiser: validated against the model input, then fed in batches.

Example:
    >>> name, shape, _ = model_input("model.onnx")
    >>> x = prepare_calibration("calib_data/digits32_rgb.npz", "model.onnx", samples=128)
    >>> reader = array_reader(x, name, batch_size=16)
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, List, Optional, Tuple

import numpy as np

from edgekit.errors import ConfigError, InputFileError, ShapeError

_FLOAT_TYPES = {1: "float32"}  # onnx.TensorProto.FLOAT


def model_input(model_or_path: Any) -> Tuple[str, List[Optional[int]], int]:
    """(name, per-sample shape with None for dynamic dims, ONNX elem type) of the model's single input."""
    import onnx

    model = model_or_path if isinstance(model_or_path, onnx.ModelProto) else onnx.load(
        os.fspath(model_or_path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise ShapeError(f"quantisation supports models with exactly one input; this one has "
                         f"{len(inputs)}: {[i.name for i in inputs]}")
    inp = inputs[0]
    t = inp.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in t.shape.dim]
    return inp.name, dims[1:], t.elem_type


def prepare_calibration(calib: Any, model_or_path: Any, samples: Optional[int] = None,
                        where: Optional[str] = None) -> np.ndarray:
    """Validate calibration samples against the model input and return float32 ``[N, ...]``.

    Args:
        calib: an ``.npz`` path (array ``x``), a numpy array, or an ``edgekit.data.Split``.
        model_or_path: the float ONNX model (path or ``onnx.ModelProto``) the data calibrates.
        samples: use at most this many samples (the first N).

    Raises:
        ShapeError: empty, non-floating, non-finite, or shaped unlike the model's input.
        InputFileError: the npz is missing or unreadable.
    """
    from edgekit.data import check_calibration, load_calibration

    _, shape, elem = model_input(model_or_path)
    if elem not in _FLOAT_TYPES:
        raise ShapeError(f"the model input must be float32 to calibrate, got ONNX element type {elem}")
    if samples is not None and samples <= 0:
        raise ConfigError(f"samples must be a positive integer, got {samples}")
    if isinstance(calib, (str, os.PathLike)):
        p = Path(calib)
        if p.suffix.lower() != ".npz":
            raise InputFileError(f"calibration file {p} must be an .npz with an array 'x'")
        return load_calibration(p, shape, max_samples=samples)
    x = getattr(calib, "x", calib)  # Split or array
    if not isinstance(x, np.ndarray):
        raise ShapeError(f"calibration data must be a numpy array, an .npz path or a Split, got {type(calib).__name__}")
    return check_calibration(x, shape, where or "calibration data", max_samples=samples)


def array_reader(x: np.ndarray, input_name: str, batch_size: int = 16, desc: str = "calibrate"):
    """An ``onnxruntime.quantization.CalibrationDataReader`` over ``x`` in batches, with a progress bar."""
    from onnxruntime.quantization import CalibrationDataReader

    from edgekit._log import progress

    class _ArrayReader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = [np.ascontiguousarray(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
            self.rewind()

        def get_next(self):
            try:
                i = next(self._it)
            except StopIteration:
                return None
            return {input_name: self.batches[i]}

        def rewind(self) -> None:
            self._it = iter(progress(range(len(self.batches)), desc=desc, total=len(self.batches)))

        def __len__(self) -> int:
            return len(self.batches)

    return _ArrayReader()
