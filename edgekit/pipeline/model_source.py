"""Turn a recipe's ``model:`` section into the reference variant's first module or artifact."""
from __future__ import annotations

import importlib
import inspect
from typing import Any, Optional

import numpy as np
import torch.nn as nn

from edgekit._io import require_file
from edgekit.errors import ConfigError, ShapeError, first_line


def zoo_kwargs(name: str, kwargs: dict, splits: Any) -> dict:
    """Fill data-dependent arguments (num_classes, in_channels, input_size, image_size) the user left out."""
    from edgekit.models import (
        MODELS,
        _load_architectures,  # noqa: F401
    )

    params = inspect.signature(MODELS.get(name)).parameters
    out = dict(kwargs)
    shape = tuple(splits.input_shape)
    if "num_classes" in params and "num_classes" not in out and splits.num_classes:
        out["num_classes"] = splits.num_classes
    if len(shape) == 3:
        if "in_channels" in params:
            out.setdefault("in_channels", shape[0])
        if "image_size" in params:
            out.setdefault("image_size", shape[1])
    elif len(shape) == 2 and "input_size" in params:
        out.setdefault("input_size", shape[1])
    return out


def build_module(source: Any, splits: Any) -> Optional[nn.Module]:
    """The reference ``nn.Module`` for a ModelSource (None for an ONNX-only source)."""
    from edgekit.models import create_model, load_checkpoint

    if source.name:
        model = create_model(source.name, **zoo_kwargs(source.name, source.kwargs, splits))
    elif source.checkpoint:
        model, _ = load_checkpoint(source.checkpoint)
    else:
        require_file(source.onnx, "model.onnx")
        return None
    check_fits(model, splits)
    return model


def import_plugins(modules) -> None:
    """Import the recipe's ``model.imports`` so the architectures they register exist."""
    for i, name in enumerate(modules):
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ConfigError(f"model.imports[{i}]: cannot import '{name}': {e}") from None


def check_fits(model: nn.Module, splits: Any) -> None:
    """Raise ShapeError when the data's samples cannot be fed to ``model`` or classes do not match."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(splits.val.x[:2]))
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as e:  # any forward failure here means the data does not fit
        raise ShapeError(f"the data's samples (shape {list(splits.input_shape)}) do not fit the model: "
                         f"{first_line(e, 200)}") from None
    out = out[0] if isinstance(out, (tuple, list)) else out
    if splits.labelled and out.shape[-1] != splits.num_classes:
        raise ShapeError(f"the model outputs {out.shape[-1]} classes but the data has {splits.num_classes}")


def onnx_input_fits(path: str, splits: Any) -> None:
    """Raise ShapeError when an ONNX model's input does not take the data's per-sample shape."""
    from edgekit.backends.ort import OrtRunner

    require_file(path, "model.onnx")
    r = OrtRunner(path, ["CPUExecutionProvider"], threads=1)
    want = r.input_shape[1:]
    got = tuple(splits.input_shape)
    if len(want) != len(got) or any(w is not None and w != g for w, g in zip(want, got)):
        raise ShapeError(f"{path}: input '{r.input_name}' expects per-sample shape {list(want)}, data has {list(got)}")
