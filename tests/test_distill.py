"""distill() and kd_loss_fn(): frozen teacher, real KD on digits, sequence models, errors before training."""
from __future__ import annotations

import copy

import pytest
import torch

import edgekit.techniques.distill.distill as distill_mod
from edgekit.core.train import evaluate, fit
from edgekit.errors import ConfigError
from edgekit.models import create_model
from edgekit.techniques.distill._features import default_layer_pairs
from edgekit.techniques.distill.distill import distill, kd_loss_fn


def _student(depth=8, width=0.25, classes=10):
    torch.manual_seed(1)
    return create_model("resnet_cifar", depth=depth, width=width, num_classes=classes, in_channels=3)


def test_teacher_is_frozen_and_unchanged(trained_resnet8):
    teacher, s = trained_resnet8.module, trained_resnet8.splits
    before = {k: v.clone() for k, v in teacher.state_dict().items()}  # includes BN running stats
    student = _student()
    untrained = {k: v.clone() for k, v in student.state_dict().items()}
    result = distill(student, {"attention": 1.0, "hints": 0.5, "train": {"epochs": 1}}, teacher=teacher,
                     train=s.train.take(256), val=s.val, seed=0)
    after = teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not teacher.training
    assert all(p.requires_grad for p in teacher.parameters())  # caller's flags restored
    assert result.losses == ["kd", "ce", "attention", "hints"]
    assert all(torch.equal(untrained[k], v) for k, v in student.state_dict().items())  # a trained copy is returned
    assert result.model is not student and result.artifact is None
    assert result.sidecar["losses"] == result.losses and result.metrics["val_accuracy"] == result.best_val_accuracy


def test_kd_from_resnet8_reaches_sane_accuracy_and_caches_teacher(trained_resnet8):
    s = trained_resnet8.splits
    result = distill(_student(), {"temperature": 4.0, "alpha": 0.9, "train": {"epochs": 4, "lr": 0.1}},
                     teacher=trained_resnet8.module, train=s.train, val=s.val, seed=0)
    acc = evaluate(result.model, s.test)
    assert acc >= 85.0, f"distilled ResNet-8 w0.25: {acc:.1f}% (teacher {trained_resnet8.test_accuracy:.1f}%)"
    cache = result.sidecar["teacher_cache"]
    assert cache["misses"] == 0 and cache["hits"] == 4 * 17  # 1078 / 64 → 17 batches
    assert result.best_val_accuracy is not None and len(result.history) == 4


def test_cached_and_uncached_teacher_give_the_same_training(trained_resnet8):
    s = trained_resnet8.splits
    runs = []
    for cache in (True, False):
        r = distill(_student(), {"cache_teacher_logits": cache, "attention": 1.0, "train": {"epochs": 2}},
                    teacher=trained_resnet8.module, train=s.train.take(320), val=s.val, seed=3)
        runs.append((r, r.model.state_dict()))
    (cached, w1), (plain, w2) = runs
    assert cached.sidecar["teacher_cache"] is not None and plain.sidecar["teacher_cache"] is None
    for a, b in zip(cached.history, plain.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
    assert all(torch.allclose(w1[k].float(), w2[k].float(), atol=1e-3) for k in w1)


def test_cache_is_skipped_with_augmentation(trained_resnet8):
    s = trained_resnet8.splits
    r = distill(_student(), {"train": {"epochs": 1, "augment": True}}, teacher=trained_resnet8.module,
                train=s.train.take(128), seed=0)
    assert r.sidecar["teacher_cache"] is None


def test_hint_adapters_are_trained_as_extra_parameters(trained_resnet8):
    s = trained_resnet8.splits
    teacher, student = trained_resnet8.module, _student()
    with kd_loss_fn(teacher, student=student, sample=s.train.x[:2], hints={"weight": 1.0}) as loss_fn:
        assert len(loss_fn.extra_parameters) == 3  # 4→16, 8→32, 16→64 channel adapters
        assert not any(p.requires_grad for p in teacher.parameters())  # frozen while the loss is open
        before = [p.detach().clone() for p in loss_fn.extra_parameters]
        fit(student, s.train.take(128), None, {"epochs": 1}, loss_fn=loss_fn,
            extra_parameters=loss_fn.extra_parameters)
        assert any(not torch.equal(b, p) for b, p in zip(before, loss_fn.extra_parameters))
        assert {"logit", "hints"} <= set(loss_fn.last)
    assert not student.layer1._forward_hooks and not teacher.layer1._forward_hooks
    assert all(p.requires_grad for p in teacher.parameters())  # closing the loss gives the flags back


def test_default_pairs_match_stages_by_relative_depth():
    r18 = create_model("resnet18", stem="cifar", width=0.25, num_classes=10)
    r8 = _student()
    assert default_layer_pairs(r8, r18) == [("layer1", "layer1"), ("layer2", "layer3"), ("layer3", "layer4")]
    assert default_layer_pairs(r8, _student(depth=14)) == [("layer1", "layer1"), ("layer2", "layer2"),
                                                           ("layer3", "layer3")]


def test_plain_kd_loss_fn_for_recovery(trained_resnet8):
    """What recovery does for pruning / QAT: logit KD from the original model through the shared fit loop."""
    s = trained_resnet8.splits
    student = trained_resnet8.module
    torch.manual_seed(0)
    for m in student.layer3.modules():  # damage it: re-initialise the last stage
        if hasattr(m, "reset_parameters") and m is not student.layer3:
            m.reset_parameters()
    damaged = evaluate(student, s.test)
    loss_fn = kd_loss_fn(trained_resnet8.module, temperature=2.0, alpha=0.5, student=student,
                         sample=s.train.x[:2])
    fit(student, s.train.take(512), None, {"epochs": 1, "lr": 0.02}, loss_fn=loss_fn)
    recovered = evaluate(student, s.test)
    assert loss_fn.terms == ["kd", "ce"] and loss_fn.extra_parameters == []
    assert recovered > damaged + 20 and recovered >= 70.0, (damaged, recovered)


def test_lstm_logit_kd(trained_lstm):
    s = trained_lstm.splits
    torch.manual_seed(0)
    student = create_model("rnn_classifier", input_size=8, hidden_size=16, cell="gru", num_classes=10)
    r = distill(student, {"temperature": 2.0, "train": {"epochs": 4, "lr": 0.01, "optimizer": "adam"}},
                teacher=trained_lstm.module, train=s.train, val=s.val, seed=0)
    assert r.losses == ["kd", "ce"] and r.sidecar["teacher_cache"]["misses"] == 0
    assert evaluate(r.model, s.test) >= 50.0  # 10 classes: far above chance after 4 epochs


def test_vit_student_logit_kd_and_token_attention(trained_resnet8):
    s = trained_resnet8.splits
    torch.manual_seed(0)
    vit = create_model("vit", in_channels=3, image_size=16, patch_size=4, dim=16, depth=1, heads=2, num_classes=10)
    r = distill(vit, {"train": {"epochs": 1, "optimizer": "adam", "lr": 0.003}}, teacher=trained_resnet8.module,
                train=s.train.take(256), seed=0)
    assert r.losses == ["kd", "ce"] and r.history[0]["train_loss"] > 0
    vit_t = copy.deepcopy(r.model)
    torch.manual_seed(1)
    vit_s = create_model("vit", in_channels=3, image_size=16, patch_size=4, dim=8, depth=1, heads=2, num_classes=10)
    cfg = {"attention": {"weight": 1.0, "pairs": [["blocks.0", "blocks.0"]]},  # token features [B, N, C]
           "hints": {"weight": 1.0, "pairs": [["blocks", "blocks"]]},  # Linear adapter 8 → 16
           "train": {"epochs": 1, "optimizer": "adam", "lr": 0.003}}
    r2 = distill(vit_s, cfg, teacher=vit_t, train=s.train.take(128))
    assert r2.losses == ["kd", "ce", "attention", "hints"]


class _FitSpy:
    def __init__(self):
        self.calls = 0

    def __call__(self, *a, **k):
        self.calls += 1
        raise AssertionError("training started although the input was invalid")


@pytest.mark.parametrize("config, student_classes, match", [
    ({}, 5, "predicts 10 classes but student"),
    ({"attention": {"weight": 1.0, "pairs": [["layer9", "layer2"]]}}, 10,
     r"no layer 'layer9'.*available: stem, .*layer1"),
    ({"hints": {"weight": 1.0, "pairs": [["layer2", "layr3"]]}}, 10,
     r"teacher model .*'layr3' \(did you mean 'layer3'"),
    ({"temperature": 0.0}, 10, r"distill\.temperature: Input should be greater than 0"),
    ({"temperature": -2}, 10, r"distill\.temperature"),
    ({"alpha": 1.5}, 10, r"distill\.alpha: Input should be less than or equal to 1"),
    ({"alpha": -0.5}, 10, r"distill\.alpha"),
    ({"train": {"epochz": 1}}, 10, r"distill\.train\.epochz: unknown field \(did you mean 'epochs'"),
])
def test_bad_input_fails_before_training(trained_resnet8, monkeypatch, config, student_classes, match):
    spy = _FitSpy()
    monkeypatch.setattr(distill_mod, "fit", spy)
    s = trained_resnet8.splits
    teacher = trained_resnet8.module
    with pytest.raises(ConfigError, match=match):
        distill(_student(classes=student_classes), config, teacher=teacher, train=s.train, val=s.val)
    assert spy.calls == 0
    assert all(p.requires_grad for p in teacher.parameters())
    assert not teacher.layer2._forward_hooks  # no hooks left behind


def test_feature_losses_need_student_and_sample(trained_resnet8):
    with pytest.raises(ConfigError, match="need the student model"):
        kd_loss_fn(trained_resnet8.module, attention=1.0)


def test_default_pairs_come_from_the_declared_layouts():
    mbv2 = create_model("mobilenetv2", width=0.5, num_classes=10)
    vit = create_model("vit", depth=2)
    assert default_layer_pairs(vit, mbv2) == [("blocks.0", "0.3"), ("blocks.1", "0.17")]
    with pytest.raises(ConfigError, match="declares no feature stages"):
        default_layer_pairs(torch.nn.Sequential(torch.nn.Linear(4, 2)), mbv2)


def test_compare_scratch_trains_the_student_alone_with_the_same_budget_and_reports_both(trained_resnet8):
    """The scratch baseline trains the same architecture without the teacher for the same epochs, and the run
    report shows both accuracies side by side."""
    from edgekit.pipeline.diagnostics import scratch_section
    from edgekit.pipeline.stages import Variant

    s = trained_resnet8.splits
    train = {"epochs": 1, "lr": 0.1}
    result = distill(_student(), {"compare_scratch": True, "train": train}, teacher=trained_resnet8.module,
                     train=s.train.take(320), val=s.val, seed=0)
    scratch = result.sidecar["scratch"]
    assert scratch["epochs"] == len(scratch["history"]) == 1 and 0 <= scratch["val_accuracy"] <= 100
    assert result.metrics["scratch_val_accuracy"] == scratch["val_accuracy"]
    lines = scratch_section([Variant("student", metrics=result.metrics)])
    kd, scratch = result.metrics["val_accuracy"], result.metrics["scratch_val_accuracy"]
    assert f"| student | {kd:.2f}% | {scratch:.2f}% | {kd - scratch:+.2f} pt |" in lines
    assert scratch_section([Variant("student", metrics={"val_accuracy": 90.0})]) == []
