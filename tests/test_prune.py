"""Structured pruning: ratios, MACs targets, alignment, residual/depthwise models, reload, protection, errors."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn

from edgekit.core.train import evaluate
from edgekit.errors import ConfigError, EdgekitError
from edgekit.models import create_model, load_checkpoint, save_checkpoint
from edgekit.techniques.prune.prune import prune

NO_FT = {"epochs": 0}


def _conv_channels(model):
    return {n: (m.in_channels, m.out_channels, m.groups) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def test_ratio_removes_channels_aligned_and_keeps_original(trained_resnet8):
    model, x = trained_resnet8.module, trained_resnet8.splits.val.x[:4]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = prune(model, {"ratio": 0.5, "finetune": NO_FT, "round_to": 8}, example_input=x)
    assert res.params_after < res.params_before and res.macs_after < res.macs_before
    pruned = [r for r in res.layers if r["after"] < r["before"]]
    assert pruned, res.layers
    for r in pruned:  # each group keeps the requested half, rounded to a multiple of 8
        assert r["after"] % 8 == 0 and r["aligned"]
        assert abs(r["after"] - r["before"] * 0.5) <= 4, r
    assert res.aligned
    for n, (cin, cout, _) in _conv_channels(res.model).items():
        assert cout % 8 == 0 and (cin % 8 == 0 or n == "stem.0"), (n, cin, cout)
    assert res.model.fc.out_features == 10  # classifier outputs always kept
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # input model unchanged
    with torch.no_grad():
        assert res.model(torch.from_numpy(x)).shape == (4, 10)


def test_macs_target_is_met_within_tolerance(trained_resnet8):
    res = prune(trained_resnet8.module, {"macs_target": 0.5, "finetune": NO_FT, "round_to": 8},
                example_input=trained_resnet8.splits.val.x[:4])
    assert abs(res.macs_fraction - 0.5) <= 0.05, res.macs_fraction
    chosen = [c for c in res.search if c.get("chosen")]
    assert len(res.search) >= 8 and len(chosen) == 1  # bisection over really pruned, counted candidates
    assert chosen[0]["macs_fraction"] == round(res.macs_fraction, 5)


@pytest.mark.parametrize("arch,kwargs,size", [
    ("mobilenetv2", {"width": 0.5}, 32),
    ("resnet18", {"width": 0.25, "stem": "cifar"}, 16),
    ("small_cnn", {"width": 16}, 16),
])
def test_residual_and_depthwise_models_prune_reload_and_export(arch, kwargs, size, tmp_path):
    from edgekit.export import export_onnx

    torch.manual_seed(0)
    model = create_model(arch, num_classes=10, in_channels=3, **kwargs).eval()
    x = np.random.default_rng(0).standard_normal((8, 3, size, size)).astype(np.float32)
    res = prune(model, {"ratio": 0.4, "finetune": NO_FT, "round_to": 8}, example_input=x)
    assert res.macs_fraction < 0.75 and res.params_after < res.params_before
    if arch == "mobilenetv2":  # depthwise convs stay depthwise at their new width
        dw = [(cin, cout, g) for cin, cout, g in _conv_channels(res.model).values() if g > 1]
        assert dw and all(cin == cout == g for cin, cout, g in dw)
        orig_dw = [v for v in _conv_channels(model).values() if v[2] > 1]
        assert any(cout < orig[1] for (cin, cout, g), orig in zip(dw, orig_dw))
    ckpt = save_checkpoint(res.model, tmp_path / "pruned.pt", {"input_shape": [3, size, size], "num_classes": 10})
    np.save(tmp_path / "x.npy", x)
    with torch.no_grad():
        np.save(tmp_path / "ref.npy", res.model(torch.from_numpy(x)).numpy())
    code = (  # a fresh interpreter: load_checkpoint must rebuild the pruned model without torch_pruning
        "import sys, json, numpy as np, torch\n"
        "from edgekit.models import load_checkpoint\n"
        f"m, meta = load_checkpoint({str(ckpt)!r})\n"
        f"x = np.load({str(tmp_path / 'x.npy')!r}); ref = np.load({str(tmp_path / 'ref.npy')!r})\n"
        "out = m(torch.from_numpy(x)).detach().numpy()\n"
        "print(json.dumps({'diff': float(np.abs(out - ref).max()), 'tp': 'torch_pruning' in sys.modules}))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["diff"] == 0.0 and got["tp"] is False
    exp = export_onnx(load_checkpoint(ckpt)[0], x, tmp_path / "pruned.onnx")
    assert exp.max_abs_diff < 1e-3 and exp.path.is_file()


def test_excluded_layer_untouched_and_classifier_kept(trained_resnet8):
    model = trained_resnet8.module
    res = prune(model, {"ratio": 0.5, "finetune": NO_FT, "exclude": ["layer2.0.conv1"]},
                example_input=trained_resnet8.splits.val.x[:4])
    got, orig = res.model.layer2[0].conv1, model.layer2[0].conv1
    assert torch.equal(got.weight, orig.weight)  # neither input nor output channels removed
    assert any(r["excluded"] for r in res.layers)
    assert res.params_after < res.params_before
    assert res.model.fc.out_features == model.fc.out_features


def test_global_and_taylor_and_bn_scale_importances(trained_resnet8):
    sp = trained_resnet8.splits
    for cfg in ({"macs_target": 0.6, "global_pruning": True}, {"ratio": 0.4, "importance": "taylor"},
                {"ratio": 0.4, "importance": "bn_scale"}, {"ratio": 0.4, "importance": "l2"}):
        res = prune(trained_resnet8.module, {**cfg, "finetune": NO_FT}, train=sp.train, example_input=sp.val.x[:4])
        assert res.macs_after < res.macs_before and res.aligned, cfg
        assert evaluate(res.model, sp.val) > 10.0


@pytest.mark.slow
def test_iterative_kd_finetune_recovers_accuracy(trained_resnet8):
    sp = trained_resnet8.splits
    cfg = {"macs_target": 0.5, "steps": 2, "round_to": 8, "finetune": {"epochs": 4, "lr": 0.05}}
    res = prune(trained_resnet8.module, cfg, train=sp.train, val=sp.val, teacher=trained_resnet8.module, seed=0)
    assert [h["step"] for h in res.history] == [1, 2]
    assert all(h["kd"] for h in res.history)
    assert res.history[0]["macs"] > res.history[1]["macs"]  # the schedule prunes in two steps
    assert abs(res.macs_fraction - 0.5) <= 0.05 and res.aligned
    assert evaluate(res.model, sp.test) >= trained_resnet8.test_accuracy - 6.0


@pytest.mark.parametrize("cfg,match", [
    ({"ratio": 1.5}, "ratio"),
    ({"ratio": 0.0}, "ratio"),
    ({}, "give a pruning target"),
    ({"ratio": 0.3, "macs_target": 0.5}, "one pruning target"),
    ({"ratoi": 0.3}, "ratoi"),
    ({"ratio": 0.3, "exclude": ["layer9.conv"], "finetune": NO_FT}, "layer1.0.conv1"),
    ({"ratio": 0.3, "exclude": {"patterns": ["layer9.*"]}, "finetune": NO_FT},
     r"exclude.patterns: 'layer9\.\*' matches"),
    ({"ratio": 0.3, "exclude": {"types": ["Conv3d"]}, "finetune": NO_FT}, r"types present: .*Conv2d"),
    ({"macs_target": 0.05, "exclude": ["layer3"], "finetune": NO_FT}, "unreachable"),
    ({"ratio": 0.3, "protect": ["fc"]}, "protect: renamed to 'exclude'"),
    ({"ratio": 0.3, "kd_alpha": 0.5}, "kd_alpha: renamed to 'alpha'"),
    ({"ratio": 0.3, "importance": "l22"}, r"unknown importance 'l22' \(did you mean 'l2'"),
    ({"ratio": 0.3, "speed_backend": "ort-cpux"}, r"unknown backend 'ort-cpux'"),
    ({"ratio": 0.3}, "needs labelled training data"),
])
def test_bad_input_raises_clear_errors(trained_resnet8, cfg, match):
    with pytest.raises(ConfigError, match=match):
        prune(trained_resnet8.module, cfg, example_input=trained_resnet8.splits.val.x[:4])


def test_untraceable_model_error_names_the_op():
    class Detaching(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 16, 3)
            self.head = nn.Conv2d(16, 16, 1)
            self.fc = nn.Linear(16, 4)

        def forward(self, x):
            y = torch.from_numpy(self.conv(x).detach().numpy())  # breaks the autograd graph
            return self.fc(self.head(y).mean((2, 3)))

    with pytest.raises(EdgekitError, match="never reached layer.*conv"):
        prune(Detaching(), {"ratio": 0.5, "finetune": NO_FT}, example_input=np.zeros((1, 3, 8, 8), np.float32))

    class Failing(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 16, 3)

        def forward(self, x):
            return torch.linalg.inv(self.conv(x))  # fails on non-square maps

    with pytest.raises(ConfigError, match="linalg.inv"):
        prune(Failing(), {"ratio": 0.5, "finetune": NO_FT}, example_input=np.zeros((1, 3, 8, 9), np.float32))


@pytest.mark.slow
def test_speedup_target_is_searched_by_measuring_ort_candidates():
    torch.manual_seed(0)
    model = create_model("resnet18", stem="cifar", width=0.5, num_classes=10, in_channels=3).eval()
    x = np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32)
    cfg = {"speedup_target": 1.3, "round_to": 16, "finetune": NO_FT, "speed_rounds": 3}
    res = prune(model, cfg, example_input=x)
    assert len(res.search) >= 3 and all(c["speedup"] > 0 and c["base_ms"] > 0 for c in res.search)
    chosen = [c for c in res.search if c["ratio"] == round(res.ratio, 5)]
    assert chosen and chosen[-1]["speedup"] >= 1.3  # the kept candidate was measured meeting the target
    assert res.macs_after < res.macs_before
    with pytest.raises(ConfigError, match="unreachable"):
        prune(model, {**cfg, "speedup_target": 1e4}, example_input=x)  # 40x was measured under load (2 threads)


def test_unsupported_architecture_fails_with_config_error():
    model = create_model("vit", num_classes=10).eval()  # attention heads + a bare position-embedding Parameter
    with pytest.raises(ConfigError, match="channel pruning .* of ViT would cut the attention projections of "
                                          r"blocks\.0\.attn .* heads: / ffn:"):
        prune(model, {"ratio": 0.3, "finetune": NO_FT}, example_input=np.zeros((2, 1, 8, 8), np.float32))


def test_kd_finetune_leaves_the_callers_teacher_trainable(trained_resnet8):
    s = trained_resnet8.splits
    teacher = trained_resnet8.module
    prune(teacher, {"ratio": 0.3, "finetune": {"epochs": 1, "lr": 0.01}}, train=s.train.take(64),
          val=s.val.take(32), teacher=teacher)
    assert all(p.requires_grad for p in teacher.parameters())


def test_exclude_scope_by_pattern_and_type_keeps_layers_untouched(trained_resnet8):
    model, x = trained_resnet8.module, trained_resnet8.splits.val.x[:4]
    res = prune(model, {"ratio": 0.5, "finetune": NO_FT, "exclude": {"patterns": ["layer3.*"]}}, example_input=x)
    for name, m in res.model.layer3.named_modules():  # every conv of layer3: neither inputs nor outputs pruned
        if isinstance(m, nn.Conv2d):
            assert torch.equal(m.weight, model.layer3.get_submodule(name).weight), name
    assert res.params_after < res.params_before
    with pytest.raises(ConfigError, match="nothing to prune.*excluded"):  # every conv selected by its type
        prune(model, {"ratio": 0.5, "finetune": NO_FT, "exclude": {"types": ["Conv2d"]}}, example_input=x)


def test_result_has_the_common_shape(trained_resnet8):
    res = prune(trained_resnet8.module, {"ratio": 0.3, "finetune": NO_FT},
                example_input=trained_resnet8.splits.val.x[:4])
    assert isinstance(res.model, nn.Module) and res.artifact is None
    assert res.metrics["macs"] == res.macs_after and res.metrics["macs_fraction"] == round(res.macs_fraction, 4)
    assert res.sidecar["channels"] == res.layers and res.sidecar["method"] == "structured"
