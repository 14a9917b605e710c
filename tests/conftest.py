"""Fixtures only: tiny real data and tiny trained models, built once per test session.

Helpers live in ``tests/_helpers``. ``TrainedModel``, ``stage_context`` and ``run_cli`` are re-exported here only
until every test module imports them from ``_helpers`` (then these imports go).
"""
from __future__ import annotations

import pytest
import torch
from _helpers.models import TrainedModel, train_and_export
from _helpers.runs import run_cli, stage_context

__all__ = ["TrainedModel", "run_cli", "stage_context"]  # transitional re-exports, see the module docstring

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """Runners opened with ``threads=N`` set torch's global thread count; restore it after every test, so the
    next test (and the session fixtures' training, whose results depend on it) starts from the same count."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


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
    from edgekit.models import create_model

    torch.manual_seed(0)
    model = create_model("resnet_cifar", depth=8, width=1.0, num_classes=10, in_channels=3)
    return train_and_export(model, digits16, {"epochs": 4, "lr": 0.1}, tmp_path_factory.mktemp("resnet8"))


@pytest.fixture(scope="session")
def trained_lstm(digits_seq, tmp_path_factory) -> TrainedModel:
    """LSTM (hidden 32) trained 6 epochs on digits sequences."""
    from edgekit.models import create_model

    torch.manual_seed(0)
    model = create_model("rnn_classifier", input_size=8, hidden_size=32, num_classes=10)
    return train_and_export(model, digits_seq, {"epochs": 6, "lr": 0.01, "optimizer": "adam"},
                            tmp_path_factory.mktemp("lstm"))

