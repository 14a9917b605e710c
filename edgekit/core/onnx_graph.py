"""Reading ONNX graphs: one copy of the loader, the input readers and the int8 op sets every layer uses.

Example:
    >>> model = load_model("model.int8.onnx")
    >>> graph_inputs(model)
    [GraphInput(name='input', dims=[None, 3, 32, 32], elem_type=1)]
    >>> onnx_precision(model), has_qdq(model)
    ('int8', True)
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

from edgekit.errors import ConfigError, InputFileError, ShapeError

# Q/DQ pairs: explicit quantisation (static QDQ artifacts, TensorRT's explicit-precision input).
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})
# Ops that execute as integer kernels (ONNX standard and ONNX Runtime contrib, incl. what ORT fuses QDQ into).
INT8_KERNEL_OPS = frozenset({"QLinearConv", "ConvInteger", "MatMulInteger", "QLinearMatMul", "QGemm",
                             "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "DynamicQuantizeLSTM", "QAttention",
                             "QLinearConvTranspose", "NhwcQLinearConv"})
# Any of these in a graph means it is already quantised (static QDQ, dynamic, or QOperator format).
QUANTISED_OPS = QDQ_OPS | INT8_KERNEL_OPS | {"DynamicQuantizeLinear", "QLinearAdd"}


@dataclass(frozen=True)
class GraphInput:
    """A graph input that is not an initializer: name, dims (None = dynamic) and ONNX element type."""

    name: str
    dims: List[Optional[int]]
    elem_type: int

    @property
    def shown(self) -> str:
        """``Nx3x32x32``-style text, ``N`` for a dynamic dim."""
        return "x".join("N" if d is None else str(d) for d in self.dims)


def load_model(path_or_model: Any, *, copy: bool = False):
    """An ``onnx.ModelProto`` from a path (external data not loaded) or a ModelProto (copied when ``copy``).

    Raises:
        InputFileError: the file is missing or not a readable ONNX model.

    Example:
        >>> load_model("model.onnx").graph.name
    """
    import onnx

    if isinstance(path_or_model, onnx.ModelProto):
        if not copy:
            return path_or_model
        model = onnx.ModelProto()
        model.CopyFrom(path_or_model)
        return model
    path = os.fspath(path_or_model)
    if not os.path.isfile(path):
        raise InputFileError(f"ONNX model not found: {path}")
    try:
        return onnx.load(path, load_external_data=False)  # weights are not needed to read the graph
    except Exception as e:
        raise InputFileError(f"{path}: not a readable ONNX model ({type(e).__name__}: {str(e)[:160]})") from None


def graph_inputs(path_or_model: Any) -> List[GraphInput]:
    """The graph inputs that are not initializers, in graph order.

    Example:
        >>> [(i.name, i.dims) for i in graph_inputs("model.onnx")]
        [('input', [None, 3, 32, 32])]
    """
    graph = load_model(path_or_model).graph
    inits = {i.name for i in graph.initializer}
    out = []
    for inp in graph.input:
        if inp.name in inits:
            continue
        t = inp.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in t.shape.dim]
        out.append(GraphInput(inp.name, dims, int(t.elem_type)))
    return out


def single_input(path_or_model: Any, purpose: str) -> GraphInput:
    """The model's only graph input; ShapeError naming ``purpose`` when it has none or several.

    Example:
        >>> single_input("model.onnx", "quantisation").dims[1:]
        [3, 32, 32]
    """
    inputs = graph_inputs(path_or_model)
    if len(inputs) != 1:
        raise ShapeError(f"{purpose} supports models with exactly one input; this one has "
                         f"{len(inputs)}: {[i.name for i in inputs]}")
    return inputs[0]


def fix_input_shapes(model, input_shape: Optional[Sequence[int]], where: str) -> List[int]:
    """Set the first input of ``model`` (modified in place) to ``[1, *input_shape]``; other inputs' dynamic dims
    become 1. Without ``input_shape`` the first input's own dims are used (dynamic ones other than the batch are
    a ShapeError). Returns the shape set.

    Example:
        >>> fix_input_shapes(load_model("m.onnx", copy=True), (3, 32, 32), "m.onnx")
        [1, 3, 32, 32]
    """
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if not inputs:
        raise ShapeError(f"{where}: the graph has no inputs")
    first = inputs[0]
    dims = first.type.tensor_type.shape.dim
    if input_shape is not None:
        want = [1, *[int(d) for d in input_shape]]
        if len(dims) and len(dims) != len(want):
            shown = "x".join(d.dim_param or str(d.dim_value) if (d.dim_param or d.dim_value) else "?" for d in dims)
            raise ShapeError(f"{where}: input '{first.name}' has rank {len(dims)} ({shown}); "
                             f"input_shape {list(input_shape)} gives rank {len(want)} with the batch")
        for idx, (d, w) in enumerate(zip(dims, want)):
            if idx and d.dim_value and d.dim_value != w:
                raise ShapeError(f"{where}: input '{first.name}' has fixed size {d.dim_value} where input_shape "
                                 f"asks {w} (shape {want[1:]} per sample)")
    else:
        want = [1] + [d.dim_value if d.dim_value > 0 else -1 for d in list(dims)[1:]]
        if any(w < 0 for w in want):
            raise ShapeError(f"{where}: input '{first.name}' has dynamic dimensions besides the batch; "
                             "pass input_shape (per sample, e.g. (3, 224, 224))")
    del first.type.tensor_type.shape.dim[:]
    for w in want:
        first.type.tensor_type.shape.dim.add().dim_value = w
    for other in inputs[1:]:
        for d in other.type.tensor_type.shape.dim:
            if not d.dim_value:
                d.dim_value = 1
    return want


# ONNX TensorProto element type -> edgekit signature dtype (the dtypes a signature can declare)
_SIGNATURE_DTYPES = {1: "float32", 10: "float16", 7: "int64", 6: "int32", 9: "bool"}
_GATHER_OPS = ("Gather", "GatherElements")


def _dim_names(inp) -> List[Any]:
    """An input's dims: ints where fixed, the ``dim_param`` (or ``dim<i>``) where dynamic; first = ``batch``."""
    dims: List[Any] = []
    for i, d in enumerate(inp.type.tensor_type.shape.dim):
        if d.HasField("dim_value") and d.dim_value > 0:
            dims.append(int(d.dim_value))
        else:
            dims.append("batch" if i == 0 else (d.dim_param or f"dim{i}"))
    return dims or ["batch"]


def _embedding_rows(model) -> Dict[str, int]:
    """``{graph input: rows of the table it indexes}`` for inputs fed (maybe via Cast) into a Gather of an
    initializer: token ids index the word embedding, so its rows are the vocabulary size."""
    inits = {i.name: list(i.dims) for i in model.graph.initializer}
    consts = {n.output[0]: list(a.t.dims) for n in model.graph.node if n.op_type == "Constant"
              for a in n.attribute if a.name == "value"}
    table = {**consts, **inits}
    alias = {i.name: i.name for i in model.graph.input}
    for n in model.graph.node:  # follow Cast/Identity/Unsqueeze-free chains from the input
        if n.op_type in ("Cast", "Identity") and n.input and n.input[0] in alias:
            alias[n.output[0]] = alias[n.input[0]]
    rows: Dict[str, int] = {}
    for n in model.graph.node:
        if n.op_type in _GATHER_OPS and len(n.input) > 1 and n.input[1] in alias and n.input[0] in table:
            dims = table[n.input[0]]
            if len(dims) == 2 and dims[0] > 1:
                name = alias[n.input[1]]
                rows[name] = min(rows.get(name, dims[0]), int(dims[0]))
    return rows


def position_rows(path_or_model: Any) -> Optional[int]:
    """A hint for the longest sequence a text graph takes: the rows of the embedding tables it gathers with
    indices it computes itself (position tables), smallest first; None when there is none. Only a hint (used
    to pick a default sequence length), never a check.

    Example:
        >>> position_rows("bert.onnx")
        512
    """
    model = load_model(path_or_model)
    inits = {i.name: list(i.dims) for i in model.graph.initializer}
    fed = _embedding_rows(model)
    inputs = {i.name for i in model.graph.input}
    rows = [inits[n.input[0]][0] for n in model.graph.node
            if n.op_type in _GATHER_OPS and len(n.input) > 1 and n.input[0] in inits and len(inits[n.input[0]]) == 2
            and n.input[1] not in inputs and n.input[1] not in fed and inits[n.input[0]][0] > 2]
    return min(rows) if rows else None


def onnx_signature(path_or_model: Any, *, output: Optional[str] = None):
    """The :class:`~edgekit.core.signature.Signature` of an ONNX graph: its inputs in order, each with dtype and
    shape (dynamic dims by their ``dim_param`` name, the first one ``batch``).

    Integer inputs that index an embedding table (a ``Gather`` on an initializer) are token inputs: the table's
    row count is the vocabulary size (the smallest such table when several inputs share it), so synthetic ids
    and data checks stay inside it. Returns None when an input has a dtype a signature cannot declare
    (e.g. uint8 images): such models are fed as one plain array.

    Raises:
        InputFileError: the file is missing or unreadable. ShapeError: the graph has no inputs.

    Example:
        >>> onnx_signature("bert.onnx").describe()
        'input_ids: int64[batch, sequence], attention_mask: int64[batch, sequence], token_type_ids: ...'
    """
    from edgekit.core.signature import InputSpec, Signature

    model = load_model(path_or_model)
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if not inputs:
        raise ShapeError("the ONNX graph has no inputs")
    specs = []
    for inp in inputs:
        dtype = _SIGNATURE_DTYPES.get(int(inp.type.tensor_type.elem_type))
        if dtype is None:
            return None
        try:
            specs.append(InputSpec(inp.name, dtype, tuple(_dim_names(inp))))
        except ConfigError:
            return None
    rows = _embedding_rows(model)
    tokens = tuple(s.name for s in specs if not s.is_float and s.name in rows and "type" not in s.name)
    vocab = min((rows[t] for t in tokens), default=None)
    return Signature(tuple(specs), output=output, vocab_size=vocab, token_inputs=tokens)


def op_types(path_or_model: Any, functions: bool = True) -> set:
    """The op types of the graph's nodes (and of its local functions' nodes when ``functions``)."""
    model = load_model(path_or_model)
    nodes = list(model.graph.node) + ([n for f in model.functions for n in f.node] if functions else [])
    return {n.op_type for n in nodes}


def has_qdq(path_or_model: Any) -> bool:
    """True when the graph (or one of its local functions) holds QuantizeLinear/DequantizeLinear.

    Example:
        >>> has_qdq("model_int8_trt.onnx")
        True
    """
    return bool(op_types(path_or_model) & QDQ_OPS)


def onnx_precision(path_or_model: Any) -> str:
    """``"int8"`` when the graph holds any quantised op (QDQ, integer kernels, dynamic quantisation), else ``"fp32"``.

    Example:
        >>> onnx_precision("model.int8.onnx")
        'int8'
    """
    return "int8" if op_types(path_or_model, functions=False) & QUANTISED_OPS else "fp32"


__all__ = ["GraphInput", "INT8_KERNEL_OPS", "QDQ_OPS", "QUANTISED_OPS", "fix_input_shapes",
           "graph_inputs", "has_qdq", "load_model", "onnx_precision", "onnx_signature", "op_types", "single_input"]
