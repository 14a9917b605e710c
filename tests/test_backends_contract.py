"""The runner contract, for every registered backend (skipped with the backend's own reason where it cannot run).

Each backend opens a tiny model (its ONNX file, or the checkpoint for module backends), takes numpy, returns
numpy of the right shape close to ONNX Runtime's output, describes itself in ``info``, refuses a bad input
shape with ShapeError, closes cleanly, and leaves torch's thread count as it found it.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from edgekit.backends import BACKENDS, backend_spec, load_backends, open_runner
from edgekit.errors import ShapeError

load_backends()
SHAPE = (3, 8, 8)
CLASSES = 5
TOLERANCE = {"fp32": 1e-4, "fp16": 2e-2}  # absolute, on logits of magnitude ~1


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A small CNN as an edgekit checkpoint and an ONNX file with a dynamic batch, plus ORT's reference output."""
    from edgekit.models import create_model, save_checkpoint

    torch.manual_seed(0)
    model = create_model("small_cnn", width=8, depth=2, num_classes=CLASSES, in_channels=3).eval()
    d = tmp_path_factory.mktemp("contract")
    ckpt = save_checkpoint(model, d / "tiny.pt", {"input_shape": list(SHAPE), "num_classes": CLASSES})
    onnx_path = d / "tiny.onnx"
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, *SHAPE),), str(onnx_path), dynamo=False, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    x = np.random.default_rng(0).standard_normal((3, *SHAPE)).astype(np.float32)
    with open_runner(onnx_path, "ort-cpu", threads=1) as ort:
        reference = ort(x)
    return {"checkpoint": ckpt, "onnx": onnx_path, "x": x, "reference": reference}


def _artifact(spec, tiny):
    for kind in spec.artifact_kinds:  # the backend's preferred kind among what the fixture has
        if kind in ("onnx", "checkpoint"):
            return tiny[kind]
    pytest.skip(f"backend '{spec.name}' runs {', '.join(spec.artifact_kinds)}; the contract test has onnx/checkpoint")


@pytest.mark.parametrize("name", BACKENDS.names())
def test_runner_contract(name, tiny):
    spec = backend_spec(name)
    ok, reason = spec.probe()
    if not ok:
        pytest.skip(f"{name}: {reason}")
    threads_before = torch.get_num_threads()
    want_threads = 1 if threads_before != 1 else 2
    runner = open_runner(_artifact(spec, tiny), name, threads=want_threads)
    try:
        out = runner(tiny["x"])
        assert isinstance(out, np.ndarray) and out.shape == (3, CLASSES) and out.dtype == np.float32
        tol = TOLERANCE.get(runner.info["precision"], 1e-4)
        np.testing.assert_allclose(out, tiny["reference"], atol=tol, rtol=tol)
        assert {"backend", "precision", "device", "threads"} <= set(runner.info)
        assert runner.info["backend"] == name and runner.info["precision"] in spec.precisions
        if spec.device == "cpu":
            assert runner.info["threads"] == want_threads
        assert runner(tiny["x"][:1]).shape == (1, CLASSES)  # another batch size through the same runner
        with pytest.raises(ShapeError):
            runner(np.zeros((2, 3, 9, 9), np.float32))
        with pytest.raises(ShapeError):
            runner(np.zeros((2, *SHAPE[1:]), np.float32))  # rank 3 instead of 4
        assert torch.get_num_threads() == threads_before
    finally:
        runner.close()
    assert torch.get_num_threads() == threads_before
    with open_runner(_artifact(spec, tiny), name, threads=want_threads) as again:  # a context manager too
        assert again(tiny["x"]).shape == (3, CLASSES)
    assert torch.get_num_threads() == threads_before


def test_every_registered_backend_is_covered():
    """A backend registered later (a plugin, a new file) is collected here without editing this test."""
    assert set(BACKENDS.names()) >= {"torch", "ort-cpu"} and len(BACKENDS.names()) >= 5
