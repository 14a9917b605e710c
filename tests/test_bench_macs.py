"""MAC counting from ONNX graphs, checked against hand-computed numbers."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekit.core.measure.macs import count_macs_onnx
from edgekit.errors import InputFileError, ShapeError


def _model(nodes, inputs, outputs, inits, opset=17):
    g = helper.make_graph(nodes, "t", inputs, outputs, initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 9
    return m


def _w(name, shape, dtype=np.float32):
    return numpy_helper.from_array(np.ones(shape, dtype), name)


def _vi(name, shape, t=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, t, shape)


def test_conv_depthwise_gemm_matmul_hand_counts():
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv"),          # 3->8, 16x16
        helper.make_node("Conv", ["c1", "w2"], ["c2"], pads=[1, 1, 1, 1], group=8, strides=[2, 2], name="dw"),
        helper.make_node("Flatten", ["c2"], ["f"]),                                               # 8*8*8 = 512
        helper.make_node("Gemm", ["f", "w3"], ["g"], transB=1, name="fc"),                        # 512 -> 10
        helper.make_node("Reshape", ["g", "shp"], ["r"]),                                         # [1, 2, 5]
        helper.make_node("MatMul", ["r", "w4"], ["y"], name="mm"),                                # [2,5]x[5,7]
    ]
    inits = [_w("w1", (8, 3, 3, 3)), _w("w2", (8, 1, 3, 3)), _w("w3", (10, 512)), _w("w4", (5, 7)),
             numpy_helper.from_array(np.array([-1, 2, 5], np.int64), "shp")]
    m = _model(nodes, [_vi("x", ["N", 3, 16, 16])], [_vi("y", None)], inits)
    rep = count_macs_onnx(m)
    per = {n.name: n.macs for n in rep.per_node}
    assert per["conv"] == 16 * 16 * 8 * 3 * 9           # out pixels x cout x cin x k^2
    assert per["dw"] == 8 * 8 * 8 * 9                    # stride 2, one input channel per group
    assert per["fc"] == 512 * 10
    assert per["mm"] == 2 * 5 * 7
    assert rep.total == sum(per.values()) and rep.int8 == 0
    assert rep.input_shape == [3, 16, 16]


def test_conv_transpose_and_recurrent():
    ct = _model([helper.make_node("ConvTranspose", ["x", "w"], ["y"], strides=[2, 2], name="up")],
                [_vi("x", [1, 4, 8, 8])], [_vi("y", None)], [_w("w", (4, 2, 3, 3))])
    assert count_macs_onnx(ct).total == 8 * 8 * 4 * 2 * 9  # each input pixel scatters cin x cout x k^2

    hidden, inp, seq = 20, 10, 5
    # batch-first graph input, transposed to LSTM's [seq, batch, input] as exporters do
    lstm = [helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2]),
            helper.make_node("LSTM", ["xt", "W", "R"], ["Y"], hidden_size=hidden, name="lstm")]
    m = _model(lstm, [_vi("x", ["N", seq, inp])], [_vi("Y", None)],
               [_w("W", (1, 4 * hidden, inp)), _w("R", (1, 4 * hidden, hidden))])
    assert count_macs_onnx(m).total == seq * 4 * hidden * (inp + hidden)
    gru = helper.make_node("GRU", ["x", "W", "R"], ["Y"], hidden_size=hidden, direction="bidirectional", layout=1)
    m = _model([gru], [_vi("x", [1, seq, inp])], [_vi("Y", None)],
               [_w("W", (2, 3 * hidden, inp)), _w("R", (2, 3 * hidden, hidden))])
    assert count_macs_onnx(m).total == 2 * seq * 3 * hidden * (inp + hidden)


def test_qdq_and_integer_ops_are_flagged_int8():
    s = numpy_helper.from_array(np.array(0.1, np.float32), "s")
    zp = numpy_helper.from_array(np.array(0, np.uint8), "zp")
    wq = numpy_helper.from_array(np.ones((8, 3, 3, 3), np.int8), "wq")
    wzp = numpy_helper.from_array(np.array(0, np.int8), "wzp")
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "s", "zp"], ["xd"]),
        helper.make_node("DequantizeLinear", ["wq", "s", "wzp"], ["wd"]),
        helper.make_node("Conv", ["xd", "wd"], ["c"], pads=[1, 1, 1, 1], name="qconv"),  # int8 (both from DQ)
        helper.make_node("Conv", ["c", "wf"], ["y"], name="fconv"),                       # float 1x1
    ]
    m = _model(nodes, [_vi("x", [1, 3, 8, 8])], [_vi("y", None)], [s, zp, wq, wzp, _w("wf", (4, 8, 1, 1))])
    rep = count_macs_onnx(m)
    flags = {n.name: (n.int8, n.macs) for n in rep.per_node}
    assert flags["qconv"] == (True, 8 * 8 * 8 * 27)
    assert flags["fconv"] == (False, 8 * 8 * 4 * 8)
    assert rep.int8 == 8 * 8 * 8 * 27 and rep.float == 8 * 8 * 4 * 8
    assert rep.int8_fraction == pytest.approx(rep.int8 / rep.total)

    mmi = _model([helper.make_node("MatMulInteger", ["a", "b"], ["y"], name="mmi")],
                 [_vi("a", ["N", 64], TensorProto.UINT8)], [_vi("y", None, TensorProto.INT32)],
                 [numpy_helper.from_array(np.ones((64, 32), np.int8), "b")])
    rep = count_macs_onnx(mmi)
    assert rep.total == rep.int8 == 64 * 32


def test_batch_is_fixed_to_one_and_input_shape_overrides_dynamic_dims():
    m = _model([helper.make_node("Conv", ["x", "w"], ["y"], name="c")], [_vi("x", ["N", 3, "H", "W"])],
               [_vi("y", None)], [_w("w", (4, 3, 1, 1))])
    with pytest.raises(ShapeError, match="input_shape"):
        count_macs_onnx(m)
    assert count_macs_onnx(m, (3, 10, 20)).total == 10 * 20 * 4 * 3
    with pytest.raises(ShapeError, match="rank"):
        count_macs_onnx(m, (3, 10))
    fixed = _model([helper.make_node("Conv", ["x", "w"], ["y"])], [_vi("x", ["N", 3, 8, 8])], [_vi("y", None)],
                   [_w("w", (4, 3, 1, 1))])
    with pytest.raises(ShapeError, match="fixed size 3"):
        count_macs_onnx(fixed, (1, 8, 8))


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(InputFileError, match="not found"):
        count_macs_onnx(tmp_path / "nope.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00garbage\xff" * 10)
    with pytest.raises(InputFileError, match="bad.onnx"):
        count_macs_onnx(bad)


def test_resnet18_224_is_1_82_gmacs(tmp_path):
    """The well-known 1.82 GMACs of ResNet-18 at 224x224, within 2%, from an exported graph."""
    import warnings

    import torch

    from edgekit.models import create_model

    model = create_model("resnet18", num_classes=1000).eval()
    path = tmp_path / "r18.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, 3, 224, 224),), str(path), dynamo=False, input_names=["input"],
                          dynamic_axes={"input": {0: "batch"}})
    rep = count_macs_onnx(path)
    assert rep.total == pytest.approx(1.82e9, rel=0.02)
    assert {n.op_type for n in rep.per_node} == {"Conv", "Gemm"} and len(rep.per_node) == 21
    assert rep.unknown == []
    assert count_macs_onnx(onnx.load(str(path)), (3, 224, 224)).total == rep.total
