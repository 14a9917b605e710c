"""`edgekit doctor`: every backend with availability and a reason, GPU/driver, CPU and versions."""
from __future__ import annotations

import argparse
import json

import pytest
import torch

import edgekit.core.platform as platform_facts
from edgekit.backends import BACKENDS, BackendSpec
from edgekit.bench.doctor import doctor_report, format_report
from edgekit.cli.doctor import add_commands
from edgekit.core.platform import runtime_status
from edgekit.errors import ConfigError

ALL = {"torch", "torch-cuda", "ort-cpu", "ort-cuda", "tensorrt"}
CPU_ONLY_TORCH = torch.version.cuda is None
NO_TENSORRT = runtime_status("tensorrt")[0] is None


@pytest.fixture(scope="module")
def report():
    return doctor_report()


def statuses(report):
    return {b["name"]: b for b in report["backends"]}


def test_every_backend_is_listed_with_a_reason_when_unavailable(report):
    rows = statuses(report)
    assert ALL <= set(rows)
    assert set(rows) == set(BACKENDS.names())
    for row in rows.values():
        assert isinstance(row["available"], bool)
        assert row["available"] or len(row["reason"]) > 10, row


def test_cpu_backends_are_available(report):
    rows = statuses(report)
    assert rows["torch"]["available"] and rows["ort-cpu"]["available"]


@pytest.mark.skipif(not NO_TENSORRT, reason="TensorRT is installed on this machine")
def test_tensorrt_unavailable_says_why(report):
    row = statuses(report)["tensorrt"]
    assert not row["available"]
    assert "tensorrt" in row["reason"].lower()
    assert any(w in row["reason"] for w in ("not installed", "cannot", "stub", "needs", "but"))
    runtime = report["runtimes"]["tensorrt"]
    assert runtime["version"] is None and runtime["reason"] == row["reason"]


@pytest.mark.skipif(not CPU_ONLY_TORCH, reason="PyTorch here is a CUDA build")
def test_torch_cuda_unavailable_because_cpu_only_build(report):
    row = statuses(report)["torch-cuda"]
    assert not row["available"] and "CPU-only build" in row["reason"]
    assert report["gpu"]["torch_cuda_build"] is None and report["gpu"]["devices"] == []
    assert "CPU-only build" in report["gpu"]["unavailable_reason"]


def test_ort_cuda_reason_names_the_provider_or_driver(report):
    row = statuses(report)["ort-cuda"]
    if not row["available"]:
        assert "CUDAExecutionProvider" in row["reason"] or "driver" in row["reason"] or "device" in row["reason"]


def test_environment_facts_are_reported(report):
    env = report["environment"]
    for key in ("cpu_model", "isa_flags", "cores_logical", "memory_gb", "gpu", "gpu_compute_capability", "versions"):
        assert key in env
    assert isinstance(env["isa_flags"], list) and env["versions"]["torch"] == torch.__version__
    assert "CPUExecutionProvider" in statuses(report)["ort-cpu"]["details"]["providers"]
    json.dumps(report)  # serialisable for --json


def test_available_backends_describe_themselves(report):
    import onnxruntime

    rows = statuses(report)
    assert rows["ort-cpu"]["details"]["version"] == onnxruntime.__version__
    assert rows["torch"]["details"] == {"version": torch.__version__, "devices": ["cpu"],
                                        "threads": torch.get_num_threads()}
    assert all(r["details"] == {} for r in rows.values() if not r["available"])
    text = format_report(report)
    assert f"version {onnxruntime.__version__}; devices: cpu; providers:" in text


def test_text_report_shows_every_backend_and_reason(report):
    text = format_report(report)
    for row in report["backends"]:
        line = next(ln for ln in text.splitlines() if ln.strip().startswith(row["name"] + " "))
        assert ("unavailable" in line and row["reason"] in line) if not row["available"] else "available" in line
    assert "ISA:" in text and report["environment"]["cpu_model"] in text


def test_a_crashing_probe_or_describe_is_reported_not_raised():
    def boom():
        raise RuntimeError("driver exploded\nsecond line")

    spec = BackendSpec("broken-test", ("onnx",), boom, lambda *a, **k: None, "cuda", "test")
    half = BackendSpec("half-test", ("onnx",), lambda: (True, ""), lambda *a, **k: None, "cpu", "test", describe=boom)
    with BACKENDS.temporary("broken-test", spec), BACKENDS.temporary("half-test", half):
        rows = {b["name"]: b for b in doctor_report()["backends"]}
    assert not rows["broken-test"]["available"]
    assert rows["broken-test"]["reason"] == "probe failed: RuntimeError: driver exploded"
    assert rows["half-test"]["available"]
    assert rows["half-test"]["details"] == {"error": "describe failed: RuntimeError: driver exploded"}


def test_driver_runtime_mismatch_is_explained(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.setattr(platform_facts, "cuda_driver_info", lambda: {"loaded": True, "driver_cuda_version": "12.2",
                                                                  "device_count": 1, "error": ""})
    reason = platform_facts.cuda_unavailable_reason()
    assert "driver/runtime mismatch" in reason and "12.8" in reason and "12.2" in reason
    monkeypatch.setattr(platform_facts, "cuda_driver_info", lambda: {"loaded": False, "driver_cuda_version": None,
                                                                  "device_count": 0, "error": "no NVIDIA driver (x)"})
    assert platform_facts.cuda_unavailable_reason() == "PyTorch is built with CUDA 12.8 but no NVIDIA driver (x)"


def test_cuda_driver_probe_shape():
    info = platform_facts.cuda_driver_info()
    assert set(info) == {"loaded", "driver_cuda_version", "device_count", "error"}
    assert info["loaded"] or "libcuda" in info["error"]


# ----------------------------------------------------------------------------- CLI


def parser():
    p = argparse.ArgumentParser(prog="edgekit")
    add_commands(p.add_subparsers(dest="command"))
    return p


def test_cli_json(capsys):
    args = parser().parse_args(["doctor", "--json"])
    assert args.func(args) == 0
    data = json.loads(capsys.readouterr().out)
    assert ALL <= {b["name"] for b in data["backends"]}


def test_cli_text_and_require(capsys):
    args = parser().parse_args(["doctor", "--require", "ort-cpu"])
    assert args.func(args) == 0
    assert "Backends" in capsys.readouterr().out
    if NO_TENSORRT:
        args = parser().parse_args(["doctor", "--require", "tensorrt"])
        assert args.func(args) == 1
        assert "required backend 'tensorrt' is unavailable" in capsys.readouterr().err


def test_cli_require_unknown_backend():
    args = parser().parse_args(["doctor", "--require", "tensorrtt"])
    with pytest.raises(ConfigError, match="did you mean 'tensorrt'"):
        args.func(args)


def test_platform_facts_need_no_backend():
    """core.platform is the leaf that backends ask; gathering every fact must not import a backend."""
    import subprocess
    import sys

    code = ("import sys, edgekit.core.platform as p; p.environment(); p.gpu_facts(); p.runtime_versions(); "
            "bad = [m for m in sys.modules if m.startswith(('edgekit.backends', 'edgekit.bench'))]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
