"""`edgekit prune` takes what the recipe's prune stage takes: macs_target, round_to, compare_scratch, methods."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from edgekit.models import create_model, load_checkpoint, save_checkpoint
from tests._helpers.runs import run_cli


@pytest.fixture()
def concat_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = create_model("concat_se_cnn", width=16, num_classes=10)
    return save_checkpoint(model, tmp_path / "cat.pt", {"input_shape": [3, 16, 16], "num_classes": 10})


@pytest.mark.slow
def test_prune_command_macs_target_round_to_and_compare_scratch(tmp_path, concat_checkpoint):
    out = tmp_path / "pruned.pt"
    p = run_cli("prune", str(concat_checkpoint), "--macs-target", "0.5", "--round-to", "8", "--data", "digits",
                "--finetune-epochs", "1", "--compare-scratch", "--out", str(out))
    assert p.returncode == 0, p.stderr
    assert "widths multiples of round_to=8 (aligned)" in p.stdout and "from scratch:" in p.stdout
    model, _ = load_checkpoint(out)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(m.out_channels % 8 == 0 for m in convs)


def test_prune_command_rejects_compare_scratch_without_data(tmp_path, concat_checkpoint):
    p = run_cli("prune", str(concat_checkpoint), "--ratio", "0.5", "--compare-scratch", "--out", str(tmp_path / "x.pt"))
    assert p.returncode == 2 and "--compare-scratch" in p.stderr and "Traceback" not in p.stderr


def test_prune_command_unstructured_method(tmp_path, concat_checkpoint):
    out = tmp_path / "sparse.pt"
    p = run_cli("prune", str(concat_checkpoint), "--method", "unstructured", "--sparsity", "0.5", "--out", str(out))
    assert p.returncode == 0, p.stderr
    assert out.is_file()
