"""Distillation losses and config on hand-made tensors (no training)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edgekit.errors import ConfigError, ShapeError, validated_config
from edgekit.techniques.distill._losses import (
    HintAdapter,
    attention_map,
    attention_transfer_loss,
    hint_loss,
    logit_kd_loss,
    soft_kd_loss,
)
from edgekit.techniques.distill.config import DistillConfig


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


S = np.array([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]])
T = np.array([[1.0, 1.5, -0.5], [0.5, -1.0, 2.0]])


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_soft_kd_is_kl_of_softened_distributions_times_t_squared(temperature):
    p_t, p_s = _softmax(T / temperature), _softmax(S / temperature)
    kl = float(np.mean(np.sum(p_t * (np.log(p_t) - np.log(p_s)), axis=1)))
    got = soft_kd_loss(torch.tensor(S), torch.tensor(T), temperature)
    assert got.item() == pytest.approx(kl * temperature ** 2, rel=1e-6)


def test_soft_kd_zero_for_identical_logits_and_positive_otherwise():
    assert soft_kd_loss(torch.tensor(S), torch.tensor(S), 3.0).item() == pytest.approx(0.0, abs=1e-9)
    assert soft_kd_loss(torch.tensor(S), torch.tensor(T), 3.0).item() > 0


def test_soft_kd_gradient_flows_to_student_only():
    s, t = torch.tensor(S, requires_grad=True), torch.tensor(T, requires_grad=True)
    soft_kd_loss(s, t, 2.0).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None


def test_alpha_mixes_soft_and_hard_losses():
    s, t, y = torch.tensor(S), torch.tensor(T), torch.tensor([0, 2])
    soft, hard = soft_kd_loss(s, t, 4.0).item(), F.cross_entropy(s, y).item()
    assert logit_kd_loss(s, t, y, 4.0, alpha=1.0).item() == pytest.approx(soft)
    assert logit_kd_loss(s, t, y, 4.0, alpha=0.0).item() == pytest.approx(hard)
    assert logit_kd_loss(s, t, y, 4.0, alpha=0.3).item() == pytest.approx(0.3 * soft + 0.7 * hard)
    assert logit_kd_loss(s, t, None, 4.0, alpha=0.3).item() == pytest.approx(soft)  # unlabelled: soft only


def test_soft_kd_rejects_different_class_counts():
    with pytest.raises(ShapeError, match="same classes"):
        soft_kd_loss(torch.zeros(2, 3), torch.zeros(2, 5), 1.0)


def test_attention_map_is_channel_mean_of_squares_l2_normalised():
    f = torch.tensor([[[[1.0, 2.0], [0.0, 3.0]], [[-1.0, 0.0], [2.0, 1.0]]]])  # [1, 2, 2, 2]
    raw = np.array([(1 + 1) / 2, (4 + 0) / 2, (0 + 4) / 2, (9 + 1) / 2])
    a = attention_map(f)
    assert a.shape == (1, 2, 2)
    np.testing.assert_allclose(a.flatten().numpy(), raw / np.linalg.norm(raw), rtol=1e-6)
    assert a.flatten(1).norm(dim=1).item() == pytest.approx(1.0)
    tokens = attention_map(torch.randn(3, 5, 8))  # ViT tokens [B, N, C] → [B, N]
    assert tokens.shape == (3, 5) and torch.allclose(tokens.norm(dim=1), torch.ones(3))


def test_attention_map_scale_invariant_and_rejects_2d():
    f = torch.randn(2, 4, 3, 3)
    assert torch.allclose(attention_map(f), attention_map(7.0 * f), atol=1e-6)
    with pytest.raises(ShapeError, match="B, C, H, W"):
        attention_map(torch.randn(2, 4))


def test_attention_transfer_loss_values():
    a = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    b = torch.tensor([[[0.0, 1.0], [0.0, 0.0]]])
    assert attention_transfer_loss(a, a).item() == pytest.approx(0.0)
    assert attention_transfer_loss(a, b).item() == pytest.approx(math.sqrt(2.0))  # orthogonal unit maps


def test_attention_transfer_resizes_teacher_map_to_student_size():
    fs, ft = torch.rand(2, 4, 8, 8) + 0.1, torch.rand(2, 16, 4, 4) + 0.1
    loss = attention_transfer_loss(attention_map(fs), attention_map(ft))
    assert loss.shape == () and 0 < loss.item() < 2
    const_s, const_t = torch.ones(1, 4, 8, 8), torch.ones(1, 16, 4, 4)  # uniform maps agree at any size
    assert attention_transfer_loss(attention_map(const_s), attention_map(const_t)).item() == pytest.approx(0, abs=1e-6)


def test_hint_adapter_shapes_and_parameters():
    adapter = HintAdapter(16, 32)
    assert adapter(torch.randn(2, 16, 8, 8)).shape == (2, 32, 8, 8)
    assert sum(p.numel() for p in adapter.parameters()) == 16 * 32  # 1×1 conv, no bias
    assert list(HintAdapter(8, 8).parameters()) == []  # identity when channels agree
    tok = HintAdapter(12, 24, tokens=True)
    assert tok(torch.randn(2, 5, 12)).shape == (2, 5, 24)


def test_hint_loss_interpolates_and_trains_adapter():
    adapter = HintAdapter(4, 8)
    loss = hint_loss(torch.randn(2, 4, 8, 8), torch.randn(2, 8, 4, 4), adapter)
    loss.backward()
    assert adapter.proj.weight.grad is not None and adapter.proj.weight.grad.abs().sum() > 0
    f = torch.randn(2, 8, 4, 4)
    assert hint_loss(f, f, HintAdapter(8, 8)).item() == pytest.approx(0.0)
    with pytest.raises(ShapeError, match="do not fit"):
        hint_loss(torch.randn(2, 4, 4, 4), torch.randn(2, 8, 4, 4), HintAdapter(4, 6))


@pytest.mark.parametrize("bad, field", [({"temperature": 0}, "distill.temperature"),
                                        ({"temperature": -1.5}, "distill.temperature"),
                                        ({"alpha": 1.2}, "distill.alpha"), ({"alpha": -0.1}, "distill.alpha"),
                                        ({"temprature": 2}, "did you mean 'temperature'"),
                                        ({"train": {"epoch": 2}}, "distill.train.epoch"),
                                        ({"attention": {"weight": -1}}, "distill.attention.weight")])
def test_config_errors_name_the_field(bad, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        validated_config(DistillConfig, bad, "distill")


def test_config_defaults_and_shorthand():
    cfg = validated_config(DistillConfig, {"attention": 2.5}, "distill")
    assert cfg.attention.weight == 2.5 and cfg.attention.pairs is None and not cfg.hints.enabled
    assert cfg.temperature == 4.0 and cfg.alpha == 0.9 and cfg.cache_teacher_logits
    assert all(f.description for f in DistillConfig.model_fields.values())
