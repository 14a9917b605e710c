"""Plugins named in a recipe's `model.imports` register models and techniques before the schema is built."""
from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from edgekit.errors import ConfigError

PLUGIN = '''
import copy

import torch
import torch.nn as nn
from pydantic import Field

from edgekit.models import register_model
from edgekit.techniques.base import Result, Technique, TechniqueConfig, register_technique


@register_model("{model}", features=("body",), classifier="head")
def tiny_plugin_net(num_classes: int = 10, in_channels: int = 1, width: int = 8):
    return nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(width, num_classes))


class RoundConfig(TechniqueConfig):
    decimals: int = Field(2, ge=0, description="decimal places kept in every weight")


def round_weights(model, config=None, *, seed=0):
    """Round a copy of the weights to ``config.decimals`` places."""
    cfg = RoundConfig.model_validate(config or {{}})
    out = copy.deepcopy(model)
    with torch.no_grad():
        for p in out.parameters():
            p.copy_(torch.round(p * 10 ** cfg.decimals) / 10 ** cfg.decimals)
    return Result(model=out, metrics={{"decimals": cfg.decimals}}, sidecar={{"rounded": True}})


register_technique(Technique("{technique}", RoundConfig, "module", "module", round_weights,
                             "rounds weights (a plugin technique)", variant_suffix=lambda c: "rounded"))
'''


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """A plugin module written to tmp_path and put on sys.path; whatever it registered is unregistered after."""
    from edgekit.models import LAYOUTS, MODELS
    from edgekit.techniques.base import TECHNIQUES

    name, model, technique = "ek_test_plugin", "plugin_net", "round_weights"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(PLUGIN.format(model=model, technique=technique)))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield {"module": name, "model": model, "technique": technique}
    sys.modules.pop(name, None)
    for registry, key in ((MODELS, model), (LAYOUTS, model), (TECHNIQUES, technique)):
        if key in registry:
            registry.unregister(key)


def _recipe(plugin, imports):
    return {"name": "plug", "seed": 0,
            "model": {"name": "resnet_cifar", "kwargs": {"depth": 8, "width": 0.5}, "imports": imports},
            "data": {"name": "digits"},
            "stages": [{"type": "train", "epochs": 1},
                       {"type": "distill", "name": "student", "student": {"name": plugin["model"], "width": 4},
                        "train": {"epochs": 1}},
                       {"type": plugin["technique"], "decimals": 1}]}


def test_a_recipe_without_the_plugin_does_not_know_its_names(plugin):
    from edgekit.pipeline.recipe import validate_recipe

    with pytest.raises(ConfigError) as e:
        validate_recipe(_recipe(plugin, []))
    assert "unknown stage 'round_weights'" in str(e.value)
    assert "unknown student model 'plugin_net'" in str(e.value)


def test_plugin_is_imported_before_the_schema_is_built_and_its_names_run(plugin, tmp_path):
    from edgekit.pipeline.recipe import validate_recipe
    from edgekit.pipeline.runner import run_recipe

    recipe = validate_recipe(_recipe(plugin, [plugin["module"]]))
    assert [s.type for s in recipe.stages] == ["train", "distill", "round_weights"]
    result = run_recipe(recipe, runs_dir=tmp_path / "runs", name="r", report=False)
    student = result.variants["student"]
    assert student.meta["student_arch"]["name"] == "plugin_net" and student.meta["teacher"] == "reference"
    assert student.meta["attention_pairs"] == []
    rounded = result.variants["student-rounded"]
    assert rounded.parent == "student" and rounded.meta == {"rounded": True} and rounded.metrics["decimals"] == 1

    from edgekit.models import load_checkpoint

    model, _ = load_checkpoint(rounded.checkpoint)
    assert all(float((p.detach() * 10 - (p.detach() * 10).round()).abs().max()) < 1e-4 for p in model.parameters())


def test_plugin_stage_goes_when_its_technique_is_unregistered(plugin):
    import importlib

    from edgekit.pipeline.stages import STAGES, load_stage_modules
    from edgekit.techniques.base import TECHNIQUES

    importlib.import_module(plugin["module"])
    load_stage_modules()
    assert "round_weights" in STAGES
    TECHNIQUES.unregister("round_weights")
    load_stage_modules()
    assert "round_weights" not in STAGES and "prune" in STAGES


def test_plugin_import_failure_names_the_field(tmp_path):
    from edgekit.pipeline.recipe import validate_recipe

    raw = {"model": {"name": "resnet_cifar", "imports": ["no_such_edgekit_plugin"]}}
    with pytest.raises(ConfigError, match=r"model\.imports\[0\]: cannot import 'no_such_edgekit_plugin'"):
        validate_recipe(raw)


USER_NET = '''
import torch
import torch.nn as nn

from edgekit.models import register_model


class ConcatNet(nn.Module):
    def __init__(self, num_classes, in_channels, width):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU())
        self.branch = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, groups=width), nn.Conv2d(width, width, 1),
                                    nn.ReLU())
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        x = self.stem(x)
        return self.head(torch.cat([x, self.branch(x)], 1).mean((2, 3)))


@register_model("user_teacher_net")
def user_teacher_net(num_classes=10, in_channels=1, width=16):
    return ConcatNet(num_classes, in_channels, width)


@register_model("user_student_net")
def user_student_net(num_classes=10, in_channels=1, width=4):
    return ConcatNet(num_classes, in_channels, width)
'''

USER_RECIPE = '''
seed: 0
threads: 1
model: {name: user_teacher_net, imports: [user_nets]}
data: {name: digits, image_size: 8, channels: 1}
stages:
  - {type: train, name: reference, epochs: 1}
  - {type: distill, name: student, student: {name: user_student_net, width: 4}, train: {epochs: 1}}
targets: [{backend: torch}]
'''


def test_a_module_next_to_the_recipe_is_imported_without_pythonpath(tmp_path):
    """`imports: [user_nets]` finds user_nets.py beside the recipe, run from another directory with no PYTHONPATH;
    the teacher and the distilled student are both the user's registered models."""
    import json
    import os
    import subprocess

    project = tmp_path / "project"
    project.mkdir()
    (project / "user_nets.py").write_text(textwrap.dedent(USER_NET))
    (project / "recipe.yaml").write_text(textwrap.dedent(USER_RECIPE))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-m", "edgekit.cli", "run", str(project / "recipe.yaml"), "--name", "r",
                           "--runs-dir", str(tmp_path / "runs"), "--no-report"], cwd=elsewhere, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    manifest = json.loads((tmp_path / "runs" / "recipe" / "r" / "manifest.json").read_text())
    student = manifest["variants"]["student"]
    assert student["meta"]["teacher_arch"]["name"] == "user_teacher_net"
    assert student["meta"]["student_arch"]["name"] == "user_student_net"
    assert Path(student["checkpoint"]).is_file() and Path(student["onnx"]).is_file()
