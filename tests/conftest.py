"""Shared fixtures: tiny real data and tiny trained models, built once per test session."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """Runners opened with ``threads=N`` set torch's global thread count; restore it after every test, so the
    next test (and the session fixtures' training, whose results depend on it) starts from the same count."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@dataclass
class TrainedModel:
    """A small model trained on digits, with its checkpoint and ONNX export on disk.

    ``module`` is rebuilt from the checkpoint on every access, so a test that modifies its model in place
    (training, BN folding, pruning) cannot change what later tests see.
    """

    checkpoint: Path
    onnx: Path
    splits: object  # edgekit.data.Splits
    test_accuracy: float

    @property
    def module(self) -> torch.nn.Module:
        from edgekit.models import load_checkpoint

        return load_checkpoint(self.checkpoint)[0]


@pytest.fixture(scope="session")
def digits16():
    """digits as 3×16×16 images (fast to train on), seed 0."""
    from edgekit.data import load_data

    return load_data({"name": "digits", "image_size": 16, "channels": 3}, seed=0)


@pytest.fixture(scope="session")
def digits_seq():
    """digits as 8-step sequences of 8 features, seed 0."""
    from edgekit.data import load_data

    return load_data({"name": "digits_seq"}, seed=0)


@pytest.fixture(scope="session")
def trained_resnet8(digits16, tmp_path_factory) -> TrainedModel:
    """ResNet-8 (width 1) trained 4 epochs on digits16 (~95%+ test accuracy, a few seconds)."""
    from edgekit.core.train import evaluate, fit
    from edgekit.export import export_onnx
    from edgekit.models import create_model, save_checkpoint

    torch.manual_seed(0)
    model = create_model("resnet_cifar", depth=8, width=1.0, num_classes=10, in_channels=3)
    fit(model, digits16.train, digits16.val, {"epochs": 4, "lr": 0.1}, seed=0)
    d = tmp_path_factory.mktemp("resnet8")
    ckpt = save_checkpoint(model, d / "model.pt", {"input_shape": list(digits16.input_shape), "num_classes": 10})
    onnx_path = export_onnx(model, digits16.val.x[:32], d / "model.onnx").path
    return TrainedModel(ckpt, onnx_path, digits16, evaluate(model, digits16.test))


@pytest.fixture(scope="session")
def trained_lstm(digits_seq, tmp_path_factory) -> TrainedModel:
    """LSTM (hidden 32) trained 6 epochs on digits sequences."""
    from edgekit.core.train import evaluate, fit
    from edgekit.export import export_onnx
    from edgekit.models import create_model, save_checkpoint

    torch.manual_seed(0)
    model = create_model("rnn_classifier", input_size=8, hidden_size=32, num_classes=10)
    fit(model, digits_seq.train, digits_seq.val, {"epochs": 6, "lr": 0.01, "optimizer": "adam"}, seed=0)
    d = tmp_path_factory.mktemp("lstm")
    ckpt = save_checkpoint(model, d / "model.pt", {"input_shape": list(digits_seq.input_shape), "num_classes": 10})
    onnx_path = export_onnx(model, digits_seq.val.x[:32], d / "model.onnx").path
    return TrainedModel(ckpt, onnx_path, digits_seq, evaluate(model, digits_seq.test))


def stage_context(tmp_path: Path, variants: dict, splits, stage_dir: str = "stage"):
    """A StageContext for calling one stage function directly: seed 0, 2 threads, no recipe, a new stage dir."""
    from edgekit.pipeline.stages import StageContext

    stage_dir = tmp_path / stage_dir
    stage_dir.mkdir(parents=True)
    return StageContext(tmp_path, stage_dir, 0, 2, None, dict(variants), lambda: splits)


def run_cli(*args: str, cwd: Path | None = None):
    """Run ``python -m edgekit.cli.main ARGS`` in a subprocess; returns CompletedProcess (text)."""
    import subprocess
    import sys

    env = dict(os.environ)
    return subprocess.run([sys.executable, "-m", "edgekit.cli", "--quiet", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=600)


@pytest.fixture
def cli():
    """Fixture form of :func:`run_cli`."""
    return run_cli
