"""SmoothQuant on an fp32 ONNX graph: move activation outliers into the weights before static INT8.

For every activation tensor ``X`` that feeds contractions with constant weights (MatMul / Gemm), a per-channel
scale ``s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)`` (Xiao et al., 2023) divides the activation channel and
multiplies the matching weight row, ``(X / s) · (diag(s) W) = X · W``, so the graph computes the same function
while the activation's per-channel ranges flatten (int8 per-tensor activation scales stop being set by a few
outlier channels). ``max|W_j|`` is taken over every contraction that reads ``X`` (BERT's Q, K and V share one).

Where ``1/s`` goes:
  * into the producing LayerNormalization's scale and bias (free), when the contractions are its only readers;
  * else into an explicit ``Mul`` inserted before the contractions (a post-LN BERT's LayerNorm output is also the
    residual stream, which must stay unscaled; attention context and GELU outputs have no LayerNorm).

Calibration activations come from ONNX Runtime runs of the graph itself (no PyTorch, no ``neural_compressor``).

Example:
    >>> rep = smooth_onnx("bert.onnx", "bert.smooth.onnx", calib, alpha=0.5)
    >>> rep.to_dict()["tensors"][0]     # {'tensor', 'consumers', 'folded_into', 'act_max_before', 'act_max_after'}
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from edgekit._io import atomic_path
from edgekit.errors import ConfigError, QuantizationError

logger = logging.getLogger(__name__)

_MIN_SCALE = 1e-5


@dataclass
class SmoothedTensor:
    """One smoothed activation: the contractions it feeds, where ``1/s`` went, its max |X| before and after."""

    tensor: str
    consumers: List[str]
    folded_into: str  # "LayerNormalization <node>" | "Mul <node>"
    act_max_before: float
    act_max_after: float


@dataclass
class SmoothReport:
    """What :func:`smooth_onnx` did: alpha, every smoothed tensor, and the path written."""

    path: Path
    alpha: float
    tensors: List[SmoothedTensor] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        before = max((t.act_max_before for t in self.tensors), default=0.0)
        after = max((t.act_max_after for t in self.tensors), default=0.0)
        return {"alpha": self.alpha, "smoothed": len(self.tensors),
                "folded_into_layernorm": sum(t.folded_into.startswith("LayerNormalization") for t in self.tensors),
                "act_max_before": round(before, 4), "act_max_after": round(after, 4),
                "tensors": [vars(t) for t in self.tensors]}


def smoothing_scales(act_max: np.ndarray, weight_max: np.ndarray, alpha: float) -> np.ndarray:
    """Per-channel SmoothQuant scales ``max|X_j|^alpha / max|W_j|^(1-alpha)``, clipped away from zero (a channel
    that is never active or has zero weights keeps scale 1)."""
    if not 0.0 < alpha <= 1.0:
        raise ConfigError(f"smoothquant.alpha must be in (0, 1], got {alpha}")
    act = np.asarray(act_max, np.float64)
    w = np.asarray(weight_max, np.float64)
    s = np.power(np.maximum(act, 1e-12), alpha) / np.power(np.maximum(w, 1e-12), 1.0 - alpha)
    s[(act <= 0) | (w <= 0)] = 1.0
    return np.maximum(s, _MIN_SCALE).astype(np.float32)


def _weight(node, inits: Dict[str, Any]) -> Optional[tuple]:
    """(initializer name, input axis of the weight) of a MatMul/Gemm with a constant 2-D weight, else None."""
    from onnx import helper

    if node.op_type == "MatMul" and len(node.input) == 2 and node.input[1] in inits:
        return (node.input[1], 0) if len(inits[node.input[1]].dims) == 2 else None
    if node.op_type == "Gemm" and len(node.input) >= 2 and node.input[1] in inits:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("transA", 0):
            return None
        return node.input[1], (1 if attrs.get("transB", 0) else 0)
    return None


def smoothable(model) -> Dict[str, List[Any]]:
    """{activation tensor: [contraction nodes reading it as input A with a constant 2-D weight]}."""
    inits = {i.name: i for i in model.graph.initializer}
    out: Dict[str, List[Any]] = {}
    for n in model.graph.node:
        if n.op_type in ("MatMul", "Gemm") and n.input and n.input[0] not in inits and _weight(n, inits):
            out.setdefault(n.input[0], []).append(n)
    return out


def _channel_max(model, tensors: Sequence[str], feeds: List[Dict[str, np.ndarray]]) -> Dict[str, np.ndarray]:
    """max |value| per last-axis channel of every tensor in ``tensors`` over the calibration batches."""
    import onnx
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    have = {o.name for o in probe.graph.output}
    for t in tensors:
        if t not in have:
            probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(t))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    out: Dict[str, np.ndarray] = {}
    for batch in feeds:
        values = session.run(list(tensors), {k: batch[k] for k in names})
        for t, v in zip(tensors, values):
            m = np.abs(np.asarray(v, np.float32)).reshape(-1, v.shape[-1]).max(0)
            out[t] = m if t not in out else np.maximum(out[t], m)
    return out


def _fresh(model, name: str, array: np.ndarray) -> str:
    """Add ``array`` as a new initializer named after ``name`` (initializers may be shared: never edit one)."""
    from onnx import numpy_helper

    taken = {i.name for i in model.graph.initializer}
    new, k = f"{name}_smooth", 1
    while new in taken:
        new, k = f"{name}_smooth{k}", k + 1
    model.graph.initializer.append(numpy_helper.from_array(array.astype(np.float32), new))
    return new


def _apply(model, tensor: str, nodes: List[Any], s: np.ndarray, readers: Dict[str, List[Any]]) -> str:
    """Scale the weights of ``nodes`` by ``s`` and divide ``tensor`` by it; returns where ``1/s`` went."""
    import onnx
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    for n in nodes:
        name, axis = _weight(n, inits)
        w = numpy_helper.to_array(inits[name]).astype(np.float32)
        w = w * (s[:, None] if axis == 0 else s[None, :])
        n.input[1] = _fresh(model, name, w)
    producer = next((p for p in model.graph.node if tensor in p.output), None)
    only_contractions = len(readers.get(tensor, [])) == len(nodes)
    if producer is not None and producer.op_type == "LayerNormalization" and only_contractions \
            and len(producer.input) >= 3 and all(i in inits for i in producer.input[1:3]):
        for idx in (1, 2):
            v = numpy_helper.to_array(inits[producer.input[idx]]).astype(np.float32)
            producer.input[idx] = _fresh(model, producer.input[idx], v / s)
        return f"LayerNormalization {producer.name}"
    inv = _fresh(model, f"{tensor}_inv_scale", 1.0 / s)
    scaled = f"{tensor}_smoothed"
    mul = onnx.helper.make_node("Mul", [tensor, inv], [scaled], name=f"SmoothQuant_Mul_{len(model.graph.node)}")
    for n in nodes:
        n.input[0] = scaled
    at = next(i for i, p in enumerate(model.graph.node) if p is nodes[0])
    model.graph.node.insert(at, mul)
    return f"Mul {mul.name}"


def smooth_onnx(src: str | os.PathLike, dst: str | os.PathLike, feeds: List[Dict[str, np.ndarray]],
                alpha: float = 0.5) -> SmoothReport:
    """Write a SmoothQuant-smoothed copy of the fp32 graph ``src`` to ``dst`` (same outputs, flatter activations).

    Args:
        src: fp32 ONNX model (its MatMul/Gemm weights are initializers, e.g. after ORT pre-processing).
        dst: where the smoothed model goes (atomically).
        feeds: calibration batches, each ``{input name: array}``, for the per-channel activation maxima.
        alpha: migration strength in (0, 1]: 0.5 balances activation and weight ranges; higher moves more of the
            activation's range into the weights.

    Raises:
        ConfigError: alpha outside (0, 1], or no MatMul/Gemm with constant weights in the graph (nothing to
            smooth: SmoothQuant applies to Linear layers).
    """
    import onnx

    if not 0.0 < alpha <= 1.0:
        raise ConfigError(f"smoothquant.alpha must be in (0, 1], got {alpha}")
    model = onnx.load(os.fspath(src))
    targets = smoothable(model)
    if not targets:
        raise ConfigError(f"smoothquant: {Path(src).name} has no MatMul/Gemm with constant weights (no Linear "
                          "layer) to smooth; SmoothQuant applies to transformer/MLP Linear layers — remove "
                          "quantize.smoothquant for this model")
    if not feeds:
        raise ConfigError("smoothquant needs calibration batches (feeds) to measure activation ranges")
    readers: Dict[str, List[Any]] = {}
    for n in model.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    before = _channel_max(model, list(targets), feeds)
    report = SmoothReport(Path(dst), alpha)
    inits = {i.name: i for i in model.graph.initializer}
    from onnx import numpy_helper

    for tensor, nodes in targets.items():
        wmax = np.zeros_like(before[tensor])
        for n in nodes:
            name, axis = _weight(n, inits)
            w = np.abs(numpy_helper.to_array(inits[name]))
            if w.shape[axis] != wmax.shape[0]:
                raise QuantizationError(f"smoothquant: weight {name} of {n.name} has {w.shape[axis]} input "
                                        f"channels, its activation {tensor} {wmax.shape[0]}")
            wmax = np.maximum(wmax, w.max(1 - axis))
        s = smoothing_scales(before[tensor], wmax, alpha)
        where = _apply(model, tensor, nodes, s, readers)
        after = float((before[tensor] / s).max())
        report.tensors.append(SmoothedTensor(tensor, [n.name for n in nodes], where,
                                             float(before[tensor].max()), after))
    used = {i for n in model.graph.node for i in n.input}
    for init in [i for i in model.graph.initializer if i.name not in used]:
        model.graph.initializer.remove(init)  # the originals the smoothed copies replaced
    with atomic_path(dst, suffix=".onnx") as tmp:
        onnx.save(model, str(tmp))
    logger.info(f"smoothquant (alpha {alpha}): {len(report.tensors)} activations smoothed, max |X| "
                f"{report.to_dict()['act_max_before']} -> {report.to_dict()['act_max_after']}")
    return report
