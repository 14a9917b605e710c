"""Turn a recipe's ``model:`` section into the reference variant's first module or artifact."""
from __future__ import annotations

import importlib
import inspect
import os
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import torch.nn as nn

from edgekit._io import require_file
from edgekit.core.tensors import is_named, take
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
    if "vocab_size" in params and getattr(splits, "vocab_size", None):
        out.setdefault("vocab_size", splits.vocab_size)
    if "n_positions" in params and getattr(splits, "task", None) == "causal-lm":
        out.setdefault("n_positions", int(shape[0]))  # the LM's context: the data's window
    return out


def build_module(source: Any, splits: Any, seed: Optional[int] = None) -> Optional[nn.Module]:
    """The reference ``nn.Module`` for a ModelSource (None for an ONNX-only source).

    ``model.hf`` loads a local Hugging Face directory; when it does not exist and ``model.config`` is given, the
    directory is first created from the config with random weights (num_labels, vocab_size, image_size and
    num_channels taken from the data unless the config sets them; the data's trained tokenizer saved with it),
    initialised from ``seed`` (None: torch's current random state, which a recipe stage has seeded).
    """
    from edgekit.models import create_model, load_checkpoint

    if source.name:
        model = create_model(source.name, **zoo_kwargs(source.name, source.kwargs, splits))
    elif source.checkpoint:
        model, _ = load_checkpoint(source.checkpoint)
    elif getattr(source, "hf", None):
        model = _hf_module(source, splits, seed)
    else:
        require_file(source.onnx, "model.onnx")
        return None
    check_fits(model, splits)
    return model


def _hf_module(source: Any, splits: Any, seed: Optional[int]) -> nn.Module:
    from pathlib import Path

    from edgekit.models.hf import load_hf, save_hf_model

    path = Path(source.hf)
    if not path.exists() and source.config:
        shape = tuple(splits.input_shape)
        image = {"image_size": shape[1], "num_channels": shape[0]} if len(shape) == 3 else {}
        classes = None if source.task == "causal-lm" else (splits.num_classes or None)
        save_hf_model(path, source.config, source.task, num_classes=classes,
                      tokenizer=getattr(splits, "tokenizer", None), seed=seed,
                      vocab_size=getattr(splits, "vocab_size", None), **image)
    return load_hf(path, source.task)


def import_plugins(modules: Sequence[str], base_dir: Optional[str | os.PathLike] = None) -> None:
    """Import the recipe's ``model.imports`` so the architectures they register exist.

    A module is looked up in ``base_dir`` (the recipe's folder) first, then in the current directory, then on
    ``sys.path`` — so ``imports: [mynet]`` finds ``mynet.py`` next to the recipe with no PYTHONPATH.
    """
    dirs = [str(Path(d).resolve()) for d in (base_dir, Path.cwd()) if d is not None]
    for i, name in enumerate(modules):
        added = [d for d in dict.fromkeys(dirs) if d not in sys.path]
        sys.path[:0] = added
        try:
            importlib.import_module(name)
        except (ImportError, ValueError, TypeError) as e:
            where = " or ".join(dict.fromkeys(dirs)) or "sys.path"
            raise ConfigError(f"model.imports[{i}]: cannot import '{name}' (looked in {where}): {e}") from None
        finally:
            for d in added:
                if d in sys.path:
                    sys.path.remove(d)


def check_fits(model: nn.Module, splits: Any) -> None:
    """Raise ShapeError when the data's samples cannot be fed to ``model`` or classes do not match.

    A model with a signature (Hugging Face models) has every split checked against it first: input names,
    dtypes, token ids inside the vocabulary, sequence length within the model's positions.
    """
    import torch

    from edgekit.core.tensors import call_module, prediction, to_torch

    sig = getattr(model, "edgekit_signature", None)
    if sig is not None:
        for part in ("train", "val", "test"):
            sig.check(getattr(splits, part).x, where=f"data ({part} split)")
    x = to_torch(take(splits.val.x, slice(0, 2)))
    model.eval()
    try:
        with torch.no_grad():
            out = prediction(call_module(model, x))
    except Exception as e:  # any forward failure here means the data does not fit
        raise ShapeError(f"the data's samples ({_describe(splits)}) do not fit the model: "
                         f"{first_line(e, 200)}") from None
    if getattr(splits, "task", None) == "causal-lm" and out.shape[-1] != splits.num_classes:
        raise ShapeError(f"the model's vocabulary has {out.shape[-1]} tokens but the data's tokenizer has "
                         f"{splits.num_classes}; the tokenizer does not match the model (give data.tokenizer: the "
                         "model's tokenizer.json, or build the model with vocab_size from the data)")
    if splits.labelled and out.shape[-1] != splits.num_classes:
        raise ShapeError(f"the model outputs {out.shape[-1]} classes but the data has {splits.num_classes}")


def _describe(splits: Any) -> str:
    x = splits.val.x
    if is_named(x):
        return ", ".join(f"{k}: {v.dtype}{list(v.shape[1:])}" for k, v in x.items())
    return f"shape {list(splits.input_shape)}"


def onnx_input_fits(path: str, splits: Any) -> None:
    """Raise ShapeError when an ONNX model's inputs do not take the data (names, dtypes, per-sample shapes)."""
    require_file(path, "model.onnx")
    if is_named(splits.val.x):
        _named_onnx_inputs_fit(path, splits)
        return
    from edgekit.backends.ort import OrtRunner

    r = OrtRunner(path, ["CPUExecutionProvider"], threads=1)
    want = r.input_shape[1:]
    got = tuple(splits.input_shape)
    if len(want) != len(got) or any(w is not None and w != g for w, g in zip(want, got)):
        raise ShapeError(f"{path}: input '{r.input_name}' expects per-sample shape {list(want)}, data has {list(got)}")


def _named_onnx_inputs_fit(path: str, splits: Any) -> None:
    import onnx

    from edgekit.core.onnx_graph import graph_inputs
    from edgekit.core.signature import InputSpec, Signature, dtype_name

    specs = tuple(InputSpec(g.name, dtype_name(onnx.helper.tensor_dtype_to_np_dtype(g.elem_type)),
                            ("batch", *[d if d else f"dim{i}" for i, d in enumerate(g.dims[1:], 1)]))
                  for g in graph_inputs(path))
    Signature(specs).check(take(splits.val.x, slice(0, 2)), where=f"{path} with the recipe's data")
