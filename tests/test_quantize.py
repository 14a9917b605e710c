"""Static INT8 PTQ: accuracy within budget, target flavours, int8 coverage, sidecar, target warnings."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper


@pytest.fixture(scope="module")
def quantised(trained_resnet8, tmp_path_factory):
    """The fixture ResNet quantised for both targets (MinMax, 128 training samples); all layers int8 (the speed
    fallback, tested in test_quantize_speed.py, is on only for the budget run)."""
    from edgekit.techniques.quantize.ptq import quantize

    d = tmp_path_factory.mktemp("quant")
    s = trained_resnet8.splits
    out = {t: quantize(trained_resnet8.onnx, {"target": t, "speed_fallback": False}, calib=s.train.x[:128],
                       out_path=d / f"{t}.onnx", val=s.val) for t in ("cpu", "tensorrt")}
    out["cpu-budget"] = quantize(trained_resnet8.onnx, {"max_accuracy_drop": 0.5}, calib=s.train.x[:128],
                                 out_path=d / "cpu-budget.onnx", val=s.val)
    return out


def _activation_qparams(path):
    """(zero-point dtypes, zero-point values) of every activation QuantizeLinear in a QDQ model."""
    m = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    zps = [inits[n.input[2]] for n in m.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits]
    return {z.dtype for z in zps}, np.concatenate([z.ravel() for z in zps])


def test_cpu_int8_within_budget_of_fp32(quantised, trained_resnet8):
    from edgekit.backends import open_runner
    from edgekit.core.train import evaluate

    s = trained_resnet8.splits
    fp32 = evaluate(open_runner(trained_resnet8.onnx, "ort-cpu", threads=2), s.test)
    res = quantised["cpu-budget"]
    int8 = evaluate(open_runner(res.artifact, "ort-cpu", threads=2), s.test)
    assert fp32 > 70.0  # the fixture model is trained
    assert res.accuracy["fp32_val"] - res.accuracy["int8_val"] <= 0.5  # the budget (val)
    assert fp32 - int8 <= 1.0, (fp32, int8)  # held-out test: within a point


def test_target_flavours_differ_in_the_graph(quantised):
    cpu_types, cpu_zp = _activation_qparams(quantised["cpu"].artifact)
    trt_types, trt_zp = _activation_qparams(quantised["tensorrt"].artifact)
    assert cpu_types == {np.dtype(np.uint8)}  # U8S8: asymmetric uint8 activations
    assert (cpu_zp != 0).any()
    assert trt_types == {np.dtype(np.int8)}  # TensorRT: symmetric int8, zero point 0
    assert (trt_zp == 0).all()
    # weights: int8 per-channel (one scale per output channel) in both flavours
    for res in (quantised["cpu"], quantised["tensorrt"]):
        m = onnx.load(str(res.artifact))
        inits = {i.name: i for i in m.graph.initializer}
        w_dq = [n for n in m.graph.node if n.op_type == "DequantizeLinear" and n.input[0].endswith("_quantized")
                and inits.get(n.input[0]) is not None and len(inits[n.input[0]].dims) == 4]
        assert w_dq
        for n in w_dq:
            assert inits[n.input[0]].data_type == onnx.TensorProto.INT8
            assert inits[n.input[1]].dims[0] == inits[n.input[0]].dims[0]  # per-channel scales
    trt_ops = {n.op_type for n in onnx.load(str(quantised["tensorrt"].artifact)).graph.node}
    assert "Relu" in trt_ops  # kept explicit for TensorRT's own fusion


def test_cpu_coverage_above_90_percent_and_tensorrt_flavour_lower_on_ort(quantised):
    cpu, trt = quantised["cpu"], quantised["tensorrt"]
    assert cpu.int8_mac_fraction > 0.9
    assert cpu.runtime_float_layers == [] or cpu.int8_mac_fraction > 0.95
    assert trt.int8_mac_fraction < cpu.int8_mac_fraction  # S8S8 + explicit Relu: ORT CPU leaves Convs in float
    assert trt.runtime_float_layers


def test_coverage_of_float_model_is_zero(trained_resnet8):
    from edgekit.techniques.quantize.coverage import int8_coverage

    rep = int8_coverage(trained_resnet8.onnx)
    assert rep.total_macs > 0 and rep.int8_macs == 0
    assert len(rep.float_layers) == len(rep.layers) >= 8


def test_sidecar_records_target_scheme_and_calibration(quantised):
    from edgekit._io import read_sidecar

    side = read_sidecar(quantised["tensorrt"].artifact)
    assert side == json.loads(json.dumps(quantised["tensorrt"].sidecar))  # the result's sidecar is the file's
    assert side["precision"] == "int8" and side["target"] == "tensorrt"
    assert side["calibration"]["method"] == "minmax" and side["calibration"]["samples"] == 128
    assert side["quant_scheme"]["activations"] == "int8" and side["quant_scheme"]["activation_symmetric"] is True
    assert side["quant_scheme"]["per_channel"] is True
    assert 0 < side["int8_mac_fraction"] < 1 and side["float_layers"] == []
    assert side["runtime_float_layers"]  # what ORT CPU leaves in float is listed
    cpu_side = read_sidecar(quantised["cpu"].artifact)
    assert cpu_side["quant_scheme"]["activations"] == "uint8" and cpu_side["target"] == "cpu"


def test_result_has_the_common_shape(quantised):
    res = quantised["cpu-budget"]
    assert res.model is None and res.artifact.is_file()
    speed_float = res.sidecar["speed"]["float_nodes"]  # kept float because int8 was slower there (measured)
    assert res.metrics["int8_mac_fraction"] == res.int8_mac_fraction
    assert res.metrics["float_layers"] == len(res.float_layers) == len(speed_float) + len(res.fallback)
    assert res.metrics["fp32_val"] - res.metrics["int8_val"] <= 0.5
    assert res.sidecar["precision"] == "int8" and res.sidecar["accuracy"]["max_accuracy_drop"] == 0.5


@pytest.mark.parametrize("method,kw", [("entropy", {}), ("percentile", {"percentile": 99.9})])
def test_other_calibration_methods(trained_resnet8, tmp_path, method, kw):
    from edgekit._io import read_sidecar
    from edgekit.techniques.quantize.ptq import quantize

    s = trained_resnet8.splits
    res = quantize(trained_resnet8.onnx, {"method": method, "speed_fallback": False, **kw}, calib=s.train.x[:64],
                   out_path=tmp_path / "q.onnx", val=s.val)
    assert res.accuracy["fp32_val"] - res.accuracy["int8_val"] <= 1.5
    assert read_sidecar(res.artifact)["calibration"]["method"] == method


def test_excluded_nodes_stay_float(trained_resnet8, tmp_path):
    from edgekit.techniques.quantize.ptq import quantize

    s = trained_resnet8.splits
    first = next(n.name for n in onnx.load(str(trained_resnet8.onnx)).graph.node if n.op_type == "Conv")
    res = quantize(trained_resnet8.onnx, {"exclude": [first], "speed_fallback": False}, calib=s.train.x[:64],
                   out_path=tmp_path / "q.onnx")
    assert res.float_layers == [first]
    assert first in res.runtime_float_layers
    assert 0.5 < res.int8_mac_fraction < 1.0


def test_exclude_scope_by_pattern_and_op_type(trained_resnet8, tmp_path):
    from edgekit.techniques.quantize.ptq import quantize

    s = trained_resnet8.splits
    nodes = {n.name: n.op_type for n in onnx.load(str(trained_resnet8.onnx)).graph.node}
    res = quantize(trained_resnet8.onnx, {"exclude": {"patterns": ["/layer3/*"]}, "speed_fallback": False},
                   calib=s.train.x[:64], out_path=tmp_path / "p.onnx")
    assert res.float_layers == [n for n in nodes if n.startswith("/layer3/")] and res.float_layers
    res = quantize(trained_resnet8.onnx, {"exclude": {"types": ["Gemm"]}, "speed_fallback": False},
                   calib=s.train.x[:64], out_path=tmp_path / "t.onnx")
    assert res.float_layers == [n for n, t in nodes.items() if t == "Gemm"] and res.float_layers
    assert set(res.float_layers) <= set(res.runtime_float_layers)
