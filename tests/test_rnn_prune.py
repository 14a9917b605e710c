"""LSTM/GRU hidden-unit pruning: exact equivalence, checkpoints, ONNX export, KD recovery, refusals."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from edgekit.errors import ConfigError
from edgekit.models import create_model, load_checkpoint, save_checkpoint
from edgekit.techniques.prune._rnn import plan_units
from edgekit.techniques.prune.prune import prune

NO_FT = {"epochs": 0}


def _masked_reference(model: nn.Module, count: int) -> nn.Module:
    """The unpruned model with the outgoing weights of the units pruning drops set to zero."""
    ref = __import__("copy").deepcopy(model)
    rnn, fc = ref.rnn, ref.fc
    hidden, dirs = rnn.hidden_size, 2 if rnn.bidirectional else 1
    keep = plan_units(rnn, count)
    with torch.no_grad():
        for layer in range(rnn.num_layers):
            for d in range(dirs):
                drop = torch.tensor(sorted(set(range(hidden)) - set(keep[layer][d].tolist())))
                getattr(rnn, f"weight_hh_l{layer}{'_reverse' if d else ''}")[:, drop] = 0
                if layer + 1 < rnn.num_layers:
                    for d2 in range(dirs):
                        getattr(rnn, f"weight_ih_l{layer + 1}{'_reverse' if d2 else ''}")[:, drop + d * hidden] = 0
                else:
                    fc.weight[:, drop + d * hidden] = 0
    return ref


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("layers,bidirectional", [(1, False), (2, False), (2, True)])
def test_pruned_rnn_equals_the_original_without_the_dropped_units(cell, layers, bidirectional):
    torch.manual_seed(0)
    model = create_model("rnn_classifier", hidden_size=32, num_layers=layers, cell=cell,
                         bidirectional=bidirectional).eval()
    x = torch.randn(4, 8, 8)
    res = prune(model, {"ratio": 0.5, "finetune": NO_FT}, example_input=x)
    pruned = res.model
    assert pruned.rnn.hidden_size == 16 and model.rnn.hidden_size == 32  # the caller's model is left alone
    assert pruned.fc.in_features == 16 * (2 if bidirectional else 1)
    with torch.no_grad():
        assert torch.allclose(pruned(x), _masked_reference(model, 16)(x), atol=1e-5)
    assert res.layers[0]["before"] == 32 and res.layers[0]["after"] == 16
    assert res.macs_fraction < 0.4


def test_pruned_rnn_reloads_from_its_checkpoint_and_exports(tmp_path):
    from edgekit.export import export_onnx

    torch.manual_seed(0)
    model = create_model("rnn_classifier", hidden_size=32, num_layers=2, cell="gru").eval()
    x = torch.randn(3, 8, 8)
    pruned = prune(model, {"ratio": 0.5, "finetune": NO_FT}, example_input=x).model
    path = save_checkpoint(pruned, tmp_path / "p.pt", {"input_shape": [8, 8], "num_classes": 10})
    loaded, _ = load_checkpoint(path)
    assert loaded.rnn.hidden_size == 16 and loaded.fc.in_features == 16
    with torch.no_grad():
        assert torch.allclose(loaded(x), pruned(x), atol=1e-6)
    onnx_path = export_onnx(loaded, x.numpy(), tmp_path / "p.onnx").path
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    y = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    assert np.allclose(y, pruned(x).detach().numpy(), atol=1e-5)


def test_macs_target_picks_the_closest_hidden_size_below_it():
    torch.manual_seed(0)
    model = create_model("rnn_classifier", hidden_size=64, cell="lstm").eval()
    res = prune(model, {"macs_target": 0.5, "finetune": NO_FT}, example_input=torch.randn(2, 8, 8))
    assert res.macs_fraction <= 0.5
    assert res.model.rnn.hidden_size % 8 == 0
    assert max(c["macs_fraction"] for c in res.search if c["macs_fraction"] <= 0.5) == round(res.macs_fraction, 4)


def test_kd_recovery_brings_a_pruned_lstm_back(trained_lstm):
    from edgekit.core.train import evaluate

    s = trained_lstm.splits
    teacher = trained_lstm.module
    bare = prune(teacher, {"ratio": 0.5, "finetune": NO_FT}, example_input=s.val.x[:4]).model
    res = prune(teacher, {"ratio": 0.5, "finetune": {"epochs": 4, "lr": 0.01, "optimizer": "adam"}},
                train=s.train, val=s.val, teacher=teacher, seed=0)
    assert res.model.rnn.hidden_size == 16
    assert res.history[-1]["kd"] is True and res.history[-1]["epochs"] == 4
    assert evaluate(res.model, s.test) > evaluate(bare, s.test)
    assert evaluate(res.model, s.test) >= trained_lstm.test_accuracy - 10


class _UsesFinalState(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.GRU(8, 16, batch_first=True)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        _, h = self.rnn(x)
        return self.fc(h[-1])


class _TwoReaders(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(8, 16, batch_first=True)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.fc(out[:, -1]) + out.mean()


def test_unfollowable_rnn_outputs_and_unsupported_targets_are_refused():
    x = torch.randn(2, 8, 8)
    with pytest.raises(ConfigError, match="final state h_n"):
        prune(_UsesFinalState(), {"ratio": 0.5, "finetune": NO_FT}, example_input=x)
    with pytest.raises(ConfigError, match="cannot follow"):
        prune(_TwoReaders(), {"ratio": 0.5, "finetune": NO_FT}, example_input=x)
    model = create_model("rnn_classifier", hidden_size=32)
    with pytest.raises(ConfigError, match="speed targets are not supported"):
        prune(model, {"speedup_target": 1.5, "finetune": NO_FT}, example_input=x)
    with pytest.raises(ConfigError, match="importance 'taylor'"):
        prune(model, {"ratio": 0.5, "importance": "taylor", "finetune": NO_FT}, example_input=x)
    with pytest.raises(ConfigError, match="every LSTM/GRU layer"):
        prune(model, {"ratio": 0.5, "exclude": ["rnn"], "finetune": NO_FT}, example_input=x)


def test_checkpoint_whose_rnn_sizes_disagree_with_its_tensors_is_refused(tmp_path):
    from edgekit.errors import InputFileError

    model = create_model("rnn_classifier", hidden_size=16, cell="lstm")
    path = save_checkpoint(model, tmp_path / "m.pt", {})
    payload = torch.load(path, weights_only=True)
    payload["structure"]["rnn"]["hidden_size"] = 4096
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(InputFileError, match=r"structure\['rnn'\].*weight_ih_l0 of shape \[16384, 8\]"):
        load_checkpoint(tmp_path / "bad.pt")
