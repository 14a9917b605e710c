"""A CNN whose skips concatenate channels: depthwise-separable blocks with squeeze-excitation, DenseNet-like.

Each block computes ``cat([shortcut(x), SE(pw(dw(x)))])``; with ``transition=True`` a 1×1 conv follows every concat
(each concat member is then its own pruning group), without it the concat feeds the next block's depthwise conv
directly (every earlier member couples into one group: the case Torch-Pruning 1.6 gets wrong on its own).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from edgekit.models.registry import register_model


def _cbr(cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class SqueezeExcite(nn.Module):
    """Channel gate: x * sigmoid(fc2(relu(fc1(global average pool(x)))))."""

    def __init__(self, channels: int, reduction: int = 4, min_channels: int = 16):
        super().__init__()
        hidden = max(min_channels, channels // reduction)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(s))))


class ConcatBlock(nn.Module):
    """``cat([shortcut(x), SE(pw(dw(x)))])``; the shortcut is average-pooled when the block downsamples."""

    def __init__(self, cin: int, growth: int, stride: int):
        super().__init__()
        self.stride = stride
        self.dw = _cbr(cin, cin, 3, stride, groups=cin)
        self.pw = _cbr(cin, growth, 1)
        self.se = SqueezeExcite(growth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.stride == 1 else F.avg_pool2d(x, self.stride)
        return torch.cat([shortcut, self.se(self.pw(self.dw(x)))], 1)


class ConcatSENet(nn.Module):
    """stem → 3 × (concat block [→ 1×1 transition]) → global pool → Linear; widths w, 2w, 4w, 8w."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 32, transition: bool = True):
        super().__init__()
        w = width
        self.stem = _cbr(in_channels, w, 3)
        self.b1 = ConcatBlock(w, w, 1)
        self.t1 = _cbr(2 * w, 2 * w) if transition else nn.Identity()
        self.b2 = ConcatBlock(2 * w, 2 * w, 2)
        self.t2 = _cbr(4 * w, 4 * w) if transition else nn.Identity()
        self.b3 = ConcatBlock(4 * w, 4 * w, 2)
        self.t3 = _cbr(8 * w, 8 * w) if transition else nn.Identity()
        self.fc = nn.Linear(8 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.t1(self.b1(self.stem(x)))
        x = self.t2(self.b2(x))
        x = self.t3(self.b3(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


@register_model("concat_se_cnn", features=("b1", "b2", "b3"), classifier="fc")
def concat_se_cnn(num_classes: int = 10, in_channels: int = 3, width: int = 32, transition: bool = True) -> nn.Module:
    """Concat + depthwise-separable + squeeze-excitation CNN (17.9M MACs at 32×32, width 32).

    Example:
        >>> model = create_model("concat_se_cnn", width=16, transition=False)
    """
    return ConcatSENet(num_classes, in_channels, width, transition)
