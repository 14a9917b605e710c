"""Model inputs as one array or a mapping of named arrays, and model outputs of any shape.

Every function here accepts both forms, so code that batches, slices, converts or calls a model never needs to
know whether the model has one input (an image batch) or several (``input_ids``, ``attention_mask``, ...).

Example:
    >>> x = {"input_ids": ids, "attention_mask": mask}
    >>> num_samples(x), take(x, slice(0, 8))["input_ids"].shape
    >>> logits = prediction(model(**to_torch(x)))        # a tensor, a tuple, a dict or a HF ModelOutput
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence, Union

import numpy as np

from edgekit.errors import ShapeError

Inputs = Union[np.ndarray, Mapping[str, np.ndarray]]


class NamedInputs(dict):
    """Named arrays of one batch (``{"input_ids": ..., "attention_mask": ...}``) that also index like one array.

    A string key gives that input; anything else (a slice, an index array, a boolean mask) is applied to every
    array, so ``x[:64]`` or ``x[idx]`` works whether a split holds one array or named ones. Likewise ``len(x)``
    is the number of samples, as for one array (``len(x.keys())`` counts the inputs).

    Example:
        >>> x = NamedInputs(input_ids=ids, attention_mask=mask)
        >>> x[:8]["input_ids"].shape[0], len(x) == num_samples(x)
    """

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return dict.__getitem__(self, key)
        return NamedInputs({k: v[key] for k, v in self.items()})

    def __len__(self) -> int:
        return num_samples(self) if dict.__len__(self) else 0

    @property
    def dtypes(self) -> Dict[str, Any]:
        """Each input's dtype."""
        return {k: v.dtype for k, v in self.items()}


def is_named(x: Any) -> bool:
    """True when ``x`` is a mapping of input name to array."""
    return isinstance(x, Mapping)


def num_samples(x: Inputs) -> int:
    """The number of samples (leading axis) of one array or of every named array (which must agree)."""
    if not is_named(x):
        return int(np.shape(x)[0])
    sizes = {k: int(np.shape(v)[0]) for k, v in x.items()}
    if not sizes:
        raise ShapeError("no named inputs: the mapping of input name to array is empty")
    if len(set(sizes.values())) > 1:
        raise ShapeError(f"named inputs disagree on the number of samples: {sizes}")
    return next(iter(sizes.values()))


def take(x: Inputs, index: Any) -> Inputs:
    """``x[index]`` applied to the array or to every named array (a slice, an index array or a mask)."""
    if is_named(x):
        return NamedInputs({k: v[index] for k, v in x.items()})
    return x[index]


def concat(parts: Sequence[Inputs]) -> Inputs:
    """Concatenate batches along the sample axis."""
    if parts and is_named(parts[0]):
        return NamedInputs({k: np.concatenate([p[k] for p in parts]) for k in parts[0]})
    return np.concatenate(list(parts))


def contiguous(x: Inputs, float_dtype: Optional[Any] = None, only_double: bool = False) -> Inputs:
    """C-contiguous copies; floating arrays cast to ``float_dtype`` when given (with ``only_double``, float64 ones
    only, so float16 inputs stay float16), integers and booleans kept as they are."""
    def one(a):
        a = np.asarray(a)
        if float_dtype is not None and np.issubdtype(a.dtype, np.floating) and (
                not only_double or a.dtype == np.float64):
            a = a.astype(float_dtype, copy=False)
        return np.ascontiguousarray(a)

    return NamedInputs({k: one(v) for k, v in x.items()}) if is_named(x) else one(x)


def sample_shapes(x: Inputs) -> Union[tuple, Dict[str, tuple]]:
    """Per-sample shape(s): ``(3, 32, 32)`` or ``{"input_ids": (128,), ...}``."""
    if is_named(x):
        return {k: tuple(np.shape(v)[1:]) for k, v in x.items()}
    return tuple(np.shape(x)[1:])


def to_torch(x: Inputs, device: Any = None, float_dtype: Any = None):
    """Torch tensors (on ``device``) for one array or for each named array; integer dtypes are kept."""
    import torch

    def one(a):
        t = torch.from_numpy(np.ascontiguousarray(a))
        if float_dtype is not None and t.is_floating_point():
            t = t.to(float_dtype)
        return t if device is None else t.to(device)

    return NamedInputs({k: one(v) for k, v in x.items()}) if is_named(x) else one(x)


def to_numpy(x: Any) -> Inputs:
    """Numpy arrays for one tensor/array or for each named one (CPU, detached, dtypes kept)."""
    def one(a):
        return a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a)

    return NamedInputs({k: one(v) for k, v in x.items()}) if is_named(x) else one(x)


def row_bytes(x: Inputs) -> list:
    """One ``bytes`` per sample holding every input's row (a content key for caches)."""
    if not is_named(x):
        a = np.ascontiguousarray(to_numpy(x))
        return [r.tobytes() for r in a.reshape(len(a), -1)]
    parts = [np.ascontiguousarray(to_numpy(x[k])) for k in sorted(x)]
    flat = [p.reshape(len(p), -1) for p in parts]
    return [b"".join(f[i].tobytes() for f in flat) for i in range(num_samples(x))]


def call_module(module: Any, x: Any) -> Any:
    """Call a module with one tensor positionally or with named tensors as keyword arguments."""
    return module(**x) if is_named(x) else module(x)


def prediction(out: Any, output: Optional[str] = None) -> Any:
    """The prediction tensor inside a model's output.

    Tensors and arrays pass through; tuples/lists give their first element; dicts and Hugging Face
    ``ModelOutput`` give ``output`` when named, else ``logits``, else their first value.

    Raises:
        ShapeError: ``output`` names a field the model does not return.
    """
    if isinstance(out, Mapping) or hasattr(out, "keys") and hasattr(out, "__getitem__") and not hasattr(out, "shape"):
        keys = list(out.keys())
        if output is not None:
            if output not in keys:
                raise ShapeError(f"the model's outputs have no field '{output}'; it returns: {', '.join(keys)}")
            return out[output]
        if "logits" in keys:
            return out["logits"]
        if not keys:
            raise ShapeError("the model returned an empty output mapping")
        return out[keys[0]]
    if isinstance(out, (tuple, list)):
        if not out:
            raise ShapeError("the model returned an empty tuple")
        return out[0]
    return out
