"""Transformer distillation: hidden-state / attention-map transfer through a layer map, student init, bad input."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from edgekit.core.tensors import take, to_torch
from edgekit.errors import ConfigError
from edgekit.models import create_model
from edgekit.techniques.distill._student_init import init_from_teacher, mapped_blocks
from edgekit.techniques.distill._transformer import uniform_layer_map
from edgekit.techniques.distill.distill import distill, kd_loss_fn
from tests._helpers.hf_models import TINY_BERT, token_split

VOCAB = 50


def bert(layers: int = 2, hidden: int = 32, heads: int = 2, seed: int = 0):
    torch.manual_seed(seed)
    return create_model("hf", config={**TINY_BERT, "num_hidden_layers": layers, "hidden_size": hidden,
                                      "num_attention_heads": heads, "intermediate_size": 2 * hidden},
                        num_classes=3, vocab_size=VOCAB)


@pytest.fixture(scope="module")
def teacher():
    return bert(layers=4, heads=2, seed=1)


@pytest.fixture(scope="module")
def data():
    return token_split(n=48, vocab=VOCAB)


def _loss_on_batch(teacher, student, data, **kw):
    x = to_torch(take(data.x, slice(0, 8)))
    y = torch.as_tensor(data.y[:8])
    loss = kd_loss_fn(teacher, 4.0, 0.9, student=student, sample=take(data.x, slice(0, 2)), **kw)
    return loss, x, y


def test_uniform_layer_map_takes_every_kth_block():
    assert uniform_layer_map(2, 4) == [(0, 1), (1, 3)]
    assert uniform_layer_map(3, 12) == [(0, 3), (1, 7), (2, 11)]
    assert uniform_layer_map(4, 4) == [(0, 0), (1, 1), (2, 2), (3, 3)]
    assert uniform_layer_map(1, 4) == [(0, 3)]


def test_terms_are_present_finite_and_train_the_projections(teacher, data):
    student = bert(layers=2, hidden=16, heads=2)
    loss, x, y = _loss_on_batch(teacher, student, data, hidden=1.0, attention_maps=1.0)
    with loss:
        assert loss.terms == ["kd", "ce", "hidden", "attention_maps"]
        assert loss.transfer.layer_map == [(0, 1), (1, 3)]
        assert len(loss.transfer.hidden_pairs) == 3  # embeddings + two blocks
        params = loss.extra_parameters  # widths 16 -> 32: one Linear per hidden pair
        assert len(params) == 3 and all(p.shape == (32, 16) for p in params)
        before = [p.detach().clone() for p in params]
        opt = torch.optim.SGD(list(student.parameters()) + params, lr=0.5)
        student.train()
        total, _ = loss(student, x, y)
        assert set(loss.last) == {"logit", "hidden", "attention_maps"}
        assert all(math.isfinite(v) and v > 0 for v in loss.last.values())
        total.backward()
        opt.step()
        assert all(not torch.equal(b, p) for b, p in zip(before, params))


def test_explicit_layer_map_and_relation_kind(teacher, data):
    student = bert(layers=2, hidden=32, heads=4)  # head counts differ: relation works, probs is refused
    loss, x, y = _loss_on_batch(teacher, student, data, hidden={"weight": 1.0, "embeddings": False},
                                attention_maps={"weight": 1.0, "kind": "relation"}, layer_map=[[0, 0], [1, 2]])
    with loss:
        assert loss.transfer.layer_map == [(0, 0), (1, 2)] and loss.transfer.hidden_pairs == [(0, 0), (1, 2)]
        assert loss.extra_parameters == []  # equal widths: no projection
        loss(student, x, y)
        assert math.isfinite(loss.last["attention_maps"]) and loss.last["attention_maps"] > 0


def test_a_copy_of_the_teacher_has_zero_transfer_losses(teacher, data):
    student = copy.deepcopy(teacher).eval()
    loss, x, y = _loss_on_batch(teacher, student, data, hidden=1.0, attention_maps=1.0)
    with loss:
        assert loss.transfer.layer_map == [(0, 0), (1, 1), (2, 2), (3, 3)]
        with torch.no_grad():
            loss(student, x, y)
    assert loss.last["attention_maps"] == pytest.approx(0.0, abs=1e-6)
    assert loss.last["hidden"] == pytest.approx(0.0, abs=1e-10)
    other = bert(layers=4, heads=2, seed=5).eval()
    loss, x, y = _loss_on_batch(teacher, other, data, attention_maps=1.0)
    with loss, torch.no_grad():
        loss(other, x, y)
    assert loss.last["attention_maps"] > 1e-4  # the KL does see a different model


def test_init_from_teacher_copies_the_mapped_blocks_exactly(teacher):
    student = bert(layers=2, hidden=32, heads=2)
    assert mapped_blocks(student, teacher) == [1, 3]
    assert mapped_blocks(student, teacher, [[1, 0]]) == [1, 0]  # unmapped student block 0 keeps the uniform choice
    info = init_from_teacher(student, teacher, mapped_blocks(student, teacher, [[0, 2], [1, 3]]))
    assert info == {"from_teacher": True, "teacher_blocks": [2, 3]}
    s_sd, t_sd = student.state_dict(), teacher.state_dict()
    for key, value in s_sd.items():
        src = key.replace("encoder.layer.0.", "encoder.layer.2.").replace("encoder.layer.1.", "encoder.layer.3.")
        assert torch.equal(value, t_sd[src]), key
    narrow = bert(layers=2, hidden=16)
    info = init_from_teacher(narrow, teacher, mapped_blocks(narrow, teacher))
    assert not info["from_teacher"] and "[50, 16]" in info["reason"]


@pytest.mark.parametrize("kwargs, match", [
    ({"hidden": 1.0, "layer_map": [[0, 1], [1, 3], [1, 2]]}, r"3 pairs but the student has only 2 blocks"),
    ({"hidden": 1.0, "layer_map": [[0, 1], [1, 7]]}, r"teacher block 7, but the teacher has blocks 0\.\.3"),
    ({"hidden": 1.0, "layer_map": [[2, 1]]}, r"student block 2, but the student has blocks 0\.\.1"),
    ({"hidden": 1.0, "layer_map": [[0, 1], [0, 3]]}, r"student block 0 appears twice"),
    ({"hidden": 1.0, "layer_map": [[0, "x"]]}, r"layer_map"),
    ({"attention_maps": 1.0, "student_heads": 4}, r"4 attention heads and the teacher 2.*kind: relation"),
    ({"attention_maps": {"weight": 1.0, "kind": "relation", "relation_heads": 3}}, r"3 does not divide"),
    ({"attention_maps": {"weight": 1.0, "kind": "keys"}}, r"attention_maps"),
])
def test_bad_input_is_refused_before_any_work(teacher, data, kwargs, match):
    heads = kwargs.pop("student_heads", 2)
    student = bert(layers=2, heads=heads)
    with pytest.raises(ConfigError, match=match):
        distill(student, {**kwargs, "train": {"epochs": 1}}, teacher=teacher, train=data)


def test_hidden_transfer_on_a_cnn_is_refused():
    import numpy as np

    from edgekit.data.splits import Split

    cnn = create_model("resnet_cifar", depth=8, width=0.25, num_classes=3, in_channels=1)
    split = Split(np.zeros((4, 1, 8, 8), np.float32), np.zeros(4, np.int64))
    for field in ("hidden", "attention_maps"):
        with pytest.raises(ConfigError, match=rf"{field}: student 'resnet_cifar' is not a transformer.*'hints'"):
            distill(cnn, {field: 1.0, "train": {"epochs": 1}}, teacher=cnn, train=split)


def test_distill_end_to_end_with_hidden_and_attention_transfer(teacher, data):
    student = bert(layers=2, hidden=32, heads=2)
    res = distill(student, {"hidden": 1.0, "attention_maps": 1.0,
                            "train": {"epochs": 2, "batch_size": 16, "optimizer": "adamw", "lr": 1e-3}},
                  teacher=teacher, train=data, val=data)
    assert res.losses == ["kd", "ce", "hidden", "attention_maps"]
    assert res.sidecar["layer_map"] == [[0, 1], [1, 3]]
    assert res.sidecar["student_init"] == {"from_teacher": True, "teacher_blocks": [1, 3]}
    assert res.sidecar["teacher_cache"] is None  # the teacher's features are needed every batch
    assert all(math.isfinite(r["train_loss"]) for r in res.history) and len(res.history) == 2
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in teacher.modules())  # hooks removed
    off = distill(student, {"init_from_teacher": False, "train": {"epochs": 1}}, teacher=teacher, train=data)
    assert "student_init" not in off.sidecar and off.losses == ["kd", "ce"]


def test_tiny_recipe_distils_with_hidden_and_attention_transfer(tmp_path):
    from edgekit.pipeline import run_recipe

    recipe = _text_recipe(tmp_path, hidden=1.0, attention_maps={"weight": 1.0, "kind": "probs"})
    result = run_recipe(recipe, runs_dir=tmp_path / "runs", name="a", report=False)
    meta = result.variants["student"].meta
    assert meta["losses"] == ["kd", "ce", "hidden", "attention_maps"]
    assert meta["layer_map"] == [[0, 1], [1, 3]]
    assert meta["student_init"] == {"from_teacher": True, "teacher_blocks": [1, 3]}


def _text_recipe(tmp_path, **distill_fields):
    from edgekit.pipeline.recipe import validate_recipe

    small = {"model_type": "bert", "hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64,
             "max_position_embeddings": 32}
    return validate_recipe({
        "name": "tiny_bert_kd", "seed": 0, "threads": 1,
        "model": {"hf": str(tmp_path / "bert"), "task": "sequence-classification",
                  "config": {**small, "num_hidden_layers": 4}},
        "data": {"name": "doc_topics", "max_length": 16},
        "stages": [{"type": "train", "name": "reference", "epochs": 1, "optimizer": "adamw", "lr": 1e-3},
                   {"type": "distill", "name": "student", "student": {"name": "hf", "config": {
                       **small, "num_hidden_layers": 2}}, **distill_fields,
                    "train": {"epochs": 1, "optimizer": "adamw", "lr": 1e-3}}]})


@pytest.mark.parametrize("fields, match", [
    ({"hidden": 1.0, "layer_map": [[0, 1], [1, 3], [1, 2]]}, r"stages\[1\]\.layer_map: 3 pairs"),
    ({"hidden": 1.0, "layer_map": [[0, 9]]}, r"stages\[1\]\.layer_map: pair \[0, 9\] names teacher block 9"),
    ({"attention_maps": 1.0, "student": {"name": "hf", "config": {
        "model_type": "bert", "hidden_size": 32, "num_attention_heads": 4, "intermediate_size": 64,
        "num_hidden_layers": 2, "max_position_embeddings": 32}}}, r"stages\[1\]\.attention_maps: .*kind: relation"),
])
def test_recipe_preflight_refuses_bad_transfer_before_any_work(tmp_path, fields, match):
    from edgekit.data import load_data
    from edgekit.pipeline.preflight import preflight

    recipe = _text_recipe(tmp_path, **fields)
    splits = load_data({"name": "doc_topics", "max_length": 16}, seed=0)
    with pytest.raises(ConfigError, match=match):
        preflight(recipe, lambda: splits)
    assert not (tmp_path / "bert").exists()  # nothing written


@pytest.mark.parametrize("kind", ["bert", "distilbert", "vit"])
def test_probs_are_the_models_own_attention_distributions(kind):
    """The distributions the loss compares (from hooked Q and K) equal what the model's attention computes."""
    from edgekit.techniques.distill._transformer import TransformerTransfer, relation_log_probs
    from edgekit.techniques.distill.config import AttentionMapsConfig, HiddenTransferConfig

    torch.manual_seed(0)
    if kind == "vit":
        cfg = {"model_type": "vit", "hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64,
               "patch_size": 4, "num_hidden_layers": 2}
        model = create_model("hf", config=cfg, task="image-classification", num_classes=3, image_size=8,
                             in_channels=1).eval()
        x, mask = {"pixel_values": torch.randn(2, 1, 8, 8)}, None
    else:
        cfg = ({**TINY_BERT} if kind == "bert" else
               {"model_type": "distilbert", "dim": 32, "n_heads": 2, "hidden_dim": 64, "n_layers": 2})
        model = create_model("hf", config=cfg, num_classes=3, vocab_size=VOCAB).eval()
        mask = torch.ones(2, 7, dtype=torch.long)
        mask[0, 5:] = 0
        x = {"input_ids": torch.randint(5, VOCAB, (2, 7)), "attention_mask": mask}
    tr = TransformerTransfer(model, model, HiddenTransferConfig(), AttentionMapsConfig(weight=1.0), None)
    with torch.no_grad():
        out = model(**x, output_attentions=True)
    feats = tr.student_tap.pop()
    tr.remove()
    for b in range(2):
        mine = relation_log_probs(feats[("q", b)], feats[("k", b)], 2, mask).exp()
        assert torch.allclose(mine, out.attentions[b], atol=1e-5), (kind, b)


def test_attention_maps_refuse_a_causal_decoder_but_hidden_transfer_taps_it():
    from edgekit.techniques.distill._transformer import TransformerTransfer
    from edgekit.techniques.distill.config import AttentionMapsConfig, HiddenTransferConfig

    lm = create_model("gpt_lm", vocab_size=VOCAB, n_layer=2, n_embd=32, n_head=2, n_positions=16)
    with pytest.raises(ConfigError, match=r"attention_maps: student 'gpt_lm' is a causal decoder.*hidden"):
        TransformerTransfer(lm, lm, HiddenTransferConfig(), AttentionMapsConfig(weight=1.0), None)
    tr = TransformerTransfer(lm, lm, HiddenTransferConfig(weight=1.0), AttentionMapsConfig(), None)
    ids = torch.randint(0, VOCAB, (2, 8))
    with torch.no_grad():
        lm(input_ids=ids)
        tr.build(seed=0)
        lm(input_ids=ids)
    assert tr.losses(None)["hidden"].item() == pytest.approx(0.0, abs=1e-10)
    tr.remove()
