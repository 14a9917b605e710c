"""Backends declare their capabilities: artifact kinds and suffixes, default choice, target warnings, discovery."""
from __future__ import annotations

import pkgutil
from pathlib import Path

import numpy as np
import pytest
import torch

import edgekit.backends as backends_pkg
from edgekit.backends import (
    BACKENDS,
    BackendSpec,
    artifact_kind,
    artifact_kinds,
    backend_spec,
    default_backend,
    register_backend,
    target_warning,
)
from edgekit.errors import ConfigError


def _unused(*_a, **_k):
    raise AssertionError("not opened in these tests")


def _npu(name="fake-npu", suffixes=None, **kw) -> BackendSpec:
    return BackendSpec(name, ("npu-blob", "onnx"), lambda: (True, ""), _unused, "npu", "a fake NPU",
                       suffixes={"npu-blob": (".blob",)} if suffixes is None else suffixes, **kw)


@pytest.fixture
def registered():
    """Register specs through register_backend (its checks run) and remove them afterwards."""
    names = []

    def add(spec):
        register_backend(spec)
        names.append(spec.name)
        return spec

    yield add
    for n in names:
        BACKENDS.unregister(n)


def test_every_builtin_declares_its_capabilities():
    backend_spec("ort-cpu")  # fills the registry
    for name, spec in BACKENDS.items():
        assert spec.artifact_kinds and spec.precisions and spec.channel_alignment >= 1, name
        assert set(spec.suffixes) <= set(spec.artifact_kinds), name
        assert spec.describe is None or callable(spec.describe)
    assert [n for n, s in BACKENDS.items() if s.float_baseline] == ["torch"]
    assert backend_spec("tensorrt").compile is not None and backend_spec("ort-cpu").compile is None
    assert backend_spec("ort-cpu").quant_target == "cpu" and backend_spec("tensorrt").quant_target == "tensorrt"


def test_artifact_kind_comes_from_the_declared_suffixes(registered):
    kinds = (artifact_kind("m.onnx"), artifact_kind("M.PLAN"), artifact_kind("c.pth"))
    assert kinds == ("onnx", "engine", "checkpoint")
    assert artifact_kind(torch.nn.Linear(2, 2)) == "module"
    with pytest.raises(ConfigError, match=r"suffix '\.blob'; allowed: .*\.onnx \(onnx\)"):
        artifact_kind("model.blob")
    registered(_npu())
    assert artifact_kind("model.blob") == "npu-blob" and "npu-blob" in artifact_kinds()


def test_companion_files_belong_to_their_artifact(tmp_path, registered):
    from edgekit.backends import artifact_files
    from edgekit.bench.specs import size_bytes

    registered(_npu(companions={"npu-blob": (".weights", ".cfg")}))
    blob = tmp_path / "m.blob"
    blob.write_bytes(b"x" * 10)
    (tmp_path / "m.weights").write_bytes(b"w" * 100)
    assert artifact_files(blob) == [blob, tmp_path / "m.weights"]  # .cfg declared but absent
    assert size_bytes(blob, "npu-blob") == 110
    with pytest.raises(ConfigError, match="declares suffixes for"):
        register_backend(_npu("other-npu", companions={"engine": (".x",)}))


@pytest.mark.parametrize("spec, match", [
    (_npu(suffixes={"engine": (".eng",)}), r"declares suffixes for \['engine'\] but runs only npu-blob, onnx"),
    (_npu(suffixes={"npu-blob": (".onnx",)}), r"reads \.onnx files as npu-blob but another backend reads them as onnx"),
    (_npu(suffixes={"npu-blob": ("BLOB",)}), "must be lower case and start with '.'"),
    (_npu(channel_alignment=0), "channel_alignment must be a positive integer"),
])
def test_inconsistent_declarations_are_refused(spec, match):
    backend_spec("ort-cpu")
    with pytest.raises(ConfigError, match=match):
        register_backend(spec)
    assert spec.name not in BACKENDS


def test_default_backend_follows_priority(registered):
    assert default_backend("onnx", "cpu") == "ort-cpu" and default_backend("checkpoint", "cpu") == "torch"
    registered(_npu(priority=5))
    assert default_backend("npu-blob", "npu") == "fake-npu"
    with pytest.raises(ConfigError, match="no registered backend runs npu-blob artifacts on cpu"):
        default_backend("npu-blob", "cpu")


TRT_SIDE = {"precision": "int8", "target": "tensorrt", "int8_mac_fraction": 0.4, "int8_mac_fraction_backend": "ort-cpu",
            "quant_scheme": {"activations": "int8", "activation_symmetric": True, "weights": "int8"}}


def test_target_warning_follows_each_backends_quant_target(tmp_path, registered):
    msg = target_warning(TRT_SIDE, "ort-cpu")
    assert "target 'tensorrt' (int8 symmetric activations, int8 weights) but runs on 'ort-cpu'" in msg
    assert "wants target 'cpu'; only 40% of its MACs run in int8 there" in msg
    assert target_warning(TRT_SIDE, "tensorrt") is None and target_warning(TRT_SIDE, "ort-cuda") is None
    cpu = {"precision": "int8", "target": "cpu", "int8_mac_fraction": 0.99, "int8_mac_fraction_backend": "ort-cpu"}
    assert target_warning(cpu, "ort-cpu") is None
    on_trt = target_warning(cpu, "tensorrt")
    assert "wants target 'tensorrt'" in on_trt and "MACs" not in on_trt  # the fraction was measured on ort-cpu
    assert target_warning({"precision": "fp32"}, "tensorrt") is None
    registered(_npu(quant_target="npu-int8"))
    assert "wants target 'npu-int8'" in target_warning(cpu, "fake-npu")
    from edgekit._io import write_sidecar

    art = tmp_path / "m.int8.onnx"
    art.write_bytes(b"")
    write_sidecar(art, TRT_SIDE)
    assert target_warning(art, "ort-cpu").startswith("m.int8.onnx was quantised for target 'tensorrt'")
    assert target_warning(tmp_path / "no-sidecar.onnx", "ort-cpu") is None and target_warning(None, "ort-cpu") is None


def test_discovery_imports_every_public_backend_module():
    from edgekit.backends import _builtin

    root = Path(backends_pkg.__file__).parent
    on_disk = {f"edgekit.backends.{m.name}" for m in pkgutil.iter_modules([str(root)]) if not m.name.startswith("_")}
    assert on_disk <= set(_builtin._backend_modules())
    assert "edgekit.backends.tensorrt.runner" in _builtin._backend_modules()
    assert not any(n.rsplit(".", 1)[-1].startswith("_") for n in _builtin._backend_modules())


def test_torch_runner_sets_threads_per_call_and_leaves_the_process_alone():
    seen = []

    class Probe(torch.nn.Module):
        def forward(self, x):
            seen.append(torch.get_num_threads())
            return x * 2

    from edgekit.backends import open_runner

    before = torch.get_num_threads()
    want = 1 if before != 1 else 2
    with open_runner(Probe(), "torch", threads=want) as runner:
        assert torch.get_num_threads() == before  # opening changes nothing
        np.testing.assert_array_equal(runner(np.ones((2, 3), np.float32)), 2 * np.ones((2, 3), np.float32))
        assert seen == [want] and torch.get_num_threads() == before and runner.info["threads"] == want
    assert torch.get_num_threads() == before


def test_registering_every_backend_imports_no_runtime():
    """Backend modules import their runtimes (TensorRT, OpenVINO, CUDA) only when a runner is opened or probed."""
    import subprocess
    import sys

    code = ("import sys, edgekit; from edgekit.backends import load_backends, artifact_kinds; load_backends(); "
            "artifact_kinds(); bad = [m for m in ('tensorrt', 'openvino', 'pycuda') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
