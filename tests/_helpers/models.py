"""Tiny PyTorch models shared by tests, and the trained-model record the session fixtures return."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn


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
    def module(self) -> nn.Module:
        from edgekit.models import load_checkpoint

        return load_checkpoint(self.checkpoint)[0]


def train_and_export(model: nn.Module, splits, fit_config: dict, directory: Path) -> TrainedModel:
    """Train ``model`` on ``splits`` (seed 0), save its checkpoint and ONNX export in ``directory``."""
    from edgekit.core.train import evaluate, fit
    from edgekit.export import export_onnx
    from edgekit.models import save_checkpoint

    fit(model, splits.train, splits.val, fit_config, seed=0)
    meta = {"input_shape": list(splits.input_shape), "num_classes": splits.num_classes}
    checkpoint = save_checkpoint(model, directory / "model.pt", meta)
    onnx_path = export_onnx(model, splits.val.x[:32], directory / "model.onnx").path
    return TrainedModel(checkpoint, onnx_path, splits, evaluate(model, splits.test))


def conv_classifier(channels: int = 8, num_classes: int = 4, hw: int = 8, pool: bool = True) -> nn.Module:
    """[N, 3, hw, hw] -> Conv3x3(3->channels) -> ReLU -> (global average pool) -> Linear(-> num_classes), eval mode."""
    if pool:
        layers = [nn.Conv2d(3, channels, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                  nn.Linear(channels, num_classes)]
    else:
        layers = [nn.Conv2d(3, channels, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(channels * hw * hw,
                                                                                          num_classes)]
    return nn.Sequential(*layers).eval()


def misaligned_small_cnn() -> nn.Module:
    """``small_cnn`` (width 8, depth 2) whose first conv has 5 output channels, as structured pruning leaves it."""
    from edgekit.models import create_model

    model = create_model("small_cnn", width=8, depth=2)
    model[0][0] = nn.Conv2d(3, 5, 3, 1, 1, bias=False)
    model[0][1] = nn.BatchNorm2d(5)
    model[1][0] = nn.Conv2d(5, 16, 3, 2, 1, bias=False)
    return model.eval()


class ExportFlaky(nn.Module):
    """Differs between PyTorch and ONNX: a random perturbation in eager mode, a constant 5 while exporting."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x):
        exporting = torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
        return self.lin(x) + (5.0 if exporting else torch.rand(()))


class UnexportableOp(nn.Module):
    """Runs in PyTorch but uses an operator (Bessel J0) that ONNX opset 17 cannot express."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x):
        return self.lin(torch.special.bessel_j0(x))
