"""QAT: fake-quant in the target's scheme, QDQ export via dynamo that ORT runs in int8."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from conftest import stage_context
from onnx import numpy_helper


@pytest.fixture(scope="module")
def qat_cpu(trained_resnet8, tmp_path_factory):
    from edgekit.techniques.quantize.qat import qat

    s = trained_resnet8.splits
    d = tmp_path_factory.mktemp("qat")
    return qat(trained_resnet8.module, s.train.take(256), s.val, d / "qat.onnx",
               config={"target": "cpu", "epochs": 1, "calibration_samples": 64}, seed=0)


def test_qat_export_is_qdq_and_runs_int8_in_ort(qat_cpu, trained_resnet8):
    from edgekit._io import read_sidecar
    from edgekit.backends import open_runner
    from edgekit.core.train import evaluate
    from edgekit.techniques.quantize.coverage import int8_coverage

    ops = {n.op_type for n in onnx.load(str(qat_cpu.path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert "BatchNormalization" not in ops  # BN folded before fake-quant, as deployed
    rep = int8_coverage(qat_cpu.path)
    assert rep.int8_fraction > 0.9 and "QLinearConv" in rep.optimized_ops
    s = trained_resnet8.splits
    runner = open_runner(qat_cpu.path, "ort-cpu", threads=2)
    assert runner.info["precision"] == "int8"
    fp32_val = evaluate(trained_resnet8.module, s.val)
    assert abs(evaluate(runner, s.val) - qat_cpu.val_accuracy) < 1e-9
    assert fp32_val - qat_cpu.val_accuracy <= 3.0, (fp32_val, qat_cpu.val_accuracy)
    side = read_sidecar(qat_cpu.path)
    assert side["precision"] == "int8" and side["target"] == "cpu" and side["mode"] == "qat"
    assert side["qat"]["kd"] is True


def test_qat_activation_scheme_follows_target(trained_resnet8):
    from edgekit.techniques.quantize.qat import ActFakeQuant, calibrate_qat, prepare_qat

    x = trained_resnet8.splits.train.x[:32]
    for target, signed in (("cpu", False), ("tensorrt", True)):
        qm = prepare_qat(trained_resnet8.module, target)
        calibrate_qat(qm, x)
        fqs = [m for m in qm.modules() if isinstance(m, ActFakeQuant)]
        assert len(fqs) >= 10
        assert all(m.signed is signed for m in fqs)
        if signed:
            assert all(m.zero_point == 0 for m in fqs)
        else:
            assert any(m.zero_point != 0 for m in fqs)  # the normalised input is asymmetric
        with torch.no_grad():  # fake-quant model starts close to the float one (observer = PTQ scales)
            a = qm(torch.from_numpy(x)).argmax(1)
            b = trained_resnet8.module.eval()(torch.from_numpy(x)).argmax(1)
        assert (a == b).float().mean() >= 0.9


def test_qat_tensorrt_export_is_symmetric(trained_resnet8, tmp_path):
    from edgekit.techniques.quantize.qat import calibrate_qat, export_qat, prepare_qat

    qm = prepare_qat(trained_resnet8.module, "tensorrt")
    calibrate_qat(qm, trained_resnet8.splits.train.x[:32])
    path = export_qat(qm, trained_resnet8.splits.val.x[:8], tmp_path / "trt.onnx")
    m = onnx.load(str(path))
    consts = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    for n in m.graph.node:  # Constant nodes too
        if n.op_type == "Constant":
            consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    zps = [consts[n.input[2]] for n in m.graph.node if n.op_type == "QuantizeLinear" and n.input[2] in consts]
    assert zps and all(z.dtype == np.int8 and not z.any() for z in zps)


def test_qat_refuses_untraceable_models(trained_lstm, tmp_path):
    from edgekit.errors import ConfigError
    from edgekit.techniques.quantize.qat import qat

    s = trained_lstm.splits
    with pytest.raises(ConfigError, match="dynamic quantisation"):
        qat(trained_lstm.module, s.train.take(64), s.val, tmp_path / "q.onnx", config={"epochs": 0})
    assert not (tmp_path / "q.onnx").exists()


def test_qat_config_rejects_typos(trained_resnet8, tmp_path):
    from edgekit.errors import ConfigError
    from edgekit.techniques.quantize.qat import qat

    s = trained_resnet8.splits
    with pytest.raises(ConfigError, match="epoch"):
        qat(trained_resnet8.module, s.train.take(64), s.val, tmp_path / "q.onnx", config={"epoch": 1})


def test_qat_stage(trained_resnet8, tmp_path):
    from dataclasses import replace

    from edgekit.data import Split
    from edgekit.pipeline.stages import STAGES, Variant, load_stage_modules

    load_stage_modules()
    cls, fn = STAGES.get("qat")
    s = trained_resnet8.splits
    small = replace(s, train=Split(s.train.x[:128], s.train.y[:128]))
    v = Variant("reference", None, str(trained_resnet8.checkpoint), str(trained_resnet8.onnx))
    ctx = stage_context(tmp_path, {"reference": v}, small)
    out = fn(ctx, cls(epochs=0, teacher="none", calibration_samples=32))  # observer (PTQ) scales only: fast
    (var,) = out.variants
    assert var.name == "reference-qat-cpu" and var.meta["target"] == "cpu" and var.meta["precision"] == "int8"
    assert var.metrics["int8_mac_fraction"] > 0.9 and var.metrics["test_accuracy"] > 50.0
