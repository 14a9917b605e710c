"""The `prune` pipeline stage: variant with checkpoint + ONNX, meta and metrics; errors write nothing."""
from __future__ import annotations

import pytest

from edgekit.errors import ConfigError
from edgekit.models import load_checkpoint
from edgekit.pipeline.stages import STAGES, StageContext, Variant, load_stage_modules
from edgekit.techniques.prune.config import default_round_to

load_stage_modules()
PruneStage, run_prune = STAGES.get("prune").config, STAGES.get("prune").run


def _context(tmp_path, variants, splits, stage_dir="stage"):
    (tmp_path / stage_dir).mkdir(parents=True)
    return StageContext(tmp_path, tmp_path / stage_dir, 0, 2, None, dict(variants), lambda: splits)


def _ctx(tmp_path, trained):
    parent = Variant("reference", None, str(trained.checkpoint), str(trained.onnx))
    return _context(tmp_path, {"reference": parent}, trained.splits, stage_dir="stages/01-prune")


def test_stage_is_generated_from_the_technique_config():
    from edgekit.techniques.prune.config import PruneConfig

    assert STAGES.get("prune").needs_torch and issubclass(PruneStage, PruneConfig)
    assert set(PruneConfig.model_fields) | {"type", "input", "name", "teacher"} == set(PruneStage.model_fields)


def test_prune_stage_produces_pruned_variant(trained_resnet8, tmp_path):
    ctx = _ctx(tmp_path, trained_resnet8)
    cfg = PruneStage(type="prune", macs_target=0.5, finetune={"epochs": 1, "lr": 0.02})
    out = run_prune(ctx, cfg)
    (v,) = out.variants
    assert v.name == "reference-pruned" and v.parent == "reference"
    model, meta = load_checkpoint(v.checkpoint)
    assert meta["prune"]["sparsity"] == "structured" and meta["input_shape"] == [3, 16, 16]
    assert v.onnx.endswith(".onnx") and (tmp_path / "stages" / "01-prune" / "reference-pruned.onnx").is_file()
    rt = default_round_to("ort-cpu")[0]  # unset round_to: the speed backend's alignment (16 on AVX-512)
    assert v.meta["aligned"] and v.meta["round_to"] == rt and v.meta["teacher"] == "reference"
    assert all(w % rt == 0 for r in v.meta["channels"] for w in r["widths"].values() if r["after"] < r["before"])
    assert abs(v.metrics["macs_fraction"] - 0.5) <= 0.05 and v.metrics["params"] < v.metrics["params_before"]
    assert v.metrics["test_accuracy_torch"] > 60.0 and "val_accuracy" in v.metrics
    assert v.metrics["parent_test_accuracy_torch"] == pytest.approx(trained_resnet8.test_accuracy)


def test_prune_stage_2to4_variant(trained_resnet8, tmp_path):
    ctx = _ctx(tmp_path, trained_resnet8)
    out = run_prune(ctx, PruneStage(type="prune", method="2:4", finetune={"epochs": 0}))
    (v,) = out.variants
    assert v.meta["sparsity"] == "2:4" and v.meta["sparse_2to4"] is True
    assert v.name == "reference-sparse" and v.metrics["weight_sparsity"] == pytest.approx(0.5, abs=0.01)


def test_prune_stage_bad_exclude_writes_nothing(trained_resnet8, tmp_path):
    ctx = _ctx(tmp_path, trained_resnet8)
    cfg = PruneStage(type="prune", ratio=0.3, exclude=["layer7"], finetune={"epochs": 0})
    with pytest.raises(ConfigError, match="layer7"):
        run_prune(ctx, cfg)
    assert list(ctx.stage_dir.iterdir()) == []


def test_prune_stage_config_rejects_mixed_methods():
    with pytest.raises(ValueError, match="apply to method 'structured'"):
        PruneStage(type="prune", method="unstructured", sparsity=0.5, ratio=0.3)
    with pytest.raises(ValueError, match="needs sparsity"):
        PruneStage(type="prune", method="unstructured")


def test_pruning_modules_import_lean():
    import subprocess
    import sys

    code = ("import sys, edgekit.techniques.prune.prune, edgekit.techniques.prune.sensitivity, "
            "edgekit.techniques.sparsity.sparsity, edgekit.pipeline.recipe\n"
            "edgekit.pipeline.recipe.recipe_model()\n"
            "print(sorted(m for m in ('torch_pruning', 'matplotlib') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_prune_stage_latency_only_recipe_shape(tmp_path):
    """As in recipes/mobilenetv2_224.yaml: first stage, random weights, synthetic data, no fine-tune."""
    import numpy as np
    import torch

    from edgekit.data import Split, Splits, load_data
    from edgekit.models import create_model, save_checkpoint

    data = load_data({"name": "synthetic", "shape": [3, 32, 32], "num_classes": 10, "samples": 40}, seed=0)
    unlabelled = Splits(Split(data.train.x, None), Split(data.val.x, None), Split(data.test.x, None),
                        data.input_shape, data.num_classes, "synthetic", labelled=False)
    torch.manual_seed(0)
    model = create_model("mobilenetv2", num_classes=10, in_channels=3, width=0.5)
    ckpt = save_checkpoint(model, tmp_path / "ref.pt", {"input_shape": [3, 32, 32], "num_classes": 10})
    ctx = _context(tmp_path, {"ref": Variant("ref", None, str(ckpt))}, unlabelled)
    cfg = PruneStage(type="prune", name="pruned", macs_target=0.5, importance="l2", teacher=None,
                     finetune={"epochs": 0})
    (v,) = run_prune(ctx, cfg).variants
    assert abs(v.metrics["macs_fraction"] - 0.5) <= 0.05 and "test_accuracy_torch" not in v.metrics
    assert v.meta["teacher"] is None and np.isfinite(v.metrics["params"])
