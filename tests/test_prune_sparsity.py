"""Unstructured and 2:4 sparsity, and sensitivity analysis with non-uniform ratios."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from edgekit.core.train import evaluate
from edgekit.errors import ConfigError
from edgekit.techniques.prune.prune import prune
from edgekit.techniques.prune.sensitivity import allocate_ratios, sensitivity
from edgekit.techniques.sparsity.sparsity import check_2to4, is_2to4_sparse, sparsify


def test_unstructured_reaches_requested_sparsity_and_removes_masks(trained_resnet8):
    model = trained_resnet8.module
    res = sparsify(model, {"method": "unstructured", "sparsity": 0.6, "finetune": {"epochs": 0}})
    weights = [m.weight for m in res.model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    zeros = sum(int((w == 0).sum()) for w in weights)
    total = sum(w.numel() for w in weights)
    assert abs(zeros / total - 0.6) < 0.002 and abs(res.sparsity - 0.6) < 0.002
    assert sum(r["zeros"] for r in res.layers) == zeros
    for m in res.model.modules():  # permanent: no weight_orig / weight_mask / pruning hooks left
        assert not hasattr(m, "weight_mask") and not hasattr(m, "weight_orig") and not m._forward_pre_hooks
    assert res.compressed_bytes_after < 0.8 * res.compressed_bytes_before
    assert "same speed" in res.note
    assert float((model.fc.weight == 0).float().mean()) < 0.01  # the input model is unchanged
    assert evaluate(res.model, trained_resnet8.splits.test) > 50.0


@pytest.mark.parametrize("cfg,match", [
    ({"sparsity": 1.0}, r"sparsity.sparsity: Input should be less than 1"),
    ({}, "needs sparsity"),
    ({"method": "2:4", "sparsity": 0.5}, "drop sparsity"),
    ({"method": "3:4"}, r"unknown sparsity pattern '3:4'.*valid: 2:4, unstructured"),
    ({"sparsity": 0.5, "exclude": ["nope"], "finetune": {"epochs": 0}}, r"exclude.names: 'nope' is not a module"),
    ({"sparsity": 0.5, "exclude": {"patterns": ["layer9*"]}, "finetune": {"epochs": 0}}, "matches no module"),
    ({"sparsity": 0.5, "protect": ["fc"]}, "protect: renamed to 'exclude'"),
    ({"sparsity": 0.5}, "needs labelled training data"),
])
def test_sparsity_rejects_bad_config(trained_resnet8, cfg, match):
    with pytest.raises(ConfigError, match=match):
        sparsify(trained_resnet8.module, cfg)


def test_exclude_scope_keeps_layers_dense(trained_resnet8):
    cfg = {"sparsity": 0.6, "finetune": {"epochs": 0}, "exclude": {"names": ["fc"], "patterns": ["layer3.*"]}}
    res = sparsify(trained_resnet8.module, cfg)
    names = {r["layer"] for r in res.layers}
    assert "fc" not in names and not any(n.startswith("layer3.") for n in names) and "layer1.0.conv1" in names
    assert float((res.model.fc.weight == 0).float().mean()) < 0.01
    by_type = sparsify(trained_resnet8.module, {"sparsity": 0.6, "finetune": {"epochs": 0},
                                                "exclude": {"types": ["Linear"]}})
    assert "fc" not in {r["layer"] for r in by_type.layers}


def test_2to4_pattern_holds_after_finetune(trained_resnet8):
    sp = trained_resnet8.splits
    model = trained_resnet8.module
    assert not is_2to4_sparse(model)
    res = sparsify(model, {"method": "2:4", "finetune": {"epochs": 1, "lr": 0.01}}, train=sp.train, val=sp.val,
                   teacher=model)
    assert is_2to4_sparse(res.model) and all(check_2to4(res.model).values())
    w = res.model.layer1[0].conv1.weight.detach()  # [out, in, kh, kw]: 2 zeros in every 4 input channels
    groups = w.permute(0, 2, 3, 1).reshape(-1, w.shape[1] // 4, 4)
    assert bool(((groups == 0).sum(-1) >= 2).all())
    assert res.model.stem[0].weight.shape[1] == 3 and "stem.0" not in check_2to4(res.model)  # 3 inputs: stays dense
    assert abs(res.sparsity - 0.5) < 0.01
    assert res.history and res.history[0]["kd"]
    assert res.sidecar["sparse_2to4"] is True and res.metrics["weight_sparsity"] == pytest.approx(0.5, abs=0.01)
    assert all(p.requires_grad for p in model.parameters())  # the teacher's flags are given back
    assert evaluate(res.model, sp.test) >= trained_resnet8.test_accuracy - 8.0


def test_sensitivity_table_plot_and_allocation(trained_resnet8, tmp_path):
    sp = trained_resnet8.splits
    x = sp.val.x[:4]
    sens = sensitivity(trained_resnet8.module, x, sp.val, ratios=(0.25, 0.5, 0.75), out_dir=tmp_path)
    table = sens.table()
    groups = {r["group"] for r in sens.rows}
    assert len(groups) >= 4 and set(table) == groups
    assert all(set(v) == {0.25, 0.5, 0.75} for v in table.values())
    assert all(0.0 <= a <= 100.0 for v in table.values() for a in v.values())
    for name in ("sensitivity.md", "sensitivity.json", "sensitivity.png"):
        assert (tmp_path / name).stat().st_size > 100
    assert "| group |" in (tmp_path / "sensitivity.md").read_text()
    ratios = allocate_ratios(sens, 0.6)
    assert ratios and set(ratios) <= groups
    res = prune(trained_resnet8.module, {"macs_target": 0.6, "per_layer_ratios": ratios, "finetune": {"epochs": 0}},
                example_input=x)
    assert abs(res.macs_fraction - 0.6) <= 0.05
    with pytest.raises(ConfigError, match="ratios must lie"):
        sensitivity(trained_resnet8.module, x, sp.val, ratios=(0.5, 1.2))


def test_sensitivity_rejects_unlabelled_split(trained_resnet8):
    from edgekit.data import Split

    with pytest.raises(ConfigError, match="labelled"):
        sensitivity(trained_resnet8.module, np.zeros((1, 3, 16, 16), np.float32),
                    Split(trained_resnet8.splits.val.x, None))


def test_prune_method_hands_over_to_sparsity(trained_resnet8):
    sp = trained_resnet8.splits
    res = prune(trained_resnet8.module, {"method": "unstructured", "sparsity": 0.5, "finetune": {"epochs": 0}},
                example_input=sp.val.x[:4])
    assert res.sidecar["sparsity"] == "unstructured" and res.metrics["weight_sparsity"] == pytest.approx(0.5, abs=0.01)
    assert res.metrics["macs"] > 0 and res.model is not None and res.artifact is None
