"""QAT: fake-quant in the target's scheme, QDQ export via dynamo that ORT runs in int8."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper


@pytest.fixture(scope="module")
def qat_cpu(trained_resnet8, tmp_path_factory):
    from edgekit.techniques.quantize.qat import qat

    s = trained_resnet8.splits
    d = tmp_path_factory.mktemp("qat")
    model = trained_resnet8.module
    return qat(model, {"target": "cpu", "epochs": 1, "calibration_samples": 64}, train=s.train.take(256), val=s.val,
               out_path=d / "qat.onnx", teacher=model, seed=0)


def test_qat_export_is_qdq_and_runs_int8_in_ort(qat_cpu, trained_resnet8):
    from edgekit._io import read_sidecar
    from edgekit.backends import open_runner
    from edgekit.core.train import evaluate
    from edgekit.techniques.quantize.coverage import int8_coverage

    ops = {n.op_type for n in onnx.load(str(qat_cpu.artifact)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert "BatchNormalization" not in ops  # BN folded before fake-quant, as deployed
    rep = int8_coverage(qat_cpu.artifact)
    assert rep.int8_fraction > 0.9 and "QLinearConv" in rep.optimized_ops
    s = trained_resnet8.splits
    runner = open_runner(qat_cpu.artifact, "ort-cpu", threads=2)
    assert runner.info["precision"] == "int8"
    fp32_val = evaluate(trained_resnet8.module, s.val)
    assert abs(evaluate(runner, s.val) - qat_cpu.val_accuracy) < 1e-9
    assert fp32_val - qat_cpu.val_accuracy <= 3.0, (fp32_val, qat_cpu.val_accuracy)
    side = read_sidecar(qat_cpu.artifact)
    assert side["precision"] == "int8" and side["target"] == "cpu" and side["mode"] == "qat"
    assert side["qat"]["kd"] is True and side == qat_cpu.sidecar
    assert qat_cpu.model is None and qat_cpu.metrics["val_accuracy"] == qat_cpu.val_accuracy


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
        qat(trained_lstm.module, {"epochs": 0}, train=s.train.take(64), val=s.val, out_path=tmp_path / "q.onnx")
    assert not (tmp_path / "q.onnx").exists()


def test_qat_config_rejects_typos(trained_resnet8, tmp_path):
    from edgekit.errors import ConfigError
    from edgekit.techniques.quantize.qat import qat

    s = trained_resnet8.splits
    with pytest.raises(ConfigError, match=r"qat\.epoch: unknown field \(did you mean 'epochs'"):
        qat(trained_resnet8.module, {"epoch": 1}, train=s.train.take(64), val=s.val, out_path=tmp_path / "q.onnx")
    with pytest.raises(ConfigError, match=r"qat\.target: unknown quantisation target 'tpu'"):
        qat(trained_resnet8.module, {"target": "tpu"}, train=s.train.take(64), val=s.val, out_path=tmp_path / "q.onnx")


def test_qat_stage(trained_resnet8, tmp_path):
    from dataclasses import replace

    from edgekit.data import Split
    from edgekit.pipeline.stages import STAGES, StageContext, Variant, load_stage_modules

    load_stage_modules()
    cls, fn = STAGES.get("qat").config, STAGES.get("qat").run
    s = trained_resnet8.splits
    small = replace(s, train=Split(s.train.x[:128], s.train.y[:128]))
    v = Variant("reference", None, str(trained_resnet8.checkpoint), str(trained_resnet8.onnx))
    (tmp_path / "stage").mkdir()
    ctx = StageContext(tmp_path, tmp_path / "stage", 0, 2, None, {"reference": v}, lambda: small)
    out = fn(ctx, cls(epochs=0, teacher=None, calibration_samples=32))  # observer (PTQ) scales only: fast
    (var,) = out.variants
    assert var.name == "reference-qat-cpu" and var.meta["target"] == "cpu" and var.meta["precision"] == "int8"
    assert var.metrics["int8_mac_fraction"] > 0.9 and var.metrics["test_accuracy"] > 50.0
    assert var.meta["teacher"] is None and var.meta["qat"]["kd"] is False


def test_a_registered_target_drives_the_qat_scheme(trained_resnet8):
    """QAT reads signedness and symmetry from the target's scheme: a temporary uint8-symmetric target."""
    from dataclasses import replace

    from edgekit.techniques.quantize.config import TARGETS
    from edgekit.techniques.quantize.qat import ActFakeQuant, calibrate_qat, prepare_qat

    scheme = replace(TARGETS.get("cpu"), target="u8sym", activation_symmetric=True)
    with TARGETS.temporary("u8sym", scheme):
        qm = prepare_qat(trained_resnet8.module, "u8sym")
        calibrate_qat(qm, trained_resnet8.splits.train.x[:32])
    fqs = [m for m in qm.modules() if isinstance(m, ActFakeQuant)]
    assert fqs and all(not m.signed and m.symmetric and m.zero_point == 128 for m in fqs)
