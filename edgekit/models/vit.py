"""A small Vision Transformer: patch embedding, pre-norm encoder blocks, mean-pooled head."""
from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn as nn

from edgekit.models.registry import register_model


class Attention(nn.Module):
    """Multi-head self-attention from Linear layers and MatMuls (exports to plain ONNX, quantises well)."""

    def __init__(self, dim: int, heads: int, head_dim: Optional[int] = None):
        super().__init__()
        if head_dim is None:
            if dim % heads:
                raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
            head_dim = dim // heads
        self.heads = heads
        self.qkv = nn.Linear(dim, heads * head_dim * 3)
        self.proj = nn.Linear(heads * head_dim, dim)
        self.edgekit_refresh()

    def edgekit_refresh(self) -> None:
        """Recompute the head size from the (possibly resized) projection."""
        self.head_dim = self.qkv.out_features // 3 // self.heads
        self.scale = self.head_dim ** -0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = torch.softmax((q @ k.transpose(-2, -1)) * self.scale, dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(b, n, self.heads * self.head_dim)
        return self.proj(out)


class Block(nn.Module):
    """Pre-norm transformer encoder block."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, head_dim: Optional[int] = None):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, head_dim)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """Patchify with a strided conv, add learned position embeddings, encode, mean-pool, classify."""

    def __init__(self, image_size: int, patch_size: int, in_channels: int, dim: int, depth: int, heads: int,
                 mlp_ratio: float, num_classes: int, block_heads: Optional[List[int]] = None):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        if block_heads is not None and (len(block_heads) != depth or min(block_heads, default=1) < 1):
            raise ValueError(f"block_heads {block_heads} must give depth={depth} head counts >= 1")
        if image_size % patch_size:
            raise ValueError(f"image_size ({image_size}) must be divisible by patch_size ({patch_size})")
        n = (image_size // patch_size) ** 2
        self.patch = nn.Conv2d(in_channels, dim, patch_size, patch_size)
        self.pos = nn.Parameter(torch.zeros(1, n, dim))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.blocks = nn.Sequential(*[Block(dim, h, mlp_ratio, dim // heads) for h in block_heads or [heads] * depth])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2) + self.pos
        x = self.norm(self.blocks(x))
        return self.head(x.mean(dim=1))


def _blocks(model: nn.Module) -> list:
    return [f"blocks.{i}" for i in range(len(model.blocks))]


@register_model("vit", features=_blocks, classifier="head")
def vit(num_classes: int = 10, in_channels: int = 1, image_size: int = 8, patch_size: int = 2, dim: int = 64,
        depth: int = 4, heads: int = 4, mlp_ratio: float = 2.0, block_heads: Optional[List[int]] = None) -> nn.Module:
    """Small ViT classifier (patch conv, `depth` pre-norm blocks of `heads`-head attention, mean pool).

    ``block_heads`` (set by head pruning) gives each block its own head count; heads keep width ``dim // heads``.
    """
    return ViT(image_size, patch_size, in_channels, dim, depth, heads, mlp_ratio, num_classes, block_heads)
