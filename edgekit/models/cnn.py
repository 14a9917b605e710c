"""Small plain CNN: the smallest reference image classifier."""
from __future__ import annotations

import torch.nn as nn

from edgekit.models.registry import register_model


def _conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _conv_blocks(model: nn.Module) -> list:
    return [n for n, m in model.named_children() if isinstance(m, nn.Sequential)]


def _head(model: nn.Module) -> str:
    return str(len(model) - 1)


@register_model("small_cnn", features=_conv_blocks, classifier=_head)
def small_cnn(num_classes: int = 10, in_channels: int = 3, width: int = 16, depth: int = 3) -> nn.Module:
    """Small CNN: `depth` conv-BN-ReLU blocks (channels width·2^i, stride 2 after the first), global pool, linear."""
    if depth < 1 or width < 1:
        raise ValueError("depth and width must be >= 1")
    layers, cin = [], in_channels
    for i in range(depth):
        cout = width * (2 ** i)
        layers.append(_conv_bn(cin, cout, 1 if i == 0 else 2))
        cin = cout
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes))
