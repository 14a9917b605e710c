"""Depth and width pruning of decoder LMs (zoo gpt_lm GPT-2 / Llama style, HF GPT-2 / Llama): heads (whole KV groups
under grouped-query attention), FFN neurons, blocks; importance from a calibration pass; reload, KV-cache export
after pruning; the prune stage of a causal-LM recipe."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from _helpers.text import tiny_corpus

from edgekit.data.splits import Split
from edgekit.errors import ConfigError, ExportError
from edgekit.models import create_model, load_checkpoint, save_checkpoint
from edgekit.techniques.prune.prune import prune

pytest.importorskip("transformers")

NO_FT = {"epochs": 0}
V, T = 100, 16


def _lm(kind: str, seed: int = 0, **over):
    torch.manual_seed(seed)
    if kind in ("gpt2", "llama"):  # zoo gpt_lm; llama: 4 query heads share 2 KV heads
        return create_model("gpt_lm", vocab_size=V, n_layer=2, n_embd=32, n_head=4, n_positions=32, arch=kind,
                            **over).eval()
    cfg = {"model_type": "gpt2", "n_layer": 2, "n_embd": 32, "n_head": 4, "n_positions": 32} if kind == "hf_gpt2" \
        else {"model_type": kind[3:], "num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 4,
              "num_key_value_heads": 2 if kind == "hf_qwen2" else 4, "intermediate_size": 64,
              "max_position_embeddings": 32}
    return create_model("hf", config={**cfg, "vocab_size": V, **over}, task="causal-lm").eval()


def _windows(n: int = 16, seed: int = 0) -> Split:
    x = np.random.default_rng(seed).integers(0, V, (n, T)).astype(np.int64)
    return Split(x, np.roll(x, -1, axis=1))


def _logits(model, x) -> np.ndarray:
    with torch.no_grad():
        return model(input_ids=torch.from_numpy(np.asarray(x))).logits.numpy()


def _attn(model, i: int = 0):
    body = model.transformer.h if hasattr(model, "transformer") else model.model.layers
    blk = body[i]
    return blk.attn if hasattr(blk, "attn") else blk.self_attn


@pytest.mark.parametrize("kind", ["gpt2", "llama", "hf_gpt2", "hf_llama", "hf_qwen2"])
def test_heads_and_ffn_shrink_consistently_and_the_checkpoint_rebuilds_the_same_logits(kind, tmp_path):
    m, data = _lm(kind), _windows()
    res = prune(m, {"heads": 0.5, "ffn": 0.5, "round_to": 8, "head_importance": "l2", "finetune": NO_FT},
                example_input=data.x[:2], train=data)
    p, a = res.model, _attn(res.model)
    if kind in ("gpt2", "hf_gpt2"):  # packed c_attn Conv1D [in, 3 * heads * 8]: two heads of width 8 left
        assert (a.num_heads, a.split_size, a.head_dim) == (2, 16, 8)
        assert tuple(a.c_attn.weight.shape) == (32, 48) and tuple(a.c_proj.weight.shape) == (16, 32)
        mlp = p.transformer.h[0].mlp
        assert tuple(mlp.c_fc.weight.shape) == (32, 64) and tuple(mlp.c_proj.weight.shape) == (64, 32)
    else:
        q, k = a.q_proj.weight.shape[0], a.k_proj.weight.shape[0]
        # zoo llama / qwen2: 2 KV groups of 2 query heads -> one group left; HF llama (no grouping): 2 of 4 heads
        grouped = kind in ("llama", "hf_qwen2")
        assert (q, k) == ((16, 8) if grouped else (16, 16)) and a.o_proj.in_features == 16
        assert a.num_key_value_groups == (2 if grouped else 1)
        mlp = p.model.layers[0].mlp
        assert mlp.gate_proj.out_features == mlp.up_proj.out_features == mlp.down_proj.in_features
    assert res.macs_after < 0.7 * res.macs_before
    heads = [r for r in res.layers if r["kind"] == "heads"]
    assert {r["after"] for r in heads} == {2}
    ref = _logits(p, data.x[:2])
    save_checkpoint(p, tmp_path / "p.pt")
    q_model, _ = load_checkpoint(tmp_path / "p.pt")  # weights_only: no pickled code
    np.testing.assert_array_equal(_logits(q_model, data.x[:2]), ref)
    assert m.config.num_hidden_layers == 2 and _attn(m).head_dim == 8  # the input model is left as it was


def _silence(model, kind: str) -> None:
    """GPT-2: heads 1 and 3 and FFN neurons 64.. output exactly zero. Llama: KV group 1 (query heads 2, 3) and FFN
    neurons 48.. output zero."""
    with torch.no_grad():
        for i in range(2):
            a = _attn(model, i)
            if kind == "gpt2":
                for h in (1, 3):  # value columns of head h in the packed [q | k | v] Conv1D
                    a.c_attn.weight[:, 64 + h * 8:64 + (h + 1) * 8] = 0
                    a.c_attn.bias[64 + h * 8:64 + (h + 1) * 8] = 0
                mlp = model.transformer.h[i].mlp
                mlp.c_fc.weight[:, 64:] = 0
                mlp.c_fc.bias[64:] = 0
            else:
                a.v_proj.weight[8:] = 0
                model.model.layers[i].mlp.up_proj.weight[48:] = 0


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
@pytest.mark.parametrize("importance", ["l2", "taylor"])
def test_silent_heads_and_neurons_are_removed_and_the_logits_do_not_change(kind, importance):
    m, data = _lm(kind), _windows()
    _silence(m, kind)
    res = prune(m, {"heads": 0.5, "ffn": 0.5, "round_to": 8, "head_importance": importance, "finetune": NO_FT},
                example_input=data.x[:2], train=data)
    kept = [r["kept"] for r in res.layers if r["kind"] == "heads"]
    assert kept == ([[0, 2], [0, 2]] if kind == "gpt2" else [[0, 1], [0, 1]])
    np.testing.assert_allclose(_logits(res.model, data.x[:4]), _logits(m, data.x[:4]), atol=1e-5)


def test_depth_drops_the_block_whose_absence_changes_the_next_token_distribution_least(tmp_path):
    m, data = _lm("gpt2"), _windows()
    with torch.no_grad():  # block 1 adds nothing to the residual stream: removing it changes nothing
        blk = m.transformer.h[1]
        for proj in (blk.attn.c_proj, blk.mlp.c_proj):
            proj.weight.zero_()
            proj.bias.zero_()
    res = prune(m, {"depth": 1, "finetune": NO_FT}, example_input=data.x[:2], train=data)
    kl = res.history[0]["layer_kl"]
    assert res.history[0]["dropped_layers"] == [1] and kl[1] < 1e-6 < kl[0]
    p = res.model
    assert len(p.transformer.h) == 1 and p.config.num_hidden_layers == 1 and p.edgekit_arch["kwargs"]["n_layer"] == 1
    np.testing.assert_allclose(_logits(p, data.x[:2]), _logits(m, data.x[:2]), atol=1e-5)
    save_checkpoint(p, tmp_path / "d.pt")
    np.testing.assert_array_equal(_logits(load_checkpoint(tmp_path / "d.pt")[0], data.x[:2]),
                                  _logits(p, data.x[:2]))


@pytest.mark.parametrize("kind,cfg", [("gpt2", {"heads": 0.5, "layers": [0]}), ("llama", {"heads": 0.5, "ffn": 0.5})])
def test_kv_cache_export_of_a_pruned_decoder_reads_heads_from_the_modules(kind, cfg, tmp_path):
    from edgekit.export.causal_lm import check_kv_parity, export_causal_lm

    m, data = _lm(kind), _windows()
    res = prune(m, {**cfg, "round_to": 8, "finetune": NO_FT}, example_input=data.x[:2], train=data)
    layout = export_causal_lm(copy.deepcopy(res.model), tmp_path / "p.onnx")
    # the config still says 4 heads (2 KV heads for llama): the cache shape comes from the pruned modules
    assert (layout.n_layers, layout.kv_heads, layout.head_dim) == ((1, 2, 8) if kind == "gpt2" else (2, 1, 8))
    parity = check_kv_parity(res.model, tmp_path / "p.onnx")
    assert parity["max_abs_diff"] < 1e-4 and parity["greedy_match"] == 1.0


def test_uneven_kv_heads_are_refused_by_the_kv_cache_export(tmp_path):
    from edgekit.export.causal_lm import export_causal_lm

    m, data = _lm("gpt2"), _windows()
    res = prune(m, {"heads": 0.5, "exclude": {"names": ["transformer.h.1.attn.c_attn"]}, "finetune": NO_FT},
                example_input=data.x[:2], train=data)
    with pytest.raises(ExportError, match="keep different key/value head counts"):
        export_causal_lm(res.model, tmp_path / "x.onnx")


def test_kd_recovery_uses_the_per_token_loss_and_lowers_the_loss_vs_the_unpruned_teacher():
    m, data = _lm("gpt2"), _windows(32)
    val = _windows(8, seed=1)
    res = prune(m, {"heads": 0.5, "ffn": 0.5, "round_to": 8, "temperature": 2.0, "alpha": 0.5,
                    "finetune": {"epochs": 2, "lr": 3e-3, "batch_size": 8, "optimizer": "adamw"}},
                example_input=data.x[:2], train=data, val=val, teacher=m)
    hist = res.history[0]
    assert hist["kd"] is True and len(hist["finetune"]) == 2
    assert 0 <= res.val_accuracy <= 1  # token accuracy of the next-token predictions


@pytest.mark.parametrize("kind,cfg,match", [
    ("gpt2", {"heads": 0.9}, "removes all 4 heads"),
    ("llama", {"heads": 0.8}, "removes all 2 key/value head groups"),
    ("gpt2", {"layers": [0, 1]}, "removes all 2 encoder layers"),
    ("gpt2", {"depth": 2}, "keeps all 2"),
])
def test_bad_decoder_pruning_is_refused_before_any_work(kind, cfg, match):
    m, data = _lm(kind), _windows()
    with pytest.raises(ConfigError, match=match):
        prune(m, {**cfg, "finetune": NO_FT}, example_input=data.x[:2], train=data)


def test_an_hf_decoder_edgekit_cannot_prune_names_the_supported_ones():
    torch.manual_seed(0)
    m = create_model("hf", config={"model_type": "gpt_neox", "num_hidden_layers": 2, "hidden_size": 32,
                                   "num_attention_heads": 4, "intermediate_size": 64, "vocab_size": V,
                                   "max_position_embeddings": 32}, task="causal-lm").eval()
    data = _windows()
    with pytest.raises(ConfigError, match="GPT2Attention .*LlamaAttention"):
        prune(m, {"heads": 0.5, "finetune": NO_FT}, example_input=data.x[:2], train=data)


# ---------------------------------------------------------------------------------------------- recipe


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return tiny_corpus(tmp_path_factory.mktemp("lm"))


def _recipe(corpus: Path, prune_stage: dict, name: str = "lmprune") -> dict:
    ft = {"epochs": 1, "batch_size": 16, "lr": 0.003, "optimizer": "adamw"}
    return {"name": name, "threads": 1, "seed": 0,
            "model": {"name": "gpt_lm", "kwargs": {"n_layer": 2, "n_embd": 32, "n_head": 4}},
            "data": {"name": "text_lm", "path": str(corpus), "shape": [32], "vocab_size": 260,
                     "split": [0.8, 0.1, 0.1]},
            "stages": [{"type": "train", **ft},
                       {"type": "distill", "name": "student", "student": {"name": "gpt_lm", "n_layer": 2,
                                                                          "n_embd": 32, "n_head": 4},
                        "temperature": 2.0, "alpha": 0.5, "train": ft},
                       {"type": "prune", "input": "student", "name": "student-pruned", "teacher": "parent",
                        **prune_stage},
                       {"type": "int4", "input": "student-pruned", "block_size": 16}],
            "benchmark": {"rounds": 2, "generation": {"prompt_tokens": 8, "new_tokens": 8, "past": 31,
                                                      "samples": 1, "sample_tokens": 8}}}


def _write(tmp_path: Path, recipe: dict) -> Path:
    p = tmp_path / f"{recipe['name']}.yaml"
    p.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return p


@pytest.mark.slow
def test_lm_recipe_trains_distils_prunes_quantises_and_reports(corpus, tmp_path):
    from edgekit._io import read_sidecar
    from edgekit.pipeline import run_recipe

    stage = {"heads": 0.5, "ffn": 0.5, "round_to": 16, "head_importance": "l2", "temperature": 2.0, "alpha": 0.5,
             "finetune": {"epochs": 1, "batch_size": 16, "lr": 0.002, "optimizer": "adamw"}}
    res = run_recipe(_write(tmp_path, _recipe(corpus, stage)), runs_dir=tmp_path / "runs", name="r")
    pruned = res.variants["student-pruned"]
    assert pruned.metrics["macs_fraction"] < 0.8 and pruned.metrics["val_perplexity_torch"] > 1
    assert read_sidecar(pruned.onnx)["kv_cache"]["kv_heads"] == 2
    assert read_sidecar(pruned.onnx)["kv_parity"]["max_abs_diff"] < 1e-3
    q = res.variants["student-pruned-int4b16"].metrics
    assert abs(q["test_perplexity"] / pruned.metrics["test_perplexity_torch"] - 1) < 0.1
    report = json.loads((res.run_dir / "report.json").read_text())
    assert {"student-pruned", "student-pruned-int4b16"} <= {r["case"] for r in report["variants"]}
    ckpt, _ = load_checkpoint(pruned.checkpoint)
    assert _attn(ckpt).num_heads == 2


@pytest.mark.parametrize("stage,match", [
    ({"ratio": 0.3}, "stages[2]: channel pruning (ratio) is not supported for causal LMs"),
    ({"method": "2:4"}, "stages[2].method: '2:4' is not supported for causal LMs"),
    ({"heads": 0.5, "speedup_target": 1.5}, "stages[2].speedup_target: measured speed targets are not supported"),
    ({"heads": 0.9}, "stages[2]: prune.heads 0.9 removes all 4 heads of layer transformer.h.0"),
    ({"ffn": 0.6875, "round_to": 8}, "stages[3].block_size: 16 does not divide the input size(s) [40]"),
])
def test_lm_prune_stage_bad_input_is_refused_before_any_work(corpus, tmp_path, capsys, stage, match):
    from edgekit.cli.main import main

    path = _write(tmp_path, _recipe(corpus, {**stage, "finetune": {"epochs": 0}}, name="bad"))
    assert main(["--quiet", "recipe", "validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err
