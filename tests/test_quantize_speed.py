"""Speed-aware INT8 (issue 14): profile fp32 vs int8 kernels, fall slower-in-int8 layers back to float, keep the
fastest policy, record the decision in the sidecar. The model is a CNN whose first conv has one input channel
(the kind whose int8 stem conv is slower than float on ONNX Runtime CPU)."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from _helpers.onnx_models import onnx_model, value_info
from _helpers.runs import run_cli
from onnx import helper, numpy_helper

from edgekit.errors import ConfigError
from edgekit.techniques.quantize.ptq import quantize
from edgekit.techniques.quantize.speed import float_closure, pick_fastest

BATCHES = (1, 8)


def one_channel_cnn(path):
    """x[N,1,28,28] → Conv 1→16 (3×3, pad 1) → Relu → MaxPool 2 → Conv 16→32 → Relu → GAP → Flatten → Gemm 32→10."""
    rng = np.random.default_rng(0)

    def init(name, shape, scale):
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="stem"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2], name="pool"),
             helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "fc", "fcb"], ["y"], transB=1, name="fc")]
    inits = [init("w1", (16, 1, 3, 3), 0.5), init("b1", (16,), 0.1), init("w2", (32, 16, 3, 3), 0.1),
             init("b2", (32,), 0.1), init("fc", (10, 32), 0.3), init("fcb", (10,), 0.1)]
    onnx.save(onnx_model(nodes, [value_info("x", ["N", 1, 28, 28])], [value_info("y", ["N", 10])], inits), str(path))
    return path


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    d = tmp_path_factory.mktemp("speed")
    calib = np.random.default_rng(1).standard_normal((32, 1, 28, 28)).astype(np.float32)
    np.savez(d / "calib.npz", x=calib)
    return one_channel_cnn(d / "cnn.onnx"), d / "calib.npz"


@pytest.fixture(scope="module")
def default_int8(cnn, tmp_path_factory):
    model, calib = cnn
    out = tmp_path_factory.mktemp("q") / "cnn.int8.onnx"
    res = quantize(model, {"speed_batches": BATCHES}, calib=calib, out_path=out, threads=1)
    return res, out


def test_the_one_channel_stem_conv_is_flagged_slower_in_int8(default_int8):
    speed = default_int8[0].sidecar["speed"]
    flagged = {f["node"]: f for f in speed["flagged"]}
    assert "stem" in flagged, speed["flagged"]
    row = flagged["stem"]
    assert row["op_type"] == "Conv" and set(row["float_us"]) == set(row["int8_us"]) == set(BATCHES)
    assert any(row["int8_us"][b] > row["float_us"][b] for b in BATCHES)


def test_the_decision_is_recorded_and_the_artifact_is_the_chosen_policy(default_int8):
    res, out = default_int8
    side = json.loads(out.with_name(out.name + ".json").read_text())["speed"]
    assert side["policy"] in side["speedup_vs_fp32"] and side["batches"] == list(BATCHES)
    assert set(side["speedup_vs_fp32"]) >= {"all-int8", "exclude-flagged", "contractions-only"}
    for per_batch in side["speedup_vs_fp32"].values():
        assert set(per_batch) == {str(b) for b in BATCHES}
        assert all(v["p10"] <= v["median"] <= v["p90"] for v in per_batch.values())
    chosen = side["speedup_vs_fp32"][side["policy"]]
    assert side["slower_than_fp32"] == [int(b) for b, v in chosen.items() if v["median"] < 1.0]
    assert set(side["float_nodes"]) <= set(res.float_layers)
    if side["policy"] != "all-int8":  # the stem really runs in float: its inputs are not dequantised
        g = onnx.load(str(out)).graph
        producer = {o: n.op_type for n in g.node for o in n.output}
        stem = next(n for n in g.node if n.name == "stem")
        assert producer.get(stem.input[1]) != "DequantizeLinear"


def test_speed_fallback_off_gives_all_layers_int8_and_no_speed_record(cnn, tmp_path):
    model, calib = cnn
    res = quantize(model, {"speed_fallback": False}, calib=calib, out_path=tmp_path / "all.onnx", threads=1)
    assert res.sidecar["speed"] is None and "stem" not in res.float_layers
    assert res.int8_mac_fraction > 0.99


def test_pick_fastest_prefers_never_slower_then_geometric_mean():
    s = {"all-int8": {"1": {"median": 3.0}, "8": {"median": 0.8}},
         "exclude-flagged": {"1": {"median": 1.4}, "8": {"median": 1.1}},
         "contractions-only": {"1": {"median": 1.2}, "8": {"median": 1.05}}}
    assert pick_fastest(s, list(s)) == "exclude-flagged"
    assert pick_fastest(s, ["all-int8", "contractions-only"]) == "contractions-only"
    slow = {"a": {"1": {"median": 0.9}}, "b": {"1": {"median": 0.7}}}
    assert pick_fastest(slow, list(slow)) == "a"


def test_float_closure_adds_ops_fed_only_by_float_nodes(cnn):
    model = onnx.load(str(cnn[0]))
    assert float_closure(model, ["stem"]) == ["pool", "relu1", "stem"]
    assert float_closure(model, ["conv2"]) == ["conv2", "flat", "gap", "relu2"]


@pytest.mark.parametrize("cfg, match", [({"speed_batches": [0, 8]}, "positive batch sizes"),
                                        ({"speed_batches": []}, "speed_batches")])
def test_bad_speed_settings(cnn, tmp_path, cfg, match):
    with pytest.raises(ConfigError, match=match):
        quantize(cnn[0], cfg, calib=cnn[1], out_path=tmp_path / "q.onnx")


def test_cli_quantize_reports_the_speed_policy_and_takes_the_new_options(cnn, tmp_path):
    model, calib = cnn
    r = run_cli("quantize", str(model), "--out", str(tmp_path / "q.onnx"), "--calib", str(calib),
                "--speed-batches", "1", "--threads", "1")
    assert r.returncode == 0, r.stderr
    assert "speed check: policy" in r.stdout and "vs fp32 at batch 1" in r.stdout
    r = run_cli("quantize", str(model), "--out", str(tmp_path / "n.onnx"), "--calib", str(calib),
                "--no-speed-fallback", "--exclude", "stem")
    assert r.returncode == 0, r.stderr and "speed check" not in r.stdout
    assert json.loads((tmp_path / "n.onnx.json").read_text())["float_layers"] == ["stem"]
    r = run_cli("quantize", str(model), "--out", str(tmp_path / "x.onnx"), "--calib", str(calib),
                "--exclude", "nosuchnode")
    assert r.returncode == 2 and "nosuchnode" in r.stderr


def test_when_every_contraction_is_slower_in_int8_the_artifact_stays_int8(cnn, tmp_path, monkeypatch):
    """A fallback that keeps every contraction float is a float model; it must not ship under an int8 name."""
    from edgekit.core.onnx_graph import onnx_precision
    from edgekit.techniques.quantize import speed

    every = [{"node": n, "op_type": "Conv", "float_us": {1: 1.0}, "int8_us": {1: 2.0}}
             for n in ("stem", "conv2", "fc")]
    monkeypatch.setattr(speed, "flag_slow_nodes", lambda *a, **k: every)
    model, calib = cnn
    out = tmp_path / "cnn.int8.onnx"
    res = quantize(model, {"speed_batches": [1]}, calib=calib, out_path=out, threads=1)
    assert set(res.sidecar["speed"]["speedup_vs_fp32"]) == {"all-int8"}
    assert res.sidecar["speed"]["policy"] == "all-int8" and onnx_precision(out) == "int8"
