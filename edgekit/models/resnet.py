"""ResNets: CIFAR-style (depth 6n+2, widths 16/32/64 × width) and ResNet-18 (ImageNet or CIFAR stem)."""
from __future__ import annotations

import torch
import torch.nn as nn

from edgekit.models.registry import register_model


class BasicBlock(nn.Module):
    """Two 3×3 conv-BN layers with an identity or 1×1 projection shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """Generic ResNet of BasicBlocks: ``stem`` → stages → global pool → ``fc``."""

    def __init__(self, stem: nn.Module, stem_channels: int, widths, blocks, strides, num_classes: int,
                 zero_init_residual: bool = False):
        super().__init__()
        self.stem = stem
        cin, stages = stem_channels, []
        for w, n, s in zip(widths, blocks, strides):
            layers = []
            for i in range(n):
                layers.append(BasicBlock(cin, w, s if i == 0 else 1))
                cin = w
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3 = stages[0], stages[1], stages[2]
        self.layer4 = stages[3] if len(stages) > 3 else nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():  # optional: residual branches start as identity (helps long, high-lr schedules)
            if zero_init_residual and isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


_STAGES = ("layer1", "layer2", "layer3", "layer4")  # layer4 is an nn.Identity in CIFAR ResNets (3 stages)


def _channels(base: int, width: float) -> int:
    return max(4, int(round(base * width)))


@register_model("resnet_cifar", features=_STAGES, classifier="fc")
def resnet_cifar(num_classes: int = 10, in_channels: int = 3, depth: int = 20, width: float = 1.0,
                 zero_init_residual: bool = False) -> nn.Module:
    """CIFAR-style ResNet (He et al. 2016): depth 6n+2 (8, 14, 20, 56...), stage widths 16/32/64 × width."""
    if (depth - 2) % 6 != 0 or depth < 8:
        raise ValueError(f"depth must be 6n+2 with n >= 1 (8, 14, 20, 32, 44, 56, ...), got {depth}")
    n = (depth - 2) // 6
    widths = [_channels(16, width), _channels(32, width), _channels(64, width)]
    stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]),
                         nn.ReLU(inplace=True))
    return ResNet(stem, widths[0], widths, [n, n, n], [1, 2, 2], num_classes, zero_init_residual)


@register_model("resnet18", features=_STAGES, classifier="fc")
def resnet18(num_classes: int = 1000, in_channels: int = 3, width: float = 1.0, stem: str = "imagenet",
             zero_init_residual: bool = False) -> nn.Module:
    """ResNet-18: 4 stages of 2 BasicBlocks, widths 64/128/256/512 × width; stem 'imagenet' (7×7/2 + maxpool)
    or 'cifar' (3×3/1)."""
    widths = [_channels(b, width) for b in (64, 128, 256, 512)]
    if stem == "imagenet":
        s = nn.Sequential(nn.Conv2d(in_channels, widths[0], 7, 2, 3, bias=False), nn.BatchNorm2d(widths[0]),
                          nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
    elif stem == "cifar":
        s = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]),
                          nn.ReLU(inplace=True))
    else:
        raise ValueError(f"stem must be 'imagenet' or 'cifar', got '{stem}'")
    return ResNet(s, widths[0], widths, [2, 2, 2, 2], [1, 2, 2, 2], num_classes, zero_init_residual)
