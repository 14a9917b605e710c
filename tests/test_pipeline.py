"""Recipe runs: run directory, manifest, report, never overwriting, resuming after an interruption."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgekit.errors import RunDirectoryError
from edgekit.pipeline import run_recipe
from edgekit.pipeline.recipe import load_recipe

TINY = (Path(__file__).parent / "data" / "tiny_recipe.yaml").read_text()  # a tiny valid recipe


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("run")
    recipe_path = d / "tiny.yaml"
    recipe_path.write_text(TINY)
    result = run_recipe(load_recipe(recipe_path), recipe_path=str(recipe_path), runs_dir=d / "runs", name="a")
    return d, recipe_path, result


def test_run_directory_layout_and_manifest(tiny_run):
    d, _, result = tiny_run
    run = d / "runs" / "tiny" / "a"
    assert result.run_dir == run
    for f in ("recipe.yaml", "manifest.json", "report.md", "report.json", "bench/bench.json",
              "stages/00-train/reference.pt", "stages/00-train/reference.onnx", "stages/00-train/stage.json"):
        assert (run / f).is_file(), f
    m = json.loads((run / "manifest.json").read_text())
    assert m["schema"] == "edgekit-manifest/1" and m["finished"]
    assert m["versions"]["torch"] and m["versions"]["onnxruntime"]
    assert m["stages"][0]["type"] == "train" and m["stages"][0]["metrics"]["test_accuracy_torch"] > 50
    assert not [p for p in run.rglob(".*.tmp")]  # no temp files left behind


def test_report_has_baseline_first_speedups_and_skipped_tensorrt(tiny_run):
    _, _, result = tiny_run
    md = result.report.read_text()
    rows = [ln for ln in md.splitlines() if ln.startswith("| reference")]
    assert rows[0].startswith("| reference | torch |") and "1.00× (baseline)" in rows[0]
    assert "| reference | ort-cpu |" in rows[1] and "×" in rows[1]
    assert "## Skipped targets" in md and "tensorrt" in md
    rep = json.loads((result.run_dir / "report.json").read_text())
    assert rep["baseline"]["meaning"] == "PyTorch eager fp32 of the reference model"
    assert any("ort-cpu" in h for h in result.headline)
    assert rep["parity"][0]["artifacts"]["ort-cpu"]["top1_agreement_vs_torch"] >= 99.0


def test_existing_run_is_never_overwritten(tiny_run):
    d, recipe_path, result = tiny_run
    before = (result.run_dir / "manifest.json").read_bytes()
    with pytest.raises(RunDirectoryError, match="already exists"):
        run_recipe(load_recipe(recipe_path), runs_dir=d / "runs", name="a")
    assert (result.run_dir / "manifest.json").read_bytes() == before


def test_resume_skips_finished_stages_with_identical_results(tiny_run):
    d, recipe_path, result = tiny_run
    again = run_recipe(load_recipe(recipe_path), runs_dir=d / "runs", name="a", resume=True, report=False)
    assert again.manifest["stages"][0]["status"] == "cached"
    assert again.variants["reference"].metrics == result.variants["reference"].metrics


def test_same_seed_same_accuracy(tiny_run):
    d, recipe_path, result = tiny_run
    other = run_recipe(load_recipe(recipe_path), runs_dir=d / "runs", name="b", report=False)
    assert other.variants["reference"].metrics["test_accuracy_torch"] == \
        result.variants["reference"].metrics["test_accuracy_torch"]


@pytest.mark.slow
def test_killed_run_resumes_and_matches_uninterrupted(tmp_path):
    text = TINY.replace("""  - type: train
    epochs: 2
    lr: 0.1
""", """  - type: train
    epochs: 2
    lr: 0.1
  - type: train
    name: finetuned
    epochs: 25
    lr: 0.01
""")
    recipe = tmp_path / "two.yaml"
    recipe.write_text(text)
    env = dict(os.environ)
    cmd = [sys.executable, "-m", "edgekit.cli.main", "run", str(recipe), "--runs-dir", str(tmp_path / "runs"),
           "--name", "k", "--no-report"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first_done = tmp_path / "runs" / "two" / "k" / "stages" / "00-train" / "stage.json"
    deadline = time.time() + 300
    while not first_done.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(1.0)  # now inside the second stage
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert first_done.exists() and not (tmp_path / "runs/two/k/stages/01-train/stage.json").exists()
    resumed = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    m = json.loads((tmp_path / "runs/two/k/manifest.json").read_text())
    assert [s["status"] for s in m["stages"]] == ["cached", "ran"]
    clean = run_recipe(load_recipe(recipe), runs_dir=tmp_path / "runs", name="clean", report=False)
    assert m["variants"]["finetuned"]["metrics"]["test_accuracy_torch"] == \
        clean.variants["finetuned"].metrics["test_accuracy_torch"]
