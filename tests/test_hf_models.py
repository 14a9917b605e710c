"""Hugging Face models from local directories: loading, signatures, checkpoints, recipe sources, bad input."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _helpers.hf_models import TINY_BERT, TINY_VIT, tiny_bert_dir, token_split

from edgekit.core.tensors import prediction
from edgekit.errors import ConfigError, InputFileError, ShapeError

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return tiny_bert_dir(tmp_path_factory.mktemp("hf") / "bert")


def _logits(model, split):
    with torch.no_grad():
        return model(**{k: torch.from_numpy(v) for k, v in split.x.items()}).logits.numpy()


def test_local_directory_loads_eager_with_a_signature(bert_dir):
    from edgekit.models.hf import load_hf

    m = load_hf(bert_dir, "sequence-classification")
    assert m.config._attn_implementation == "eager"
    sig = m.edgekit_signature
    assert sig.names == ("input_ids", "attention_mask", "token_type_ids")
    assert {i.dtype for i in sig.inputs} == {"int64"} and sig.inputs[0].shape == ("batch", "sequence")
    assert sig.vocab_size == 50 and sig.max_positions == 64
    assert m.edgekit_arch["name"] == "hf" and m.edgekit_arch["kwargs"]["config"]["num_hidden_layers"] == 2
    assert _logits(m, token_split(n=4)).shape == (4, 3)


def test_checkpoint_rebuilds_from_the_file_alone(bert_dir, tmp_path):
    from edgekit.models import load_checkpoint, save_checkpoint
    from edgekit.models.hf import load_hf

    m = load_hf(bert_dir)
    path = save_checkpoint(m, tmp_path / "bert.pt")
    payload = torch.load(path, weights_only=True)  # plain data only: the HF config is a dict
    assert payload["arch"]["kwargs"]["config"]["model_type"] == "bert"
    back, meta = load_checkpoint(path)
    assert meta["signature"]["inputs"][0] == {"name": "input_ids", "dtype": "int64", "shape": ["batch", "sequence"]}
    x = token_split(n=5)
    np.testing.assert_array_equal(_logits(back, x), _logits(m, x))


def test_create_model_builds_a_student_from_a_config():
    from edgekit.models import create_model, model_layout

    m = create_model("hf", config={**TINY_BERT, "num_hidden_layers": 1}, num_classes=4, vocab_size=30)
    assert m.config.num_labels == 4 and m.config.vocab_size == 30 and m.config.num_hidden_layers == 1
    layout = model_layout(m)
    assert layout.feature_stages(m) == ["bert.encoder.layer.0"] and layout.classifier_name(m) == "classifier"


@pytest.mark.slow
def test_vit_image_classifier_takes_float_pixels(tmp_path):
    from edgekit.core.train import evaluate, fit
    from edgekit.data.splits import Split
    from edgekit.models.hf import load_hf, save_hf_model

    save_hf_model(tmp_path / "vit", TINY_VIT, "image-classification", num_classes=2, image_size=8, num_channels=1)
    m = load_hf(tmp_path / "vit", "image-classification")
    spec = m.edgekit_signature.inputs[0]
    assert (spec.name, spec.dtype, spec.shape) == ("pixel_values", "float32", ("batch", 1, 8, 8))
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 32)
    x = rng.standard_normal((32, 1, 8, 8)).astype(np.float32)
    x[y == 1, :, :4] += 3.0  # class 1: bright top half
    fit(m, Split(x, y), None, {"epochs": 6, "lr": 3e-3, "optimizer": "adamw", "batch_size": 8})
    assert evaluate(m, Split(x, y)) > 80
    from edgekit.export import export_onnx

    res = export_onnx(m, x[:8], tmp_path / "vit.onnx", parity_data=x)  # one float input: a plain array
    assert res.top1_agreement == 100.0 and res.max_abs_diff < 1e-4


def test_prediction_reads_logits_from_model_output(bert_dir):
    from edgekit.models.hf import load_hf

    m = load_hf(bert_dir)
    out = m(input_ids=torch.ones(2, 4, dtype=torch.long))
    assert prediction(out) is out.logits
    with pytest.raises(ShapeError, match="no field 'hidden'; it returns: logits"):
        prediction(out, "hidden")


def test_bad_hf_sources_are_clear(tmp_path, bert_dir):
    from edgekit.models.hf import load_hf, save_hf_model

    with pytest.raises(InputFileError, match="model directory not found.*local directories only"):
        load_hf(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputFileError, match="has no config.json"):
        load_hf(tmp_path / "empty")
    (tmp_path / "alien").mkdir()
    (tmp_path / "alien" / "config.json").write_text(json.dumps({"model_type": "no-such-arch"}))
    with pytest.raises(ConfigError, match="architecture transformers .* does not know"):
        load_hf(tmp_path / "alien")
    with pytest.raises(ConfigError, match="unknown Hugging Face task 'sequence-clasification'.*did you mean"):
        load_hf(bert_dir, "sequence-clasification")
    with pytest.raises(ConfigError, match="needs a 'model_type'"):
        save_hf_model(tmp_path / "x", {"hidden_size": 8})
    with pytest.raises(InputFileError, match="already exists"):
        save_hf_model(bert_dir, TINY_BERT)


def test_recipe_model_source_fields():
    from edgekit.pipeline.recipe import ModelSource

    src = ModelSource(hf="models/bert", config=TINY_BERT)
    assert src.task == "sequence-classification"
    for bad, match in [({"hf": "d", "name": "resnet_cifar"}, "exactly one of name, checkpoint, onnx, hf"),
                       ({"name": "small_cnn", "config": TINY_BERT}, "use it with 'hf'"),
                       ({"hf": "d", "task": "image-clasification"}, "did you mean 'image-classification'")]:
        with pytest.raises(ValueError, match=match):
            ModelSource(**bad)


def test_recipe_source_creates_the_directory_from_the_data(tmp_path):
    from edgekit.data import load_data
    from edgekit.pipeline.model_source import build_module
    from edgekit.pipeline.recipe import ModelSource

    splits = load_data({"name": "doc_topics", "max_length": 16}, seed=0)
    src = ModelSource(hf=str(tmp_path / "bert"), config=TINY_BERT)
    m = build_module(src, splits)
    assert m.config.vocab_size == splits.vocab_size and m.config.num_labels == 5
    assert (tmp_path / "bert" / "tokenizer.json").is_file() and (tmp_path / "bert" / "config.json").is_file()
    again = build_module(src, splits)  # the directory now exists: loaded, not rebuilt
    x = splits.val.take(3)
    np.testing.assert_array_equal(_logits(again, x), _logits(m, x))


def test_tokenizer_larger_than_the_models_vocabulary_is_refused(tmp_path):
    from edgekit.data import load_data
    from edgekit.pipeline.model_source import build_module
    from edgekit.pipeline.recipe import ModelSource

    splits = load_data({"name": "doc_topics", "max_length": 16}, seed=0)
    tiny_bert_dir(tmp_path / "small", vocab_size=100, num_classes=5)
    with pytest.raises(ShapeError, match=r"input 'input_ids' holds token id \d+, outside the model's vocabulary "
                                         r"\[0, 100\)"):
        build_module(ModelSource(hf=str(tmp_path / "small")), splits)
    long = load_data({"name": "doc_topics", "max_length": 80}, seed=0)
    tiny_bert_dir(tmp_path / "short", vocab_size=long.vocab_size, num_classes=5)
    with pytest.raises(ShapeError, match="sequence length 80, longer than the model's 64 positions"):
        build_module(ModelSource(hf=str(tmp_path / "short")), long)


def test_a_text_run_keeps_its_tokenizer_and_is_bound_to_the_users_model_directory(tmp_path):
    """The run directory holds the tokenizer the model was trained with; new weights in the user's model
    directory change every stage key (the stage is not silently reused) and the manifest records the digest."""
    from edgekit.data import load_data
    from edgekit.pipeline import run_recipe
    from edgekit.pipeline.recipe import validate_recipe
    from edgekit.pipeline.runner import stage_key

    vocab = load_data({"name": "doc_topics", "max_length": 16}, seed=0).vocab_size
    bert = tiny_bert_dir(tmp_path / "bert", vocab_size=vocab, num_classes=5)
    recipe = validate_recipe({
        "name": "tiny_text", "seed": 0, "threads": 1,
        "model": {"hf": str(bert), "task": "sequence-classification"},
        "data": {"name": "doc_topics", "max_length": 16},
        "stages": [{"type": "train", "name": "reference", "epochs": 1, "optimizer": "adamw", "lr": 1e-4}]})
    result = run_recipe(recipe, runs_dir=tmp_path / "runs", name="a", report=False)
    saved = result.run_dir / "tokenizer.json"
    splits = load_data({"name": "doc_topics", "max_length": 16}, seed=0)
    assert saved.read_text() == splits.tokenizer.to_str()
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    assert manifest["inputs"]["model.hf"].startswith(f"{bert} sha256:") and manifest["tokenizer"].startswith(
        "tokenizer.json sha256:")
    before = stage_key(0, recipe.stages[0], recipe, {})
    weights = next(p for p in bert.iterdir() if p.suffix in (".safetensors", ".bin"))
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    assert stage_key(0, recipe.stages[0], recipe, {}) != before
