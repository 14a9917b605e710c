"""Structured pruning of transformer encoders: attention heads, FFN neurons, whole layers (HF and zoo ViT)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from _helpers.hf_models import TINY_BERT, TINY_VIT, tiny_bert_dir, token_split

from edgekit.errors import ConfigError
from edgekit.models import create_model, load_checkpoint, save_checkpoint
from edgekit.techniques.prune.prune import prune

pytest.importorskip("transformers")

NO_FT = {"epochs": 0}
BERT4 = {**TINY_BERT, "num_attention_heads": 4}  # hidden 32: four heads of width 8


def _bert(seed: int = 0, **cfg):
    torch.manual_seed(seed)
    return create_model("hf", config={**BERT4, **cfg}, num_classes=3, vocab_size=50).eval()


def _logits(model, split):
    x = split.x if isinstance(split.x, dict) else {"pixel_values": split.x}
    with torch.no_grad():
        return model(**{k: torch.from_numpy(np.asarray(v)) for k, v in x.items()}).logits.numpy()


def _linear_shapes(model, prefix):
    return {n: tuple(m.weight.shape) for n, m in model.named_modules()
            if n.startswith(prefix) and isinstance(m, torch.nn.Linear)}


def test_silent_heads_and_neurons_are_the_ones_removed_and_logits_do_not_change():
    m = _bert()
    with torch.no_grad():  # heads 1 and 3 output nothing, FFN neurons 32.. are dead (GELU(0) = 0)
        for layer in m.bert.encoder.layer:
            for h in (1, 3):
                layer.attention.self.value.weight[h * 8:(h + 1) * 8] = 0
                layer.attention.self.value.bias[h * 8:(h + 1) * 8] = 0
            layer.intermediate.dense.weight[32:] = 0
            layer.intermediate.dense.bias[32:] = 0
    x = token_split(n=8)
    res = prune(m, {"heads": 0.5, "ffn": 0.5, "round_to": 8, "finetune": NO_FT}, example_input=x.x, train=x)
    p = res.model
    heads = [r for r in res.layers if r["kind"] == "heads"]
    assert [r["kept"] for r in heads] == [[0, 2], [0, 2]] and {r["after"] for r in heads} == {2}
    att = p.bert.encoder.layer[0].attention.self
    assert (att.num_attention_heads, att.attention_head_size, att.all_head_size) == (2, 8, 16)
    assert tuple(att.query.weight.shape) == (16, 32) and tuple(p.bert.encoder.layer[0].output.dense.weight.shape) \
        == (32, 32)
    assert p.config.intermediate_size == 32 and p.edgekit_arch["kwargs"]["config"]["intermediate_size"] == 32
    np.testing.assert_allclose(_logits(p, x), _logits(m, x), atol=1e-5)
    assert res.macs_after < 0.6 * res.macs_before and res.params_after < res.params_before
    assert m.bert.encoder.layer[0].attention.self.query.out_features == 32  # the input model is left as it was


def test_a_head_pruned_bert_exports_fused_with_parity(tmp_path):
    """The config still says 4 heads after pruning to 2: fusion is given the pruned geometry (2 heads, 16 wide)
    instead of trusting it (trusting it fused a wrong Attention that the parity check had to throw away), and the
    Attention op is fused (detection from the graph alone missed it)."""
    import json

    from edgekit.export import export_onnx
    from edgekit.export.fuse import fusion_settings

    x = token_split(n=4)
    p = prune(_bert(), {"heads": 0.5, "ffn": 0.5, "round_to": 8, "finetune": NO_FT}, example_input=x.x).model
    assert p.config.num_attention_heads == 4 and fusion_settings(p) == ("bert", 2, 16)
    assert fusion_settings(_bert()) == ("bert", 4, 32)
    export_onnx(p, x.x, tmp_path / "p.onnx", parity_data=x.x)
    fusion = json.loads((tmp_path / "p.onnx.json").read_text())["fusion"]
    assert fusion["applied"] and fusion["parity"]["max_abs_diff"] < 1e-4 and fusion["counts"].get("Attention") == 2


@pytest.mark.parametrize("config,task,extra", [
    ({**BERT4, "model_type": "roberta"}, "sequence-classification", {"vocab_size": 50}),
    ({"model_type": "distilbert", "dim": 32, "n_heads": 4, "n_layers": 2, "hidden_dim": 64,
      "max_position_embeddings": 64}, "sequence-classification", {"vocab_size": 50}),
    ({**TINY_VIT, "num_attention_heads": 4}, "image-classification", {"image_size": 8, "in_channels": 1}),
])
def test_roberta_distilbert_and_vit_lose_heads_and_neurons_and_reload(config, task, extra, tmp_path):
    torch.manual_seed(0)
    m = create_model("hf", config=config, task=task, num_classes=3, **extra).eval()
    if task == "image-classification":
        from edgekit.data.splits import Split

        x = Split(np.random.default_rng(0).standard_normal((6, 1, 8, 8)).astype(np.float32), np.arange(6) % 3)
    else:
        x = token_split(n=6)
    res = prune(m, {"heads": 0.25, "ffn": 0.5, "round_to": 16, "finetune": NO_FT}, example_input=x.x, train=x)
    assert [(r["kind"], r["before"], r["after"]) for r in res.layers] == [("heads", 4, 3), ("ffn", 64, 32)] * 2
    assert res.macs_after < res.macs_before and res.params_after < res.params_before
    back, _ = load_checkpoint(save_checkpoint(res.model, tmp_path / "p.pt"))
    np.testing.assert_array_equal(_logits(back, x), _logits(res.model, x))
    from edgekit.models.heads import transformer_blocks

    counts = {getattr(back.get_submodule(b.attention), b.layout.counts[0]) for b in transformer_blocks(back)}
    assert counts == {3}  # the reloaded modules' head-count attributes follow their weights


def test_checkpoint_of_a_pruned_bert_rebuilds_with_uneven_heads_and_fewer_layers(tmp_path):
    m = _bert(num_hidden_layers=3)
    x = token_split(n=8)
    res = prune(m, {"heads": 0.5, "layers": [1], "ffn": 0.25, "round_to": 16, "finetune": NO_FT},
                example_input=x.x, train=x)
    p = res.model
    assert len(p.bert.encoder.layer) == 2 and p.config.num_hidden_layers == 2
    assert [r["kind"] for r in res.layers] == ["heads", "ffn", "layer", "heads", "ffn"]
    assert res.layers[1]["after"] == 48 and p.bert.encoder.layer[1].intermediate.dense.out_features == 48
    with torch.no_grad():  # uneven per-layer heads: checkpoints hold them through the Linear shapes
        torch.nn.init.zeros_(p.bert.encoder.layer[1].attention.self.query.weight)
    path = save_checkpoint(p, tmp_path / "p.pt")
    payload = torch.load(path, weights_only=True)
    assert payload["arch"]["kwargs"]["config"]["num_hidden_layers"] == 2
    back, _ = load_checkpoint(path)
    np.testing.assert_array_equal(_logits(back, x), _logits(p, x))
    assert _linear_shapes(back, "bert.encoder") == _linear_shapes(p, "bert.encoder")


def test_depth_removes_the_layer_whose_absence_changes_the_outputs_least(tmp_path):
    m = _bert(num_hidden_layers=3)
    with torch.no_grad():  # layer 1 adds nothing to the residual stream: post-LN of an LN output is ~ identity
        for lin in (m.bert.encoder.layer[1].attention.output.dense, m.bert.encoder.layer[1].output.dense):
            lin.weight.zero_()
            lin.bias.zero_()
        m.classifier.weight.mul_(100)  # logits far from uniform, so KL tells layers apart
    x = token_split(n=16)
    res = prune(m, {"depth": 2, "finetune": NO_FT}, example_input=x.x, train=x)
    kl = res.history[0]["layer_kl"]
    assert res.history[0]["dropped_layers"] == [1] and kl[1] < 1e-3 * min(kl[0], kl[2])
    assert len(res.model.bert.encoder.layer) == 2 and res.model.config.num_hidden_layers == 2
    np.testing.assert_allclose(_logits(res.model, x), _logits(m, x), atol=1e-3)
    back, _ = load_checkpoint(save_checkpoint(res.model, tmp_path / "d.pt"))
    np.testing.assert_array_equal(_logits(back, x), _logits(res.model, x))


def test_kd_recovery_and_taylor_importance_run_on_named_int64_inputs():
    m = _bert()
    train, val = token_split(n=32), token_split(n=16, seed=1)
    seen = []
    hook = m.bert.embeddings.word_embeddings.register_forward_pre_hook(lambda _m, a: seen.append(a[0].dtype))
    ex = {k: v[:4] for k, v in train.x.items()}  # a plain dict of numpy int64 arrays
    res = prune(m, {"heads": 0.5, "ffn": 0.5, "round_to": 16, "head_importance": "taylor", "taylor_batches": 1,
                    "finetune": {"epochs": 1, "lr": 1e-3, "optimizer": "adamw", "batch_size": 16}},
                example_input=ex, train=train, val=val, teacher=m)
    hook.remove()
    assert seen and set(seen) == {torch.int64}  # token ids were never cast to float
    assert res.history[0]["kd"] is True and res.history[0]["epochs"] == 1 and res.val_accuracy is not None
    assert res.sidecar["prune_target"] == "transformer" and res.metrics["macs_fraction"] < 0.6


def test_zoo_vit_heads_and_ffn_reload_from_the_checkpoint(tmp_path):
    torch.manual_seed(0)
    m = create_model("vit", num_classes=3, image_size=8, patch_size=4, dim=32, depth=2, heads=4).eval()
    x = np.random.default_rng(0).standard_normal((4, 1, 8, 8)).astype(np.float32)
    res = prune(m, {"heads": 0.25, "ffn": 0.5, "layers": [0], "round_to": 16, "finetune": NO_FT}, example_input=x)
    p = res.model
    assert len(p.blocks) == 1 and p.blocks[0].attn.heads == 3 and p.blocks[0].attn.head_dim == 8
    assert p.edgekit_arch["kwargs"]["block_heads"] == [3] and p.edgekit_arch["kwargs"]["depth"] == 1
    back, _ = load_checkpoint(save_checkpoint(p, tmp_path / "v.pt"))
    with torch.no_grad():
        np.testing.assert_array_equal(back(torch.from_numpy(x)).numpy(), p(torch.from_numpy(x)).numpy())


def test_macs_target_scales_heads_and_ffn_to_the_measured_target():
    m = _bert(intermediate_size=128)
    x = token_split(n=8)
    res = prune(m, {"heads": 0.5, "ffn": 0.5, "macs_target": 0.6, "round_to": 8, "finetune": NO_FT},
                example_input=x.x)
    assert abs(res.macs_fraction - 0.6) <= 0.05 and res.search and any(c.get("chosen") for c in res.search)
    assert res.sidecar["prune_target"] == "macs"


@pytest.mark.slow
def test_speedup_target_scales_heads_and_ffn_until_the_measured_speedup_is_met():
    m = _bert(hidden_size=64, intermediate_size=256)
    x = token_split(n=4, t=32).x
    res = prune(m, {"heads": 0.5, "ffn": 0.5, "speedup_target": 1.15, "speed_rounds": 3, "round_to": 16,
                    "speed_backend": "ort-cpu", "speed_threads": 1, "finetune": NO_FT}, example_input=x)
    chosen = [c for c in res.search if abs(c["ratio"] - round(res.ratio, 5)) < 1e-9]
    assert res.sidecar["prune_target"] == "speed" and chosen and chosen[-1]["speedup"] >= 1.15
    assert res.macs_after < res.macs_before


@pytest.mark.parametrize("cfg,match", [
    ({"heads": 0.9}, r"removes all 4 heads of layer bert\.encoder\.layer\.0.*at least one head stays"),
    ({"heads": 0.1}, r"remove nothing .* whole heads"),
    ({"layers": [5]}, r"has 2 encoder layers \(0\.\.1\); \[5\] are outside"),
    ({"layers": [0, 1]}, r"removes all 2 encoder layers"),
    ({"ffn": 0.5, "round_to": 64}, r"at most round_to=64 neurons"),
    ({"depth": 2}, r"depth 2 keeps all 2 encoder layers .* allowed: 1\.\.1"),
    ({"heads": 0.5, "head_importance": "taylor"}, r"'taylor' needs labelled training data"),
])
def test_bad_transformer_pruning_is_refused_before_any_work(cfg, match):
    x = token_split(n=4)
    with pytest.raises(ConfigError, match=match):
        prune(_bert(), {"finetune": NO_FT, **cfg}, example_input=x.x)


@pytest.mark.parametrize("cfg,match", [
    ({"heads": 0.5, "ratio": 0.3}, "ratio apply to channel pruning"),
    ({"heads": 0.5, "steps": 2}, "pruned in one step"),
    ({"layers": [0, 0]}, "distinct layer indices"),
    ({"layers": [0], "depth": 1}, "layers .* or depth .*, not both"),
    ({"layers": [1], "macs_target": 0.5}, "macs_target with transformer pruning .* give heads and/or ffn"),
    ({"layers": [1], "speedup_target": 1.5}, "speedup_target with transformer pruning .* give heads and/or ffn"),
    ({"method": "unstructured", "sparsity": 0.5, "heads": 0.5}, "heads apply to method 'structured'"),
])
def test_transformer_fields_that_clash_are_config_errors(cfg, match):
    with pytest.raises(ConfigError, match=match):
        prune(_bert(), {"finetune": NO_FT, **cfg}, example_input=token_split(n=4).x)


def test_unsupported_attention_and_inconsistent_heads_name_what_is_supported():
    torch.manual_seed(0)
    mp = create_model("hf", config={"model_type": "mpnet", "hidden_size": 32, "num_hidden_layers": 1,
                                    "num_attention_heads": 2, "intermediate_size": 64}, num_classes=3, vocab_size=50)
    with pytest.raises(ConfigError, match=r"MPNet.*cannot prune \(supported: BertSelfAttention .*ViTAttention"):
        prune(mp, {"heads": 0.5, "finetune": NO_FT}, example_input=token_split(n=4).x)
    m = _bert()
    q = m.bert.encoder.layer[1].attention.self.query
    m.bert.encoder.layer[1].attention.self.query = torch.nn.Linear(32, 24)
    del q
    with pytest.raises(ConfigError, match=r"attention bert\.encoder\.layer\.1\.attention\.self is not consistent: "
                                          r"q/k/v widths \[24, 32, 32\]"):
        prune(m, {"heads": 0.5, "finetune": NO_FT}, example_input=token_split(n=4).x)
    with pytest.raises(ConfigError, match="no transformer encoder layers edgekit recognises"):
        prune(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)),
              {"heads": 0.5, "finetune": NO_FT}, example_input=np.zeros((2, 4), np.float32))


class _FixedWidth(torch.nn.Module):
    """A user's layer that scales a Linear's output by a fixed-width buffer (which pruning cannot shrink)."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(8, 64)
        self.register_buffer("scale", torch.linspace(0.5, 1.5, 64))

    def forward(self, x):
        return self.proj(x) * self.scale


def test_a_pruned_graph_that_no_longer_runs_names_the_layer_and_suggests_exclude():
    net = torch.nn.Sequential(_FixedWidth(), torch.nn.ReLU(), torch.nn.Linear(64, 2))
    x = np.zeros((2, 8), np.float32)
    with pytest.raises(ConfigError, match=r"Sequential no longer runs once pruned: layer '0' fails at "
                                          r"test_prune_transformers.py:\d+ in forward\(\).*\(RuntimeError: The size "
                                          r".*Protect it \(prune.exclude: \{names: \['0'\]\}\)"):
        prune(net, {"ratio": 0.5, "round_to": 8, "finetune": NO_FT}, example_input=x)
    with pytest.raises(ConfigError, match="nothing to prune"):  # excluded as suggested: nothing else to prune
        prune(net, {"ratio": 0.5, "round_to": 8, "finetune": NO_FT, "exclude": {"names": ["0"]}}, example_input=x)


@pytest.mark.slow
def test_tiny_text_recipe_trains_distils_prunes_heads_and_quantises_the_pruned_variant(tmp_path):
    import onnx

    from edgekit.data import load_data
    from edgekit.pipeline import run_recipe
    from edgekit.pipeline.recipe import validate_recipe

    vocab = load_data({"name": "doc_topics", "max_length": 16}, seed=0).vocab_size
    bert = tiny_bert_dir(tmp_path / "bert", vocab_size=vocab, num_classes=5, num_attention_heads=4)
    student = {"name": "hf", "config": {**BERT4, "num_hidden_layers": 1}}
    fit = {"epochs": 1, "optimizer": "adamw", "lr": 1e-4, "batch_size": 64}
    recipe = validate_recipe({
        "name": "tiny_text_prune", "seed": 0, "threads": 1,
        "model": {"hf": str(bert), "task": "sequence-classification"},
        "data": {"name": "doc_topics", "max_length": 16},
        "stages": [{"type": "train", "name": "reference", **fit},
                   {"type": "distill", "name": "student", "student": student, "train": fit},
                   {"type": "prune", "input": "student", "heads": 0.5, "ffn": 0.5, "round_to": 16,
                    "finetune": fit},
                   {"type": "export", "input": "student-pruned"},
                   {"type": "quantize", "input": "student-pruned", "name": "student-pruned-int8", "mode": "dynamic"}]})
    variants = run_recipe(recipe, runs_dir=tmp_path / "runs", name="a", report=False).variants
    pruned = variants["student-pruned"]
    assert pruned.meta["prune_target"] == "transformer" and pruned.meta["teacher"] == "student"
    from edgekit.export.fuse import contrib_ops, unfused_path

    assert contrib_ops(pruned.onnx).get("Attention") == 1  # the pruned student is fused like an unpruned one
    dims = {i.name.split("layer.0.")[-1]: list(i.dims) for i in onnx.load(unfused_path(pruned.onnx)).graph.initializer}
    assert dims["attention.self.query.bias"] == dims["attention.self.value.bias"] == [16]  # 2 heads x 8 of 4 x 8
    assert dims["intermediate.dense.bias"] == [32]  # FFN 64 -> 32 neurons
    assert sorted(d for d in dims.values() if d in ([32, 16], [16, 32])) == [[16, 32], [32, 16], [32, 16], [32, 16]]
    model, _ = load_checkpoint(pruned.checkpoint)
    att = model.bert.encoder.layer[0].attention.self
    assert att.num_attention_heads == 2 and model.bert.encoder.layer[0].intermediate.dense.out_features == 32
    assert variants["student-pruned-int8"].onnx.endswith(".onnx")


def test_cli_prunes_heads_ffn_and_layers_of_a_hf_checkpoint(tmp_path):
    from _helpers.runs import run_cli

    src = save_checkpoint(_bert(num_hidden_layers=3), tmp_path / "bert.pt")
    out = tmp_path / "pruned.pt"
    p = run_cli("prune", str(src), "--heads", "0.5", "--ffn", "0.5", "--layers", "2", "--round-to", "16",
                "--out", str(out))
    assert p.returncode == 0, p.stderr
    assert "MACs" in p.stdout and str(out) in p.stdout
    model, meta = load_checkpoint(out)
    assert len(model.bert.encoder.layer) == 2 and meta["signature"]["inputs"][0]["dtype"] == "int64"
    assert {m.attention.self.num_attention_heads for m in model.bert.encoder.layer} == {2}
    bad = run_cli("prune", str(src), "--heads", "0.5", "--layers", "7", "--out", str(tmp_path / "x.pt"))
    assert bad.returncode == 2 and "has 3 encoder layers (0..2); [7] are outside" in bad.stderr
    assert not (tmp_path / "x.pt").exists()
