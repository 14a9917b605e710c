"""edgekit.core.onnx_graph: the one ONNX loader, input readers and int8 op sets the backends rely on."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekit.core import onnx_graph as og
from edgekit.errors import InputFileError, ShapeError


def _model(nodes, inputs, outputs, inits=(), functions=()):
    g = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)],
                          functions=list(functions))
    m.ir_version = 9
    return m


def _float_mm(path=None):
    w = numpy_helper.from_array(np.ones((4, 2), np.float32), "w")
    m = _model([helper.make_node("MatMul", ["x", "w"], ["y"])],
               [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
                helper.make_tensor_value_info("w", TensorProto.FLOAT, [4, 2])],  # an initializer listed as input
               [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])], [w])
    if path is not None:
        onnx.save(m, str(path))
    return m


def test_inputs_skip_initializers_and_mark_dynamic_dims(tmp_path):
    path = tmp_path / "m.onnx"
    _float_mm(path)
    (inp,) = og.graph_inputs(path)
    assert inp == og.GraphInput("x", [None, 4], TensorProto.FLOAT) and inp.shown == "Nx4"
    assert og.single_input(path, "quantisation") == inp


def test_single_input_refuses_two_inputs_naming_the_purpose():
    m = _model([helper.make_node("Add", ["a", "b"], ["y"])],
               [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in ("a", "b")],
               [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    with pytest.raises(ShapeError, match=r"quantisation supports models with exactly one input; this one has 2"):
        og.single_input(m, "quantisation")


def test_fix_input_shapes_sets_batch_one_and_checks_rank_and_fixed_dims():
    m = og.load_model(_float_mm(), copy=True)
    assert og.fix_input_shapes(m, None, "m") == [1, 4]
    assert [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim] == [1, 4]
    with pytest.raises(ShapeError, match="has fixed size 4 where input_shape asks 5"):
        og.fix_input_shapes(og.load_model(_float_mm(), copy=True), (5,), "m")
    with pytest.raises(ShapeError, match="rank 2"):
        og.fix_input_shapes(og.load_model(_float_mm(), copy=True), (4, 1), "m")


def test_copy_leaves_the_callers_model_alone():
    m = _float_mm()
    og.fix_input_shapes(og.load_model(m, copy=True), None, "m")
    assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    assert og.load_model(m) is m


def test_precision_and_qdq_detection_including_local_functions():
    assert og.onnx_precision(_float_mm()) == "fp32" and not og.has_qdq(_float_mm())
    dyn = _model([helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "s", "z"]),
                  helper.make_node("MatMulInteger", ["q", "w", "z"], ["y"])],
                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                 [helper.make_tensor_value_info("y", TensorProto.INT32, [1, 2])],
                 [numpy_helper.from_array(np.ones((4, 2), np.int8), "w")])
    assert og.onnx_precision(dyn) == "int8" and not og.has_qdq(dyn)
    fn = helper.make_function("local", "Fq", ["a"], ["b"], [helper.make_node("QuantizeLinear", ["a", "s"], ["b"])],
                              [helper.make_opsetid("", 17)])
    wrapped = _model([helper.make_node("Fq", ["x"], ["y"], domain="local")],
                     [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                     [helper.make_tensor_value_info("y", TensorProto.UINT8, [1])], functions=[fn])
    assert og.has_qdq(wrapped) and og.QDQ_OPS <= og.QUANTISED_OPS and og.INT8_KERNEL_OPS <= og.QUANTISED_OPS


def test_missing_and_corrupt_files_are_input_file_errors(tmp_path):
    with pytest.raises(InputFileError, match="ONNX model not found"):
        og.graph_inputs(tmp_path / "gone.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf \x00\xff" * 10)
    with pytest.raises(InputFileError, match="bad.onnx: not a readable ONNX model"):
        og.onnx_precision(bad)
