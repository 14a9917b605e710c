"""Calibration data for ORT's static quantiser: validated against the model's inputs, then fed in batches.

A model with one float input takes one array (an ``.npz`` with ``x``); a model with several or integer inputs
(``input_ids``, ``attention_mask``, ...) takes named arrays: an ``.npz`` with one array per input name (``y``
ignored), a mapping, or a Split whose ``x`` is a mapping. Every named input is checked against the graph's
signature (names, dtypes, shapes, token ids inside the vocabulary) before calibration starts.

Example:
    >>> x = calibration_inputs("calib_data/digits32_rgb.npz", "model.onnx", samples=128)
    >>> reader = inputs_reader(x, "input", batch_size=16)
    >>> named = calibration_inputs("bert_calib.npz", "bert.onnx")        # {"input_ids": ..., ...}
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

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


def _read_named_npz(path: Path) -> Dict[str, np.ndarray]:
    if not path.is_file():
        raise InputFileError(f"calibration file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as e:
        raise InputFileError(f"{path}: not a readable .npz file ({type(e).__name__})") from None


def calibration_inputs(calib: Any, model_or_path: Any, samples: Optional[int] = None,
                       where: Optional[str] = None) -> Any:
    """Validated calibration samples: a float32 array for a one-float-input model, else ``{input name: array}``.

    Args:
        calib: an ``.npz`` path (``x``, or one array per input name), an array, a mapping of arrays, or a Split.
        model_or_path: the float ONNX model (path or ``onnx.ModelProto``) the data calibrates.
        samples: use at most this many samples (the first N).

    Raises:
        ShapeError: names, dtypes or shapes unlike the model's inputs (the message lists what it takes).
        InputFileError: the npz is missing or unreadable. ConfigError: ``samples`` not positive.

    Example:
        >>> calibration_inputs("bert_calib.npz", "bert.onnx", samples=64)["input_ids"].shape
        (64, 128)
    """
    from edgekit.core.onnx_graph import onnx_signature
    from edgekit.core.tensors import num_samples, take

    sig = onnx_signature(model_or_path)
    if sig is None or sig.single:
        return prepare_calibration(calib, model_or_path, samples, where)
    if samples is not None and samples <= 0:
        raise ConfigError(f"samples must be a positive integer, got {samples}")
    where = where or (str(calib) if isinstance(calib, (str, os.PathLike)) else "calibration data")
    if isinstance(calib, (str, os.PathLike)):
        p = Path(calib)
        if p.suffix.lower() != ".npz":
            raise InputFileError(f"calibration file {p} must be an .npz with one array per model input "
                                 f"({', '.join(sig.names)})")
        arrays = _read_named_npz(p)
        arrays.pop("y", None)
        if len(sig.inputs) == 1 and set(arrays) == {"x"}:
            arrays = {sig.names[0]: arrays["x"]}
        x: Any = arrays
    else:
        x = getattr(calib, "x", calib)
    if not isinstance(x, Mapping) and len(sig.inputs) == 1:
        x = {sig.names[0]: np.asarray(x)}
    sig.check(x, where=where)
    if num_samples(x) == 0:
        raise ShapeError(f"{where}: calibration data is empty")
    x = {k: np.asarray(v) for k, v in x.items()}
    return take(x, slice(0, samples)) if samples is not None else x


def inputs_reader(x: Any, input_name: str, batch_size: int = 16, desc: str = "calibrate"):
    """An ``onnxruntime.quantization.CalibrationDataReader`` over one array (fed as ``input_name``) or named
    arrays (every input fed by its name), in batches, with a progress bar."""
    from onnxruntime.quantization import CalibrationDataReader

    from edgekit._log import progress
    from edgekit.core.tensors import contiguous, is_named, num_samples, take

    named = x if is_named(x) else {input_name: x}

    class _ArrayReader(CalibrationDataReader):
        def __init__(self) -> None:
            n = num_samples(named)
            self.batches = [contiguous(take(named, slice(i, i + batch_size))) for i in range(0, n, batch_size)]
            self.rewind()

        def get_next(self):
            try:
                i = next(self._it)
            except StopIteration:
                return None
            return self.batches[i]

        def rewind(self) -> None:
            self._it = iter(progress(range(len(self.batches)), desc=desc, total=len(self.batches)))

        def __len__(self) -> int:
            return len(self.batches)

    return _ArrayReader()
