"""Distillation losses as plain tensor functions: Hinton logit KD, attention transfer, FitNets hints.

All functions are differentiable in the student's tensors and never modify the teacher's.

Example:
    >>> loss = logit_kd_loss(student_logits, teacher_logits, y, temperature=4.0, alpha=0.9)
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from edgekit.core.train import flat_tokens
from edgekit.errors import ShapeError


def soft_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher_T || student_T) × T², averaged over the batch (Hinton et al. 2015).

    The T² factor keeps the soft-target gradients on the same scale as the hard-label ones for any T. Per-token
    logits ``[N, T, vocab]`` (a causal LM) give the forward KL of every next-token distribution, averaged over
    tokens.

    Example:
        >>> soft_kd_loss(torch.zeros(2, 3), torch.zeros(2, 3), 4.0)
        tensor(0.)
    """
    if student_logits.shape != teacher_logits.shape:
        raise ShapeError(f"student logits {list(student_logits.shape)} and teacher logits "
                         f"{list(teacher_logits.shape)} differ; both models must predict the same classes")
    t = float(temperature)
    if student_logits.dim() > 2:
        student_logits, teacher_logits = student_logits.flatten(0, -2), teacher_logits.flatten(0, -2)
    log_p_s = F.log_softmax(student_logits / t, dim=1)
    log_p_t = F.log_softmax(teacher_logits.detach() / t, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * (t * t)


def logit_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, y: Optional[torch.Tensor],
                  temperature: float = 4.0, alpha: float = 0.9, label_smoothing: float = 0.0) -> torch.Tensor:
    """``alpha`` × soft KD loss + (1 − ``alpha``) × cross-entropy with the labels ``y``.

    With ``y`` None (unlabelled data) only the soft loss is used, whatever ``alpha``.

    Example:
        >>> loss = logit_kd_loss(s, t, y, temperature=4.0, alpha=0.9)
    """
    soft = soft_kd_loss(student_logits, teacher_logits, temperature)
    if y is None:
        return soft
    if alpha >= 1.0:
        return soft
    hard = F.cross_entropy(*flat_tokens(student_logits, y), label_smoothing=label_smoothing)
    return alpha * soft + (1.0 - alpha) * hard if alpha > 0 else hard


def as_feature(out) -> torch.Tensor:
    """The tensor a module produced: the output itself, or the first element of a tuple (LSTM, ...)."""
    while isinstance(out, (tuple, list)):
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise ShapeError(f"a distillation layer produced {type(out).__name__}, not a tensor")
    return out


def attention_map(feature: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Spatial attention: mean over channels of |f|^p, L2-normalised per sample.

    Image features [B, C, H, W] give [B, H, W]; token features [B, N, C] (ViT) give [B, N].
    The map is returned unflattened (so it can be resized); its flattened form has unit L2 norm.

    Example:
        >>> a = attention_map(torch.randn(2, 8, 4, 4))
        >>> a.flatten(1).norm(dim=1)  # tensor([1., 1.])
    """
    if feature.dim() == 4:
        a = feature.abs().pow(p).mean(dim=1)
    elif feature.dim() == 3:
        a = feature.abs().pow(p).mean(dim=2)
    else:
        raise ShapeError(f"attention transfer needs [B, C, H, W] or [B, N, C] features, got {list(feature.shape)}")
    flat = F.normalize(a.flatten(1), p=2, dim=1, eps=1e-12)
    return flat.view_as(a)


def _resize_map(a: torch.Tensor, size) -> torch.Tensor:
    """Resize an attention map [B, H, W] (bilinear) or [B, N] (linear) to ``size``, keeping unit norm."""
    if tuple(a.shape[1:]) == tuple(size):
        return a
    if a.dim() == 3:
        r = F.interpolate(a.unsqueeze(1), size=tuple(size), mode="bilinear", align_corners=False).squeeze(1)
    else:
        r = F.interpolate(a.unsqueeze(1), size=tuple(size), mode="linear", align_corners=False).squeeze(1)
    return F.normalize(r.flatten(1), p=2, dim=1, eps=1e-12).view_as(r)


def attention_transfer_loss(student_map: torch.Tensor, teacher_map: torch.Tensor) -> torch.Tensor:
    """‖a_s − a_t‖₂ per sample, averaged over the batch; the teacher map is resized to the student's size.

    Args:
        student_map / teacher_map: outputs of :func:`attention_map` ([B, H, W] or [B, N]).

    Example:
        >>> attention_transfer_loss(attention_map(fs), attention_map(ft))
    """
    if student_map.dim() != teacher_map.dim():
        raise ShapeError(f"attention maps of different kinds: student {list(student_map.shape)}, "
                         f"teacher {list(teacher_map.shape)} (pair image layers with image layers)")
    t = _resize_map(teacher_map.detach(), student_map.shape[1:])
    return (student_map.flatten(1) - t.flatten(1)).norm(p=2, dim=1).mean()


class HintAdapter(nn.Module):
    """FitNets regressor: a learned 1×1 conv (or Linear for tokens) from student to teacher channels.

    When the channel counts are equal it is the identity and has no parameters.

    Example:
        >>> adapter = HintAdapter(16, 32)          # student 16 channels → teacher 32
        >>> adapter(torch.randn(2, 16, 8, 8)).shape  # torch.Size([2, 32, 8, 8])
    """

    def __init__(self, student_channels: int, teacher_channels: int, tokens: bool = False):
        super().__init__()
        self.student_channels, self.teacher_channels, self.tokens = student_channels, teacher_channels, tokens
        self.proj: Optional[nn.Module] = None
        if student_channels != teacher_channels:
            self.proj = (nn.Linear(student_channels, teacher_channels, bias=False) if tokens
                         else nn.Conv2d(student_channels, teacher_channels, 1, bias=False))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return f if self.proj is None else self.proj(f)


def hint_loss(student_feature: torch.Tensor, teacher_feature: torch.Tensor, adapter: nn.Module) -> torch.Tensor:
    """Mean squared error between ``adapter(student_feature)`` and the teacher feature.

    The adapted student feature is resized (bilinear for images, linear for tokens) to the teacher's size.

    Example:
        >>> hint_loss(torch.randn(2, 16, 8, 8), torch.randn(2, 32, 4, 4), HintAdapter(16, 32))
    """
    s = adapter(student_feature)
    t = teacher_feature.detach()
    if s.dim() != t.dim() or s.shape[0] != t.shape[0] or (s.dim() == 4 and s.shape[1] != t.shape[1]) or \
            (s.dim() == 3 and s.shape[2] != t.shape[2]):
        raise ShapeError(f"hint features do not fit: adapted student {list(s.shape)}, teacher {list(t.shape)}")
    if s.dim() == 4 and s.shape[2:] != t.shape[2:]:
        s = F.interpolate(s, size=t.shape[2:], mode="bilinear", align_corners=False)
    elif s.dim() == 3 and s.shape[1] != t.shape[1]:
        s = F.interpolate(s.transpose(1, 2), size=t.shape[1], mode="linear", align_corners=False).transpose(1, 2)
    return F.mse_loss(s, t)


def feature_channels(feature: torch.Tensor) -> int:
    """Channel count of an image [B, C, H, W] or token [B, N, C] feature."""
    if feature.dim() == 4:
        return int(feature.shape[1])
    if feature.dim() == 3:
        return int(feature.shape[2])
    raise ShapeError(f"feature hints need [B, C, H, W] or [B, N, C] features, got {list(feature.shape)}")
