"""Issue 18: bad inputs and faults, tried as a careful user and an attacker would.

Each battery case runs the real `edgekit` command in-process and asserts: exit code 2, exactly one stderr line
``edgekit: error: ...`` naming what was wrong, no traceback, and no file created or changed anywhere in the
case's folder or in the shared runs directory (which holds a finished run throughout).
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from edgekit.cli.main import main

TINY = (Path(__file__).parent / "data" / "tiny_recipe.yaml").read_text().replace("  - backend: tensorrt\n", "")
ZOO = "  name: resnet_cifar\n  kwargs: {depth: 8, width: 0.5}"
BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, c in zip("abcdefgh", "bcdefghi"))


def snapshot(*roots: Path) -> dict:
    """sha256 of every file (and the set of folders) under ``roots``."""
    out = {}
    for root in roots:
        for p in sorted(root.rglob("*")):
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


def cli(argv, capsys):
    """Run `edgekit --quiet ARGV` in-process: (exit code, stdout, stderr)."""
    try:
        code = main(["--quiet", *[str(a) for a in argv]])
    except SystemExit as e:  # argparse
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *fragments):
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, (code, err)
    assert len(lines) == 1 and lines[0].startswith("edgekit: error: "), err
    assert "Traceback" not in err
    for f in fragments:
        assert f in lines[0], (f, lines[0])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny checkpoint, its ONNX, and a runs directory holding one finished run (never to be touched)."""
    from edgekit.export import export_onnx
    from edgekit.models import create_model, save_checkpoint
    from edgekit.pipeline import run_recipe

    w = tmp_path_factory.mktemp("world")
    torch.manual_seed(0)
    model = create_model("resnet_cifar", depth=8, width=0.5, num_classes=10, in_channels=1)
    save_checkpoint(model, w / "model.pt", {"input_shape": [1, 8, 8], "num_classes": 10})
    export_onnx(model, np.random.default_rng(0).standard_normal((4, 1, 8, 8)).astype(np.float32), w / "model.onnx")
    (w / "tiny.yaml").write_text(TINY.replace("epochs: 2", "epochs: 0"))
    run_recipe(str(w / "tiny.yaml"), runs_dir=w / "runs", name="keep", report=False)
    before = snapshot(w / "runs")
    yield w
    assert snapshot(w / "runs") == before  # the whole battery left the earlier run byte-identical


def _recipe(t, text, name="r.yaml"):
    (t / name).write_text(text) if isinstance(text, str) else (t / name).write_bytes(text)
    return t / name


def _ckpt(t, w, edit):
    payload = torch.load(w / "model.pt", weights_only=True)
    edit(payload)
    torch.save(payload, t / "bad.pt")
    return ["export", t / "bad.pt", "--out", t / "bad.onnx"]


def _npz(t, name, **arrays):
    np.savez(t / name, **arrays)
    return t / name


def _npy(path):
    with open(path, "wb") as f:  # np.save would append .npy to any other name
        np.save(f, np.zeros((8, 1, 8, 8), np.float32))


def _validate(t, text):
    return ["recipe", "validate", _recipe(t, text)]


def _with_quantize(calib):
    return TINY.replace("    lr: 0.1\n", f"    lr: 0.1\n  - type: quantize\n    calibration: {calib}\n")


# id -> setup(t: case folder, w: world) -> (argv, fragments that the one line must contain)
CASES = {
    # recipe text: the YAML front door
    "latin1_recipe": lambda t, w: (_validate(t, TINY.replace("tiny test recipe", "café").encode("latin-1")),
                                   ["not UTF-8", "byte offset", "Latin-1"]),
    "utf16_recipe": lambda t, w: (_validate(t, TINY.encode("utf-16")), ["UTF-16", "save it as UTF-8"]),
    "binary_recipe": lambda t, w: (_validate(t, b"\x00\x01\x02PK\x03\x04" * 50), ["binary file"]),
    "duplicate_key": lambda t, w: (_validate(t, TINY.replace("    lr: 0.1", "    epochs: 0\n    lr: 0.1")),
                                   ["duplicate key 'epochs'", "line 14", "first at line 13"]),
    "alias_bomb": lambda t, w: (_validate(t, BOMB), ["expands to more than", "aliases"]),
    "infinite_lr": lambda t, w: (_validate(t, TINY.replace("lr: 0.1", "lr: .inf")), ["stages.0.lr", "not a finite"]),
    "oversized_recipe": lambda t, w: (_validate(t, TINY + "#" * (1 << 20)), ["larger than the 1,048,576-byte"]),
    "not_a_mapping": lambda t, w: (_validate(t, "- a\n- b\n"), ["must be a mapping"]),
    "deep_nesting": lambda t, w: (_validate(t, "x: " + "[" * 5000 + "]" * 5000), ["nested too deeply"]),
    "name_traversal": lambda t, w: (_validate(t, "name: ../x\n" + TINY), ["name (line 1)", "not a valid run name"]),
    "name_absolute": lambda t, w: (_validate(t, "name: /tmp/evil\n" + TINY), ["not a valid run name"]),
    "bad_file_stem": lambda t, w: (["recipe", "validate", _recipe(t, TINY, "my recipe.yaml")], ["add a 'name:'"]),
    "negative_seed": lambda t, w: (_validate(t, TINY.replace("seed: 0", "seed: -1")), ["seed (line 2)", "0"]),
    "huge_weight_decay": lambda t, w: (_validate(t, TINY.replace("lr: 0.1", "lr: 0.1\n    weight_decay: 1e300")),
                                       ["stages[0].weight_decay (line 15)", "allowed 0.0 ≤ weight_decay ≤ 1.0"]),
    "huge_lr": lambda t, w: (_validate(t, TINY.replace("lr: 0.1", "lr: 1.0e9")), ["stages[0].lr", "≤ 10.0"]),
    "absurd_threads": lambda t, w: (_validate(t, TINY.replace("threads: 2", "threads: 100000")), ["threads"]),
    "empty_import": lambda t, w: (_validate(t, TINY.replace(ZOO, ZOO + "\n  imports: ['']")),
                                  ["model.imports[0]", "not a module name"]),
    "relative_import": lambda t, w: (_validate(t, TINY.replace(ZOO, ZOO + "\n  imports: ['..x']")),
                                     ["model.imports[0]", "'..x'"]),
    "unknown_key": lambda t, w: (_validate(t, TINY.replace("    lr: 0.1", "    lrr: 0.1")), ["did you mean 'lr'"]),
    # preflight: the same checks `run` makes, before any run directory
    "unknown_backend": lambda t, w: (_validate(t, TINY.replace("backend: ort-cpu", "backend: ort-gpu")),
                                     ["unknown backend 'ort-gpu'"]),
    "unknown_bench_variant": lambda t, w: (_validate(t, TINY.replace("  rounds: 2", "  rounds: 2\n  variants: "
                                                                     "[reference, nope]")),
                                           ["benchmark.variants", "'nope'", "produces: reference"]),
    "duplicate_stage_names": lambda t, w: (_validate(t, TINY.replace(
        "    lr: 0.1\n", "    lr: 0.1\n  - type: train\n    name: reference\n")),
        ["stages[1].name", "'reference' is already produced"]),
    "unknown_stage_input": lambda t, w: (_validate(t, TINY.replace("    lr: 0.1\n", "    lr: 0.1\n  - type: train\n"
                                                                   "    input: teacher\n")),
                                         ["stages[1].input", "'teacher'"]),
    "missing_checkpoint": lambda t, w: (_validate(t, TINY.replace(ZOO, f"  checkpoint: {t / 'no.pt'}")),
                                        ["model.checkpoint not found"]),
    "npy_as_data": lambda t, w: (_npy(t / "d.npz") or _validate(
        t, TINY.replace("  name: digits\n  image_size: 8\n  channels: 1", f"  name: npz\n  path: {t / 'd.npz'}")),
        ["data.path", "single NumPy array (.npy)"]),
    "integer_calibration_in_recipe": lambda t, w: (_validate(t, _with_quantize(
        _npz(t, "c.npz", x=np.full((8, 1, 8, 8), 200, np.uint8)))), ["stages[1].calibration", "dtype uint8"]),
    "huge_calibration_values": lambda t, w: (_validate(t, _with_quantize(
        _npz(t, "c.npz", x=np.full((8, 1, 8, 8), 3e38, np.float32)))), ["calibration values reach 3e+38"]),
    # run directories
    "resume_missing_run": lambda t, w: (["run", w / "tiny.yaml", "--runs-dir", w / "runs", "--name", "nope",
                                         "--resume"], ["nothing to resume"]),
    "cli_name_traversal": lambda t, w: (["run", w / "tiny.yaml", "--runs-dir", w / "runs", "--name", "../../x"],
                                        ["--name", "not a valid run name"]),
    "cli_name_too_long": lambda t, w: (["run", w / "tiny.yaml", "--runs-dir", w / "runs", "--name", "n" * 300],
                                       ["--name", "1–100 characters"]),
    "existing_run_name": lambda t, w: (["run", w / "tiny.yaml", "--runs-dir", w / "runs", "--name", "keep"],
                                       ["already exists"]),
    "rerun_changed_alone": lambda t, w: (["run", w / "tiny.yaml", "--runs-dir", w / "runs", "--rerun-changed"],
                                         ["--rerun-changed goes with --resume"]),
    "runs_dir_under_a_file": lambda t, w: (_recipe(t, "x", "f") and ["run", w / "tiny.yaml", "--runs-dir",
                                                                        t / "f" / "runs"], ["cannot create run"]),
    # checkpoints: payload schema checked before any tensor is built
    "ckpt_no_arch": lambda t, w: (_ckpt(t, w, lambda p: p.pop("arch")), ["'arch' must be a mapping"]),
    "ckpt_kwargs_list": lambda t, w: (_ckpt(t, w, lambda p: p["arch"].update(kwargs=[8, 0.5])), ["arch.kwargs"]),
    "ckpt_structure_480gb": lambda t, w: (_ckpt(t, w, lambda p: p["structure"].update(
        fc={"type": "Linear", "in_features": 400_000, "out_features": 300_000, "bias": True})),
        ["structure['fc']", "settings imply fc.weight of shape [300000, 400000]"]),
    "ckpt_int_in_state_dict": lambda t, w: (_ckpt(t, w, lambda p: p["state_dict"].update(bad=3)),
                                            ["state_dict['bad'] must be a tensor, got int"]),
    "ckpt_huge_kwargs": lambda t, w: (_ckpt(t, w, lambda p: p["arch"]["kwargs"].update(width=4000.0)),
                                      ["do not fit architecture"]),
    "ckpt_meta_list": lambda t, w: (_ckpt(t, w, lambda p: p.update(meta=[1])), ["'meta' must be a mapping"]),
    "ckpt_unknown_layer": lambda t, w: (_ckpt(t, w, lambda p: p["structure"].update(fc={"type": "Evil"})),
                                        ["layer type 'Evil'"]),
    "ckpt_plain_state_dict": lambda t, w: (torch.save({"w": torch.zeros(2)}, t / "sd.pt") or
                                           ["export", t / "sd.pt", "--out", t / "o.onnx"], ["not an edgekit"]),
    "ckpt_truncated": lambda t, w: ((t / "cut.pt").write_bytes((w / "model.pt").read_bytes()[:300]) and
                                    ["export", t / "cut.pt", "--out", t / "o.onnx"], ["not a readable"]),
    # outputs never destroy anything
    "export_over_its_input": lambda t, w: ((t / "a.pt").write_bytes((w / "model.pt").read_bytes()) and
                                           ["export", t / "a.pt", "--out", t / "a.pt"], ["input of this command"]),
    "export_wrong_suffix": lambda t, w: (["export", w / "model.pt", "--out", t / "notes.txt"], ["must end in .onnx"]),
    "export_over_a_folder": lambda t, w: ((t / "x.onnx").mkdir() or ["export", w / "model.pt", "--out",
                                                                     t / "x.onnx"], ["is a directory"]),
    "calib_over_notes": lambda t, w: (["data", "make-calib", "--out", _recipe(t, "my notes", "notes.txt")],
                                      ["must end in .npz"]),
    "calib_over_other_kind": lambda t, w: (["data", "make-calib", "--out", _recipe(t, "my notes", "n.npz")],
                                           ["exists and is not a npz file", "--force"]),
    "quantize_over_its_input": lambda t, w: ((t / "m.onnx").write_bytes((w / "model.onnx").read_bytes()) and
                                             ["quantize", t / "m.onnx", "--mode", "dynamic", "--out", t / "m.onnx"],
                                             ["input of this command"]),
    "prune_over_its_input": lambda t, w: ((t / "a.pt").write_bytes((w / "model.pt").read_bytes()) and
                                          ["prune", t / "a.pt", "--ratio", "0.5", "--out", t / "a.pt"],
                                          ["input of this command"]),
    "bench_out_is_a_file": lambda t, w: (["bench", w / "model.onnx", "--out", _recipe(t, "x", "res.txt")],
                                         ["is an existing file"]),
    "calib_name_too_long": lambda t, w: (["data", "make-calib", "--out", t / ("x" * 300 + ".npz")],
                                         ["file name too long"]),
    # calibration data
    "integer_calibration_cli": lambda t, w: (["quantize", w / "model.onnx", "--calib", _npz(
        t, "i.npz", x=np.full((8, 1, 8, 8), 7, np.int64)), "--out", t / "q.onnx"], ["floating point", "int64"]),
    "npy_calibration_cli": lambda t, w: (_npy(t / "c.npy") or [
        "quantize", w / "model.onnx", "--calib", t / "c.npy", "--out", t / "q.onnx"], ["c.npy must be an .npz"]),
    "quantize_empty_onnx": lambda t, w: ((t / "e.onnx").write_bytes(b"") or ["quantize", t / "e.onnx", "--mode",
                                                                             "dynamic", "--out", t / "q.onnx"],
                                         ["e.onnx: the file is empty (0 bytes)"]),
    "bench_unknown_dataset": lambda t, w: (["bench", w / "model.onnx", "--data", "mnist"],
                                           ["unknown dataset 'mnist'", "valid: digits"]),
    # numbers on the command line
    "samples_1e9": lambda t, w: (["data", "make-calib", "--samples", "1e9", "--out", t / "c.npz"], ["--samples"]),
    "threads_1e20": lambda t, w: (["quantize", w / "model.onnx", "--threads", "1e20", "--out", t / "q.onnx"],
                                  ["--threads must be an integer in 1..1024"]),
    "prune_lr_inf": lambda t, w: (["prune", w / "model.pt", "--ratio", "0.5", "--lr", "inf", "--out", t / "p.pt"],
                                  ["--lr"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_and_changes_nothing(case, world, tmp_path, capsys, monkeypatch):
    t = tmp_path / "case"
    t.mkdir()
    monkeypatch.chdir(t)
    argv, fragments = CASES[case](t, world)
    before = snapshot(t, world)
    started = time.perf_counter()
    code, _, err = cli(argv, capsys)
    assert_one_line_error(code, err, *fragments)
    assert snapshot(t, world) == before
    assert time.perf_counter() - started < 30


def test_full_disk_is_one_line(tmp_path, capsys, monkeypatch):
    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "c.npz"))

    monkeypatch.setattr(np, "savez", full)
    code, _, err = cli(["data", "make-calib", "--image-size", "8", "--samples", "4", "--out", tmp_path / "c.npz"],
                       capsys)
    assert_one_line_error(code, err, "c.npz: no space left on the device (ENOSPC)")
    assert list(tmp_path.iterdir()) == []  # the temp file was removed


def test_unexpected_exception_is_one_line_and_debug_shows_traceback(tmp_path, capsys, monkeypatch):
    import edgekit.data.calibration as calibration

    monkeypatch.setattr(calibration, "load_data", lambda *a, **k: {}["boom"])
    argv = ["data", "make-calib", "--out", tmp_path / "c.npz"]
    code, _, err = cli(argv, capsys)
    assert_one_line_error(code, err, "internal error: KeyError: 'boom'")
    code, _, err = cli(["--debug", *argv], capsys)
    assert code == 2 and "Traceback" in err


def test_alias_bomb_is_refused_fast_with_bounded_memory(tmp_path):
    import resource

    from edgekit.errors import ConfigError
    from edgekit.pipeline.recipe import load_recipe

    path = _recipe(tmp_path, BOMB + TINY)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    with pytest.raises(ConfigError, match="expands to more than"):
        load_recipe(path)
    assert time.perf_counter() - started < 1.0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 50_000  # KiB: under 50 MB more than before


def test_resume_of_a_different_recipe_refuses_and_changes_no_byte(world, tmp_path, capsys):
    other = tmp_path / "elsewhere"
    other.mkdir()
    edited = other / "tiny.yaml"  # same stem, so the same runs/tiny/ folder; one setting differs
    edited.write_text((world / "tiny.yaml").read_text().replace("lr: 0.1", "lr: 0.2"))
    before = snapshot(world / "runs")
    for extra in ([], ["--name", "keep"]):
        code, _, err = cli(["run", edited, "--runs-dir", world / "runs", "--resume", *extra], capsys)
        assert_one_line_error(code, err, "was made by a different recipe", "stages[0].lr: 0.1 -> 0.2",
                              "--rerun-changed")
    assert snapshot(world / "runs") == before


def test_rerun_changed_writes_a_new_run_and_tampering_is_caught(world, tmp_path, capsys):
    import shutil

    runs = tmp_path / "runs"
    shutil.copytree(world / "runs", runs)  # a copied run resumes against its own files
    recipe = world / "tiny.yaml"
    code, out, err = cli(["run", recipe, "--runs-dir", runs, "--name", "keep", "--resume", "--no-report"], capsys)
    assert code == 0, err
    record = json.loads((runs / "tiny" / "keep" / "stages" / "00-train" / "stage.json").read_text())
    assert record["variants"][0]["onnx"] == "stages/00-train/reference.onnx"  # relative: the copy is self-contained
    assert set(record["files"]) >= {"stages/00-train/reference.onnx", "stages/00-train/reference.pt"}
    onnx = runs / "tiny" / "keep" / "stages" / "00-train" / "reference.onnx"
    onnx.write_bytes(onnx.read_bytes()[:-10])  # truncated behind edgekit's back
    stale = runs / "tiny" / "keep" / "stages" / "07-compile"  # as left by a longer recipe under the same name
    stale.mkdir()
    (stale / "engine.plan").write_bytes(b"old")
    before = snapshot(runs)
    code, _, err = cli(["run", recipe, "--runs-dir", runs, "--name", "keep", "--resume", "--no-report"], capsys)
    assert_one_line_error(code, err, "stages/00-train/reference.onnx has changed", "--rerun-changed")
    assert snapshot(runs) == before
    code, out, err = cli(["run", recipe, "--runs-dir", runs, "--name", "keep", "--resume", "--rerun-changed",
                          "--no-report"], capsys)
    assert code == 0, err
    new = Path(out.split("run directory: ")[1].split()[0])
    assert new.parent == (runs / "tiny").resolve() and new.name != "keep"
    assert snapshot(runs / "tiny" / "keep") == {k: v for k, v in before.items() if "/keep/" in k}
    assert (new / "stages" / "00-train" / "stage.json").is_file()
    assert not (new / "stages" / "07-compile").exists()  # the new run holds only its recipe's stages


@pytest.mark.slow
def test_concurrent_resume_refuses_while_the_first_run_finishes(world, tmp_path, capsys):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text((world / "tiny.yaml").read_text().replace("epochs: 0", "epochs: 1"))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    first = subprocess.Popen([sys.executable, "-m", "edgekit.cli", "--quiet", "run", str(recipe), "--runs-dir",
                              str(tmp_path / "runs"), "--name", "busy", "--no-report"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        manifest = tmp_path / "runs" / "tiny" / "busy" / "manifest.json"
        deadline = time.time() + 300
        while not manifest.exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert first.poll() is None, first.communicate()
        code, _, err = cli(["run", recipe, "--runs-dir", tmp_path / "runs", "--name", "busy", "--resume"], capsys)
        assert_one_line_error(code, err, "is in use by another edgekit process", f"pid {first.pid}")
        out, err = first.communicate(timeout=600)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, err
    assert (tmp_path / "runs" / "tiny" / "busy" / "stages" / "00-train" / "stage.json").is_file()


def test_validate_lists_every_problem_and_the_imports(tmp_path, capsys):
    text = TINY.replace(ZOO, "  checkpoint: no.pt").replace("  rounds: 2", "  rounds: 2\n  variants: [x]")
    text = text.replace("    lr: 0.1\n", "    lr: 0.1\n  - type: train\n    input: nope\n")
    code, _, err = cli(["recipe", "validate", _recipe(tmp_path, text)], capsys)
    assert_one_line_error(code, err, "3 problems", "model.checkpoint not found", "stages[1].input",
                          "benchmark.variants: unknown variant 'x'")
    code, out, _ = cli(["recipe", "validate", _recipe(tmp_path, TINY.replace(ZOO, ZOO + "\n  imports: [json]"))],
                       capsys)
    assert code == 0 and "imports (and so executes) these modules: json" in out


def test_non_finite_loss_stops_training():
    from edgekit.core.train import TrainConfig, fit
    from edgekit.data import load_data
    from edgekit.errors import TrainingDivergedError
    from edgekit.models import create_model

    splits = load_data({"name": "digits", "image_size": 8, "channels": 1}, seed=0)
    splits.train.x[:] = np.float32(3e38)
    model = create_model("resnet_cifar", depth=8, width=0.25, num_classes=10, in_channels=1)
    with pytest.raises(TrainingDivergedError, match="training diverged: the loss is (nan|inf)"):
        fit(model, splits.train, splits.val, TrainConfig(epochs=1, lr=0.1))
