"""Tiny ONNX graphs built with ``onnx.helper``: a few nodes, known MACs, written in milliseconds."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def onnx_model(nodes, inputs, outputs, initializers=(), opset: int = 17, name: str = "t") -> onnx.ModelProto:
    """A ModelProto of ``nodes`` (default-domain opset ``opset``, IR version 9, readable by every runtime here)."""
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9
    return model


def ones(name: str, shape, dtype=np.float32) -> onnx.TensorProto:
    """An initializer of ones."""
    return numpy_helper.from_array(np.ones(shape, dtype), name)


def value_info(name: str, shape, elem_type: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    """A graph input/output declaration (``shape`` may hold symbolic names, or be None for unknown rank)."""
    return helper.make_tensor_value_info(name, elem_type, shape)


def conv_net_onnx(path, channels: int, hw=8, batch_dim="N"):
    """x[N,3,hw,hw] -> Conv3x3(3->c) -> Relu -> GlobalAveragePool -> Flatten -> Gemm(c->4), saved at ``path``.

    Returns ``(path, macs per sample)`` (None when ``hw`` is symbolic).
    """
    rng = np.random.default_rng(channels)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1)]
    inits = [numpy_helper.from_array(rng.standard_normal((channels, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal((4, channels)).astype(np.float32), "fc")]
    model = onnx_model(nodes, [value_info("x", [batch_dim, 3, hw, hw])], [value_info("y", [batch_dim, 4])], inits,
                       name="net")
    onnx.save(model, str(path))
    return path, (hw * hw * channels * 27 + channels * 4 if isinstance(hw, int) else None)


def mlp_onnx(path, hidden: int) -> str:
    """x[N,16] -> Gemm(16->hidden) -> Relu -> Gemm(hidden->3), saved at ``path``; returns the path as a string."""
    rng = np.random.default_rng(hidden)
    nodes = [helper.make_node("Gemm", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "w2"], ["y"])]
    inits = [numpy_helper.from_array(rng.standard_normal((16, hidden)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal((hidden, 3)).astype(np.float32), "w2")]
    model = onnx_model(nodes, [value_info("x", ["N", 16])], [value_info("y", ["N", 3])], inits, name="mlp")
    onnx.save(model, str(path))
    return str(path)


def conv_relu_onnx(path: Path, *, qdq: bool = False, batch: Optional[int] = None, extra_dynamic: bool = False) -> Path:
    """A 1x1-conv + ReLU model on [N, 3, 4, 4] input 'x' (optionally Q/DQ, fixed batch, dynamic H)."""
    w = np.random.default_rng(0).standard_normal((2, 3, 1, 1)).astype(np.float32)
    inits, nodes, conv_in, w_name = [], [], "x", "w"
    if qdq:
        inits += [numpy_helper.from_array(np.array(0.05, np.float32), "s"),
                  numpy_helper.from_array(np.array(0, np.int8), "zp"),
                  numpy_helper.from_array(np.round(w / 0.05).astype(np.int8), "wq")]
        nodes += [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"]),
                  helper.make_node("DequantizeLinear", ["xq", "s", "zp"], ["xd"]),
                  helper.make_node("DequantizeLinear", ["wq", "s", "zp"], ["wd"])]
        conv_in, w_name = "xd", "wd"
    else:
        inits.append(numpy_helper.from_array(w, "w"))
    nodes += [helper.make_node("Conv", [conv_in, w_name], ["c"]), helper.make_node("Relu", ["c"], ["y"])]
    h = "H" if extra_dynamic else 4
    model = onnx_model(nodes, [value_info("x", [batch or "N", 3, h, 4])], [value_info("y", [batch or "N", 2, h, 4])],
                       inits, name="tiny")
    onnx.save(model, str(path))
    return path
