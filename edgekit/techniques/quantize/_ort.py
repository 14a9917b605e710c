"""ONNX Runtime quantiser glue: load and check the float model, pre-process it, keep the quantiser quiet,
give fallen-back layers their float inputs. ``onnxruntime.quantization`` is imported inside the functions."""
from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Dict, Iterator, List, Sequence

from edgekit._io import read_sidecar, require_file
from edgekit.errors import InputFileError, QuantizationError

logger = logging.getLogger(__name__)

QUANTISED_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul",
                 "MatMulInteger", "ConvInteger", "QGemm", "DynamicQuantizeLSTM", "DynamicQuantizeMatMul",
                 "MatMulIntegerToFloat", "QLinearAdd", "QAttention"}
CONTRACTION_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
# op types whose presence marks a transformer block: quantising them (or everything around them) statically
# collapses accuracy (research note: all-op static INT8 of a BERT agreed with fp32 on 15% of inputs)
TRANSFORMER_MARKERS = {"Softmax", "LayerNormalization", "SkipLayerNormalization", "Attention"}
# ops a weight passes through on its way from an initializer to a contraction
_WEIGHT_PATH_OPS = {"Transpose", "Cast", "Reshape", "Identity", "Unsqueeze", "Squeeze"}
# default sequence length for MAC counts of text models without data (dynamic sequence axis)
DEFAULT_SEQUENCE = 128



def load_float_model(onnx_path: str | os.PathLike):
    """Load an ONNX model for quantisation; refuse missing, unreadable or already-quantised files."""
    import onnx

    p = require_file(onnx_path, "ONNX model")
    if p.suffix.lower() != ".onnx":
        raise InputFileError(f"{p}: expected an .onnx model file")
    try:
        model = onnx.load(str(p))
    except Exception as e:
        raise InputFileError(f"{p}: not a readable ONNX model ({type(e).__name__}: {str(e)[:160]})") from None
    found = sorted({n.op_type for n in model.graph.node} & QUANTISED_OPS)
    if found or read_sidecar(p).get("precision") == "int8":
        raise InputFileError(f"{p}: the model is already quantised (contains {', '.join(found) or 'int8 sidecar'}); "
                             "quantise the float (fp32) ONNX export instead")
    return model


def constant_names(model) -> set:
    """Tensor names that hold constants: initializers, Constant outputs, and what passes them through
    Transpose/Cast/Reshape-like ops (a torchscript Linear's weight reaches MatMul transposed)."""
    names = {i.name for i in model.graph.initializer}
    changed = True
    while changed:
        changed = False
        for n in model.graph.node:
            if n.output and n.output[0] not in names and (
                    n.op_type == "Constant" or (n.op_type in _WEIGHT_PATH_OPS and n.input and n.input[0] in names)):
                names.add(n.output[0])
                changed = True
    return names


def weighted_nodes(model, op_types: Sequence[str]) -> List[str]:
    """Names of nodes of ``op_types`` that quantisation can give int8 weights: recurrent ops always, contractions
    (MatMul, Gemm, Conv, ...) when one operand is a constant. What "something to quantise" means."""
    consts = constant_names(model)
    wanted = set(op_types)
    out = []
    for i, n in enumerate(model.graph.node):
        if n.op_type not in wanted:
            continue
        if n.op_type not in CONTRACTION_OPS or any(x in consts for x in n.input[:2]):
            out.append(n.name or f"{n.op_type}_{i}")
    return out


def activation_matmuls(model) -> List[str]:
    """MatMul nodes whose two operands are both activations (attention's Q·Kᵀ and P·V)."""
    consts = constant_names(model)
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name
            and not any(x in consts for x in n.input[:2])]


# why a transformer's non-contraction ops stay float under static INT8 (op type -> reason in the sidecar)
_FLOAT_REASONS = {
    "LayerNormalization": "layer norm: per-token mean/variance; int8 ranges clip the outlier channels",
    "SkipLayerNormalization": "residual Add + layer norm (fused): outlier channels and per-token statistics",
    "EmbedLayerNormalization": "embedding lookup + layer norm (fused)",
    "Softmax": "softmax: exponentials of a wide range, tiny probabilities round to zero in int8",
    "Erf": "GELU: nonlinear over a wide input range", "Gelu": "GELU: nonlinear over a wide input range",
    "BiasGelu": "GELU (fused with its bias): nonlinear over a wide input range",
    "FastGelu": "GELU (tanh form): nonlinear over a wide input range", "Tanh": "tanh: nonlinear",
    "Attention": "fused attention: ONNX Runtime's QDQ quantiser has no static form of it",
}


def transformer_float_nodes(model) -> List[Dict[str, str]]:
    """Nodes a transformer-aware static INT8 keeps float, each with its reason: normalisation, Softmax, GELU,
    residual Adds (two activation operands), embedding Gathers (constant tables) and activation x activation
    MatMuls (attention products Q·Kᵀ, P·V)."""
    consts = constant_names(model)
    out = []
    for i, n in enumerate(model.graph.node):
        name = n.name or f"{n.op_type}_{i}"
        reason = _FLOAT_REASONS.get(n.op_type)
        if n.op_type == "Add" and len(n.input) == 2 and not any(x in consts for x in n.input):
            reason = "residual Add: two activation streams of different ranges"
        elif n.op_type == "Gather" and n.input and n.input[0] in consts and len(n.input[0]) and \
                _is_table(model, n.input[0]):
            reason = "embedding lookup: a float table row per token, nothing to multiply"
        elif n.op_type == "MatMul" and not any(x in consts for x in n.input[:2]):
            reason = "attention product (activation x activation): both ranges vary per input"
        if reason:
            out.append({"node": name, "op_type": n.op_type, "reason": reason})
    return out


def _is_table(model, name: str) -> bool:
    init = next((i for i in model.graph.initializer if i.name == name), None)
    return init is not None and len(init.dims) == 2


def is_transformer(model) -> bool:
    """True when the graph holds attention/normalisation ops of a transformer block."""
    return bool({n.op_type for n in model.graph.node} & TRANSFORMER_MARKERS)


def graph_nodes(model) -> Dict[str, str]:
    """{node name: op type} of a loaded ONNX model's named nodes (what an exclusion Scope selects from)."""
    return {n.name: n.op_type for n in model.graph.node if n.name}


def quantised_nodes(qdq_path: str | os.PathLike) -> List[str]:
    """Names of the compute nodes of a QDQ model that read a dequantised input (the quantised layers)."""
    import onnx

    model = onnx.load(os.fspath(qdq_path), load_external_data=False)
    dq_out = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return [n.name for n in model.graph.node
            if n.op_type not in ("QuantizeLinear", "DequantizeLinear") and any(i in dq_out for i in n.input)]


class _DropOrtRecords(logging.Filter):
    """Drops log records emitted from inside the ``onnxruntime`` package (it logs on the root logger)."""

    _root = os.sep + "onnxruntime" + os.sep

    def filter(self, record: logging.LogRecord) -> bool:
        return self._root not in record.pathname


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence the ORT quantiser's chatter while it runs, touching only what belongs to ORT.

    ORT's quantiser logs warnings on the root logger and on its own ``onnxruntime.*`` loggers, and prints
    histogram statistics with ``print``. A filter on the root logger drops only the records emitted from ORT's
    own files, ORT's logger namespace is raised to ERROR (everyone else's logging is unchanged), and ORT's
    quantisation modules get a module-level ``print`` that sends their text to this module's debug log; all
    three are undone on exit.
    """
    root, drop, ort_logger = logging.getLogger(), _DropOrtRecords(), logging.getLogger("onnxruntime")
    level = ort_logger.level
    modules = [m for name, m in list(sys.modules.items()) if name.startswith("onnxruntime.quantization") and m]
    shadowed = [m for m in modules if "print" not in vars(m)]
    for m in shadowed:
        m.print = lambda *args, **_kw: logger.debug(" ".join(str(a) for a in args))
    root.addFilter(drop)
    ort_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        ort_logger.setLevel(level)
        root.removeFilter(drop)
        for m in shadowed:
            vars(m).pop("print", None)


def preprocess(src: Path, dst: Path) -> Path:
    """ORT's quantisation pre-processing (shape inference, constant/BN folding); names every node."""
    import onnx
    from onnxruntime.quantization import quant_pre_process

    with quiet():
        try:
            quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
        except Exception as e:  # optimisation can fail on exotic graphs: retry with shape inference only
            logger.info(f"quantisation pre-processing with optimisation failed ({str(e)[:120]}); retrying without it")
            try:
                quant_pre_process(str(src), str(dst), skip_optimization=True, skip_symbolic_shape=True)
            except Exception as e2:
                raise QuantizationError(f"{src}: ONNX Runtime pre-processing failed: {str(e2)[:200]}") from None
    model = onnx.load(str(dst))
    seen, changed = set(), False
    for i, n in enumerate(model.graph.node):
        if not n.name or n.name in seen:
            n.name, changed = f"{n.op_type}_{i}", True
        seen.add(n.name)
    if changed:
        onnx.save(model, str(dst))
    return dst


def float_inputs(path: Path, nodes: Sequence[str]) -> None:
    """Feed ``nodes`` their float activations: bypass ``Q → DQ`` pairs on their inputs, drop dead Q/DQ.

    ORT's ``nodes_to_exclude`` keeps a node's weights float, but its input tensor stays quantised when the
    producer quantises its output. A layer that falls back must see float inputs, or the error stays.
    """
    import onnx

    if not nodes:
        return
    model = onnx.load(str(path))
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    wanted = set(nodes)
    for n in g.node:
        if n.name not in wanted:
            continue
        for i, name in enumerate(n.input):
            dq = producer.get(name)
            q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            if q is not None and q.op_type == "QuantizeLinear":
                n.input[i] = q.input[0]
    graph_outputs = {o.name for o in g.output}
    while True:
        used = {i for n in g.node for i in n.input} | graph_outputs
        dead = [n for n in g.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
                and not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            g.node.remove(n)
    used = {i for n in g.node for i in n.input}
    for init in [i for i in g.initializer if i.name not in used]:
        g.initializer.remove(init)
    onnx.save(model, str(path))
