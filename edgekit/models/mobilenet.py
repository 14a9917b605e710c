"""MobileNetV2 (Sandler et al. 2018) with width multiplier, for 224×224 (or smaller) inputs."""
from __future__ import annotations

import torch
import torch.nn as nn

from edgekit.models.registry import register_model


def _make_divisible(v: float, divisor: int = 8) -> int:
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def _conv_bn_relu6(cin: int, cout: int, k: int, stride: int, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    """Expand (1×1) → depthwise 3×3 → project (1×1, linear), residual when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = int(round(cin * expand))
        self.use_residual = stride == 1 and cin == cout
        layers = [] if expand == 1 else [_conv_bn_relu6(cin, hidden, 1, 1)]
        layers += [_conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
                   nn.Conv2d(hidden, cout, 1, 1, 0, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


# the last block before each downsampling (24, 32, 96 and 320 channels at 1/4, 1/8, 1/16, 1/32 resolution)
@register_model("mobilenetv2", features=("0.3", "0.6", "0.13", "0.17"), classifier="4")
def mobilenetv2(num_classes: int = 1000, in_channels: int = 3, width: float = 1.0, dropout: float = 0.2) -> nn.Module:
    """MobileNetV2 with width multiplier; 3.5M params / ~300M MACs at width 1.0, 224×224."""
    settings = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                (6, 320, 1, 1)]
    cin = _make_divisible(32 * width)
    last = _make_divisible(1280 * max(1.0, width))
    features = [_conv_bn_relu6(in_channels, cin, 3, 2)]
    for t, c, n, s in settings:
        cout = _make_divisible(c * width)
        for i in range(n):
            features.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
            cin = cout
    features.append(_conv_bn_relu6(cin, last, 1, 1))
    return nn.Sequential(nn.Sequential(*features), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
                         nn.Linear(last, num_classes))
