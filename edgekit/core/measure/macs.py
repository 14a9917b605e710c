"""Count multiply-accumulates (MACs) per sample from an ONNX graph.

Shapes come from ONNX shape inference with the batch fixed to 1, so the counts are per sample.
Counted: Conv (grouped/depthwise), ConvTranspose, Gemm, MatMul, Einsum, the integer ops (QLinearConv,
ConvInteger, MatMulInteger, QLinearMatMul and ORT's QGemm / DynamicQuantizeMatMul / MatMulIntegerToFloat),
LSTM/GRU/RNN and Attention. In QDQ graphs a Conv/MatMul/Gemm whose activation *and* weight come from
DequantizeLinear runs as an int8 kernel, so its MACs are flagged ``int8``. Elementwise ops, pooling and
normalisation are not counted (they are memory-bound and small next to the contractions).

Example:
    >>> rep = count_macs_onnx("resnet18.onnx", input_shape=(3, 224, 224))
    >>> rep.total / 1e9, rep.int8_fraction
"""
from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from edgekit.errors import InputFileError, ShapeError

logger = logging.getLogger(__name__)

_INT8_OPS = {"QLinearConv", "ConvInteger", "MatMulInteger", "QLinearMatMul", "QGemm", "DynamicQuantizeMatMul",
             "MatMulIntegerToFloat", "DynamicQuantizeLSTM"}


@dataclass
class NodeMacs:
    """MACs of one graph node (per sample)."""

    name: str
    op_type: str
    macs: int
    int8: bool
    known: bool = True  # False when shapes were missing and the node could not be counted


@dataclass
class MacReport:
    """Total MACs per sample, the int8 part, and one entry per counted node."""

    total: int
    int8: int
    per_node: List[NodeMacs] = field(default_factory=list)
    input_shape: Optional[List[int]] = None  # per sample, first input
    input_shapes: Dict[str, List[int]] = field(default_factory=dict)  # per sample, every input
    shape_inference: str = "onnx"  # onnx | symbolic (ORT's symbolic inference) | incomplete (see ``unknown``)

    @property
    def float(self) -> int:
        """MACs that run in floating point."""
        return self.total - self.int8

    @property
    def int8_fraction(self) -> float:
        """Share of MACs that run as int8 (0..1)."""
        return self.int8 / self.total if self.total else 0.0

    @property
    def unknown(self) -> List[str]:
        """Names of contraction nodes whose shapes could not be inferred (not counted)."""
        return [n.name for n in self.per_node if not n.known]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["int8_fraction"] = self.int8_fraction
        return d


def _load(path_or_model: Any):
    import onnx

    if isinstance(path_or_model, onnx.ModelProto):
        m = onnx.ModelProto()
        m.CopyFrom(path_or_model)
        return m, "<ModelProto>"
    path = os.fspath(path_or_model)
    if not os.path.isfile(path):
        raise InputFileError(f"ONNX model not found: {path}")
    try:
        # External weights are not needed: shape inference reads initializer dims only.
        return onnx.load(path, load_external_data=False), path
    except Exception as e:
        raise InputFileError(f"{path}: not a readable ONNX model ({type(e).__name__}: {str(e)[:120]})") from None


def _set_dims(inp, dims: Sequence[int]) -> None:
    shape = inp.type.tensor_type.shape
    del shape.dim[:]
    for d in dims:
        shape.dim.add().dim_value = int(d)


def _fix_inputs(model, input_shape: Optional[Sequence[int]], inputs: Optional[Mapping[str, Sequence[int]]],
                sequence: Optional[int], where: str) -> Dict[str, List[int]]:
    """Give every graph input a concrete shape with batch 1; returns ``{name: shape}``.

    ``inputs`` (per-sample shapes by name) fix the inputs they name; else ``input_shape`` fixes the first input
    (as :func:`edgekit.core.onnx_graph.fix_input_shapes` does). A dynamic axis of another input takes the size
    bound to the same axis name (``sequence`` of ``input_ids`` fixes ``sequence`` of ``attention_mask``), else
    ``sequence``, else 1.
    """
    from edgekit.core.onnx_graph import fix_input_shapes

    inits = {i.name for i in model.graph.initializer}
    graph_in = [i for i in model.graph.input if i.name not in inits]
    given = dict(inputs or {})
    unknown = sorted(set(given) - {i.name for i in graph_in})
    if unknown:
        raise ShapeError(f"{where}: shapes given for {unknown}, which are not inputs of the model; it takes "
                         f"{[i.name for i in graph_in]}")
    original = {i.name: [(d.dim_value, d.dim_param) for d in i.type.tensor_type.shape.dim] for i in graph_in}
    fixed: Dict[str, List[int]] = {}
    if not given and (input_shape is not None or sequence is None):
        fixed[graph_in[0].name] = fix_input_shapes(model, input_shape, where)
    for inp in graph_in:
        if inp.name in given:
            dims = inp.type.tensor_type.shape.dim
            want = [1, *[int(d) for d in given[inp.name]]]
            if len(dims) and len(dims) != len(want):
                raise ShapeError(f"{where}: input '{inp.name}' has rank {len(dims)}; shape {want[1:]} per sample "
                                 f"gives rank {len(want)} with the batch")
            bad = [(d.dim_value, w) for i, (d, w) in enumerate(zip(dims, want))
                   if i and d.dim_value and d.dim_value != w]
            if bad:
                raise ShapeError(f"{where}: input '{inp.name}' has fixed size {bad[0][0]} where {bad[0][1]} was asked")
            _set_dims(inp, want)
            fixed[inp.name] = want
    bound = {p: v for n, dims in fixed.items() for (_, p), v in zip(original[n], dims) if p}
    for inp in graph_in:
        if inp.name in fixed:
            continue
        dims = []
        for i, (value, param) in enumerate(original[inp.name]):
            dims.append(1 if i == 0 else value if value > 0 else bound.get(param, sequence or 1))
        _set_dims(inp, dims)
        fixed[inp.name] = dims
    return fixed


def _contraction_unknown(model) -> bool:
    """True when some contraction node still lacks an operand or output shape after inference."""
    shapes = _shape_map(model)
    for node in model.graph.node:
        count = _COUNTERS.get(node.op_type)
        if count is not None and count(node, lambda n: shapes.get(n) if n else None) is None:
            return True
    return False


def _symbolic_inference(model):
    """ONNX Runtime's symbolic shape inference (pure Python, runs no session): it folds the Shape → Gather →
    Concat → Reshape chains a torchscript export builds, which ONNX's own inference leaves as unknown dims.
    Returns None when it is not installed or fails on the graph."""
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
    except ImportError:
        return None
    try:  # its infer_shapes() would save 'sym_shape_infer_temp.onnx' into the current directory when incomplete
        inference = SymbolicShapeInference(2**31 - 1, True, False, 0)
        inference.dispatcher_.setdefault("QAttention", lambda node: _infer_qattention(inference, node))
        inference._preprocess(model)
        while inference.run_:
            inference._infer_impl()
        inference._update_output_from_vi()
        return inference.out_mp_
    except Exception as e:  # it raises plain Exceptions on graphs it cannot finish
        logger.info(f"symbolic shape inference failed: {str(e)[:160]}")
        return None


def _infer_qattention(inference: Any, node: Any) -> None:
    """Output shape of ONNX Runtime's QAttention, which its symbolic inference does not know: the input's
    [batch, sequence] and a third of the packed QKV bias (float output; the input is uint8)."""
    from onnx import TensorProto, helper

    shape = inference._get_shape(node, 0)
    bias = inference._try_get_shape(node, 2)
    if shape and len(shape) == 3 and bias and isinstance(bias[0], int):
        shape[2] = bias[0] // 3
    inference.known_vi_[node.output[0]].CopyFrom(helper.make_tensor_value_info(node.output[0], TensorProto.FLOAT,
                                                                               shape))


def _shape_map(model) -> Dict[str, List[int]]:
    shapes: Dict[str, List[int]] = {}
    for init in model.graph.initializer:
        shapes[init.name] = list(init.dims)
    for vi in list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
            if vi.name not in shapes:  # initializer dims are authoritative
                shapes[vi.name] = dims
    return shapes


def _known(*shapes: Optional[List[int]]) -> bool:
    return all(s is not None and all(d >= 0 for d in s) for s in shapes)


def _attr(node, name: str, default: Any = None) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _prod(xs) -> int:
    return int(np.prod([int(v) for v in xs], dtype=np.int64)) if len(xs) else 1


def _conv(y, w) -> Optional[int]:
    # Y [N, M, *out], W [M, C/g, *k]: each output element needs C/g * prod(k) MACs.
    return _prod(y[1:]) * _prod(w[1:]) if _known(y, w) else None


def _conv_transpose(x, w) -> Optional[int]:
    # X [N, C, *in], W [C, M/g, *k]: every input element scatters into M/g * prod(k) outputs.
    return _prod(x[1:]) * _prod(w[1:]) if _known(x, w) else None


def _matmul(a, b, y) -> Optional[int]:
    if not _known(a, b):
        return None
    if len(a) == 1 and len(b) == 1:
        return a[0]
    k = a[-1]
    n = b[-1] if len(b) > 1 else 1
    if _known(y) and len(y):
        # y = broadcast(batch) x M x N (dims of size 1 dropped for 1-D operands): MACs = prod(y) * K
        return _prod(y) * k
    m = a[-2] if len(a) > 1 else 1
    batch = np.broadcast_shapes(tuple(a[:-2]), tuple(b[:-2])) if len(a) > 2 or len(b) > 2 else ()
    return _prod(batch) * m * k * n


def _gemm(node, a, b) -> Optional[int]:
    if not _known(a, b):
        return None
    m, k = (a[1], a[0]) if _attr(node, "transA", 0) else (a[0], a[1])
    n = b[0] if _attr(node, "transB", 0) else b[1]
    return m * k * n


def _einsum(node, shapes_in) -> Optional[int]:
    eq = _attr(node, "equation")
    if isinstance(eq, bytes):
        eq = eq.decode()
    if not eq or "..." in eq or len(shapes_in) != 2 or not _known(*shapes_in):
        return None
    lhs = eq.replace(" ", "").split("->")[0].split(",")
    sizes: Dict[str, int] = {}
    for term, shape in zip(lhs, shapes_in):
        if len(term) != len(shape):
            return None
        for c, d in zip(term, shape):
            sizes[c] = max(sizes.get(c, 1), d)
    return _prod(list(sizes.values()))


def _recurrent(node, x, gates: int) -> Optional[int]:
    hidden = _attr(node, "hidden_size")
    if not hidden or not _known(x) or len(x) != 3:
        return None
    seq, _batch, inp = (x[1], x[0], x[2]) if _attr(node, "layout", 0) else (x[0], x[1], x[2])
    dirs = 2 if _attr(node, "direction", b"forward") in (b"bidirectional", "bidirectional") else 1
    # per step, per direction: gates*H x (input + hidden) MACs (batch 1)
    return seq * dirs * gates * hidden * (inp + hidden)


def _attention(node, shapes_in) -> Optional[int]:
    q, k = shapes_in[0], shapes_in[1] if len(shapes_in) > 1 else None
    v = shapes_in[2] if len(shapes_in) > 2 else None
    if not _known(q, k, v):
        return None
    if len(q) == 4:  # [B, heads, seq, head_size]
        b, h, sq, d = q
        sk, dv = k[2], v[3]
        hv = v[1]
        return b * h * sq * sk * d + b * max(h, hv) * sq * sk * dv
    if len(q) == 3:  # [B, seq, hidden]; heads cancel out in the MAC count
        return q[0] * q[1] * k[1] * q[2] + q[0] * q[1] * v[1] * v[2]
    return None


def _contrib_attention(node, x, w) -> Optional[int]:
    """ONNX Runtime's fused Attention / QAttention (com.microsoft): input [B, S, H_in], packed QKV weight
    [H_in, H_q + H_k + H_v]; the projection plus Q·Kᵀ and P·V, per sample."""
    if not _known(x, w) or len(x) != 3 or len(w) != 2:
        return None
    sizes = _attr(node, "qkv_hidden_sizes") or [w[1] // 3] * 3
    seq = x[1]
    return x[1] * w[0] * w[1] + seq * seq * (sizes[0] + sizes[2])


def _contrib_projection(node, shapes: Shapes) -> Optional[int]:
    x, w = _ins(node, shapes, 0, 1)
    return x[1] * w[0] * w[1] if _known(x, w) and len(x) == 3 and len(w) == 2 else None


def _from_dq(name: str, producers: Dict[str, Any]) -> bool:
    p = producers.get(name)
    return p is not None and p.op_type == "DequantizeLinear"


Shapes = Callable[[str], Optional[List[int]]]


def _ins(node, shapes: Shapes, *idx: int) -> List[Optional[List[int]]]:
    return [shapes(node.input[i]) if i < len(node.input) else None for i in idx]


# op type -> macs(node, shapes) (None when the shapes are unknown); the operand positions differ per op
_COUNTERS: Dict[str, Callable[[Any, Shapes], Optional[int]]] = {
    "Conv": lambda n, s: _conv(s(n.output[0]), s(n.input[1])),
    "FusedConv": lambda n, s: _conv(s(n.output[0]), s(n.input[1])),
    "ConvInteger": lambda n, s: _conv(s(n.output[0]), s(n.input[1])),
    "QLinearConv": lambda n, s: _conv(s(n.output[0]), s(n.input[3])),
    "ConvTranspose": lambda n, s: _conv_transpose(*_ins(n, s, 0, 1)),
    "MatMul": lambda n, s: _matmul(*_ins(n, s, 0, 1), s(n.output[0])),
    "FusedMatMul": lambda n, s: _matmul(*_ins(n, s, 0, 1), s(n.output[0])),
    "MatMulInteger": lambda n, s: _matmul(*_ins(n, s, 0, 1), s(n.output[0])),
    "DynamicQuantizeMatMul": lambda n, s: _matmul(*_ins(n, s, 0, 1), s(n.output[0])),
    "MatMulIntegerToFloat": lambda n, s: _matmul(*_ins(n, s, 0, 1), s(n.output[0])),
    "QLinearMatMul": lambda n, s: _matmul(*_ins(n, s, 0, 3), s(n.output[0])),
    "Gemm": lambda n, s: _gemm(n, *_ins(n, s, 0, 1)),
    "QGemm": lambda n, s: _gemm(n, *_ins(n, s, 0, 3)),
    "Einsum": lambda n, s: _einsum(n, [s(i) for i in n.input]),
    "LSTM": lambda n, s: _recurrent(n, s(n.input[0]), 4),
    "DynamicQuantizeLSTM": lambda n, s: _recurrent(n, s(n.input[0]), 4),
    "GRU": lambda n, s: _recurrent(n, s(n.input[0]), 3),
    "RNN": lambda n, s: _recurrent(n, s(n.input[0]), 1),
    "Attention": lambda n, s: (_contrib_attention(n, *_ins(n, s, 0, 1)) if n.domain == "com.microsoft"
                               else _attention(n, [s(i) for i in n.input[:3]])),
    "QAttention": lambda n, s: _contrib_attention(n, *_ins(n, s, 0, 1)),
}
# float ops that run as int8 kernels when both operands come from DequantizeLinear (QDQ graphs)
_QDQ_INT8_OPS = {"Conv", "FusedConv", "ConvTranspose", "MatMul", "FusedMatMul", "Gemm"}


def _inferred(path_or_model: Any, input_shape: Optional[Sequence[int]],
              inputs: Optional[Mapping[str, Sequence[int]]] = None, sequence: Optional[int] = None
              ) -> Tuple[Any, Dict[str, List[int]], str, str]:
    """The model with every input fixed (batch 1) and shapes inferred; the fixed shapes; its name; and which
    inference resolved the contractions (``onnx``, ``symbolic``, or ``incomplete``)."""
    import onnx

    model, where = _load(path_or_model)
    fixed = _fix_inputs(model, input_shape, inputs, sequence, where)
    del model.graph.value_info[:]  # drop stale symbolic shapes; inference recomputes them
    for out in model.graph.output:
        out.type.tensor_type.ClearField("shape")
    shown = {k: v for k, v in fixed.items()}
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    except Exception as e:
        msg = str(e).strip().splitlines()[-1][:200] if str(e).strip() else type(e).__name__
        raise ShapeError(f"{where}: shape inference failed for input shapes {shown}: {msg}") from None
    if not _contraction_unknown(inferred):
        return inferred, fixed, where, "onnx"
    symbolic = _symbolic_inference(model)
    if symbolic is not None and not _contraction_unknown(symbolic):
        return symbolic, fixed, where, "symbolic"
    logger.info(f"{where}: some MatMul/Conv shapes are only known at run time; their MACs are not counted")
    return (symbolic or inferred), fixed, where, "incomplete"


def _node_macs(i: int, node, shapes: Shapes, producers: Dict[str, Any]) -> Optional[List[NodeMacs]]:
    """The MACs of one node (two entries for an int8 QAttention: projection and attention products), or None
    for an op that is not counted."""
    op = node.op_type
    count = _COUNTERS.get(op)
    if count is None or (op == "Attention" and node.domain not in ("", "ai.onnx", "com.microsoft")):
        return None
    macs = count(node, shapes)
    if op == "QAttention":  # its QKV projection runs int8, the attention products float: counted apart
        proj = _contrib_projection(node, shapes)
        if proj is not None and macs is not None:
            return [NodeMacs(node.name or f"{op}_{i}", op, proj, True),
                    NodeMacs(f"{node.name or f'{op}_{i}'}/scores", op, macs - proj, False)]
    int8 = op in _INT8_OPS or (op in _QDQ_INT8_OPS and all(_from_dq(n, producers) for n in node.input[:2]))
    return [NodeMacs(node.name or f"{op}_{i}", op, int(macs or 0), int8, macs is not None)]


def count_macs_onnx(path_or_model: Any, input_shape: Optional[Sequence[int]] = None, *,
                    inputs: Optional[Mapping[str, Sequence[int]]] = None,
                    sequence: Optional[int] = None) -> MacReport:
    """Count MACs per sample of an ONNX model.

    Shapes come from ONNX shape inference with every input fixed (batch 1). Where a graph computes shapes at
    run time (a torchscript BERT builds its attention reshapes from ``Shape`` ops) and ONNX's inference leaves
    them unknown, ONNX Runtime's symbolic shape inference (pure Python, no session) resolves them;
    ``shape_inference`` says which one did, or ``incomplete`` with the uncounted nodes in ``unknown``.

    Args:
        path_or_model: path to a ``.onnx`` file (external data is not loaded) or an ``onnx.ModelProto``.
        input_shape: per-sample shape of the first input, e.g. ``(3, 224, 224)``. Needed when the
            model has dynamic dimensions other than the batch; the batch is always fixed to 1.
        inputs: per-sample shapes by input name (several inputs), e.g. ``{"input_ids": (128,), ...}``.
        sequence: size of dynamic axes no given shape binds (e.g. the sequence length of a text model).

    Returns:
        MacReport with ``total`` and ``int8`` MACs and ``per_node`` entries (name, op_type, macs, int8).

    Raises:
        InputFileError: missing or unreadable file. ShapeError: shapes cannot be fixed or inferred.

    Example:
        >>> count_macs_onnx("resnet18.onnx", (3, 224, 224)).total
        1814073344
        >>> count_macs_onnx("bert.onnx", inputs={"input_ids": (128,)}).shape_inference
        'symbolic'
    """
    model, fixed, _where, how = _inferred(path_or_model, input_shape, inputs, sequence)
    shape_map = _shape_map(model)
    producers = {o: n for n in model.graph.node for o in n.output}

    def shapes(name: str) -> Optional[List[int]]:
        return shape_map.get(name) if name else None

    per_node = [m for i, node in enumerate(model.graph.node) for m in (_node_macs(i, node, shapes, producers) or [])]
    total = sum(n.macs for n in per_node)
    int8_total = sum(n.macs for n in per_node if n.int8)
    first = next(iter(fixed.values()))
    return MacReport(total=total, int8=int8_total, per_node=per_node, input_shape=first[1:],
                     input_shapes={k: v[1:] for k, v in fixed.items()}, shape_inference=how)
