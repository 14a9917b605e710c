"""Model signatures: the named, typed inputs a model takes and how to read its prediction.

A signature travels with a model through every stage (checkpoint meta, ONNX sidecar, runner) so that token
ids stay integers, several inputs keep their names, and every input is checked before any work::

    sig = Signature((InputSpec("input_ids", "int64", ("batch", "sequence")),
                     InputSpec("attention_mask", "int64", ("batch", "sequence"))), output="logits", vocab_size=8000)
    sig.check({"input_ids": ids, "attention_mask": mask}, where="data.path")

Model inputs everywhere in edgekit are either one ``np.ndarray`` (a model with one input) or a mapping of input
name to array (several named inputs, same leading batch axis); :mod:`edgekit.core.tensors` handles both.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from edgekit.errors import ConfigError, ShapeError, did_you_mean

DTYPES = ("float32", "float16", "int64", "int32", "bool")
_FLOAT = ("float32", "float16")
Dim = Union[int, str]


@dataclass(frozen=True)
class InputSpec:
    """One model input: name, dtype (one of :data:`DTYPES`) and shape with symbolic axes (``batch``, ``sequence``)."""

    name: str
    dtype: str = "float32"
    shape: Tuple[Dim, ...] = ("batch",)

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ConfigError(f"input '{self.name}': dtype '{self.dtype}'{did_you_mean(self.dtype, DTYPES)} is not "
                              f"supported; allowed: {', '.join(DTYPES)}")
        if not self.shape:
            raise ConfigError(f"input '{self.name}': shape must list at least the batch axis")
        for d in self.shape:
            if not (isinstance(d, str) and d) and not (isinstance(d, int) and d > 0):
                raise ConfigError(f"input '{self.name}': shape {list(self.shape)} must hold positive sizes or axis "
                                  f"names such as 'batch' or 'sequence'")

    @property
    def is_float(self) -> bool:
        return self.dtype in _FLOAT

    @property
    def sample_shape(self) -> Tuple[Dim, ...]:
        """The shape without the leading batch axis."""
        return tuple(self.shape[1:])

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    def shown(self) -> str:
        return f"{self.name}: {self.dtype}[{', '.join(str(d) for d in self.shape)}]"


@dataclass(frozen=True)
class Signature:
    """Ordered named inputs plus how to read the prediction from the model's outputs.

    Attributes:
        inputs: the model's inputs in call order.
        output: the output to read the prediction from: an output/field name (``logits``), or None for the first.
        task: ``classification`` (logits [N, classes]) or ``causal-lm`` (logits [N, T, vocab]).
        vocab_size: token ids must lie in ``[0, vocab_size)`` (token inputs only).
        max_positions: the longest sequence the model accepts (position table size).
    """

    inputs: Tuple[InputSpec, ...]
    output: Optional[str] = None
    task: str = "classification"
    vocab_size: Optional[int] = None
    max_positions: Optional[int] = None
    token_inputs: Tuple[str, ...] = field(default=())  # inputs holding token ids (checked against vocab_size)

    def __post_init__(self) -> None:
        if not self.inputs:
            raise ConfigError("a model signature needs at least one input")
        names = [i.name for i in self.inputs]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(f"model inputs must have distinct names; repeated: {', '.join(dup)}")
        unknown = [t for t in self.token_inputs if t not in names]
        if unknown:
            raise ConfigError(f"token_inputs {unknown} are not inputs of the model ({', '.join(names)})")

    @property
    def names(self) -> Tuple[str, ...]:
        return tuple(i.name for i in self.inputs)

    @property
    def single(self) -> bool:
        """True for a model with one float input, fed as a plain array."""
        return len(self.inputs) == 1 and self.inputs[0].is_float

    def __getitem__(self, name: str) -> InputSpec:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def describe(self) -> str:
        """``input_ids: int64[batch, sequence], attention_mask: ...`` for messages and reports."""
        return ", ".join(i.shown() for i in self.inputs)

    def to_dict(self) -> dict:
        return {"inputs": [i.to_dict() for i in self.inputs], "output": self.output, "task": self.task,
                "vocab_size": self.vocab_size, "max_positions": self.max_positions,
                "token_inputs": list(self.token_inputs)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Signature:
        """Rebuild a signature written by :meth:`to_dict` (checkpoint meta, ONNX sidecar)."""
        try:
            inputs = tuple(InputSpec(str(i["name"]), str(i.get("dtype", "float32")),
                                     tuple(i.get("shape") or ("batch",))) for i in d["inputs"])
        except (KeyError, TypeError) as e:
            raise ConfigError(f"malformed model signature (needs inputs: [{{name, dtype, shape}}]): {e}") from None
        return cls(inputs, d.get("output"), d.get("task", "classification"), d.get("vocab_size"),
                   d.get("max_positions"), tuple(d.get("token_inputs") or ()))

    @classmethod
    def for_array(cls, sample_shape: Sequence[int], dtype: str = "float32", name: str = "input") -> Signature:
        """The signature of a one-input model taking ``[batch, *sample_shape]`` arrays."""
        return cls((InputSpec(name, dtype, ("batch", *[int(d) for d in sample_shape])),))

    def check(self, inputs: Any, where: str = "inputs") -> None:
        """Raise ShapeError/ConfigError when ``inputs`` cannot be fed to a model with this signature.

        Checks, in order: names (missing, extra), dtype kind (float data for an integer input is refused, never
        cast), rank and fixed sizes, one batch size across inputs, token ids within the vocabulary, sequence length
        within ``max_positions``.
        """
        arrays = self._as_named(inputs, where)
        batch = None
        for spec in self.inputs:
            a = arrays[spec.name]
            _check_kind(spec, a, where)
            _check_shape(spec, a, where)
            if batch is not None and a.shape[0] != batch:
                raise ShapeError(f"{where}: input '{spec.name}' has {a.shape[0]} samples but the others have {batch}")
            batch = a.shape[0]
            self._check_ranges(spec, a, where)

    def _as_named(self, inputs: Any, where: str) -> Dict[str, np.ndarray]:
        if isinstance(inputs, Mapping):
            got, want = set(inputs), set(self.names)
            missing, extra = [n for n in self.names if n not in got], sorted(got - want)
            if missing or extra:
                parts = ([f"missing {', '.join(missing)}"] if missing else []) + \
                        ([f"unexpected {', '.join(extra)}{did_you_mean(extra[0], missing or self.names)}"]
                         if extra else [])
                raise ShapeError(f"{where}: inputs do not match the model ({'; '.join(parts)}); the model takes "
                                 f"{self.describe()}")
            return {k: np.asarray(v) for k, v in inputs.items()}
        if len(self.inputs) != 1:
            raise ShapeError(f"{where}: the model takes {len(self.inputs)} named inputs ({self.describe()}); pass a "
                             "mapping of input name to array (an npz with one array per input)")
        return {self.inputs[0].name: np.asarray(inputs)}

    def _check_ranges(self, spec: InputSpec, a: np.ndarray, where: str) -> None:
        if spec.name in self.token_inputs and self.vocab_size and a.size:
            lo, hi = int(a.min()), int(a.max())
            if lo < 0 or hi >= self.vocab_size:
                raise ShapeError(f"{where}: input '{spec.name}' holds token id {hi if hi >= self.vocab_size else lo}, "
                                 f"outside the model's vocabulary [0, {self.vocab_size}); was the data tokenised with "
                                 "another tokenizer?")
        if self.max_positions and a.ndim >= 2 and spec.name in self.token_inputs and a.shape[1] > self.max_positions:
            raise ShapeError(f"{where}: input '{spec.name}' has sequence length {a.shape[1]}, longer than the model's "
                             f"{self.max_positions} positions; truncate (max_length) to at most {self.max_positions}")

    def synthetic(self, batch: int, seed: int = 0, sequence: Optional[int] = None) -> Any:
        """Random inputs of this signature: floats N(0,1), token ids inside the vocabulary, masks of ones.

        Symbolic axes other than ``batch`` take ``sequence`` (default 128, capped by ``max_positions``).
        """
        rng = np.random.default_rng(seed)
        seq = sequence or min(128, self.max_positions or 128)
        out: Dict[str, np.ndarray] = {}
        for spec in self.inputs:
            shape = (batch, *[seq if isinstance(d, str) else d for d in spec.sample_shape])
            if spec.is_float:
                out[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
            elif spec.dtype == "bool" or "mask" in spec.name:
                out[spec.name] = np.ones(shape, dtype=spec.dtype)
            elif spec.name in self.token_inputs or "ids" in spec.name:
                high = self.vocab_size or 2
                out[spec.name] = rng.integers(0, high if "type" not in spec.name else 1, shape).astype(spec.dtype)
            else:
                out[spec.name] = np.zeros(shape, dtype=spec.dtype)
        return out[self.inputs[0].name] if self.single else out


def _check_kind(spec: InputSpec, a: np.ndarray, where: str) -> None:
    if spec.is_float and not np.issubdtype(a.dtype, np.floating):
        raise ShapeError(f"{where}: input '{spec.name}' is {spec.dtype} but the data is {a.dtype}; give floating-point "
                         "data (edgekit never casts integers to floats silently)")
    if not spec.is_float and np.issubdtype(a.dtype, np.floating):
        raise ShapeError(f"{where}: input '{spec.name}' is {spec.dtype} (e.g. token ids) but the data is {a.dtype}; "
                         "give integer data")
    if spec.is_float and a.size and not np.isfinite(a).all():
        raise ShapeError(f"{where}: input '{spec.name}' contains NaN or infinite values")


def _check_shape(spec: InputSpec, a: np.ndarray, where: str) -> None:
    want = spec.shape
    if a.ndim != len(want) or any(isinstance(w, int) and w != g for w, g in zip(want[1:], a.shape[1:])):
        raise ShapeError(f"{where}: input '{spec.name}' has shape {list(a.shape)} but the model expects "
                         f"[{', '.join(str(d) for d in want)}]")


def numpy_dtype(dtype: str) -> np.dtype:
    """The numpy dtype of a signature dtype name."""
    return np.dtype(dtype)


def dtype_name(dtype: Any) -> str:
    """The signature dtype name of a numpy/torch/ONNX-Runtime dtype (``tensor(int64)`` → ``int64``)."""
    text = str(dtype).replace("torch.", "")
    if text.startswith("tensor(") and text.endswith(")"):
        text = {"float": "float32", "double": "float32"}.get(text[7:-1], text[7:-1])
    aliases = {"float64": "float32", "long": "int64", "int": "int32", "half": "float16", "float": "float32"}
    text = aliases.get(text, text)
    if text not in DTYPES:
        raise ConfigError(f"dtype '{dtype}' is not supported by edgekit signatures; allowed: {', '.join(DTYPES)}")
    return text
