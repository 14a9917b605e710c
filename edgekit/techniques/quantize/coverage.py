"""INT8 coverage: the fraction of a model's MACs that really execute in int8 after ONNX Runtime's
graph optimisation.

A QDQ graph only *asks* for int8; ORT decides. It fuses ``DQ → Conv → Q`` groups into QLinearConv
(int8 kernel) when the pattern fits its kernels, and otherwise runs the Conv in float between
explicit Quantize/Dequantize nodes (e.g. symmetric int8 activations with an explicit Relu — the
TensorRT flavour — on the CPU). This module asks ORT for its optimised graph and classifies every
contraction node of the artifact (Conv, ConvTranspose, Gemm, MatMul, LSTM/GRU, integer ops) as int8 or
float by the op that consumes its weight after optimisation; MACs per node come from
``edgekit.core.measure.macs.count_macs_onnx``.

Example:
    >>> rep = int8_coverage("model.int8.onnx")
    >>> f"{rep.int8_fraction:.0%} of MACs in int8; float: {rep.float_layers}"
"""
from __future__ import annotations

import os
import re
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

# ops whose execution is an integer kernel (ORT contrib and standard)
INT8_RUNTIME_OPS = {"QLinearConv", "ConvInteger", "MatMulInteger", "QLinearMatMul", "QGemm", "DynamicQuantizeMatMul",
                    "MatMulIntegerToFloat", "DynamicQuantizeLSTM", "QAttention", "QLinearConvTranspose",
                    "NhwcQLinearConv"}
# weight input index of each contraction op (activation x weight)
_WEIGHT_INDEX = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1, "FusedConv": 1, "FusedMatMul": 1,
                 "QLinearConv": 3, "QLinearMatMul": 3, "QGemm": 3, "ConvInteger": 1, "MatMulInteger": 1,
                 "DynamicQuantizeMatMul": 1, "MatMulIntegerToFloat": 1, "LSTM": 1, "GRU": 1, "RNN": 1,
                 "DynamicQuantizeLSTM": 1}


@dataclass
class LayerCoverage:
    """One contraction node of the artifact: its MACs per sample and whether ORT runs it in int8."""

    name: str
    op_type: str
    macs: int
    int8: bool
    runtime_op: str  # the op that runs it after ORT optimisation ("?" when it could not be traced)


@dataclass
class CoverageReport:
    """MACs per sample in total and in int8 after ORT's graph optimisation, layer by layer."""

    total_macs: int
    int8_macs: int
    layers: List[LayerCoverage] = field(default_factory=list)
    optimized_ops: Dict[str, int] = field(default_factory=dict)

    @property
    def int8_fraction(self) -> float:
        """Share (0..1) of MACs executing as int8 kernels."""
        return self.int8_macs / self.total_macs if self.total_macs else 0.0

    @property
    def float_layers(self) -> List[str]:
        """Names of contraction nodes that still run in float."""
        return [layer.name for layer in self.layers if not layer.int8]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["int8_fraction"] = self.int8_fraction
        return d

    def summary(self) -> str:
        """One line for logs and reports."""
        return (f"{self.int8_fraction:.1%} of {self.total_macs / 1e6:.2f} MMAC/sample in int8; "
                f"{len(self.float_layers)} of {len(self.layers)} layers float")


def optimized_graph(onnx_path: str | os.PathLike, out_path: str | os.PathLike, level: str = "all"):
    """Load ``onnx_path`` in an ORT CPU session at ``level`` and return the optimised ``onnx.ModelProto``."""
    import onnx
    import onnxruntime as ort

    from edgekit.errors import InputFileError, first_line

    so = ort.SessionOptions()
    so.graph_optimization_level = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                                   "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED}[level]
    so.optimized_model_filepath = str(out_path)
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    try:
        ort.InferenceSession(str(onnx_path), sess_options=so, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise InputFileError(f"{onnx_path}: ONNX Runtime cannot load this model: {first_line(e)}") from None
    return onnx.load(str(out_path))


def _weight_root(node, producers: Dict[str, Any]) -> Optional[str]:
    idx = _WEIGHT_INDEX.get(node.op_type)
    if idx is None or len(node.input) <= idx or not node.input[idx]:
        return None
    name = node.input[idx]
    seen = 0
    while name in producers and seen < 4:  # follow DQ / Transpose / Reshape chains back to the initializer
        p = producers[name]
        if p.op_type not in ("DequantizeLinear", "Transpose", "Reshape", "Identity", "QuantizeLinear", "Clip"):
            break
        name, seen = p.input[0], seen + 1
    return name


def int8_coverage(onnx_path: str | os.PathLike, input_shape: Optional[Sequence[int]] = None, *,
                  inputs: Optional[Mapping[str, Sequence[int]]] = None,
                  sequence: Optional[int] = None) -> CoverageReport:
    """Measure which MACs of ``onnx_path`` execute in int8 once ONNX Runtime (CPU, ORT_ENABLE_ALL) optimised it.

    Args:
        onnx_path: a (quantised or float) ONNX model.
        input_shape: per-sample input shape when the model has dynamic dims besides the batch.
        inputs / sequence: per-sample shapes by input name, and the size of other dynamic axes (several
            inputs, e.g. a text model's sequence length); see ``count_macs_onnx``.

    Returns:
        CoverageReport with total/int8 MACs per sample, per-layer classification and the optimised op counts.

    Example:
        >>> int8_coverage("resnet.int8.onnx").int8_fraction
        0.99
    """
    import onnx

    from edgekit.core.measure.macs import count_macs_onnx

    macs = count_macs_onnx(onnx_path, input_shape, inputs=inputs, sequence=sequence)
    model = onnx.load(os.fspath(onnx_path), load_external_data=False)
    with tempfile.TemporaryDirectory(prefix="edgekit-cov-") as d:
        opt = optimized_graph(onnx_path, Path(d) / "optimized.onnx")
    consumers: Dict[str, List[Any]] = {}
    for n in opt.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    opt_int8 = [(n.name, n.op_type) for n in opt.graph.node if n.op_type in INT8_RUNTIME_OPS and n.name]
    producers = {o: n for n in model.graph.node for o in n.output}
    by_name = {n.name: n for n in model.graph.node if n.name}
    layers: List[LayerCoverage] = []
    for i, nm in enumerate(macs.per_node):
        node = by_name.get(nm.name)
        if node is None:
            node = next((n for n in model.graph.node
                         if n.op_type == nm.op_type and f"{n.op_type}_{i}" == nm.name), None)
        runtime_op, int8 = "?", False
        root = _weight_root(node, producers) if node is not None else None
        users = consumers.get(root, []) if root else []
        # ORT keeps the node name, or extends it (``_token_3``, ``_quant``, ``/MatMulScaleFusion/``)
        same = re.compile(re.escape(nm.name) + r"(_token_\d+|_quant|/.*)?$")
        fused = next((op for n, op in opt_int8 if same.match(n)), None)
        if users:
            int8_users = [u for u in users if u.op_type in INT8_RUNTIME_OPS]
            pick = int8_users[0] if int8_users else users[0]
            if pick.op_type == "DequantizeLinear" and consumers.get(pick.output[0]):
                pick = consumers[pick.output[0]][0]  # float op fed by a dequantised weight
            runtime_op, int8 = pick.op_type, bool(int8_users)
        elif nm.op_type in INT8_RUNTIME_OPS:
            runtime_op, int8 = nm.op_type, True
        else:
            runtime_op = "float"
        if not int8 and fused is not None:  # activation x activation products (attention) have no weight to follow
            runtime_op, int8 = fused, True
        layers.append(LayerCoverage(nm.name, nm.op_type, int(nm.macs), int8, runtime_op))
    total = sum(layer.macs for layer in layers)
    int8_macs = sum(layer.macs for layer in layers if layer.int8)
    ops = Counter(n.op_type for n in opt.graph.node)
    return CoverageReport(total, int8_macs, layers, dict(sorted(ops.items())))
