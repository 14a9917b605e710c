"""The OpenVINO backend: ONNX (fp32, cpu-target QDQ int8) and IR on OpenVINO's CPU device, doctor, bench, recipes."""
from __future__ import annotations

import json
import os
import warnings
from importlib import metadata

import numpy as np
import pytest
import torch

from edgekit.backends import artifact_kind, backend_spec, open_runner, probe_backend
from edgekit.errors import ConfigError, InputFileError

pytestmark = pytest.mark.skipif(not probe_backend("openvino")[0], reason=f"openvino: {probe_backend('openvino')[1]}")


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """A small CNN trained briefly on digits (8x8, 3 channels): its fp32 ONNX, a cpu-target int8 QDQ ONNX, test data."""
    from edgekit.core.train import fit
    from edgekit.data import load_data
    from edgekit.export import export_onnx
    from edgekit.models import create_model
    from edgekit.techniques.quantize.ptq import quantize

    splits = load_data({"name": "digits", "image_size": 8, "channels": 3}, seed=0)
    torch.manual_seed(0)
    model = create_model("small_cnn", width=16, depth=2, num_classes=10, in_channels=3)
    fit(model, splits.train, splits.val, {"epochs": 3, "lr": 0.05}, seed=0)
    d = tmp_path_factory.mktemp("ov")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fp32 = export_onnx(model, splits.val.x[:32], d / "cnn.onnx").path
        # speed_fallback off: on a CPU where this tiny CNN is faster in float it would keep every layer float
        int8 = quantize(fp32, {"target": "cpu", "speed_fallback": False}, calib=splits.train.x[:64],
                        out_path=d / "cnn-int8-cpu.onnx").artifact
    return {"fp32": fp32, "int8": int8, "x": splits.test.x, "y": splits.test.y, "dir": d}


def _agreement(a, b) -> float:
    return float((a.argmax(1) == b.argmax(1)).mean())


@pytest.mark.parametrize("which", ["fp32", "int8"])
def test_runs_edgekits_onnx_like_onnx_runtime(artifacts, which):
    x = artifacts["x"]
    with open_runner(artifacts[which], "ort-cpu", threads=2) as ort, open_runner(artifacts[which], "openvino",
                                                                                threads=2) as ov:
        ref, out = ort(x), ov(x)
        info = ov.info
    assert out.shape == ref.shape == (len(x), 10) and out.dtype == np.float32
    assert info["precision"] == which and info["inference_precision"] == "f32" and info["device"] == "cpu"
    assert info["performance_hint"] == "LATENCY" and info["threads"] == 2 and info["streams"] == 1
    assert info["versions"]["openvino"] == metadata.version("openvino")
    if which == "fp32":
        np.testing.assert_allclose(out, ref, atol=1e-4, rtol=1e-4)
    else:  # both run int8 kernels with their own rounding: same predictions, close logits
        assert _agreement(out, ref) >= 0.97 and np.abs(out - ref).max() < 0.1 * np.abs(ref).max()


def test_threads_and_precision_are_explicit(artifacts):
    with open_runner(artifacts["fp32"], "openvino", threads=1) as one:
        assert one.info["threads"] == 1
    with open_runner(artifacts["fp32"], "openvino", threads=2, precision="bf16") as bf16:
        assert bf16.info["precision"] == "bf16" and bf16.info["inference_precision"] == "bf16"
        assert _agreement(bf16(artifacts["x"]), open_runner(artifacts["fp32"], "ort-cpu")(artifacts["x"])) > 0.95
    with pytest.raises(ConfigError, match="int8 artifact; precision 'bf16' applies to float artifacts only"):
        open_runner(artifacts["int8"], "openvino", precision="bf16")
    with pytest.raises(ConfigError, match="precision 'fp16' is not supported; allowed: fp32, bf16"):
        open_runner(artifacts["fp32"], "openvino", precision="fp16")
    with pytest.raises(ConfigError, match=r"unknown openvino option\(s\) \['streams'\]"):
        open_runner(artifacts["fp32"], "openvino", streams=2)


def test_compile_saves_ir_that_runs_the_same(artifacts, tmp_path):
    spec = backend_spec("openvino")
    xml = spec.compile(artifacts["int8"], tmp_path / "out")
    assert xml.name == "cnn-int8-cpu-int8.xml" and xml.with_suffix(".bin").is_file()
    assert artifact_kind(xml) == "openvino-ir" and not list((tmp_path / "out").glob(".ir-*"))
    side = json.loads((tmp_path / "out" / "cnn-int8-cpu-int8.xml.json").read_text())
    assert side["precision"] == "int8" and side["target"] == "cpu" and side["onnx"] == str(artifacts["int8"])
    x = artifacts["x"][:64]
    with open_runner(xml, "openvino", threads=2) as ir, open_runner(artifacts["int8"], "openvino", threads=2) as onnx:
        np.testing.assert_allclose(ir(x), onnx(x), atol=1e-5)
        assert ir.info["precision"] == "int8"
    with pytest.raises(ConfigError, match="is int8; the OpenVINO compile step saves it as it is"):
        spec.compile(artifacts["int8"], tmp_path / "o2", precision="fp32")
    with pytest.raises(ConfigError, match="quantise with target: cpu first"):
        spec.compile(artifacts["fp32"], tmp_path / "o2", precision="int8")
    xml.with_suffix(".bin").unlink()
    with pytest.raises(InputFileError, match="needs its weights file cnn-int8-cpu-int8.bin beside it"):
        open_runner(xml, "openvino")


def test_unreadable_model_is_an_input_file_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx file" * 8)
    with pytest.raises(InputFileError, match="bad.onnx: OpenVINO cannot read this model"):
        open_runner(bad, "openvino")


def test_doctor_lists_it_with_version_and_devices():
    from edgekit.bench.doctor import doctor_report, format_report

    report = doctor_report()
    row = {b["name"]: b for b in report["backends"]}["openvino"]
    assert row["available"] and row["details"]["version"] == metadata.version("openvino")
    assert any(d.startswith("CPU (") for d in row["details"]["devices"])
    assert report["runtimes"]["openvino"]["version"] == metadata.version("openvino")
    assert f"version {metadata.version('openvino')}; devices: CPU (" in format_report(report)


def test_bench_cli_runs_it_next_to_ort_with_paired_ratios(artifacts, tmp_path, capsys):
    import argparse

    from edgekit.bench.pairs import backend_pairs
    from edgekit.cli import bench as commands

    parser = argparse.ArgumentParser(prog="edgekit")
    commands.add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", str(artifacts["int8"]), "--backend", "ort-cpu,openvino", "--batch", "1,4",
                              "--threads", "2", "--warmup", "1", "--iters", "5", "--rounds", "3", "--ci-target", "0",
                              "--no-plots", "--out", str(tmp_path)])  # --ci-target 0: exactly 3 rounds
    assert args.func(args) == 0
    assert "| cnn-int8-cpu | openvino | 1 | int8 |" in capsys.readouterr().out
    rows = json.loads((tmp_path / "bench.json").read_text())["rows"]
    pairs = backend_pairs(rows)
    assert [(p["backend"], p["batch"], p["reference"]) for p in pairs] == [("openvino", 1, "ort-cpu"),
                                                                            ("openvino", 4, "ort-cpu")]
    assert all(len(p["ratio_rounds"]) == 3 and p["ratio_min"] <= p["ratio"] <= p["ratio_max"] for p in pairs)
    assert all(r["warning"] is None for r in rows)  # a cpu-target artifact is what both backends want


RECIPE = """\
seed: 0
threads: 2
model:
  name: small_cnn
  kwargs: {width: 8, depth: 2}
data: {name: digits, image_size: 8, channels: 3}
stages:
  - type: train
    name: reference
    epochs: 2
    lr: 0.05
  - type: quantize
    targets: [cpu]
    samples: 32
    speed_fallback: false  # timing-dependent float fallbacks would make the compiled precision vary run to run
  - type: compile
    backend: openvino
targets:
  - backend: torch
  - backend: ort-cpu
  - backend: openvino
benchmark: {batches: [1, 4], warmup: 1, iters: 4, rounds: 2}
report: {plots: false}
"""


@pytest.mark.slow
def test_recipe_targets_and_compile_stage(tmp_path):
    from edgekit.pipeline import run_recipe
    from edgekit.pipeline.recipe import load_recipe

    path = tmp_path / "ov.yaml"
    path.write_text(RECIPE)
    result = run_recipe(load_recipe(path), recipe_path=str(path), runs_dir=tmp_path / "runs", name="r")
    md = result.report.read_text()
    compiled = [v for v in json.loads((result.run_dir / "report.json").read_text())["variants"]
                if v["name"].endswith("-ov-int8")]
    assert len(compiled) == 1 and compiled[0]["artifacts"]["engine"].endswith(".xml")
    for variant in ("reference", "reference-int8-cpu"):
        assert f"| {variant} | ort-cpu |" in md and f"| {variant} | openvino |" in md
    assert "## Backends on the same file (vs ort-cpu)" in md and "| reference-int8-cpu | openvino |" in md
    # one headline line per backend; on this tiny model int8 may lose to fp32, so the line names the fastest that
    # qualifies, whichever it is
    ov = [h for h in result.headline if " on openvino: " in h]
    assert len(ov) == 1 and ov[0].split(" on ")[0] in {"reference", "reference-int8-cpu", compiled[0]["name"]}
    bench = json.loads((result.run_dir / "bench" / "bench.json").read_text())["rows"]
    ir_row = next(r for r in bench if r["model"] == compiled[0]["name"] and r["backend"] == "openvino")
    xml = compiled[0]["artifacts"]["engine"]
    assert ir_row["artifact"] == xml and ir_row["size_bytes"] == sum(
        os.path.getsize(p) for p in (xml, xml[:-4] + ".bin"))
