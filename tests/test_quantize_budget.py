"""Accuracy budget with layer fallback, dynamic quantisation of the LSTM, and the quantize stage."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from edgekit.errors import AccuracyBudgetError


def stage_context(tmp_path, variants, splits):
    """A context for calling one stage directly (seed 0, 2 threads, no recipe)."""
    from edgekit.pipeline.stages import StageContext

    (tmp_path / "stage").mkdir()
    return StageContext(tmp_path, tmp_path / "stage", 0, 2, None, dict(variants), lambda: splits)


def quantize_stage():
    """The generated `quantize` stage: (config class, function)."""
    from edgekit.pipeline.stages import STAGES, load_stage_modules

    load_stage_modules()
    stage = STAGES.get("quantize")
    return stage.config, stage.run


@pytest.fixture(scope="module")
def outlier_resnet(trained_resnet8, tmp_path_factory):
    """The fixture ResNet with one activation channel scaled ×300 (and the next conv's input ×1/300).

    The float function is unchanged (ReLU is positively homogeneous), but that tensor's per-tensor int8
    range is now dominated by one channel, so exactly one layer ('/layer2/layer2.0/conv2/Conv', which reads
    it) is sensitive: what the accuracy budget has to find.
    """
    import torch

    from edgekit.export import export_onnx

    m = trained_resnet8.module.eval()
    blk, k = m.layer2[0], 300.0
    with torch.no_grad():
        blk.bn1.weight[0] *= k
        blk.bn1.bias[0] *= k
        blk.conv2.weight[:, 0] /= k
    d = tmp_path_factory.mktemp("outlier")
    path = export_onnx(m, trained_resnet8.splits.val.x[:32], d / "outlier.onnx").path
    from edgekit.models import save_checkpoint

    save_checkpoint(m, d / "outlier.pt", {"input_shape": list(trained_resnet8.splits.input_shape), "num_classes": 10})
    return path


def test_fallback_meets_a_tight_budget(outlier_resnet, trained_resnet8, tmp_path):
    from edgekit._io import read_sidecar
    from edgekit.techniques.quantize.ptq import quantize

    s = trained_resnet8.splits
    res = quantize(outlier_resnet, {"max_accuracy_drop": 0.5, "speed_fallback": False}, calib=s.train.x[:128],
                   out_path=tmp_path / "q.onnx", val=s.val)
    acc = res.accuracy
    assert acc["fp32_val"] - acc["int8_val_all_layers"] > 0.5  # the budget was really exceeded first
    assert acc["fp32_val"] - acc["int8_val"] <= 0.5  # and met after fallback
    assert "/layer2/layer2.0/conv2/Conv" in res.float_layers  # the one layer reading the outlier tensor
    assert len(res.float_layers) <= 3 and len(res.fallback) == len(res.float_layers)
    step = res.fallback[-1]
    assert step["layer"] == res.float_layers[-1] and step["latency_ms"] > 0 and step["slowdown_vs_int8"] > 0
    assert 0.5 < res.int8_mac_fraction < 1.0
    assert read_sidecar(res.artifact)["float_layers"] == res.float_layers


def test_fallback_that_cannot_meet_the_budget_raises_with_numbers(outlier_resnet, trained_resnet8, tmp_path):
    from edgekit.techniques.quantize.ptq import quantize

    s = trained_resnet8.splits
    with pytest.raises(AccuracyBudgetError, match=r"fp32 \d+\.\d+%.*budget max_accuracy_drop=0\.5") as e:
        quantize(outlier_resnet, {"max_accuracy_drop": 0.5, "max_fallback_layers": 0}, calib=s.train.x[:128],
                 out_path=tmp_path / "q.onnx", val=s.val)
    assert e.value.measured["fp32_accuracy"] - e.value.measured["final_accuracy"] > 0.5
    assert e.value.measured["steps"] == []
    assert not (tmp_path / "q.onnx").exists()


def test_dynamic_lstm_keeps_accuracy_and_shrinks(trained_lstm, tmp_path):
    from edgekit.backends import open_runner
    from edgekit.core.train import evaluate
    from edgekit.techniques.quantize.ptq import quantize

    s = trained_lstm.splits
    res = quantize(trained_lstm.onnx, {"mode": "dynamic", "per_channel": False}, out_path=tmp_path / "lstm.int8.onnx",
                   val=s.val)
    fp32 = evaluate(open_runner(trained_lstm.onnx, "ort-cpu", threads=2), s.test)
    int8 = evaluate(open_runner(res.artifact, "ort-cpu", threads=2), s.test)
    assert fp32 > 70.0
    assert fp32 - int8 <= 2.0, (fp32, int8)
    assert res.artifact.stat().st_size < 0.6 * Path(trained_lstm.onnx).stat().st_size
    assert res.mode == "dynamic" and res.int8_mac_fraction > 0.5
    import onnx

    assert "DynamicQuantizeLSTM" in {n.op_type for n in onnx.load(str(res.artifact)).graph.node}


def _ctx(tmp_path, trained, splits):
    from edgekit.pipeline.stages import Variant

    return stage_context(tmp_path, {"reference": Variant("reference", None, str(trained.checkpoint),
                                                         str(trained.onnx))}, splits)


def test_quantize_stage_produces_both_targets(trained_resnet8, tmp_path):
    cls, fn = quantize_stage()
    cfg = cls(targets=["cpu", "tensorrt"], samples=64, max_accuracy_drop=1.0)
    out = fn(_ctx(tmp_path, trained_resnet8, trained_resnet8.splits), cfg)
    names = [v.name for v in out.variants]
    assert names == ["reference-int8-cpu", "reference-int8-tensorrt"]
    cpu, trt = out.variants
    assert cpu.meta["target"] == "cpu" and trt.meta["target"] == "tensorrt"
    assert cpu.meta["int8_mac_fraction"] > trt.meta["int8_mac_fraction"]
    assert abs(cpu.metrics["test_accuracy"] - trained_resnet8.test_accuracy) <= 1.0
    assert os.path.isfile(cpu.onnx) and cpu.parent == "reference"


def test_quantize_stage_config_is_the_technique_config_plus_stage_fields():
    from pydantic import ValidationError

    from edgekit.techniques.quantize.config import QuantizeConfig

    cls, _ = quantize_stage()
    extra = {"type", "input", "name", "targets", "calibration", "allow_qat", "qat_epochs"}
    assert set(cls.model_fields) == set(QuantizeConfig.model_fields) | extra
    with pytest.raises(ValidationError, match="methd"):
        cls(methd="minmax")
    with pytest.raises(ValidationError, match="unknown quantisation target 'gpu'"):
        cls(target="gpu")
    with pytest.raises(ValidationError, match="mode 'dynamic' runs only on targets cpu"):
        cls(mode="dynamic", targets=["cpu", "tensorrt"])
    with pytest.raises(ValidationError, match="mode 'dynamic' runs only on targets cpu"):
        cls(mode="dynamic", target="tensorrt")


def test_stage_escalates_to_qat_when_fallback_is_not_allowed_to_help(outlier_resnet, trained_resnet8, tmp_path):
    """max_fallback_layers=0 + allow_qat: the stage must run QAT (here 0 epochs: observer scales only, which
    share PTQ's per-tensor outlier problem) and then fail with both the fallback and the QAT numbers."""
    from edgekit.pipeline.stages import Variant

    QuantizeStage, run_quantize = quantize_stage()
    v = Variant("outlier", None, str(outlier_resnet.with_suffix(".pt")), str(outlier_resnet))
    ctx = stage_context(tmp_path, {"outlier": v}, trained_resnet8.splits)
    cfg = QuantizeStage(max_accuracy_drop=0.5, max_fallback_layers=0, allow_qat=True, qat_epochs=0)
    with pytest.raises(AccuracyBudgetError, match=r"QAT reached \d+\.\d+%"):
        run_quantize(ctx, cfg)
    assert not list((tmp_path / "stage").glob("*.onnx"))


def test_shipped_tight_budget_recipe_falls_back_and_reports_it(tmp_path):
    """recipes/digits_vit_int8_budget.yaml (zero-loss budget): all-int8 loses accuracy, fallback wins it back,
    and the report names the float layers, the accuracy met and each fallback's latency cost."""
    from edgekit.pipeline import run_recipe

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "digits_vit_int8_budget.yaml"
    result = run_recipe(str(recipe), recipe_path=str(recipe), runs_dir=tmp_path, name="t")
    meta = result.variants["reference-int8"].meta
    acc = meta["accuracy"]
    assert acc["max_accuracy_drop"] == 0.0
    assert acc["int8_val_all_layers"] < acc["fp32_val"]  # the budget was exceeded before fallback
    assert acc["int8_val"] >= acc["fp32_val"]  # and met after it
    assert meta["float_layers"] and [s["layer"] for s in meta["fallback"]] == meta["float_layers"]
    md = result.report.read_text()
    section = md.split("## INT8 quantisation", 1)[1].split("\n## ", 1)[0]
    assert "| reference-int8 | cpu | minmax, 128 samples |" in section and ", met |" in section
    for layer in meta["float_layers"]:
        assert f"`{layer}` kept in float" in section
    assert "× the all-int8 artifact" in section
