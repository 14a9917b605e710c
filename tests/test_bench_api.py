"""benchmark(): real ONNX Runtime / torch runs of tiny models, outputs, and bad input."""
from __future__ import annotations

import csv
import io
import json
import re

import numpy as np
import onnx
import pytest
import torch
from _helpers.onnx_models import conv_net_onnx as conv_net
from onnx import TensorProto, helper, numpy_helper

from edgekit.bench import BenchResult, ModelSpec, benchmark
from edgekit.errors import BackendUnavailableError, ConfigError, EdgekitError, InputFileError, ShapeError

FAST = dict(warmup=1, iters=6, rounds=3, threads=1, plots=False)


@pytest.fixture
def two_models(tmp_path):
    big, big_macs = conv_net(tmp_path / "big.onnx", 32)
    small, small_macs = conv_net(tmp_path / "small.onnx", 4)
    return big, small, big_macs, small_macs


def test_two_onnx_files_rows_stats_macs_and_speedups(two_models, tmp_path):
    big, small, big_macs, small_macs = two_models
    res = benchmark([big, small], batches="1,4", **FAST)
    assert [(r["model"], r["batch"]) for r in res.rows] == [("big", 1), ("small", 1), ("big", 4), ("small", 4)]
    for r in res.rows:
        assert 0 < r["min_ms"] <= r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"]
        assert r["iters"] == 6 and r["rounds"] == 3 and r["threads"] == 1 and r["precision"] == "fp32"
        assert r["throughput"] == pytest.approx(r["batch"] * 1000 / r["mean_ms"])
        assert r["min_ms"] <= r["round_ms"] <= r["p99_ms"]
        assert r["gops"] == pytest.approx(2 * r["macs"] * r["batch"] / r["round_ms"] / 1e6, rel=0.05)
        assert r["efficiency"] == pytest.approx(r["gops"] / r["peak_gops"], rel=0.5)
        assert r["peak_gops"] > 0 and r["efficiency"] > 0
        assert r["size_bytes"] > 0 and len(r["speedup_rounds"]) == 3
        assert r["speedup_min"] <= r["speedup"] <= r["speedup_max"]
    base, other = res.row("big", batch=1), res.row("small", batch=1)
    assert base["baseline"] and base["speedup_rounds"] == [1.0, 1.0, 1.0]
    assert (base["macs"], other["macs"]) == (big_macs, small_macs)
    assert res.row("big", batch=4)["size_bytes"] == big.stat().st_size
    assert res.environment["cores_logical"] >= 1 and res.config["threads"] == 1
    assert res.peak["cpu"]["fp32_gops"] > 0 and res.peak["cpu"]["int8_gops"] > 0
    # --baseline picks the other model (by path): its row goes first, ratios invert
    res2 = benchmark([big, small], baseline=str(small), **FAST)
    assert res2.baseline == {"model": "small", "backend": "ort-cpu"}
    assert res2.ordered_rows()[0]["model"] == "small"


def test_outputs_json_csv_md_and_plots(two_models, tmp_path):
    big, small, *_ = two_models
    out = tmp_path / "out"
    res = benchmark([big, small], batches=(1, 2), out_dir=out, **{**FAST, "plots": True})
    doc = json.loads((out / "bench.json").read_text())
    assert doc["schema"] == "edgekit-bench/1" and len(doc["rows"]) == 4
    assert doc["environment"]["versions"]["onnxruntime"] and doc["config"]["rounds"] == 3
    assert BenchResult.from_dict(doc).rows == json.loads(res.to_json())["rows"]
    rows = list(csv.DictReader(io.StringIO((out / "bench.csv").read_text())))
    assert [r["model"] for r in rows] == ["big", "small", "big", "small"] and rows[0]["baseline"] == "True"
    assert len(rows[1]["speedup_rounds"].split(";")) == 3
    md = (out / "bench.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("| ")]
    assert "speedup (min–max) [95% CI]" in table[0] and table[1].startswith("| **big**")
    assert "1.00× (baseline)" in table[1]
    assert re.search(r"\| small \| ort-cpu \| 1 \|.*\| \d+\.\d\d× \(\d+\.\d\d–\d+\.\d\d\) "
                     r"\[CI \d+\.\d\d–\d+\.\d\d\] \|$", table[2])
    for png in ("latency.png", "throughput.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({png})" in md
    assert not (out / "pareto.png").exists()  # no accuracy, no Pareto plot
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []  # no temp files left behind


def test_write_is_atomic(two_models, tmp_path, monkeypatch):
    big, small, *_ = two_models
    res = benchmark([big, small], **FAST)
    out = tmp_path / "o"
    res.write(out, plots=False)
    before = (out / "bench.json").read_text()
    import edgekit._io as fio

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(fio.os, "replace", boom)
    res.created = "changed"
    with pytest.raises(OSError):
        res.write(out, plots=False)
    assert (out / "bench.json").read_text() == before  # old file intact, no partial write
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []


def test_accuracy_through_the_runner_and_pareto(tmp_path):
    """Logits = x[:, :4] (identity Gemm): accuracy is exactly the share of labels equal to argmax."""
    nodes = [helper.make_node("Gemm", ["x", "w"], ["y"])]
    w = np.eye(6, 4, dtype=np.float32)
    g = helper.make_graph(nodes, "id", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
                          initializer=[numpy_helper.from_array(w, "w")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 9
    onnx.save(m, str(tmp_path / "id.onnx"))
    x = np.random.default_rng(0).standard_normal((300, 6)).astype(np.float32)
    y = x[:, :4].argmax(1)
    y[:75] = (y[:75] + 1) % 4  # a quarter wrong -> 75.00 %
    np.savez(tmp_path / "held.npz", x=x, y=y)
    res = benchmark(tmp_path / "id.onnx", data=str(tmp_path / "held.npz"), out_dir=tmp_path / "o",
                    **{**FAST, "plots": True})
    assert res.rows[0]["accuracy"] == pytest.approx(75.0)
    assert (tmp_path / "o" / "pareto.png").is_file() and "acc %" in res.table()
    with pytest.raises(ShapeError, match="expects shape"):
        np.savez(tmp_path / "wrong.npz", x=x[:, :5], y=y)
        benchmark(tmp_path / "id.onnx", data=str(tmp_path / "wrong.npz"), **FAST)


def test_modelspec_picks_artifact_per_backend_and_skips_missing_kinds(tmp_path):
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                 torch.nn.Flatten(), torch.nn.Linear(8, 4)).eval()
    path, _ = conv_net(tmp_path / "other.onnx", 8)
    spec = ModelSpec("net", {"module": module, "onnx": str(path)})
    res = benchmark([spec, ModelSpec("onnx-only", {"onnx": str(path)})], backends="torch,ort-cpu",
                    input_shape=(3, 8, 8), **FAST)
    got = {(r["model"], r["backend"]): r for r in res.rows}
    assert set(got) == {("net", "torch"), ("net", "ort-cpu"), ("onnx-only", "ort-cpu")}
    assert got[("net", "torch")]["artifact"] == "<nn.Module>" and got[("net", "ort-cpu")]["artifact"] == str(path)
    assert got[("net", "torch")]["baseline"] and got[("net", "torch")]["macs"] == 8 * 8 * 8 * 27 + 8 * 4
    assert res.skipped == [{"model": "onnx-only", "backend": "torch",
                            "reason": "no module or checkpoint artifact (has: onnx)"}]
    # a module alone has no shape: the error says what to pass
    with pytest.raises(ShapeError, match="input_shape"):
        benchmark(module, backends="torch", **FAST)


def test_unavailable_backend_is_skipped_or_refused(two_models, monkeypatch):
    from edgekit.backends import (
        BACKENDS,
        _builtin,  # noqa: F401  (fills the registry)
    )
    from edgekit.backends.base import BackendSpec

    fake = BackendSpec("fake-npu", ("onnx",), lambda: (False, "package 'npu-runtime' is not installed"),
                       lambda *a, **k: None, "npu")
    big, small, *_ = two_models
    with BACKENDS.temporary("fake-npu", fake):
        res = benchmark([big, small], backends="ort-cpu,fake-npu", **FAST)
        assert {r["backend"] for r in res.rows} == {"ort-cpu"}
        assert res.skipped[0]["backend"] == "fake-npu" and "npu-runtime" in res.skipped[0]["reason"]
        assert "npu-runtime" in res.to_markdown()
        with pytest.raises(BackendUnavailableError, match="fake-npu.*npu-runtime"):
            benchmark([big], backends=["fake-npu"], **FAST)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"batches": "0,-1,x"}, ConfigError, "bad: 0, -1, x"),
    ({"backends": "ort-cpux"}, ConfigError, "did you mean 'ort-cpu'"),
    ({"input_shape": (3, 9, 9)}, ShapeError, r"expects shape Nx3x8x8, got \[1, 3, 9, 9\]"),
    ({"iters": 5, "min_time": 1.0}, ConfigError, "not both"),
    ({"threads": 0}, ConfigError, "threads"),
    ({"baseline": "zzz"}, ConfigError, "baseline 'zzz' is not among the benchmarked models; allowed: big@ort-cpu"),
])
def test_bad_arguments(two_models, kwargs, error, match):
    big, *_ = two_models
    with pytest.raises(error, match=match):
        benchmark(big, **{**FAST, **kwargs})


def test_bad_model_files(tmp_path):
    with pytest.raises(InputFileError, match="not found"):
        benchmark(tmp_path / "missing.onnx", **FAST)
    bad = tmp_path / "corrupt.onnx"
    bad.write_bytes(b"this is not protobuf" * 50)
    with pytest.raises(InputFileError, match="corrupt.onnx"):
        benchmark(bad, **FAST)
    with pytest.raises(ConfigError, match="suffix"):
        benchmark(tmp_path / "model.txt", **FAST)


def test_dynamic_spatial_model_needs_or_rejects_shape(tmp_path):
    path, _ = conv_net(tmp_path / "dyn.onnx", 4, hw="H")
    with pytest.raises(ShapeError, match="input_shape"):
        benchmark(path, **FAST)
    res = benchmark(path, input_shape=(3, 12, 12), **FAST)
    assert res.rows[0]["macs"] == 12 * 12 * 4 * 27 + 16
    with pytest.raises(ShapeError, match=r"expects shape Nx3xNxN, got \[1, 5, 12, 12\]"):
        benchmark(path, input_shape=(5, 12, 12), **FAST)


def test_errors_are_edgekit_errors_with_one_line():
    with pytest.raises(EdgekitError) as e:
        benchmark("nope.onnx", **FAST)
    assert "\n" not in str(e.value)


@pytest.mark.gpu
def test_cuda_backend_is_timed_with_events_against_a_gpu_peak():
    if not torch.cuda.is_available():
        pytest.skip("needs an NVIDIA GPU with PyTorch CUDA")
    from edgekit.core.measure import latency
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                                 torch.nn.Linear(16 * 8 * 8, 4)).eval()
    res = benchmark(ModelSpec("m", {"module": module}), backends="torch-cuda", input_shape=(3, 8, 8), **FAST)
    row = res.rows[0]
    assert row["device"] == "cuda" and row["p50_ms"] > 0 and latency._cuda_events_usable("cuda")
    assert res.peak["gpu"]["fp16_gops"] > res.peak["gpu"]["fp32_gops"] > 0
    assert row["peak_gops"] == res.peak["gpu"]["fp32_gops"] and 0 < row["efficiency"] < 1


def test_checkpoint_and_pipeline_variant(tmp_path):
    """A checkpoint runs on torch (shape from its meta, MACs from an exported graph); a pipeline variant
    (name/checkpoint/onnx/engine/meta attributes) runs each artifact on the backend that takes it."""
    import types

    from edgekit.models import create_model, save_checkpoint

    torch.manual_seed(0)
    model = create_model("resnet_cifar", depth=8, width=0.25, num_classes=4, in_channels=3).eval()
    ckpt = save_checkpoint(model, tmp_path / "m.pt", {"input_shape": [3, 8, 8], "num_classes": 4})
    onnx_path = tmp_path / "m.onnx"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, 3, 8, 8),), str(onnx_path), dynamo=False, input_names=["input"],
                          dynamic_axes={"input": {0: "batch"}})
    res = benchmark(ckpt, backends="torch", **FAST)
    row = res.rows[0]
    assert row["artifact"] == str(ckpt) and row["size_bytes"] == ckpt.stat().st_size
    from edgekit.core.measure.macs import count_macs_onnx

    assert row["macs"] == count_macs_onnx(onnx_path).total > 0  # export fallback = the ONNX graph's count
    variant = types.SimpleNamespace(name="student", checkpoint=str(ckpt), onnx=str(onnx_path), engine=None,
                                    meta={"input_shape": [3, 8, 8]})
    res = benchmark([variant], backends=("torch", "ort-cpu"), **FAST)
    assert [(r["model"], r["backend"]) for r in res.rows] == [("student", "torch"), ("student", "ort-cpu")]
    assert res.rows[1]["speedup_min"] > 0 and res.config["input_shapes"] == {"student": [3, 8, 8]}
    corrupt = tmp_path / "bad.pt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(InputFileError, match="bad.pt"):
        benchmark(corrupt, backends="torch", **FAST)
