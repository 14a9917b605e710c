"""Training loop, learning-rate schedules, evaluation through runners, ONNX export with parity."""
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from _helpers.models import ExportFlaky

from edgekit.backends import open_runner
from edgekit.core.train import OPTIMIZERS, SCHEDULES, TrainConfig, evaluate, fit, make_optimizer, make_scheduler
from edgekit.errors import ConfigError, ExportError, ShapeError
from edgekit.export import export_onnx
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


def test_fit_reports_a_misspelt_train_key_as_config_error_with_suggestion(digits16):
    model = create_model("small_cnn", width=4, depth=2, in_channels=3)
    with pytest.raises(ConfigError, match=r"train\.epochz: unknown field \(did you mean 'epochs'\?\)"):
        fit(model, digits16.train, None, {"epochz": 1})
    with pytest.raises(ConfigError, match=r"train\.optimizer: unknown optimizer 'adamm' \(did you mean 'adam'\?\)"):
        fit(model, digits16.train, None, {"optimizer": "adamm"})
    with pytest.raises(ConfigError, match=r"train\.schedule: unknown schedule 'cosin'.*valid: constant, cosine"):
        fit(model, digits16.train, None, {"schedule": "cosin"})


def _reference_lr_factor(step, total, warmup, schedule):
    """The hand-written schedule fit() used before it moved to torch.optim.lr_scheduler (kept as the spec)."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * t))
    if schedule == "step":
        return 0.1 ** int(t * 3 - 1e-9)
    if schedule == "onecycle":
        return min(1.0, 2 * t + 0.1) if t < 0.5 else 0.5 * (1 + math.cos(math.pi * (2 * t - 1)))
    return 1.0


@pytest.mark.parametrize("schedule", ["cosine", "step", "constant", "onecycle"])
@pytest.mark.parametrize("steps_per_epoch,epochs,warmup_epochs", [
    (1, 1, 0), (7, 3, 0), (10, 10, 0), (1, 5, 1), (3, 4, 0.5), (10, 3, 1), (33, 9, 2.5), (4, 2, 3)])
def test_schedule_gives_the_same_lr_per_step_as_before(schedule, steps_per_epoch, epochs, warmup_epochs):
    cfg = {"schedule": schedule, "epochs": epochs, "warmup_epochs": warmup_epochs, "lr": 0.05}
    opt = make_optimizer([torch.nn.Parameter(torch.zeros(1))], cfg)
    sched = make_scheduler(opt, cfg, steps_per_epoch)
    total, warmup = steps_per_epoch * epochs, int(warmup_epochs * steps_per_epoch)
    got = []
    for _ in range(total):
        got.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    want = [0.05 * _reference_lr_factor(i, total, warmup, schedule) for i in range(total)]
    assert got == pytest.approx(want, rel=1e-12, abs=1e-15)


def test_fit_steps_the_scheduler_once_per_batch(digits16):
    made, seen = [], []

    def sgd_spy(params, cfg):
        made.append(OPTIMIZERS.get("sgd")(params, cfg))
        return made[0]

    def loss_fn(model, x, y):
        seen.append(made[0].param_groups[0]["lr"])
        logits = model(x)
        return torch.nn.functional.cross_entropy(logits, y), logits

    with OPTIMIZERS.temporary("sgd_spy", sgd_spy):
        fit(create_model("small_cnn", width=4, depth=2, in_channels=3), digits16.train.take(100), None,
            {"epochs": 2, "batch_size": 25, "lr": 0.1, "optimizer": "sgd_spy"}, loss_fn=loss_fn)
    assert seen == pytest.approx([0.1 * _reference_lr_factor(i, 8, 0, "cosine") for i in range(8)], rel=1e-12)


def test_a_registered_schedule_is_usable_by_name(digits16):
    with SCHEDULES.temporary("halved", lambda opt, steps: torch.optim.lr_scheduler.ConstantLR(opt, 0.5, steps)):
        assert TrainConfig(schedule="halved").schedule == "halved"
        assert "halved" in TrainConfig.model_json_schema()["properties"]["schedule"]["enum"]
        fit(create_model("small_cnn", width=4, depth=2, in_channels=3), digits16.train.take(50), None,
            {"epochs": 1, "schedule": "halved"})
    assert "halved" not in TrainConfig.model_json_schema()["properties"]["schedule"]["enum"]


def test_fit_and_evaluate_take_any_object_with_x_and_y():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((60, 4)).astype(np.float32)
    arrays = SimpleNamespace(x=x, y=(x[:, 0] > 0).astype(np.int64))
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    result = fit(model, arrays, arrays, {"epochs": 20, "lr": 0.5, "batch_size": 16}, seed=0)
    assert result.best_val_accuracy >= 90.0 and evaluate(model, arrays) == result.best_val_accuracy


def test_fit_needs_labels(digits16):
    from edgekit.data import Split

    with pytest.raises(ConfigError, match="labelled"):
        fit(create_model("small_cnn"), Split(digits16.train.x, None), None, {"epochs": 1})


def test_export_wrong_sample_shape_is_clear(tmp_path):
    m = create_model("small_cnn", in_channels=3)
    with pytest.raises(ShapeError, match=r"per-sample shape \[1, 8, 8\]"):
        export_onnx(m, np.zeros((2, 1, 8, 8), np.float32), tmp_path / "m.onnx")
    assert not list(tmp_path.iterdir())


def test_export_parity_failure_writes_nothing(tmp_path):
    with pytest.raises(ExportError, match="disagrees with PyTorch.*nothing was written"):
        export_onnx(ExportFlaky(), np.ones((4, 4), np.float32), tmp_path / "m.onnx")
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


def _digits_mlp_data():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    train = SimpleNamespace(x=x[:1200], y=y[:1200].astype(np.int64))
    test = SimpleNamespace(x=x[1200:], y=y[1200:].astype(np.int64))
    return train, test


def test_find_lr_rescues_a_hopeless_learning_rate_and_restores_the_weights():
    """With lr 1e-5 an MLP learns nothing in 3 epochs; the range test picks a rate that trains it, leaves the
    weights it probed with untouched, and the rate used is reported."""
    from edgekit.core.train import find_lr

    train, test = _digits_mlp_data()

    def mlp():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))

    cfg = {"epochs": 3, "lr": 1e-5, "batch_size": 32, "optimizer": "adamw"}
    model = mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    probe = find_lr(model, train, cfg)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert 1e-6 < probe.suggestion < 1.0 and len(probe.lrs) == len(probe.losses) >= 20
    assert probe.lrs == sorted(probe.lrs)

    fixed = mlp()
    fit(fixed, train, None, cfg, seed=0)
    found = mlp()
    result = fit(found, train, None, {**cfg, "find_lr": True}, seed=0)
    assert result.lr == pytest.approx(probe.suggestion)
    assert evaluate(fixed, test) < 50 < 90 < evaluate(found, test)
