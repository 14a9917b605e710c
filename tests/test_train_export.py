"""Training loop, evaluation through runners, ONNX export with parity."""
import numpy as np
import pytest
import torch

from edgekit.backends import open_runner
from edgekit.core.train import TrainConfig, evaluate, fit
from edgekit.errors import ConfigError, ShapeError
from edgekit.export import ExportError, export_onnx
from edgekit.models import create_model


def test_trained_reference_is_accurate_and_onnx_agrees(trained_resnet8):
    t = trained_resnet8
    assert t.test_accuracy >= 95.0
    runner = open_runner(t.onnx, "ort-cpu", threads=2)
    assert abs(evaluate(runner, t.splits.test) - t.test_accuracy) < 0.5
    from edgekit._io import read_sidecar

    parity = read_sidecar(t.onnx)["parity"]
    assert parity["max_abs_diff"] < 1e-3 and parity["top1_agreement"] == 100.0


def test_torch_runner_from_checkpoint_matches_module(trained_resnet8):
    runner = open_runner(trained_resnet8.checkpoint, "torch", threads=2)
    x = trained_resnet8.splits.test.x[:8]
    with torch.no_grad():
        ref = trained_resnet8.module(torch.from_numpy(x)).numpy()
    assert np.allclose(runner(x), ref, atol=1e-5)


def test_fit_is_deterministic_for_a_seed(digits16):
    accs = []
    for _ in range(2):
        torch.manual_seed(0)
        m = create_model("small_cnn", width=4, depth=2, in_channels=3)
        fit(m, digits16.train.take(200), None, {"epochs": 1, "lr": 0.05}, seed=3)
        accs.append(evaluate(m, digits16.test))
    assert accs[0] == accs[1]


def test_train_config_rejects_typos_and_bad_values():
    with pytest.raises(Exception, match="extra"):
        TrainConfig(epochz=3)
    with pytest.raises(Exception, match="greater than 0"):
        TrainConfig(lr=0)


def test_fit_needs_labels(digits16):
    from edgekit.data import Split

    with pytest.raises(ConfigError, match="labelled"):
        fit(create_model("small_cnn"), Split(digits16.train.x, None), None, {"epochs": 1})


def test_export_wrong_sample_shape_is_clear(tmp_path):
    m = create_model("small_cnn", in_channels=3)
    with pytest.raises(ShapeError, match=r"per-sample shape \[1, 8, 8\]"):
        export_onnx(m, np.zeros((2, 1, 8, 8), np.float32), tmp_path / "m.onnx")
    assert not list(tmp_path.iterdir())


class _Flaky(torch.nn.Module):
    """Differs between PyTorch and ONNX: a python-side random perturbation the exporter freezes."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.lin(x) + (torch.rand(()) if not torch.jit.is_tracing() and not torch.onnx.is_in_onnx_export() else 5.0)


def test_export_parity_failure_writes_nothing(tmp_path):
    with pytest.raises(ExportError, match="disagrees with PyTorch.*nothing was written"):
        export_onnx(_Flaky(), np.ones((4, 4), np.float32), tmp_path / "m.onnx")
    assert not list(tmp_path.iterdir())


def test_exported_onnx_has_dynamic_batch(trained_resnet8):
    runner = open_runner(trained_resnet8.onnx, "ort-cpu", threads=1)
    assert runner.input_shape[0] is None
    for n in (1, 5):
        assert runner(trained_resnet8.splits.test.x[:n]).shape == (n, 10)


def test_runner_rejects_wrong_input_shape(trained_resnet8):
    runner = open_runner(trained_resnet8.onnx, "ort-cpu", threads=1)
    with pytest.raises(ShapeError, match="expects shape Nx3x16x16"):
        runner(np.zeros((1, 3, 8, 8), np.float32))


class _FixedBatchRunner:
    """Stands in for a static-shape engine: accepts only batches of exactly 4."""

    input_shape = (4, 3)

    def __init__(self):
        self.seen = []

    def __call__(self, x):
        self.seen.append(len(x))
        assert len(x) == 4
        return np.eye(3, dtype=np.float32)[x[:, 0].astype(int)]


def test_evaluate_pads_batches_for_fixed_batch_runners():
    from edgekit.data import Split

    x = np.zeros((10, 3), np.float32)
    x[:, 0] = np.arange(10) % 3
    runner = _FixedBatchRunner()
    assert evaluate(runner, Split(x, (np.arange(10) % 3).astype(np.int64))) == 100.0
    assert runner.seen == [4, 4, 4]
