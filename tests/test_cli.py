"""The `edgekit` command: bad input gets one clear line, exit code 2, no traceback, nothing destroyed."""
import json
import os
from pathlib import Path

import numpy as np
import pytest
from _helpers.runs import run_cli

TINY = (Path(__file__).parent / "data" / "tiny_recipe.yaml").read_text()  # a tiny valid recipe
ZOO_MODEL = "  name: resnet_cifar\n  kwargs: {depth: 8, width: 0.5}"



def assert_clean_error(proc, *fragments):
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert lines[0].startswith("edgekit: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for f in fragments:
        assert f in proc.stderr, (f, proc.stderr)


def test_models_lists_registry():
    p = run_cli("models", "--json")
    assert p.returncode == 0
    assert {"resnet18", "mobilenetv2", "vit", "rnn_classifier"} <= {r["name"] for r in json.loads(p.stdout)}


def test_validate_ok_and_problems(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text(TINY)
    p = run_cli("recipe", "validate", str(good))
    assert p.returncode == 0 and "valid" in p.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(TINY.replace("epochs: 2", "epochs: -2").replace("name: resnet_cifar", "name: resnet9"))
    p = run_cli("recipe", "validate", str(bad))
    assert_clean_error(p, "stages[0].epochs (line 13)")


@pytest.mark.parametrize("case", ["unknown_model", "malformed_yaml", "missing_recipe", "missing_checkpoint",
                                  "wrong_arch_checkpoint", "shape_mismatch", "pickle_checkpoint", "unknown_backend",
                                  "bad_batch_flag", "unwritable_runs_dir", "unknown_key", "wrong_type",
                                  "out_of_range", "corrupt_onnx", "missing_data_file", "calibration_wrong_shape",
                                  "unknown_stage"])
def test_bad_input_battery(case, tmp_path, trained_resnet8):
    recipe = tmp_path / "r.yaml"
    text = TINY
    extra = []
    if case == "unknown_model":
        text = TINY.replace("name: resnet_cifar", "name: resnet9")
        frag = "unknown model 'resnet9'"
    elif case == "malformed_yaml":
        text = TINY.replace("kwargs: {depth: 8, width: 0.5}", "kwargs: {depth: 8, width: 0.5")
        frag = "malformed YAML at line"
    elif case == "missing_recipe":
        recipe = tmp_path / "nope.yaml"
        frag = "recipe not found"
    elif case == "missing_checkpoint":
        text = TINY.replace(ZOO_MODEL, "  checkpoint: nowhere.pt")
        frag = "model.checkpoint not found"
    elif case == "wrong_arch_checkpoint":
        import torch

        payload = torch.load(trained_resnet8.checkpoint, weights_only=True)
        payload["arch"]["kwargs"]["depth"] = 14
        payload["structure"] = {}
        torch.save(payload, tmp_path / "other.pt")
        text = TINY.replace(ZOO_MODEL, f"  checkpoint: {tmp_path / 'other.pt'}")
        frag = "do not fit architecture"
    elif case == "shape_mismatch":  # a 3-channel 16x16 checkpoint with 1-channel 8x8 data
        text = TINY.replace(ZOO_MODEL, f"  checkpoint: {trained_resnet8.checkpoint}")
        frag = "do not fit the model"
    elif case == "pickle_checkpoint":
        import torch

        torch.save({"format": "edgekit-checkpoint/1", "x": Path("/etc")}, tmp_path / "evil.pt")
        text = TINY.replace(ZOO_MODEL, f"  checkpoint: {tmp_path / 'evil.pt'}")
        frag = "refused to load"
    elif case == "unknown_backend":
        text = TINY.replace("backend: tensorrt", "backend: ort-gpu")
        frag = "unknown backend 'ort-gpu'"
    elif case == "bad_batch_flag":
        p = run_cli("bench", str(trained_resnet8.onnx), "--batch", "0,x")
        assert_clean_error(p, "batch")
        return
    elif case == "corrupt_onnx":
        (tmp_path / "junk.onnx").write_bytes(b"\x00not onnx")
        p = run_cli("bench", str(tmp_path / "junk.onnx"))
        assert_clean_error(p, "junk.onnx")
        return
    elif case == "unknown_key":
        text = TINY.replace("    lr: 0.1", "    lrr: 0.1")
        frag = "did you mean 'lr'"
    elif case == "wrong_type":
        text = TINY.replace("seed: 0", "seed: zero")
        frag = "seed (line 2): Input should be a valid integer"
    elif case == "out_of_range":
        text = TINY.replace("  rounds: 2", "  rounds: 0")
        frag = "benchmark.rounds"
    elif case == "unknown_stage":
        text = TINY.replace("  - type: train", "  - type: prnue")
        frag = "did you mean 'prune'"
    elif case == "missing_data_file":
        text = TINY.replace("  name: digits\n  image_size: 8\n  channels: 1",
                            f"  name: npz\n  path: {tmp_path / 'no.npz'}")
        frag = "not found"
    elif case == "calibration_wrong_shape":
        np.savez(tmp_path / "c.npz", x=np.zeros((16, 3, 8, 8), np.float32))
        text = TINY.replace("    lr: 0.1\n",
                            f"    lr: 0.1\n  - type: quantize\n    calibration: {tmp_path / 'c.npz'}\n")
        frag = "stages[1].calibration"
    elif case == "unwritable_runs_dir":
        ro = tmp_path / "ro"
        ro.mkdir()
        os.chmod(ro, 0o500)
        extra = ["--runs-dir", str(ro / "runs")]
        frag = "cannot create run directory"
        if os.geteuid() == 0:
            (tmp_path / "file").write_text("x")
            extra = ["--runs-dir", str(tmp_path / "file" / "runs")]
    if case != "missing_recipe":
        recipe.write_text(text)
    p = run_cli("run", str(recipe), "--runs-dir", str(tmp_path / "runs"), *extra) if not extra else \
        run_cli("run", str(recipe), *extra)
    assert_clean_error(p, frag)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.pt"))


def test_bad_input_never_destroys_an_existing_run(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(TINY)
    run = tmp_path / "runs" / "r" / "keep"
    run.mkdir(parents=True)
    (run / "manifest.json").write_text('{"schema": "edgekit-manifest/1"}')
    (run / "report.md").write_text("precious")
    p = run_cli("run", str(recipe), "--runs-dir", str(tmp_path / "runs"), "--name", "keep")
    assert_clean_error(p, "already exists")
    recipe.write_text(TINY.replace("epochs: 2", "epochs: -1"))
    p = run_cli("run", str(recipe), "--runs-dir", str(tmp_path / "runs"), "--name", "keep", "--resume")
    assert_clean_error(p, "stages[0].epochs")
    assert (run / "report.md").read_text() == "precious"
    assert sorted(x.name for x in run.iterdir()) == ["manifest.json", "report.md"]


def test_debug_shows_traceback(tmp_path):
    p = run_cli("--debug", "recipe", "validate", str(tmp_path / "none.yaml"))
    assert p.returncode != 0 and "Traceback" in p.stderr


def test_make_calib_writes_npz(tmp_path):
    out = tmp_path / "c.npz"
    p = run_cli("data", "make-calib", "--dataset", "digits", "--image-size", "8", "--samples", "16", "--out", str(out))
    assert p.returncode == 0
    with np.load(out) as f:
        assert f["x"].shape == (16, 1, 8, 8) and f["x"].dtype == np.float32


@pytest.mark.slow
def test_prune_sensitivity_export_and_quantize_commands(tmp_path, trained_resnet8):
    out = tmp_path / "sens"
    p = run_cli("prune", str(trained_resnet8.checkpoint), "--sensitivity", "--data", "digits", "--ratios", "0.5",
                "--out", str(out))
    assert p.returncode == 0, p.stderr
    assert (out / "sensitivity.json").is_file() and "| group |" in p.stdout
    pruned = tmp_path / "pruned.pt"
    p = run_cli("prune", str(trained_resnet8.checkpoint), "--ratio", "0.3", "--data", "digits",
                "--finetune-epochs", "1", "--out", str(pruned))
    assert p.returncode == 0, p.stderr
    assert "MACs" in p.stdout and pruned.is_file()
    onnx_path = tmp_path / "pruned.onnx"
    p = run_cli("export", str(pruned), "--data", "digits", "--out", str(onnx_path))
    assert p.returncode == 0, p.stderr
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=trained_resnet8.splits.train.x[:64])
    p = run_cli("quantize", str(onnx_path), "--calib", str(calib), "--out", str(tmp_path / "q.onnx"))
    assert p.returncode == 0, p.stderr
    assert "int8 MAC coverage" in p.stdout


def test_prune_command_needs_one_target(tmp_path, trained_resnet8):
    p = run_cli("prune", str(trained_resnet8.checkpoint), "--out", str(tmp_path / "x.pt"))
    assert_clean_error(p, "exactly one of --ratio")
    assert not (tmp_path / "x.pt").exists()


def test_run_gate_exits_3_when_no_variant_reaches_the_recipes_speed_gate(tmp_path):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(TINY.replace("report:\n  plots: false", "report:\n  plots: false\n  gate_speedup: {1: 1.0e9}")
                      .replace("  - backend: tensorrt\n", ""))
    p = run_cli("run", str(recipe), "--runs-dir", str(tmp_path / "runs"), "--name", "g", "--gate")
    assert p.returncode == 3, p.stderr
    assert "gate: no variant qualifies on any target" in p.stderr
    report = json.loads((tmp_path / "runs" / "tiny" / "g" / "report.json").read_text())
    assert report["gate"]["qualified"] == {"ort-cpu": None}  # torch runs the baseline itself
    assert any("below the gate's" in why[0] for why in report["gate"]["below_speed_gate"].values())
    p = run_cli("run", str(recipe), "--no-report", "--gate")
    assert_clean_error(p, "--gate decides from the benchmark report")
