"""Structured pruning of graphs whose skips concatenate channels (with squeeze-excitation): every concat member
pruned in proportion, every width a multiple of round_to, MACs monotone in the ratio, MACs targets measured."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from edgekit.models import create_model, load_checkpoint, save_checkpoint
from edgekit.models.concat_se import ConcatSENet
from edgekit.techniques.prune.config import default_round_to
from edgekit.techniques.prune.prune import prune

NO_FT = {"epochs": 0}
X = np.random.default_rng(0).standard_normal((4, 3, 16, 16)).astype(np.float32)


def _widths(model: nn.Module) -> dict:
    return {n: (m.out_channels if isinstance(m, nn.Conv2d) else m.out_features) for n, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear)) and n != "fc"}


@pytest.mark.parametrize("transition", [True, False])
@pytest.mark.parametrize("global_pruning", [False, True])
def test_concat_widths_aligned_and_macs_monotone(transition, global_pruning):
    torch.manual_seed(0)
    model = ConcatSENet(width=16, transition=transition)  # a user's module: not built through the zoo
    fractions = []
    for ratio in (0.2, 0.5, 0.8):
        res = prune(model, {"ratio": ratio, "round_to": 8, "global_pruning": global_pruning, "finetune": NO_FT},
                    example_input=X[:1, :, :8, :8])
        widths = _widths(res.model)
        assert all(w % 8 == 0 for w in widths.values()), widths
        assert res.aligned and res.unaligned_layers == []
        fractions.append(res.macs_fraction)
        if ratio == 0.5 and not global_pruning:
            assert widths["stem.0"] < 16 and widths["b1.pw.0"] < 16  # the concat's first member is pruned too
    assert all(b <= a + 1e-9 for a, b in zip(fractions, fractions[1:])), fractions
    assert fractions[-1] < fractions[0]


def test_concat_se_macs_target_lands_within_tolerance_and_reloads(tmp_path):
    torch.manual_seed(0)
    model = create_model("concat_se_cnn", width=32)
    res = prune(model, {"macs_target": 0.5, "round_to": 16, "finetune": NO_FT}, example_input=X)
    assert abs(res.macs_fraction - 0.5) <= 0.05, res.search
    assert all(w % 16 == 0 for w in _widths(res.model).values())
    assert res.sidecar["aligned"] and res.sidecar["unaligned_layers"] == []
    row = next(r for r in res.layers if r["group"] == "b2.se.fc2")
    assert row["widths"]["b2.pw.0"] == row["widths"]["b2.se.fc2"]  # the SE gate multiplies the pw output
    assert sum(c.get("chosen", False) for c in res.search) == 1
    path = save_checkpoint(res.model, tmp_path / "p.pt", {"input_shape": [3, 16, 16]})
    reloaded, _ = load_checkpoint(path)
    with torch.no_grad():
        assert torch.allclose(reloaded.eval()(torch.from_numpy(X)), res.model(torch.from_numpy(X)), atol=1e-5)


def test_unaligned_original_width_is_named():
    torch.manual_seed(0)
    res = prune(ConcatSENet(width=12), {"ratio": 0.5, "round_to": 16, "finetune": NO_FT}, example_input=X)
    assert "stem.0" in res.unaligned_layers  # 12 channels: one segment, not prunable to a multiple of 16
    assert all(r["aligned"] for r in res.layers)  # ...but left as it was, so nothing pruned is misaligned


def test_round_to_defaults_to_the_backend_alignment():
    from edgekit.core.platform import environment

    rt, why = default_round_to("ort-cpu")
    assert rt == (16 if "avx512f" in environment()["isa_flags"] else 8) and "ort-cpu" in why
    res = prune(create_model("concat_se_cnn", width=32), {"ratio": 0.5, "finetune": NO_FT}, example_input=X)
    assert res.config.round_to == rt and res.sidecar["round_to"] == rt


@pytest.mark.slow
def test_compare_scratch_reports_both(digits16):
    torch.manual_seed(0)
    model = create_model("concat_se_cnn", width=16, num_classes=10)
    sp = digits16
    res = prune(model, {"ratio": 0.5, "round_to": 8, "compare_scratch": True, "finetune": {"epochs": 1, "lr": 3e-3,
                                                                                            "optimizer": "adam"}},
                train=sp.train.take(256), val=sp.val.take(128), teacher=model)
    assert res.val_accuracy is not None and res.metrics["scratch_val_accuracy"] == res.scratch["val_accuracy"]
    assert res.scratch["epochs"] == 1 and 0.0 <= res.scratch["val_accuracy"] <= 100.0
    with pytest.raises(Exception, match="compare_scratch"):
        prune(model, {"ratio": 0.5, "compare_scratch": True, "finetune": NO_FT}, example_input=X)
