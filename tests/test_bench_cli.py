"""`edgekit bench` command end to end, environment description, lean import."""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys

import pytest
from _helpers.onnx_models import mlp_onnx as _mlp

from edgekit.cli import bench as commands
from edgekit.core.platform import environment
from edgekit.errors import EdgekitError

ENV_KEYS = {"cpu_model", "isa_flags", "cores_logical", "cores_physical", "memory_gb", "gpu", "gpu_compute_capability",
            "versions", "platform"}


def bench_command(*argv: str) -> int:
    """Parse ``edgekit bench ARGV`` with the command's own parser and run its handler in this process."""
    parser = argparse.ArgumentParser(prog="edgekit")
    commands.add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bench", *argv])
    return args.func(args)


def test_cli_two_onnx_files_prints_ratio_table_and_writes_outputs(tmp_path, capsys):
    a, b = _mlp(tmp_path / "wide.onnx", 512), _mlp(tmp_path / "narrow.onnx", 8)
    out = tmp_path / "out"
    code = bench_command(a, b, "--batch", "1,4", "--threads", "1", "--warmup", "1", "--iters", "9",
                         "--rounds", "3", "--out", str(out), "--no-plots")
    text = capsys.readouterr().out
    assert code == 0
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    assert "speedup (min–max) [95% CI]" in lines[0] and len(lines) == 1 + 4
    assert re.search(r"\| narrow \| ort-cpu \| 1 \|.*\d\.\d\d× \(\d+\.\d\d–\d+\.\d\d\) "
                     r"\[CI \d+\.\d\d–\d+\.\d\d\] \|$", lines[2])
    assert "threads" in text and "GEMM peak" in text
    doc = json.loads((out / "bench.json").read_text())
    assert doc["config"]["iters"] == 9 and doc["config"]["batches"] == [1, 4]
    assert doc["rows"][1]["macs"] == 8 * 16 + 8 * 3


def test_cli_parser_contract():
    parser = argparse.ArgumentParser(prog="edgekit")
    sub = parser.add_subparsers(dest="command")
    commands.add_commands(sub)
    args = parser.parse_args(["bench", "m.onnx", "--backend", "torch,ort-cpu", "--batch", "1,8,32", "--min-time", "2"])
    assert args.func is commands.handler and args.models == ["m.onnx"] and args.min_time == 2.0
    assert args.backend == "torch,ort-cpu" and args.batch == "1,8,32" and args.iters is None
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "m.onnx", "--iters", "5", "--min-time", "1"])


@pytest.mark.parametrize("argv, match", [
    (["--batch", "0,-1,x"], "batch sizes must be positive integers"),
    (["--backend", "tensorrtt"], "unknown backend 'tensorrtt'"),
    (["--data", "nothere.npz"], "data file not found"),
    (["--input-shape", "3,-2"], "--input-shape must be positive integers"),
])
def test_cli_bad_input_is_a_one_line_edgekit_error(tmp_path, argv, match):
    model = _mlp(tmp_path / "m.onnx", 4)
    with pytest.raises(EdgekitError) as e:
        bench_command(model, "--iters", "2", "--rounds", "1", *argv)
    assert match in str(e.value) and "\n" not in str(e.value)


def test_cli_process_missing_model_file(tmp_path):
    """Through the `edgekit` command: one error line, exit status 2, no traceback."""
    env = dict(os.environ)
    proc = subprocess.run([sys.executable, "-m", "edgekit.cli", "bench", str(tmp_path / "gone.onnx")],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"edgekit: error: model file not found: {tmp_path / 'gone.onnx'}"]


def test_environment_keys_and_types():
    env = environment()
    assert ENV_KEYS <= set(env)
    assert isinstance(env["isa_flags"], list) and env["cores_logical"] >= env["cores_usable"] >= 1
    assert {"python", "numpy", "torch", "onnx", "onnxruntime", "tensorrt", "openvino"} <= set(env["versions"])
    assert env["versions"]["onnxruntime"] and env["cpu_model"]
    assert (env["gpu"] is None) == (env["gpu_compute_capability"] is None)


def test_lean_import():
    code = ("import sys, edgekit.bench, edgekit.core.platform, edgekit.cli.bench; "
            "bad = [m for m in ('matplotlib', 'tensorrt', 'onnxruntime', 'torch') if m in sys.modules]; "
            "assert not bad, bad; edgekit.core.platform.environment(); "
            "assert 'matplotlib' not in sys.modules and 'tensorrt' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.slow
def test_cli_data_digits_accuracy_matches_training_evaluation(trained_resnet8, tmp_path, capsys):
    """`--data digits` loads the test split shaped like the model's input; both runners agree with train.evaluate."""
    code = bench_command(str(trained_resnet8.checkpoint), "--backend", "torch", "--data", "digits",
                         "--iters", "4", "--rounds", "2", "--warmup", "1", "--threads", "2", "--out", str(tmp_path))
    assert code == 0
    doc = json.loads((tmp_path / "bench.json").read_text())
    assert doc["rows"][0]["accuracy"] == pytest.approx(trained_resnet8.test_accuracy, abs=1e-6)
    assert doc["config"]["data"]["source"] == "digits:test" and (tmp_path / "pareto.png").is_file()
    from edgekit.bench import ModelSpec, benchmark

    spec = ModelSpec("r8", {"checkpoint": str(trained_resnet8.checkpoint), "onnx": str(trained_resnet8.onnx)})
    res = benchmark(spec, backends="torch,ort-cpu", data=trained_resnet8.splits.test, iters=4, rounds=2, warmup=1,
                    plots=False)
    torch_acc, ort_acc = (res.row("r8", b)["accuracy"] for b in ("torch", "ort-cpu"))
    assert torch_acc == pytest.approx(trained_resnet8.test_accuracy) and abs(ort_acc - torch_acc) <= 0.5
    ort = res.row("r8", "ort-cpu")  # paired against the baseline (torch) on the same samples, with its CI
    lo, hi = ort["accuracy_delta_ci"]
    assert ort["accuracy_delta"] == pytest.approx(ort_acc - torch_acc, abs=1e-3) and lo <= ort["accuracy_delta"] <= hi
    assert "accuracy_delta" not in res.row("r8", "torch")


def test_backend_probe_in_a_fresh_interpreter():
    """probe_backend / prune's speed_backend check register the built-in backends themselves (once failed with
    "unknown backend 'ort-cpu'; valid: " when nothing had opened a runner yet)."""
    code = ("from edgekit.backends import probe_backend; from edgekit.errors import validated_config; "
            "from edgekit.techniques.prune.config import PruneConfig; "
            "assert probe_backend('ort-cpu') == (True, ''); "
            "from edgekit.techniques.prune._structured import validate; "
            "from edgekit.models import create_model; "
            "m = create_model('resnet_cifar', depth=8, width=0.25, num_classes=10, in_channels=3); "
            "cfg = validated_config(PruneConfig, {'speedup_target': 1.5, 'finetune': {'epochs': 0}}, 'prune'); "
            "validate(m, cfg, None)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
