"""The `distill` recipe stage: config validation and a tiny end-to-end run (train → distill)."""
from __future__ import annotations

from pathlib import Path

import pytest

from edgekit.errors import ConfigError


def _recipe(model=None, **distill):
    """A recipe whose only stage distils the reference model (default: random-init ResNet-8 on 8×8 digits)."""
    return {"name": "kd", "seed": 0, "model": model or {"name": "resnet_cifar", "kwargs": {"depth": 8}},
            "data": {"name": "digits", "channels": 3},
            "stages": [{"type": "distill", "name": "student", "student": {"name": "resnet_cifar", "depth": 8,
                                                                          "width": 0.5},
                        "attention": {"weight": 1.0}, "train": {"epochs": 3, "lr": 0.1}, **distill}]}


@pytest.mark.parametrize("override, match", [
    ({"alpha": 1.5}, r"alpha"),
    ({"temperature": 0}, r"temperature"),
    ({"student": {"name": "resnet_cifr"}}, r"did you mean 'resnet_cifar'"),
    ({"student": {"depth": 8}}, r"student needs a 'name'"),
    ({"tempreature": 2.0}, r"tempreature"),
    ({"attention": {"weight": 1.0, "pairz": []}}, r"pairz"),
    ({"teacher": None}, r"stages\[0\]\.teacher: this stage needs a teacher"),
    ({"teacher": "original"}, r"stages\[0\]\.teacher: 'original' was renamed to 'parent'"),
    ({"train": {"epochz": 3}}, r"stages\[0\]\.train\.epochz: unknown key \(did you mean 'epochs'"),
])
def test_stage_config_errors(override, match):
    from edgekit.pipeline.recipe import validate_recipe

    with pytest.raises(ConfigError, match=match):
        validate_recipe(_recipe(**override))


@pytest.mark.slow
def test_distill_stage_end_to_end(tmp_path, trained_resnet8):
    from edgekit.pipeline.recipe import validate_recipe
    from edgekit.pipeline.runner import run_recipe

    raw = _recipe({"checkpoint": str(trained_resnet8.checkpoint)})
    raw["data"]["image_size"] = 16  # the data the fixture's teacher was trained on
    result = run_recipe(validate_recipe(raw), runs_dir=tmp_path, name="r", report=False)
    v = result.variants["student"]
    assert v.parent == "reference" and v.checkpoint and v.onnx
    assert v.meta["teacher"] == "reference" and v.meta["losses"] == ["kd", "ce", "attention"]
    assert v.meta["attention_pairs"] == [["layer1", "layer1"], ["layer2", "layer2"], ["layer3", "layer3"]]
    m = v.metrics
    assert m["params"] < m["teacher_params"] / 3
    assert m["teacher_test_accuracy_torch"] == pytest.approx(trained_resnet8.test_accuracy)
    assert 70 < m["test_accuracy_torch"] <= 100  # distilled from a ~95 %+ teacher in 3 epochs
    assert Path(v.onnx).is_file() and Path(v.checkpoint).is_file()

    from edgekit.models import load_checkpoint

    student, meta = load_checkpoint(v.checkpoint)
    assert meta["distill"]["teacher"] == "reference" and meta["num_classes"] == 10
    assert student.edgekit_arch == {"name": "resnet_cifar", "kwargs": {"depth": 8, "width": 0.5, "num_classes": 10,
                                                                        "in_channels": 3}}


def test_distill_stage_rejects_unknown_teacher_variant(tmp_path):
    from edgekit.pipeline.recipe import validate_recipe
    from edgekit.pipeline.runner import run_recipe

    with pytest.raises(ConfigError, match="nope"):
        run_recipe(validate_recipe(_recipe(teacher="nope")), runs_dir=tmp_path, name="r", report=False)
