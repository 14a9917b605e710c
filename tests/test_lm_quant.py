"""LM quantisation: SmoothQuant before dynamic W8A8 on a KV-cache graph, the perplexity budget with per-MatMul
fallback (int8_dynamic and int4), and bad input refused before any work.

The model is a tiny GPT-2 (2 layers × 32) trained for 60 steps on CPython documentation text, then given two
activation-outlier channels per LayerNorm (LayerNorm scale × 100, the next Linear's input rows ÷ 100: the same function
in float), the situation SmoothQuant is for: per-tensor dynamic uint8 activations lose the other channels' precision.
"""
from __future__ import annotations

import logging
import shutil

import numpy as np
import onnx
import pytest
import torch
from _helpers.text import tiny_corpus

from edgekit.bench.decode import OrtDecoder, perplexity
from edgekit.data.splits import Split
from edgekit.errors import AccuracyBudgetError, ConfigError
from edgekit.export.causal_lm import OrtCausalLM, build_causal_lm, export_causal_lm
from edgekit.techniques.quantize.int4 import quantize_dynamic_int8, quantize_int4
from edgekit.techniques.quantize.lm_budget import (
    enforce_perplexity_budget,
    graph_feeds,
    graph_perplexity,
    lm_windows,
    perplexity_budget_error,
)
from edgekit.techniques.quantize.smoothquant import smooth_onnx

OUTLIER = 100.0


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    """(float KV-cache graph, train split, val split) of a tiny trained GPT-2 with outlier activation channels."""
    from edgekit.data.text_lm import load_lm_corpus

    d = tmp_path_factory.mktemp("lmq")
    corpus = load_lm_corpus({"path": str(tiny_corpus(d)), "block_size": 32, "vocab_size": 260}, seed=0)
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 threads on a loaded 2-core machine spin (DESIGN notes); this is a tiny model
    model = build_causal_lm("gpt2", vocab_size=corpus.vocab_size, n_layer=2, n_embd=32, n_head=2, n_positions=32)
    opt, rng = torch.optim.AdamW(model.parameters(), 3e-3), np.random.default_rng(0)
    for _ in range(60):
        w = torch.from_numpy(corpus.random_windows(16, rng))
        loss = torch.nn.functional.cross_entropy(model(input_ids=w[:, :-1]).logits.flatten(0, 1), w[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.set_num_threads(threads)
    with torch.no_grad():
        for block in model.transformer.h:
            for ln, linear in ((block.ln_1, block.attn.c_attn), (block.ln_2, block.mlp.c_fc)):
                ln.weight[:2] *= OUTLIER
                ln.bias[:2] *= OUTLIER
                linear.weight[:2] /= OUTLIER  # GPT-2 Conv1D weight: [in, out]
    model.eval()
    export_causal_lm(model, d / "lm.onnx")

    def split(name):
        b = corpus.blocks(name)
        return Split(b[:, :-1], b[:, 1:])

    return d / "lm.onnx", split("train"), split("val")


def _int8_ops(path):
    return sum(n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul") for n in onnx.load(str(path)).graph.node)


def test_smoothing_is_exact_in_float_and_flattens_the_outliers(lm, tmp_path):
    src, train, val = lm
    rep = smooth_onnx(src, tmp_path / "smooth.onnx", graph_feeds(src, train.x[:32]), alpha=0.5).to_dict()
    assert rep["smoothed"] == 9 and rep["act_max_after"] < rep["act_max_before"] / 3
    a, b = OrtCausalLM(src), OrtCausalLM(tmp_path / "smooth.onnx")
    ids = val.x[:4, :24]  # room for a decode step in the 32-token context
    la, past_a = a.step(ids, a.layout.empty_past(4))
    lb, past_b = b.step(ids, b.layout.empty_past(4))
    assert np.abs(la - lb).max() < 1e-3 * np.abs(la).max()  # a re-parametrisation: same logits
    nxt = la[:, -1].argmax(-1)[:, None]  # and the same with the cache
    assert np.abs(a.step(nxt, past_a)[0] - b.step(nxt, past_b)[0]).max() < 1e-3 * np.abs(la).max()


def test_smoothquant_w8a8_keeps_perplexity_and_records_what_it_smoothed(lm, tmp_path):
    src, train, val = lm
    plain = quantize_dynamic_int8(src, out_path=tmp_path / "plain.onnx")
    sq = quantize_dynamic_int8(src, {"smoothquant": {"alpha": 0.5}, "samples": 32}, out_path=tmp_path / "sq.onnx",
                               train=train)
    assert sq.metrics["smoothquant_alpha"] == 0.5 and sq.metrics["smoothed_matmuls"] == 9
    side = sq.sidecar["smoothquant"]
    assert side["windows"] == 32 and side["folded_into_layernorm"] == 4 and len(side["tensors"]) == 9
    assert _int8_ops(tmp_path / "sq.onnx") == _int8_ops(tmp_path / "plain.onnx") == 9
    x, y = val.x[:32], val.y[:32]
    fp32, p_plain, p_sq = (graph_perplexity(p, x, y) for p in (src, plain.artifact, sq.artifact))
    assert p_sq <= p_plain * 1.005  # within 0.5 % of the unsmoothed W8A8 (here: better, the outliers are smoothed)
    assert abs(p_sq / fp32 - 1) < 0.01
    # the budget's perplexity is the decode benchmark's perplexity
    blocks = np.concatenate([x, y[:, -1:]], axis=1)
    assert graph_perplexity(sq.artifact, x, y) == pytest.approx(perplexity(OrtDecoder(sq.artifact), blocks)["ppl"],
                                                                rel=1e-6)


def test_tight_budget_keeps_the_most_sensitive_matmuls_float_and_records_them(lm, tmp_path):
    src, _, val = lm
    free = quantize_dynamic_int8(src, {"max_perplexity_increase": 100.0}, out_path=tmp_path / "free.onnx", val=val)
    rise = free.metrics["budget_increase_pct"]  # every MatMul int8: the outlier channels cost perplexity
    assert rise > 0.2
    res = quantize_dynamic_int8(src, {"max_perplexity_increase": rise / 4}, out_path=tmp_path / "q.onnx", val=val)
    m, side = res.metrics, res.sidecar
    assert m["budget_all_quantised_val_perplexity"] == free.metrics["budget_val_perplexity"]
    assert m["budget_met"] and not m["budget_all_float"] and m["budget_increase_pct"] <= rise / 4
    assert 1 <= m["float_layers"] < 9 and _int8_ops(res.artifact) == 9 - m["float_layers"]
    kept = side["kept_float"]
    assert [k["node"] for k in kept] == side["float_layers"] == [s["layer"] for s in side["fallback"]]
    assert all(k["reason"].startswith("perplexity budget") and "val_perplexity_cost" in k for k in kept)
    costs = [k["val_perplexity_cost"] for k in kept]
    assert costs == sorted(costs, reverse=True) and costs[0] > 0  # most sensitive first
    n = side["perplexity_budget"]["windows"]
    assert n == min(64, len(val.x)) and len(side["perplexity_budget"]["sensitivity"]) == 9
    x, y = lm_windows(val, n, "budget")  # evenly spaced over the split
    assert len(x) == n and graph_perplexity(res.artifact, x, y) == pytest.approx(m["budget_val_perplexity"], rel=1e-4)


def test_generous_budget_keeps_every_matmul_quantised(lm, tmp_path):
    src, _, val = lm
    res = quantize_dynamic_int8(src, {"max_perplexity_increase": 20.0}, out_path=tmp_path / "q.onnx", val=val)
    assert res.metrics["float_layers"] == 0 and res.metrics["budget_met"] and _int8_ops(res.artifact) == 9
    assert res.sidecar["kept_float"] == [] and res.sidecar["perplexity_budget"]["sensitivity"] == []


def test_int4_budget_falls_back_the_same_way(lm, tmp_path):
    src, _, val = lm
    cfg = {"block_size": 16, "embeddings": False, "budget_windows": 32}
    free = quantize_int4(src, {**cfg, "max_perplexity_increase": 100.0}, out_path=tmp_path / "free.onnx", val=val)
    rise = free.metrics["budget_increase_pct"]
    assert rise > 0.2 and free.metrics["float_layers"] == 0 and free.sidecar["ops"]["MatMulNBits"] == 9
    res = quantize_int4(src, {**cfg, "max_perplexity_increase": rise / 4}, out_path=tmp_path / "q.onnx", val=val)
    m = res.metrics
    assert m["budget_met"] and m["budget_increase_pct"] <= rise / 4 and 1 <= m["float_layers"] < 9
    assert res.sidecar["ops"]["MatMulNBits"] == 9 - m["float_layers"]
    assert res.sidecar["kept_float"][0]["node"] == res.sidecar["float_layers"][0]


def test_a_budget_held_only_by_all_float_says_so(lm, tmp_path, caplog):
    """The loop's end case: the budget holds only when every candidate is float; the result and a warning say so."""
    src, _, val = lm
    names = [n.name for n in onnx.load(str(src)).graph.node if n.op_type == "MatMul"
             and n.input[1] in {i.name for i in onnx.load(str(src)).graph.initializer}]

    def build(exclude, path):  # quantises everything until every candidate is excluded
        if set(exclude) == set(names):
            shutil.copyfile(src, path)
            return path
        return quantize_dynamic_int8(src, out_path=path).artifact

    first = build([], tmp_path / "all.onnx")
    with caplog.at_level(logging.WARNING):
        res = enforce_perplexity_budget(build, src, first, val, 0.0, candidates=names, work_dir=tmp_path, windows=8,
                                        sensitivity_windows=4)
    assert res.all_float and res.met and res.final_perplexity == pytest.approx(res.fp32_perplexity)
    assert len(res.float_layers) == len(names) and res.metrics()["budget_all_float"] is True
    assert "every one of the 9 weight MatMuls float: no MatMul is quantised" in caplog.text


def test_a_budget_that_all_float_matmuls_cannot_meet_is_an_error(lm, tmp_path):
    """What stays quantised besides the MatMuls (here: a build that ignores the exclusions) costs over the budget."""
    src, _, val = lm
    first = quantize_dynamic_int8(src, out_path=tmp_path / "all.onnx").artifact
    names = ["/m/lm_head/MatMul", "/m/transformer/h.0/mlp/c_fc/MatMul"]

    def build(exclude, path):
        return shutil.copyfile(first, path)

    res = enforce_perplexity_budget(build, src, first, val, 0.0, candidates=names, work_dir=tmp_path, windows=8,
                                    sensitivity_windows=4)
    assert res.all_float and not res.met and res.final_perplexity > res.fp32_perplexity
    err = perplexity_budget_error(res, "lm.onnx")
    assert isinstance(err, AccuracyBudgetError) and err.measured["float_layers"] == names
    assert "even with all 2 weight MatMuls float" in str(err) and "max_perplexity_increase=0.0%" in str(err)


@pytest.mark.parametrize("config, message", [
    ({"smoothquant": {"alpha": 0.0}}, "int8_dynamic.smoothquant.alpha: Input should be greater than 0"),
    ({"smoothquant": {"alpha": 1.5}}, "int8_dynamic.smoothquant.alpha: Input should be less than or equal to 1"),
    ({"max_perplexity_increase": -1}, "int8_dynamic.max_perplexity_increase: Input should be greater than or equal"),
    ({"max_perplexity_increase": 1.0}, "max_perplexity_increase needs the validation split"),
    ({"smoothquant": {"alpha": 0.5}}, "smoothquant needs training windows"),
])
def test_bad_lm_quantisation_settings_are_refused_before_work(lm, tmp_path, config, message):
    with pytest.raises(ConfigError, match=message):
        quantize_dynamic_int8(lm[0], config, out_path=tmp_path / "q.onnx")
    assert not (tmp_path / "q.onnx").exists()


def test_smoothquant_on_a_graph_without_a_smoothable_matmul_names_what_it_needs(lm, tmp_path):
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8])
    w = helper.make_tensor_value_info("w", TensorProto.FLOAT, [8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8])
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g", [x, w], [y])
    onnx.save(helper.make_model(graph), str(tmp_path / "nothing.onnx"))
    with pytest.raises(ConfigError, match="no MatMul to smooth; SmoothQuant needs MatMul nodes with a constant 2-D "
                                          "weight whose other input is an activation"):
        quantize_dynamic_int8(tmp_path / "nothing.onnx", {"smoothquant": {"alpha": 0.5}}, out_path=tmp_path / "q.onnx",
                              train=lm[1])
    assert not (tmp_path / "q.onnx").exists()


def test_budget_windows_are_spread_over_the_split():
    from edgekit.techniques.quantize.lm_budget import spread

    assert spread(10, 4).tolist() == [0, 3, 6, 9] and spread(3, 10).tolist() == [0, 1, 2]
    x = np.arange(40).reshape(10, 4)
    xs, ys = lm_windows(Split(x, x + 1), 2, "budget")
    assert xs[:, 0].tolist() == [0, 36] and (ys == xs + 1).all()
    with pytest.raises(ConfigError, match="needs causal-LM data"):
        lm_windows(Split(np.zeros((4, 3, 8, 8), np.float32), np.zeros(4, np.int64)), 2, "int8_dynamic.smoothquant")


def test_weight_only_int8_sits_between_int4_and_fp32_in_size_and_error(lm, tmp_path):
    src, _, val = lm
    x, y = val.x[:16], val.y[:16]
    q4 = quantize_int4(src, {"block_size": 16, "embeddings": False}, out_path=tmp_path / "q4.onnx")
    q8 = quantize_int4(src, {"block_size": 16, "bits": 8}, out_path=tmp_path / "q8.onnx")
    bits = {a.i for n in onnx.load(str(q8.artifact)).graph.node if n.op_type == "MatMulNBits"
            for a in n.attribute if a.name == "bits"}
    assert bits == {8} and q8.sidecar["ops"]["MatMulNBits"] == 9 and q8.sidecar["scheme"]["embeddings"] is False
    assert q4.metrics["size_bytes"] < q8.metrics["size_bytes"] < q8.metrics["fp32_size_bytes"]
    fp32, p4, p8 = (graph_perplexity(p, x, y) for p in (src, q4.artifact, q8.artifact))
    assert abs(p8 - fp32) < abs(p4 - fp32)


def test_8_bit_embeddings_are_refused_with_the_fix():
    with pytest.raises(ConfigError, match="embeddings: true needs bits: 4"):
        quantize_int4("unused.onnx", {"bits": 8, "embeddings": True}, out_path="unused.int8.onnx")
