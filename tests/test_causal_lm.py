"""Causal LMs: offline LM corpus, KV-cache ONNX export, weight-only INT4 / dynamic INT8, decode helpers, errors.

Models are tiny (2 layers, hidden 32) and built from configs; nothing is downloaded.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from edgekit.bench.decode import OrtDecoder, TorchDecoder, cache_vs_recompute, generate, greedy, perplexity
from edgekit.data.text_lm import load_lm_corpus, read_text_documents, train_bpe
from edgekit.errors import ConfigError, InputFileError
from edgekit.export.causal_lm import build_causal_lm, check_causal_lm, check_kv_parity, export_causal_lm, load_causal_lm
from edgekit.techniques.quantize.int4 import INT4_TECHNIQUE, quantize_dynamic_int8, quantize_int4

TINY = dict(n_layer=2, n_embd=32, n_head=2, n_positions=64)


def _tiny(arch="gpt2", vocab=500, **kw):
    return build_causal_lm(arch, vocab_size=vocab, **{**TINY, **kw})


def _ops(path):
    return [n.op_type for n in onnx.load(str(path)).graph.node]


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    rng = np.random.default_rng(0)
    words = ["model", "edge", "token", "cache", "layer", "python", "export", "quantise", "decode", "graph"]
    paras = [" ".join(rng.choice(words, 40)) + "." for _ in range(40)]
    p = tmp_path_factory.mktemp("text") / "corpus.txt"
    p.write_text("\n\n".join(paras), encoding="utf-8")
    return p


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_kv_cache_graph_matches_pytorch_over_decode_steps(tmp_path, arch):
    model = _tiny(arch)
    layout = export_causal_lm(model, tmp_path / "lm.onnx")
    graph = onnx.load(str(tmp_path / "lm.onnx")).graph
    assert [i.name for i in graph.input] == layout.input_names
    assert [o.name for o in graph.output] == layout.output_names
    assert "Gemm" not in _ops(tmp_path / "lm.onnx")  # GPT-2 Conv1D became Linear → MatMul
    parity = check_kv_parity(model, tmp_path / "lm.onnx", prompt_len=8, steps=5)
    assert parity["max_abs_diff"] < 1e-4 and parity["greedy_match"] == 1.0


def test_greedy_with_cache_on_ort_equals_pytorch(tmp_path):
    model = _tiny()
    export_causal_lm(model, tmp_path / "lm.onnx")
    prompt = np.array([[5, 17, 42, 7]])
    ort_tokens = greedy(OrtDecoder(tmp_path / "lm.onnx", max_positions=64), prompt, 12)
    assert ort_tokens == greedy(TorchDecoder(model), prompt, 12)
    with torch.no_grad():
        ref = model.generate(torch.from_numpy(prompt), max_new_tokens=12, do_sample=False)[0, 4:].tolist()
    assert ort_tokens == ref


def test_top_k_sampling_is_seeded_and_stays_in_the_top_k(tmp_path):
    model = _tiny()
    export_causal_lm(model, tmp_path / "lm.onnx")
    dec, prompt = OrtDecoder(tmp_path / "lm.onnx"), np.array([[5, 17, 42, 7]])
    a, b = generate(dec, prompt, 10, top_k=5, seed=1), generate(dec, prompt, 10, top_k=5, seed=1)
    assert a == b and a != generate(dec, prompt, 10, top_k=5, seed=2)
    logits = dec.full(np.concatenate([prompt, [a[:-1]]], axis=1))[3:]  # the distribution each token was drawn from
    for tok, row in zip(a, logits):
        assert tok in np.argsort(row)[-5:]
    assert generate(dec, prompt, 6, top_k=1, seed=9) == greedy(dec, prompt, 6)
    with pytest.raises(ConfigError, match="top_k must be >= 1"):
        generate(dec, prompt, 4, top_k=0)


def test_perplexity_is_the_same_through_ort_and_torch(tmp_path):
    model = _tiny()
    export_causal_lm(model, tmp_path / "lm.onnx")
    blocks = np.random.default_rng(0).integers(0, 500, (3, 17))
    p_torch = perplexity(TorchDecoder(model), blocks)["ppl"]
    p_ort = perplexity(OrtDecoder(tmp_path / "lm.onnx"), blocks)["ppl"]
    assert p_ort == pytest.approx(p_torch, rel=1e-4)
    assert 300 < p_torch < 900  # an untrained model is close to uniform over 500 tokens


def test_cache_and_recompute_give_one_timing_per_round(tmp_path):
    model = _tiny()
    export_causal_lm(model, tmp_path / "lm.onnx")
    for dec in (OrtDecoder(tmp_path / "lm.onnx"), TorchDecoder(model)):
        ms = cache_vs_recompute(dec, past=16, rounds=3, inner=2)
        assert set(ms) == {"cache", "recompute"} and all(len(v) == 3 and (v > 0).all() for v in ms.values())


def test_int4_file_is_under_0_3x_and_logits_stay_close(tmp_path):
    model = _tiny(vocab=4000)
    export_causal_lm(model, tmp_path / "lm.onnx")
    res = quantize_int4(tmp_path / "lm.onnx", {"block_size": 32}, out_path=tmp_path / "lm.int4.onnx")
    assert res.metrics["size_ratio"] <= 0.3
    assert (tmp_path / "lm.int4.onnx").stat().st_size <= 0.3 * (tmp_path / "lm.onnx").stat().st_size
    ops = _ops(tmp_path / "lm.int4.onnx")
    assert ops.count("MatMulNBits") == res.sidecar["ops"]["MatMulNBits"] >= 9  # 4 per block × 2 + LM head
    assert "GatherBlockQuantized" in ops  # embeddings quantised too
    nbits = [n for n in onnx.load(str(tmp_path / "lm.int4.onnx")).graph.node if n.op_type == "MatMulNBits"]
    assert all({a.name: a.i for a in n.attribute}["accuracy_level"] == 4 for n in nbits)
    res8 = quantize_dynamic_int8(tmp_path / "lm.onnx", out_path=tmp_path / "lm.int8.onnx")
    assert res8.sidecar["ops"]["MatMulInteger"] >= 9
    prompt = np.array([[3, 1, 4, 1, 5, 9, 2, 6]])
    ref = OrtDecoder(tmp_path / "lm.onnx").full(prompt)
    for name in ("lm.int4.onnx", "lm.int8.onnx"):
        q = OrtDecoder(tmp_path / name).full(prompt)
        assert np.linalg.norm(q - ref) / np.linalg.norm(ref) < 0.15, name
        assert np.corrcoef(q.ravel(), ref.ravel())[0, 1] > 0.98, name


def test_int4_and_int8_take_paths_relative_to_the_working_directory(tmp_path, monkeypatch):
    """ORT's quantisers run in a scratch working directory; a user's relative paths must still mean theirs."""
    monkeypatch.chdir(tmp_path)
    export_causal_lm(_tiny(vocab=1000), "lm.onnx")
    assert quantize_int4("lm.onnx", {"block_size": 16}, out_path="lm.int4.onnx").sidecar["ops"]["MatMulNBits"] > 0
    assert quantize_dynamic_int8("lm.onnx", out_path="lm.int8.onnx").sidecar["ops"]["MatMulInteger"] > 0
    assert (tmp_path / "lm.int4.onnx").is_file() and (tmp_path / "lm.int8.onnx").is_file()


def test_int4_is_a_technique_on_onnx_files(tmp_path):
    from edgekit.techniques.base import technique

    export_causal_lm(_tiny(vocab=1000), tmp_path / "lm.onnx")
    t = technique("int4")
    assert t is INT4_TECHNIQUE
    res = t.apply(tmp_path / "lm.onnx", {"block_size": 16, "embeddings": False}, out_path=tmp_path / "q.onnx")
    assert res.artifact == tmp_path / "q.onnx" and "GatherBlockQuantized" not in _ops(res.artifact)
    assert t.variant_suffix(t.config(block_size=16)) == "int4b16"


@pytest.mark.parametrize("block, message", [(128, "does not divide the input size"), (48, "must be one of")])
def test_int4_block_size_that_does_not_fit_is_refused_before_work(tmp_path, block, message):
    export_causal_lm(_tiny(), tmp_path / "lm.onnx")
    with pytest.raises(ConfigError, match=message):
        quantize_int4(tmp_path / "lm.onnx", {"block_size": block}, out_path=tmp_path / "q.onnx")
    assert not (tmp_path / "q.onnx").exists()


def test_corpus_is_deterministic_and_split_by_document(text_file):
    a = load_lm_corpus({"path": str(text_file), "block_size": 16, "vocab_size": 300}, seed=0)
    b = load_lm_corpus({"path": str(text_file), "block_size": 16, "vocab_size": 300}, seed=0)
    c = load_lm_corpus({"path": str(text_file), "block_size": 16, "vocab_size": 300}, seed=1)
    assert all(np.array_equal(a.ids[s], b.ids[s]) for s in ("train", "val", "test"))
    assert a.tokenizer.get_vocab() == b.tokenizer.get_vocab()
    assert a.documents != c.documents
    docs = [set(a.documents[s]) for s in ("train", "val", "test")]
    assert not (docs[0] & docs[1] or docs[0] & docs[2] or docs[1] & docs[2])
    blocks = a.blocks("val")
    assert blocks.shape[1] == 17 and blocks.dtype == np.int64
    assert np.array_equal(blocks[0, 1:], a.ids["val"][1:17])  # targets are the inputs shifted by one
    assert np.array_equal(blocks[1, 0], blocks[0, -1])  # non-overlapping windows share one boundary token


def test_tokenizer_is_trained_on_the_training_split_only(tmp_path):
    unique = ["quokka", "zyzzyva", "axolotl", "pangolin", "narwhal", "okapi", "tapir", "dugong", "gharial", "saiga"]
    docs = [f"the {w} and the {w} " * 15 for w in unique]  # each document has its own word
    p = tmp_path / "t.txt"
    p.write_text("\n\n".join(docs))
    corpus = load_lm_corpus({"path": str(p), "block_size": 8, "vocab_size": 600}, seed=3)
    texts = read_text_documents(p)
    vocab = corpus.tokenizer.get_vocab()
    held_out = corpus.documents["val"] + corpus.documents["test"]
    assert held_out
    for name in held_out:
        word = texts[name].split()[1]
        assert "Ġ" + word not in vocab, f"held-out word '{word}' leaked into the tokenizer"
    for name in corpus.documents["train"]:
        assert "Ġ" + texts[name].split()[1] in vocab
    assert train_bpe(docs, 300).get_vocab() == train_bpe(docs, 300).get_vocab()


def test_pydoc_lm_is_a_registered_dataset():
    from edgekit.data import load_data

    splits = load_data({"name": "pydoc_lm", "normalize": False, "shape": [64]}, seed=0)
    assert splits.train.x.dtype == np.int64 and splits.train.x.shape[1] == 64 and splits.task == "causal-lm"
    assert np.array_equal(splits.train.x[:, 1:], splits.train.y[:, :-1])  # targets: the window shifted by one
    assert splits.train.x[1, 0] == splits.train.y[0, -1]  # windows follow each other in the token stream
    assert 3000 < splits.num_classes <= 4000 and splits.train.x.max() < splits.num_classes  # data.vocab_size 4000
    default = load_data({"name": "pydoc_lm", "shape": [64]}, seed=0)  # normalize (default on) leaves token ids alone
    assert default.train.x.dtype == np.int64 and np.array_equal(default.train.x, splits.train.x)


def test_text_that_is_not_utf8_is_refused(tmp_path):
    p = tmp_path / "latin1.txt"
    p.write_bytes("caf\xe9 au lait\n\nsecond\n\nthird".encode("latin-1"))
    with pytest.raises(InputFileError, match="not UTF-8 text"):
        load_lm_corpus({"path": str(p)})
    with pytest.raises(InputFileError, match="not found"):
        load_lm_corpus({"path": str(tmp_path / "missing.txt")})


def test_missing_hf_directory_and_model_without_lm_head_are_clear_errors(tmp_path):
    from transformers import GPT2Config, GPT2Model

    with pytest.raises(InputFileError, match="model directory not found.*never downloads"):
        load_causal_lm(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputFileError, match="no config.json"):
        load_causal_lm(tmp_path / "empty")
    headless = GPT2Model(GPT2Config(vocab_size=100, n_layer=1, n_embd=16, n_head=2, n_positions=32))
    headless.save_pretrained(tmp_path / "headless")
    with pytest.raises(ConfigError, match="GPT2Model, which has no causal-LM head"):
        load_causal_lm(tmp_path / "headless")
    with pytest.raises(ConfigError, match="no causal-LM head"):
        check_causal_lm(headless)
    with pytest.raises(ConfigError, match="no causal-LM head"):
        export_causal_lm(headless, tmp_path / "x.onnx")


def test_saved_causal_lm_round_trips_from_a_local_directory(tmp_path):
    model = _tiny("llama")
    model.save_pretrained(tmp_path / "m")
    again = load_causal_lm(tmp_path / "m")
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, again(ids).logits, atol=1e-6)


def test_generation_bad_input_is_refused(tmp_path):
    model = _tiny()
    dec = TorchDecoder(model)
    with pytest.raises(ConfigError, match="max_new_tokens must be > 0"):
        greedy(dec, np.array([[1, 2]]), 0)
    with pytest.raises(ConfigError, match="exceed the model's context of 64"):
        greedy(dec, np.arange(60)[None], 8)
    with pytest.raises(ConfigError, match="multiple of n_head"):
        build_causal_lm("gpt2", vocab_size=50, n_layer=1, n_embd=30, n_head=4, n_positions=16)
    with pytest.raises(ConfigError, match="unknown causal LM architecture 'gpt3'"):
        build_causal_lm("gpt3", vocab_size=50, n_layer=1, n_embd=32, n_head=4, n_positions=16)
