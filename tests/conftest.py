"""Fixtures only: tiny real data and tiny trained models, built once per test session.

Helpers (tiny models, ONNX builders, the CLI runner) live in ``tests/_helpers``.
"""
from __future__ import annotations

import pytest
import torch
from _helpers.models import TrainedModel, train_and_export

torch.set_num_threads(2)


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

