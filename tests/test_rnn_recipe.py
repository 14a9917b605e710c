"""An RNN recipe end to end at toy size: train → prune hidden units with KD → dynamic INT8 in the measured form."""
from __future__ import annotations

import pytest

from edgekit.models import load_checkpoint
from edgekit.pipeline import run_recipe
from edgekit.pipeline.recipe import load_recipe

TINY_GRU = """
seed: 0
threads: 1
model: {name: rnn_classifier, kwargs: {hidden_size: 32, cell: gru}}
data: {name: digits_seq}
stages:
  - {type: train, name: reference, epochs: 2, optimizer: adam, lr: 0.01, weight_decay: 0.0}
  - type: prune
    name: pruned
    ratio: 0.5
    teacher: parent
    finetune: {epochs: 1, optimizer: adam, lr: 0.005, weight_decay: 0.0}
  - {type: quantize, name: pruned-int8, mode: dynamic}
targets:
  - backend: ort-cpu
benchmark: {batches: [1], warmup: 1, iters: 3, rounds: 2}
report: {plots: false}
"""


@pytest.fixture(scope="module")
def gru_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("rnnrun")
    path = d / "gru.yaml"
    path.write_text(TINY_GRU)
    return run_recipe(load_recipe(path), recipe_path=str(path), runs_dir=d / "runs", name="a"), d


def test_gru_recipe_prunes_units_reloads_and_records_the_int8_form(gru_run):
    _, d = gru_run
    run = d / "runs" / "gru" / "a"
    checkpoints = sorted(run.glob("stages/*/pruned.pt")) or sorted(run.glob("stages/**/*pruned*.pt"))
    assert checkpoints, sorted(str(p.relative_to(run)) for p in run.rglob("*"))
    model, _ = load_checkpoint(checkpoints[0])
    assert model.rnn.hidden_size == 16 and model.fc.in_features == 16
    sidecars = [p for p in run.rglob("*int8*.onnx.json")]
    assert sidecars
    import json

    forms = json.loads(sidecars[0].read_text())["rnn_forms"]
    assert forms["chosen"] in forms["forms"] and set(forms["forms"]) == {"op", "unrolled"}
