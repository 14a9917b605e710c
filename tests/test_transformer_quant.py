"""Transformer encoders: fused fp32 graphs, MACs of fused files, static INT8 with kept-float reasons,
SmoothQuant (equivalence, flatter ranges, bad input) and dynamic INT8 as the encoder default."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from _helpers.hf_models import tiny_bert_dir, token_split

from edgekit._io import read_sidecar
from edgekit.errors import ConfigError

pytest.importorskip("transformers")

T = 12
SHAPES = {"input_ids": (T,), "attention_mask": (T,), "token_type_ids": (T,)}


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    """A tiny BERT (hidden 32, 2 layers, 2 heads) with an outlier channel in every LayerNorm (as trained BERTs
    have), exported fused (with its unfused sibling) once for the module."""
    from edgekit.export import export_onnx
    from edgekit.models.hf import load_hf

    d = tmp_path_factory.mktemp("tq")
    torch.manual_seed(0)
    model = load_hf(tiny_bert_dir(d / "bert", vocab_size=100))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight[3] *= 25.0
    x = token_split(n=16, t=T, vocab=100)
    res = export_onnx(model, x.x, d / "bert.onnx")
    return model, res.path, d


def _logits(path, feeds):
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s.run(None, {i.name: feeds[i.name] for i in s.get_inputs()})[0]


def test_export_fuses_an_encoder_keeps_the_unfused_sibling_and_records_it(bert):
    from edgekit.export.fuse import artifact_for_backend

    model, path, _ = bert
    fusion = read_sidecar(path)["fusion"]
    assert fusion["applied"] and fusion["counts"]["Attention"] == 2 and fusion["counts"]["SkipLayerNormalization"] == 4
    assert fusion["num_heads"] == 2 and fusion["hidden_size"] == 32
    ops = {(n.domain, n.op_type) for n in onnx.load(str(path)).graph.node}
    assert ("com.microsoft", "Attention") in ops
    sibling = path.with_name(fusion["unfused"])
    assert not any(n.domain == "com.microsoft" for n in onnx.load(str(sibling)).graph.node)
    assert fusion["backends"]["ort-cpu"] == "fused" and fusion["backends"]["tensorrt"] == "unfused"
    assert artifact_for_backend(path, "tensorrt") == sibling and artifact_for_backend(path, "ort-cpu") == path
    # parity: fused vs unfused vs PyTorch, on other inputs than the export's
    x = token_split(n=6, t=T, vocab=100, seed=5).x
    with torch.no_grad():
        ref = model(**{k: torch.from_numpy(v) for k, v in x.items()}).logits.numpy()
    np.testing.assert_allclose(_logits(path, x), ref, atol=1e-4)
    np.testing.assert_allclose(_logits(sibling, x), ref, atol=1e-4)
    assert fusion["parity"]["max_abs_diff"] < 1e-4


def test_openvino_runs_the_fused_graph(bert):
    from edgekit.backends import open_runner, probe_backend

    ok, why = probe_backend("openvino")
    if not ok:
        pytest.skip(f"OpenVINO unavailable: {why}")
    _, path, _ = bert
    x = token_split(n=4, t=T, vocab=100, seed=6).x
    with open_runner(path, "openvino", threads=1) as r:
        assert r.info["artifact"] == str(path)  # the fused file itself, not the sibling
        np.testing.assert_allclose(np.asarray(r(x)), _logits(path, x), atol=1e-3)


def test_fuse_off_and_cnns_stay_unfused(bert, tmp_path):
    from edgekit.export import export_onnx
    from edgekit.models import create_model

    model, _, _ = bert
    x = token_split(n=4, t=T, vocab=100).x
    plain = export_onnx(model, x, tmp_path / "plain.onnx", fuse=False).path
    assert "fusion" not in read_sidecar(plain) and not (tmp_path / "plain.unfused.onnx").exists()
    cnn = create_model("resnet_cifar", depth=8, width=0.25, num_classes=3, in_channels=1)
    res = export_onnx(cnn, np.zeros((2, 1, 16, 16), np.float32), tmp_path / "cnn.onnx")
    assert "fusion" not in read_sidecar(res.path)
    with pytest.raises(ConfigError, match="fuse must be"):
        export_onnx(cnn, np.zeros((2, 1, 16, 16), np.float32), tmp_path / "c2.onnx", fuse="yes")


def test_export_stage_fuse_field():
    from edgekit.pipeline.stage_export import ExportStage

    assert ExportStage().fuse == "auto" and ExportStage(fuse=False).fuse is False
    with pytest.raises(ValueError):
        ExportStage(fuse="sometimes")


def test_macs_of_the_fused_graph_match_the_unfused_count(bert):
    from edgekit.core.measure.macs import count_macs_onnx

    _, path, _ = bert
    fused = count_macs_onnx(path, inputs=SHAPES)
    unfused = count_macs_onnx(path.with_name(read_sidecar(path)["fusion"]["unfused"]), inputs=SHAPES)
    assert fused.unknown == [] and fused.total == unfused.total > 0
    att = [n for n in fused.per_node if n.op_type == "Attention"]
    # per layer: QKV projection T*32*96 + Q·Kᵀ and P·V 2*T*T*32
    assert len(att) == 2 and all(n.macs == T * 32 * 96 + 2 * T * T * 32 for n in att)


def test_static_int8_keeps_transformer_ops_float_with_reasons_and_naive_switch(bert):
    from edgekit.techniques.quantize.ptq import quantize

    _, path, d = bert
    cal = token_split(n=16, t=T, vocab=100, seed=2).x
    res = quantize(path, {"mode": "static", "speed_fallback": False}, calib=cal, out_path=d / "excl.onnx")
    side = res.sidecar
    assert side["mode"] == "static" and side["quantised_graph"] == "bert.unfused.onnx"
    ops = {r["op_type"] for r in side["kept_float"]}
    assert {"LayerNormalization", "Softmax", "Add", "Gather", "MatMul"} <= ops
    assert all(r["reason"] for r in side["kept_float"])
    reasons = " ".join(r["reason"] for r in side["kept_float"])
    assert "residual Add" in reasons and "embedding" in reasons and "attention product" in reasons
    assert 0.5 < side["int8_mac_fraction"] < 1.0  # attention products float
    assert side["fusion"]["counts"]["SkipLayerNormalization"] == 4  # fused again around the int8 MatMuls
    np.testing.assert_allclose(_logits(d / "excl.onnx", cal), _logits(path, cal), atol=0.05)
    naive = quantize(path, {"mode": "static", "speed_fallback": False, "transformer_scope": False}, calib=cal,
                     out_path=d / "naive.onnx").sidecar
    assert naive["kept_float"] == [] and naive["int8_mac_fraction"] > side["int8_mac_fraction"]
    q = onnx.load(str(d / "naive.onnx"))
    dq_out = {o for n in q.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    assert any(n.op_type == "Softmax" and n.input[0] in dq_out for n in q.graph.node)  # naive: Softmax int8 too


def test_smoothquant_is_equivalent_and_flattens_activation_ranges(bert, tmp_path):
    from edgekit.techniques.quantize.smoothquant import smooth_onnx

    _, path, _ = bert
    src = path.with_name("bert.unfused.onnx")
    x = token_split(n=16, t=T, vocab=100, seed=3).x
    rep = smooth_onnx(src, tmp_path / "smooth.onnx", [dict(x)], alpha=0.5).to_dict()
    np.testing.assert_allclose(_logits(tmp_path / "smooth.onnx", x), _logits(src, x), atol=1e-5)
    assert rep["smoothed"] == 10  # 4 activations per layer x 2 + pooler + classifier
    assert rep["act_max_after"] < rep["act_max_before"] / 4  # the outlier channel moved into the weights
    assert all(t["act_max_after"] < t["act_max_before"] for t in rep["tensors"] if t["act_max_before"] > 2)
    less = smooth_onnx(src, tmp_path / "s2.onnx", [dict(x)], alpha=0.25).to_dict()
    assert less["act_max_after"] > rep["act_max_after"]  # alpha moves more or less of the range


def test_smoothquant_in_static_quantize_and_bad_input(bert, tmp_path):
    from edgekit.techniques.quantize.config import QuantizeConfig
    from edgekit.techniques.quantize.ptq import quantize
    from edgekit.techniques.quantize.smoothquant import smooth_onnx

    _, path, _ = bert
    cal = token_split(n=16, t=T, vocab=100, seed=2).x
    res = quantize(path, {"speed_fallback": False, "smoothquant": {"alpha": 0.6}}, calib=cal,
                   out_path=tmp_path / "sq.onnx")
    assert res.mode == "static" and res.sidecar["smoothquant"]["alpha"] == 0.6
    assert any(n.op_type == "Mul" and n.name.startswith("SmoothQuant") for n in onnx.load(str(res.artifact)).graph.node)
    with pytest.raises(ValueError, match="smoothquant applies to mode 'static'"):
        QuantizeConfig(mode="dynamic", smoothquant={"alpha": 0.5})
    with pytest.raises(ValueError, match="less than or equal to 1"):
        QuantizeConfig(smoothquant={"alpha": 1.5})
    no_linear = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["x"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])]))
    onnx.save(no_linear, str(tmp_path / "relu.onnx"))
    with pytest.raises(ConfigError, match="no MatMul/Gemm with constant weights"):
        smooth_onnx(tmp_path / "relu.onnx", tmp_path / "out.onnx", [{"x": np.ones((1, 4), np.float32)}])


def test_dynamic_int8_is_the_default_for_encoders(bert, tmp_path):
    from edgekit.export import export_onnx
    from edgekit.models import create_model
    from edgekit.techniques.quantize.config import QuantizeConfig
    from edgekit.techniques.quantize.ptq import quantize, resolve_mode

    _, path, _ = bert
    val = token_split(n=16, t=T, vocab=100, seed=4)
    res = quantize(path, {}, out_path=tmp_path / "dyn.onnx", val=val)  # no mode, no calibration data
    assert res.mode == "dynamic" and res.sidecar["mode"] == "dynamic"
    ops = {n.op_type for n in onnx.load(str(res.artifact)).graph.node}
    assert "QAttention" in ops  # the fused Attention itself runs int8
    from edgekit.core.measure.macs import count_macs_onnx

    macs, fp32 = count_macs_onnx(res.artifact, inputs=SHAPES), count_macs_onnx(path, inputs=SHAPES)
    assert macs.unknown == [] and macs.total == fp32.total  # QAttention counted: projection int8, scores float
    assert macs.total - macs.int8 == 2 * (2 * T * T * 32)
    from edgekit.export.fuse import artifact_for_backend

    twin = tmp_path / "dyn.unfused.onnx"  # OpenVINO reads the fused fp32 ops but not QAttention
    assert res.sidecar["fusion"]["unfused"] == twin.name and res.sidecar["fusion"]["backends"]["openvino"] == "unfused"
    assert artifact_for_backend(res.artifact, "openvino") == twin
    assert artifact_for_backend(res.artifact, "ort-cpu") == res.artifact
    assert artifact_for_backend(path, "openvino") == path
    np.testing.assert_allclose(_logits(twin, val.x), _logits(res.artifact, val.x), atol=0.05)
    assert abs(res.accuracy["int8_val"] - res.accuracy["fp32_val"]) <= 100 / 16 + 1e-9
    assert resolve_mode(path, QuantizeConfig(smoothquant={"alpha": 0.5})).mode == "static"
    assert resolve_mode(path, QuantizeConfig(target="tensorrt")).mode == "static"
    cnn = create_model("resnet_cifar", depth=8, width=0.25, num_classes=3, in_channels=1)
    cnn_path = export_onnx(cnn, np.zeros((2, 1, 16, 16), np.float32), tmp_path / "cnn.onnx").path
    assert resolve_mode(cnn_path, QuantizeConfig()).mode == "static"


def test_recipe_exports_fused_and_quantises_an_encoder_dynamic_by_default(tmp_path):
    """Through the pipeline: the export stage records its fusion, a quantize stage without a mode makes dynamic
    INT8 (named so), and a static stage with smoothquant records it."""
    from edgekit.data import load_data
    from edgekit.pipeline import run_recipe
    from edgekit.pipeline.recipe import validate_recipe

    vocab = load_data({"name": "doc_topics", "max_length": 16}, seed=0).vocab_size
    bert = tiny_bert_dir(tmp_path / "bert", vocab_size=vocab, num_classes=5)
    recipe = validate_recipe({
        "name": "tiny_text_int8", "seed": 0, "threads": 1,
        "model": {"hf": str(bert), "task": "sequence-classification"},
        "data": {"name": "doc_topics", "max_length": 16},
        "stages": [{"type": "train", "name": "reference", "epochs": 1, "optimizer": "adamw", "lr": 1e-4},
                   {"type": "export"},
                   {"type": "quantize"},
                   {"type": "quantize", "input": "reference", "name": "sq", "mode": "static",
                    "smoothquant": {"alpha": 0.5}, "speed_fallback": False, "samples": 32}]})
    result = run_recipe(recipe, runs_dir=tmp_path / "runs", name="a", report=False)
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    export = next(s for s in manifest["stages"] if s.get("type") == "export")
    assert export["metrics"]["fused"] and export["metrics"]["fused_ops"]["Attention"] == 2
    dyn = result.variants["reference-int8-dynamic-cpu"]
    assert dyn.meta["mode"] == "dynamic"
    assert result.variants["sq"].meta["smoothquant"]["alpha"] == 0.5
