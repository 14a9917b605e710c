"""Causal-LM recipes through `edgekit run`: train → KD → INT8 dynamic / INT4 → KV-cache report; HF GPT-2 from a local
directory; LM-specific bad input refused before any work (exit 2, nothing written)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from _helpers.text import tiny_corpus

from edgekit.cli.main import main
from edgekit.pipeline import run_recipe

GEN = {"prompt_tokens": 8, "new_tokens": 8, "past": 31, "samples": 1, "sample_tokens": 8}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A tiny corpus: 24 documents of CPython's bundled documentation text."""
    return tiny_corpus(tmp_path_factory.mktemp("lm"))


def _recipe(corpus: Path, **over) -> dict:
    r = {"name": "lm", "threads": 1, "seed": 0,
         "model": {"name": "gpt_lm", "kwargs": {"n_layer": 2, "n_embd": 32, "n_head": 2}},
         "data": {"name": "text_lm", "path": str(corpus), "shape": [32], "vocab_size": 260, "split": [0.8, 0.1, 0.1]},
         "stages": [{"type": "train", "epochs": 1, "batch_size": 16, "lr": 0.003, "optimizer": "adamw"},
                    {"type": "distill", "name": "student", "student": {"name": "gpt_lm", "n_layer": 1, "n_embd": 32,
                                                                       "n_head": 2},
                     "temperature": 2.0, "alpha": 0.5,
                     "train": {"epochs": 1, "batch_size": 16, "lr": 0.003, "optimizer": "adamw"}},
                    {"type": "int8_dynamic", "input": "student"},
                    {"type": "int8_dynamic", "input": "student", "name": "student-int8sq",
                     "smoothquant": {"alpha": 0.5}, "samples": 16, "max_perplexity_increase": 0.0,
                     "budget_windows": 8, "sensitivity_windows": 4},
                    {"type": "int4", "input": "student", "block_size": 16}],
         "benchmark": {"rounds": 2, "generation": GEN}}
    r.update(over)
    return r


def _write(tmp_path: Path, recipe: dict) -> Path:
    p = tmp_path / f"{recipe['name']}.yaml"
    p.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return p


@pytest.fixture(scope="module")
def lm_run(corpus, tmp_path_factory):
    d = tmp_path_factory.mktemp("lmrun")
    recipe = _recipe(corpus)
    recipe["benchmark"]["generation"] = {**GEN, "batches": [1, 4]}
    return run_recipe(_write(d, recipe), runs_dir=d / "runs", name="r")


def _other_backends() -> dict:
    """``{backend: label}`` of the causal-LM backends available here besides the default (OpenVINO)."""
    from edgekit.backends import backend_spec, causal_lm_backends

    return {b: backend_spec(b).label for b in causal_lm_backends()[1:] if backend_spec(b).probe()[0]}


def test_lm_recipe_reports_perplexity_and_tokens_per_second_per_variant(lm_run):
    from edgekit.backends import causal_lm_backends

    report = json.loads((lm_run.run_dir / "report.json").read_text())
    assert report["task"] == "causal-lm"
    cases = {r["case"]: r for r in report["variants"]}
    onnx = ["reference", "student", "student-int8dyn", "student-int8sq", "student-int4b16"]
    others = _other_backends()
    assert set(cases) == {"reference (PyTorch eager fp32)", *onnx, *(f"{v} ({label})" for v in onnx
                                                                      for label in others.values())}
    for r in cases.values():
        assert 1 < r["test_perplexity"] < 300 and r["tokens_per_s"] > 0 and r["prefill_ms"] > 0, r
        assert r["test_bits_per_byte"] > 0
    assert cases["student-int4b16"]["size_bytes"] < 0.5 * cases["student"]["size_bytes"]
    assert cases["student-int8dyn"]["size_bytes"] < cases["student"]["size_bytes"]
    for q in ("student-int8dyn", "student-int8sq", "student-int4b16"):  # quantised graphs vs their float parent
        assert cases[q]["vs_parent"]["parent"] == "student" and cases[q]["vs_parent"]["top1_agreement"] > 80
    # paired speed-ups against both baselines; the baselines themselves are 1.0
    assert cases["reference"]["vs_ort_fp32"]["median"] == 1.0
    assert cases["reference (PyTorch eager fp32)"]["vs_eager"]["median"] == 1.0
    assert all("vs_eager" in r and "vs_ort_fp32" in r for r in cases.values())
    cache = {c["decoder"]: c for c in report["cache_vs_recompute"]}
    assert {"reference", "student-int4b16"} <= set(cache) and all(c["past"] == 31 for c in cache.values())
    assert report["samples"] and set(report["samples"][0]["continuations"]) == set(cases)
    assert "student-int4b16" in report["headline"][0] and "tokens/s" in report["headline"][0]
    qualified = report["gate"]["qualified"]  # per backend, the fastest artifact within 5 % of the reference
    ort = causal_lm_backends()[0]
    assert set(qualified) == {ort, *others}
    fast = [r for r in cases.values() if r["backend"] == ort
            and r["test_perplexity"] <= 1.05 * cases["reference"]["test_perplexity"]]
    assert qualified[ort] == max(fast, key=lambda r: r["tokens_per_s"])["case"]
    md = (lm_run.run_dir / "report.md").read_text()
    assert "KV cache vs recomputing" in md and "Greedy samples" in md
    kept = cases["student-int8sq"]["perplexity_budget"]  # the 0 % budget's float MatMuls, a line in the report
    assert kept is not None and cases["student-int8dyn"]["perplexity_budget"] is None
    assert "## Weight MatMuls kept float by the perplexity budget" in md
    line = next(x for x in md.splitlines() if x.startswith("- student-int8sq: "))
    assert all(f"`{k['node']}`" in line for k in kept["kept_float"]) and (kept["kept_float"] or "none" in line)


def test_lm_int8_stage_records_smoothquant_and_the_perplexity_budget(lm_run):
    q = lm_run.variants["student-int8sq"]
    m, meta = q.metrics, q.meta
    assert m["smoothquant_alpha"] == 0.5 and m["smoothed_matmuls"] == 5  # 1 block × 4 Linear + LM head
    assert meta["smoothquant"]["windows"] == 16
    assert m["max_perplexity_increase"] == 0.0 and m["budget_met"] and m["budget_increase_pct"] <= 0.0
    assert m["float_layers"] == len(meta["kept_float"]) == len(meta["float_layers"])
    assert m["budget_fp32_val_perplexity"] > 1 and meta["perplexity_budget"]["windows"] == 8


@pytest.mark.slow  # the recipe run behind lm_run (~15 s)
def test_lm_report_times_every_variant_on_each_causal_lm_backend_and_at_batch_4(lm_run):
    report = json.loads((lm_run.run_dir / "report.json").read_text())
    cases = {r["case"]: r for r in report["variants"]}
    md = (lm_run.run_dir / "report.md").read_text()
    for backend, label in _other_backends().items():  # OpenVINO: same files, same rounds, same numbers
        for v in ("reference", "student", "student-int8dyn", "student-int4b16"):
            row = cases[f"{v} ({label})"]
            assert row["backend"] == backend and row["artifact"] == f"{label} (KV cache)" and row["size_bytes"]
            assert row["vs_ort_fp32"]["median"] > 0 and row["vs_eager"]["median"] > 0
            rel = 1e-3 if v in ("reference", "student") else 0.05
            assert row["test_perplexity"] == pytest.approx(cases[v]["test_perplexity"], rel=rel)
        sample = report["samples"][0]["continuations"]
        assert sample[f"student ({label})"] == sample["student"]  # greedy parity with ONNX Runtime
        assert f"| student-int4b16 ({label}) | {label} (KV cache) |" in md
    assert report["batches"] == [1, 4]
    batch = {r["case"]: r for r in report["batch_decode"]}
    assert set(batch) == set(cases) and all(r["batch"] == 4 for r in batch.values())
    for r in batch.values():
        assert r["tokens_per_s"] == pytest.approx(4000.0 / r["ms_per_step"]) and r["vs_eager"]["median"] > 0
    assert batch["reference"]["vs_ort_fp32"]["median"] == 1.0
    assert "## Decode at batch 4" in md and "tokens/s (4 sequences)" in md


def test_lm_recipe_records_kv_parity_and_student_init(lm_run):
    from edgekit._io import read_sidecar

    v = lm_run.variants
    for name in ("reference", "student"):
        parity = read_sidecar(v[name].onnx)["kv_parity"]
        assert parity["max_abs_diff"] < 1e-3 and parity["greedy_match"] == 1.0
    assert v["student"].meta["student_init"] == {"from_teacher": True, "teacher_blocks": [0]}
    assert v["student"].meta["losses"] == ["kd", "ce"]
    m = v["student"].metrics
    assert m["val_perplexity_torch"] > 1 and m["val_perplexity_teacher_torch"] > 1
    q = v["student-int4b16"].metrics
    assert q["size_ratio"] < 0.5 and abs(q["val_perplexity"] / m["val_perplexity_torch"] - 1) < 0.1
    assert (lm_run.run_dir / "tokenizer.json").is_file()


def test_llama_style_zoo_decoder_trains_and_exports(corpus, tmp_path):
    r = _recipe(corpus, name="llama", model={"name": "gpt_lm", "kwargs": {"arch": "llama", "n_layer": 2,
                                                                          "n_embd": 32, "n_head": 2}})
    r["stages"] = r["stages"][:1] + [{"type": "int4", "block_size": 16}]
    res = run_recipe(_write(tmp_path, r), runs_dir=tmp_path / "runs", report=False)
    from edgekit._io import read_sidecar

    ref = res.variants["reference"]
    assert read_sidecar(ref.onnx)["kv_cache"]["kv_heads"] == 1  # grouped KV heads (n_head // 2)
    assert ref.metrics["test_perplexity_torch"] > 1
    # INT4 keeps the source opset: RMSNorm's ReduceMean (axes attribute) must still load at opset 17
    q = res.variants["reference-int4b16"].metrics
    assert abs(q["test_perplexity"] / ref.metrics["test_perplexity_torch"] - 1) < 0.1


def _hf_gpt2_dir(corpus: Path, path: Path) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    from edgekit.data.text_lm import read_text_documents, train_bpe

    tok = train_bpe(list(read_text_documents(corpus).values()), 260)
    GPT2LMHeadModel(GPT2Config(vocab_size=tok.get_vocab_size(), n_layer=2, n_embd=32, n_head=2, n_positions=32,
                               bos_token_id=0, eos_token_id=0)).save_pretrained(path)
    tok.save(str(path / "tokenizer.json"))
    return path


def test_hf_gpt2_from_a_local_directory_runs_the_same_recipe_shape(corpus, tmp_path):
    hf = _hf_gpt2_dir(corpus, tmp_path / "gpt2")
    r = _recipe(corpus, name="hfgpt", model={"hf": str(hf), "task": "causal-lm"})
    r["data"] = {**r["data"], "tokenizer": str(hf)}
    r["stages"] = r["stages"][1:2] + [{"type": "int4", "block_size": 16}]  # KD from the HF model as it is → INT4
    r["benchmark"] = {"rounds": 1, "generation": GEN}
    res = run_recipe(_write(tmp_path, r), runs_dir=tmp_path / "runs")
    assert list(res.variants) == ["reference", "student", "student-int4b16"]
    assert res.variants["student"].meta["student_init"]["from_teacher"]
    report = json.loads((res.run_dir / "report.json").read_text())
    assert {r["case"] for r in report["variants"]} >= {"reference (PyTorch eager fp32)", "student-int4b16"}
    from edgekit._io import read_sidecar

    assert read_sidecar(res.variants["reference"].onnx)["kv_parity"]["max_abs_diff"] < 1e-3


def _bad(corpus: Path, case: str) -> tuple:
    r = _recipe(corpus, name=f"bad_{case}")
    if case == "classifier_stage":
        r["stages"].insert(1, {"type": "quantize"})
        return r, "stages[1].type: 'quantize' is not supported for causal-lm recipes"
    if case == "int4_block":
        r["stages"][-1]["block_size"] = 64
        return r, "stages[4].block_size: 64 does not divide the input size(s) [32]"
    if case == "prompt_too_long":
        r["benchmark"]["generation"] = {**GEN, "prompt_tokens": 30}
        return r, "prompt_tokens + new_tokens = 38 is longer than the context of 32 tokens"
    if case == "tokenizer_vocab":
        r["model"]["kwargs"]["vocab_size"] = 500
        return r, "the model's vocabulary has 500 tokens but the data's tokenizer has 260"
    if case == "lm_with_image_data":
        r["data"] = {"name": "digits"}
        r["stages"] = r["stages"][:1]
        return r, "a causal LM needs next-token data"
    if case == "not_utf8":
        bad = corpus.parent / "latin1.txt"
        bad.write_bytes("caf\xe9 au lait\n\nsecond\n\nthird".encode("latin-1"))
        r["data"] = {**r["data"], "path": str(bad)}
        return r, "not UTF-8 text"
    if case == "dynamo_export":
        r["stages"].insert(1, {"type": "export", "exporter": "dynamo"})
        return r, "stages[1].exporter: causal LMs export with the KV cache through the torchscript exporter only"
    if case == "smoothquant_alpha":
        r["stages"][2]["smoothquant"] = {"alpha": 1.5}
        return r, ("stages[2].smoothquant.alpha (line", "Input should be less than or equal to 1")
    if case == "negative_budget":
        r["stages"][3]["max_perplexity_increase"] = -1
        return r, ("stages[3].max_perplexity_increase (line", "Input should be greater than or equal to 0")
    if case == "lm_field_in_classifier":
        r.update(model={"name": "resnet_cifar", "kwargs": {"depth": 8, "width": 0.25}},
                 data={"name": "digits", "image_size": 8, "channels": 3},
                 stages=[{"type": "int8_dynamic", "max_perplexity_increase": 1.0}])
        r.pop("benchmark")
        return r, "stages[0].max_perplexity_increase: needs a causal-LM recipe"
    if case == "feature_transfer":
        r["stages"][1]["attention"] = 1.0
        return r, "stages[1].attention: feature transfer is not supported for causal LMs"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["classifier_stage", "int4_block", "prompt_too_long", "tokenizer_vocab",
                                  "lm_with_image_data", "feature_transfer", "dynamo_export", "not_utf8",
                                  "smoothquant_alpha", "negative_budget", "lm_field_in_classifier"])
def test_lm_bad_input_is_refused_before_any_work(corpus, tmp_path, capsys, case):
    recipe, message = _bad(corpus, case)
    path = _write(tmp_path, recipe)
    runs = tmp_path / "runs"
    parts = message if isinstance(message, tuple) else (message,)
    assert main(["--quiet", "recipe", "validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert all(p in err for p in parts), err
    assert main(["--quiet", "run", str(path), "--runs-dir", str(runs)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("edgekit: error: ") and all(p in err for p in parts) and "Traceback" not in err
    assert not runs.exists()  # nothing written


def test_generation_settings_bounds_are_schema_errors(corpus, tmp_path, capsys):
    r = _recipe(corpus, name="bad_tokens")
    r["benchmark"]["generation"] = {**GEN, "new_tokens": 0}
    assert main(["--quiet", "recipe", "validate", str(_write(tmp_path, r))]) == 2
    assert "benchmark.generation.new_tokens" in capsys.readouterr().err
    r["benchmark"]["generation"] = {**GEN, "batches": [1, 4, 4]}
    assert main(["--quiet", "recipe", "validate", str(_write(tmp_path, r))]) == 2
    assert "benchmark.generation.batches" in capsys.readouterr().err
    r["benchmark"]["generation"] = {**GEN, "batches": [0]}
    assert main(["--quiet", "recipe", "validate", str(_write(tmp_path, r))]) == 2
    assert "benchmark.generation.batches" in capsys.readouterr().err


def test_token_level_loss_and_accuracy_in_the_shared_loop():
    import torch

    from edgekit.core.train import cross_entropy_loss, evaluate
    from edgekit.data.splits import Split
    from edgekit.techniques.distill._losses import soft_kd_loss

    class Echo(torch.nn.Module):  # predicts the input token as the next one
        def forward(self, x):
            return torch.nn.functional.one_hot(x, 7).float() * 10

    x = np.array([[1, 2, 3, 4], [5, 6, 0, 1]], np.int64)
    y = np.array([[1, 2, 0, 0], [5, 6, 0, 1]], np.int64)
    assert evaluate(Echo(), Split(x, y)) == pytest.approx(100 * 6 / 8)
    loss, logits = cross_entropy_loss()(Echo(), torch.from_numpy(x), torch.from_numpy(y))
    assert logits.shape == (2, 4, 7) and loss.item() > 0
    s, t = torch.randn(2, 4, 7), torch.randn(2, 4, 7)
    per_token = soft_kd_loss(s.reshape(8, 7), t.reshape(8, 7), 2.0)
    assert soft_kd_loss(s, t, 2.0).item() == pytest.approx(per_token.item())  # averaged over tokens
