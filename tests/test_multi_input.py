"""Named, typed inputs through the torch stages: fit / evaluate / distill / prune example / ONNX export; plugins
next to the recipe."""
from __future__ import annotations

import sys
import textwrap

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from _helpers.hf_models import TINY_BERT, MixedInputs, mixed_split, tiny_bert_dir, token_split

from edgekit.core.tensors import NamedInputs, concat, num_samples, row_bytes, take
from edgekit.core.train import evaluate, fit, predict
from edgekit.errors import ConfigError, ShapeError
from edgekit.export import export_onnx

ONNX_TYPES = {"int64": onnx.TensorProto.INT64, "int32": onnx.TensorProto.INT32, "bool": onnx.TensorProto.BOOL,
              "float32": onnx.TensorProto.FLOAT, "float16": onnx.TensorProto.FLOAT16}


def test_named_inputs_index_like_one_array():
    x = NamedInputs(a=np.arange(10).reshape(5, 2), b=np.arange(5, dtype=np.int64))
    assert x["a"].shape == (5, 2) and num_samples(x) == len(x) == 5 and len(x.keys()) == 2
    assert x[1:3]["b"].tolist() == [1, 2] and isinstance(x[[0, 4]], NamedInputs)
    assert concat([take(x, slice(0, 2)), take(x, slice(2, 5))])["a"].tolist() == x["a"].tolist()
    keys = row_bytes(x)
    assert len(set(keys)) == 5 and row_bytes(x[[3]]) == [keys[3]]
    with pytest.raises(ShapeError, match="disagree on the number of samples"):
        num_samples({"a": np.zeros(2), "b": np.zeros(3)})


@pytest.mark.parametrize("id_dtype, feat_dtype", [("int64", "float32"), ("int32", "float16")])
def test_every_dtype_goes_through_fit_evaluate_and_export(tmp_path, id_dtype, feat_dtype):
    split = mixed_split(id_dtype, feat_dtype)
    torch.manual_seed(0)
    model = MixedInputs()
    before = evaluate(model, split)
    fit(model, split, split, {"epochs": 30, "lr": 0.05, "batch_size": 16})
    assert evaluate(model, split) > max(before, 80)
    assert predict(model, split.x).shape == (32, 3)
    res = export_onnx(model, split.x[:8], tmp_path / "m.onnx", parity_data=split.x)
    graph = onnx.load(res.path).graph
    assert [(i.name, i.type.tensor_type.elem_type) for i in graph.input] == [
        ("ids", ONNX_TYPES[id_dtype]), ("mask", ONNX_TYPES["bool"]), ("feats", ONNX_TYPES[feat_dtype])]
    assert res.max_abs_diff < 1e-4 and res.top1_agreement == 100.0


def test_float_data_for_an_integer_input_is_refused_not_cast(tmp_path, bert_model):
    x = token_split(n=4)
    bad = NamedInputs({**x.x, "input_ids": x.x["input_ids"].astype(np.float32)})
    with pytest.raises(ShapeError, match="'input_ids' is int64 .* data is float32"):
        export_onnx(bert_model, bad, tmp_path / "m.onnx")
    assert not list(tmp_path.iterdir())


@pytest.fixture(scope="module")
def bert_model(tmp_path_factory):
    from edgekit.models.hf import load_hf

    torch.manual_seed(0)
    return load_hf(tiny_bert_dir(tmp_path_factory.mktemp("bert") / "d"))


@pytest.mark.slow
def test_hf_bert_trains_on_dict_inputs(bert_model):
    import copy

    model = copy.deepcopy(bert_model)
    train = token_split(n=48, seed=1)
    res = fit(model, train, train, {"epochs": 4, "lr": 3e-3, "optimizer": "adamw", "batch_size": 16})
    assert res.best_val_accuracy > 60 and res.history[-1]["train_loss"] < res.history[0]["train_loss"]


def test_hf_bert_exports_three_int64_inputs_with_dynamic_batch_and_sequence(tmp_path, bert_model):
    x = token_split(n=8, t=12)
    res = export_onnx(bert_model, x.x, tmp_path / "bert.onnx")
    from edgekit._io import read_sidecar

    sig = read_sidecar(res.path)["signature"]
    assert [i["name"] for i in sig["inputs"]] == ["input_ids", "attention_mask", "token_type_ids"]
    assert all(i["dtype"] == "int64" and i["shape"] == ["batch", "sequence"] for i in sig["inputs"])
    session = ort.InferenceSession(str(res.path), providers=["CPUExecutionProvider"])
    assert [(i.name, i.type, i.shape) for i in session.get_inputs()][0] == ("input_ids", "tensor(int64)",
                                                                            ["batch", "sequence"])
    for n, t in [(1, 7), (3, 30)]:  # other batch sizes and sequence lengths than the sample's
        feeds = take(token_split(n=max(n, 2), t=t, seed=n).x, slice(0, n))
        got = session.run(None, dict(feeds))[0]
        with torch.no_grad():
            ref = bert_model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).logits.numpy()
        np.testing.assert_allclose(got, ref, atol=1e-4)
    from edgekit.data import make_splits
    from edgekit.pipeline.model_source import onnx_input_fits

    data = token_split(n=30)
    onnx_input_fits(str(res.path), make_splits(data.x, data.y, (0.6, 0.2, 0.2), 0, "tokens"))
    two = {k: v for k, v in data.x.items() if k != "token_type_ids"}
    with pytest.raises(ShapeError, match="inputs do not match the model \\(missing token_type_ids\\)"):
        onnx_input_fits(str(res.path), make_splits(two, data.y, (0.6, 0.2, 0.2), 0, "tokens"))


def test_hf_bert_distills_into_a_smaller_hf_student_with_cached_teacher(bert_model):
    from edgekit.models import create_model
    from edgekit.techniques.distill.distill import distill

    train = token_split(n=32, seed=2)
    student = create_model("hf", config={**TINY_BERT, "num_hidden_layers": 1}, num_classes=3, vocab_size=50)
    res = distill(student, {"train": {"epochs": 2, "lr": 3e-3, "optimizer": "adamw", "batch_size": 16}},
                  teacher=bert_model, train=train, val=train)
    assert res.model.config.num_hidden_layers == 1 and res.losses[:1] == ["kd"]
    assert res.sidecar["teacher_cache"]["hits"] > 0 and res.sidecar["teacher_cache"]["misses"] == 0
    assert len(res.history) == 2


def test_distill_refuses_a_student_that_cannot_take_the_inputs(bert_model):
    from edgekit.models import create_model
    from edgekit.techniques.distill.distill import distill

    with pytest.raises(ShapeError, match=r"student .* cannot take inputs of input_ids: int64\[12\]"):
        distill(create_model("small_cnn", num_classes=3), {"train": {"epochs": 1}}, teacher=bert_model,
                train=token_split())


def test_prune_example_keeps_integer_inputs_integer():
    from edgekit.techniques.prune._structured import as_example

    ex = as_example(token_split(n=4).x)
    assert set(ex) == {"input_ids", "attention_mask", "token_type_ids"}
    assert all(v.dtype == torch.int64 and v.shape == (1, 12) for v in ex.values())
    assert as_example(np.zeros((3, 2, 4), np.float64)).dtype == torch.float32
    with pytest.raises(ShapeError, match=r"example_input\['input_ids'\] must be a non-empty batch"):
        as_example({"input_ids": np.zeros((0, 4), np.int64)})


def test_plugin_module_next_to_the_recipe_imports_without_pythonpath(tmp_path, monkeypatch):
    from edgekit.models import model_names
    from edgekit.pipeline.recipe import load_recipe

    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "ek_test_mynet.py").write_text(textwrap.dedent('''
        import torch.nn as nn
        from edgekit.models import register_model

        @register_model("ek_test_mynet", classifier="fc")
        def ek_test_mynet(num_classes: int = 10, in_channels: int = 1):
            return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 64, num_classes))
    '''))
    (folder / "r.yaml").write_text("model: {name: ek_test_mynet, imports: [ek_test_mynet]}\n"
                                   "stages:\n  - {type: distill, student: {name: ek_test_mynet}}\n")
    monkeypatch.chdir(tmp_path)  # neither the cwd nor sys.path holds the module
    path_before = list(sys.path)
    try:
        recipe = load_recipe(folder / "r.yaml")
        assert recipe.model.name == "ek_test_mynet" and "ek_test_mynet" in model_names()
        assert sys.path == path_before
    finally:
        from edgekit.models import LAYOUTS, MODELS

        for reg in (MODELS, LAYOUTS):
            reg.unregister("ek_test_mynet")
        sys.modules.pop("ek_test_mynet", None)


def test_missing_plugin_names_where_it_looked(tmp_path):
    from edgekit.pipeline.model_source import import_plugins

    with pytest.raises(ConfigError, match=r"model.imports\[0\]: cannot import 'ek_nope' \(looked in .*project"):
        import_plugins(["ek_nope"], tmp_path / "project")


def test_calibration_keeps_named_integer_inputs(tmp_path):
    from edgekit.data import check_calibration, make_calibration

    x = check_calibration(token_split(n=10).x, (12,), max_samples=4)
    assert len(x) == 4 and all(v.dtype == np.int64 for v in x.values())
    mixed = check_calibration(mixed_split("int32", "float16").x, None)
    assert mixed.dtypes == {"ids": np.int32, "mask": np.bool_, "feats": np.float32}
    bad = {**mixed_split().x, "feats": np.full((32, 4), np.nan, np.float32)}
    with pytest.raises(ShapeError, match="input 'feats' contains NaN"):
        check_calibration(bad, None)
    with pytest.raises(ShapeError, match="input 'input_ids' has per-sample shape \\[12\\], the model expects \\[16\\]"):
        check_calibration(token_split().x, (16,))
    out = make_calibration({"name": "doc_topics", "max_length": 16}, tmp_path / "calib.npz", samples=8)
    with np.load(out) as f:
        assert sorted(f.files) == ["attention_mask", "input_ids", "token_type_ids", "y"]
        assert f["input_ids"].dtype == np.int64 and f["input_ids"].shape == (8, 16)
