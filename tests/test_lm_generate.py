"""`edgekit.generate` / `edgekit generate`: a KV-cache causal-LM ONNX graph decoded with its cache on ONNX Runtime
and OpenVINO (greedy parity with PyTorch, seeded top-k), text prompts with the run's tokenizer, and every bad input
refused before any work. Tiny models (2 layers × 32) built from configs; nothing is downloaded."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _helpers.text import tiny_corpus

import edgekit
from edgekit.backends import causal_lm_backends, default_backend, probe_backend
from edgekit.bench.decode import OnnxDecoder, TorchDecoder, decode_speed, greedy
from edgekit.cli.main import main
from edgekit.errors import BackendUnavailableError, ConfigError, InputFileError, ShapeError
from edgekit.export.causal_lm import build_causal_lm, export_causal_lm, read_kv_layout

ORT = default_backend("onnx", "cpu")
OTHERS = [b for b in causal_lm_backends() if b != ORT]  # OpenVINO where it is registered
OV = OTHERS[0] if OTHERS else None
needs_ov = pytest.mark.skipif(OV is None or not probe_backend(OV)[0],
                              reason=f"no second causal-LM backend here ({OV}: {OV and probe_backend(OV)[1]})")
PROMPT = np.array([[5, 17, 42, 7]])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> dict:
    """A run directory as a causal-LM recipe leaves it: manifest.json, tokenizer.json, stages/.../lm.onnx."""
    from edgekit.data.text_lm import read_text_documents, train_bpe

    d = tmp_path_factory.mktemp("lmgen")
    tok = train_bpe(list(read_text_documents(tiny_corpus(d)).values()), 260)
    run = d / "runs" / "lm" / "r"
    (run / "stages" / "02_export").mkdir(parents=True)
    (run / "manifest.json").write_text("{}")
    tok.save(str(run / "tokenizer.json"))
    model = build_causal_lm("gpt2", vocab_size=tok.get_vocab_size(), n_layer=2, n_embd=32, n_head=2, n_positions=32)
    onnx_path = run / "stages" / "02_export" / "lm.onnx"
    export_causal_lm(model, onnx_path)
    return {"model": model, "onnx": onnx_path, "tokenizer": tok, "run": run, "dir": d}


def test_the_graph_records_its_context_and_the_backends_are_registered(run_dir, tmp_path):
    import onnx

    from edgekit._io import write_sidecar

    layout = read_kv_layout(run_dir["onnx"])
    assert (layout.max_positions, layout.vocab_size, layout.n_layers) == (32, run_dir["tokenizer"].get_vocab_size(), 2)
    assert causal_lm_backends()[0] == ORT
    # files exported before the metadata existed: the export sidecar, found through a quantised file's source
    old = onnx.load(str(run_dir["onnx"]))
    del old.metadata_props[:]
    for name in ("parent.onnx", "q.onnx"):
        onnx.save(old, str(tmp_path / name))
    assert read_kv_layout(tmp_path / "q.onnx").max_positions == 0  # unknown: nothing records it
    write_sidecar(tmp_path / "parent.onnx", {"kv_cache": {"max_positions": 32}})
    write_sidecar(tmp_path / "q.onnx", {"source": str(tmp_path / "parent.onnx")})
    assert read_kv_layout(tmp_path / "q.onnx").max_positions == 32


def test_generate_token_ids_on_the_default_backend_equals_pytorch_greedy(run_dir):
    model = run_dir["model"]
    out = edgekit.generate(run_dir["onnx"], PROMPT[0].tolist(), 10)
    with torch.no_grad():
        ref = model.generate(torch.from_numpy(PROMPT), max_new_tokens=10, do_sample=False)[0, 4:].tolist()
    assert out.tokens == ref == greedy(TorchDecoder(model), PROMPT, 10)
    assert out.backend == ORT and out.prompt_tokens == PROMPT[0].tolist()
    assert out.text == run_dir["tokenizer"].decode(ref)  # the run's tokenizer.json was found and decodes them
    assert Path(out.tokenizer) == run_dir["run"] / "tokenizer.json"


@needs_ov
def test_openvino_greedy_equals_ort_and_pytorch_and_top_k_is_seeded(run_dir):
    ort_out = edgekit.generate(run_dir["onnx"], PROMPT, 12, backend=ORT)
    ov_out = edgekit.generate(run_dir["onnx"], PROMPT, 12, backend=OV)
    assert ov_out.backend == OV and ov_out.tokens == ort_out.tokens == greedy(TorchDecoder(run_dir["model"]), PROMPT,
                                                                               12)
    a = edgekit.generate(run_dir["onnx"], PROMPT, 8, backend=OV, top_k=5, seed=3).tokens
    assert a == edgekit.generate(run_dir["onnx"], PROMPT, 8, backend=ORT, top_k=5, seed=3).tokens
    assert a != edgekit.generate(run_dir["onnx"], PROMPT, 8, backend=OV, top_k=5, seed=4).tokens


@needs_ov
def test_llama_with_grouped_kv_heads_decodes_the_same_on_openvino(tmp_path):
    model = build_causal_lm("llama", vocab_size=300, n_layer=2, n_embd=32, n_head=2, n_positions=32)
    export_causal_lm(model, tmp_path / "llama.onnx")
    assert read_kv_layout(tmp_path / "llama.onnx").kv_heads == 1
    ov = edgekit.generate(tmp_path / "llama.onnx", PROMPT, 10, backend=OV, threads=1)
    assert ov.tokens == greedy(TorchDecoder(model), PROMPT, 10) and ov.text is None


@needs_ov
def test_openvino_decoder_has_the_same_interface_and_numbers(run_dir):
    ov, ort = OnnxDecoder(run_dir["onnx"], 1, backend=OV), OnnxDecoder(run_dir["onnx"], 1)
    assert (ov.backend, ort.backend, ov.max_positions) == (OV, ORT, 32)
    ids = np.array([[3, 1, 4, 1, 5, 9, 2, 6]])
    assert np.abs(ov.full(ids) - ort.full(ids)).max() < 1e-4
    la, sa = ov.prefill(ids)
    lb, sb = ort.prefill(ids)
    assert np.abs(ov.step(7, ov.fork(sa))[0] - ort.step(7, sb)[0]).max() < 1e-4
    rows, _ = ov.prefill_rows(np.repeat(ids, 3, axis=0))  # batch decode: every row as the single prompt
    assert rows.shape == (3, la.shape[0]) and np.abs(rows - la).max() < 1e-4


def test_batch_decode_speed_counts_one_step_for_every_sequence(run_dir):
    decs = {"torch": TorchDecoder(run_dir["model"], 1), "onnx": OnnxDecoder(run_dir["onnx"], 1)}
    ms = decode_speed(decs, PROMPT, new_tokens=4, rounds=2, batch=4)
    assert set(ms) == {"torch", "onnx"} and all(len(v) == 2 and (v > 0).all() for v in ms.values())
    with pytest.raises(ConfigError, match="batch must be >= 1"):
        decode_speed(decs, PROMPT, 4, rounds=1, batch=0)


def test_text_prompt_uses_the_runs_tokenizer_or_an_explicit_one(run_dir, tmp_path):
    tok = run_dir["tokenizer"]
    out = edgekit.generate(run_dir["onnx"], "The list type", 6)
    assert out.prompt_tokens == tok.encode("The list type").ids and out.text == tok.decode(out.tokens)
    lone = tmp_path / "lm.onnx"  # the file copied out of its run: the tokenizer must be given
    lone.write_bytes(run_dir["onnx"].read_bytes())
    explicit = edgekit.generate(lone, "The list type", 6, tokenizer=run_dir["run"])  # a directory holding one
    assert explicit.tokens == out.tokens and explicit.to_dict()["text"] == out.text
    assert edgekit.generate(lone, [1, 2, 3], 2).text is None  # token ids without a tokenizer: ids only
    _other_vocab_tokenizer(tmp_path / "tokenizer.json")  # one of another model beside it: ignored for token ids
    ids_only = edgekit.generate(lone, [1, 2, 3], 2)
    assert ids_only.text is None and ids_only.tokenizer is None


def _other_vocab_tokenizer(path: Path) -> Path:
    from edgekit.data.text_lm import train_bpe

    train_bpe(["some other text entirely, with other words"] * 4, 200).save(str(path))
    return path


def _bad_call(case: str, run_dir: dict, tmp: Path):
    onnx_path = run_dir["onnx"]
    if case == "prompt_too_long":
        return (onnx_path, list(range(1, 33)), 1), {}, ConfigError, "the prompt has 32 tokens but the model's context"
    if case == "prompt_plus_new_tokens":
        return (onnx_path, list(range(1, 29)), 8), {}, ConfigError, "at most 4 new tokens fit"
    if case == "zero_new_tokens":
        return (onnx_path, [1, 2], 0), {}, ConfigError, "max_new_tokens must be an integer > 0"
    if case == "top_k":
        return (onnx_path, [1, 2], 4), {"top_k": 0}, ConfigError, "top_k must be an integer >= 1"
    if case == "tokenizer_vocab":
        return ((onnx_path, "hello", 4), {"tokenizer": _other_vocab_tokenizer(tmp / "t.json")}, ConfigError,
                "does not belong to this model")
    if case == "run_tokenizer_vocab":  # the tokenizer found in the run directory belongs to another model
        other = tmp / "other_run"
        other.mkdir()
        (other / "lm.onnx").write_bytes(onnx_path.read_bytes())
        _other_vocab_tokenizer(other / "tokenizer.json")
        return (other / "lm.onnx", "hello", 4), {}, ConfigError, f"tokenizer {other / 'tokenizer.json'} has"
    if case == "not_a_kv_graph":
        from _helpers.onnx_models import mlp_onnx

        return (mlp_onnx(tmp / "mlp.onnx", 8), [1, 2], 4), {}, ShapeError, "not a KV-cache causal-LM graph"
    if case == "not_onnx":
        (tmp / "m.pt").write_bytes(b"x")
        return (tmp / "m.pt", [1, 2], 4), {}, InputFileError, "generate runs a KV-cache causal-LM ONNX graph"
    if case == "missing_file":
        return (tmp / "nope.onnx", [1, 2], 4), {}, InputFileError, "not found"
    if case == "unknown_backend":
        allowed = f"allowed: {', '.join(causal_lm_backends(None))}"
        return (onnx_path, [1, 2], 4), {"backend": "tensorrt-lm"}, ConfigError, allowed
    if case == "id_outside_vocab":
        return (onnx_path, [1, 9999], 4), {}, ShapeError, "token id 9999 is outside the model's vocabulary"
    if case == "no_tokenizer":
        lone = tmp / "alone" / "lm.onnx"
        lone.parent.mkdir()
        (lone.parent / "manifest.json").write_text("{}")
        lone.write_bytes(onnx_path.read_bytes())
        return (lone, "hello", 4), {}, InputFileError, f"no tokenizer.json in {lone.parent}"
    raise AssertionError(case)


BAD = ["prompt_too_long", "prompt_plus_new_tokens", "zero_new_tokens", "top_k", "tokenizer_vocab",
       "run_tokenizer_vocab", "not_a_kv_graph",
       "not_onnx", "missing_file", "unknown_backend", "id_outside_vocab", "no_tokenizer"]


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_refused_before_a_session_opens(run_dir, tmp_path, monkeypatch, case):
    import edgekit.export.causal_lm as causal_lm

    def no_session(*a, **k):
        raise AssertionError("a session was opened before the input was checked")

    monkeypatch.setattr(causal_lm.CausalLMSession, "__init__", no_session)
    args, kwargs, error, message = _bad_call(case, run_dir, tmp_path)
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        edgekit.generate(*args, **kwargs)


def test_a_plugin_backend_with_the_hook_decodes_and_one_without_its_runtime_is_named(run_dir):
    from edgekit.backends import BACKENDS, BackendSpec
    from edgekit.backends.ort import OrtCausalLMSession

    def spec(name, probe):
        return BackendSpec(name, ("onnx",), probe, lambda *a, **k: None, "cpu", priority=900,
                           suffixes={"onnx": (".onnx",)}, causal_lm=OrtCausalLMSession)

    with BACKENDS.temporary("plugin-lm", spec("plugin-lm", lambda: (True, ""))), \
            BACKENDS.temporary("absent-lm", spec("absent-lm", lambda: (False, "runtime missing (test)"))):
        assert causal_lm_backends()[-2:] == ["absent-lm", "plugin-lm"]
        out = edgekit.generate(run_dir["onnx"], PROMPT, 4, backend="plugin-lm")
        assert out.tokens == edgekit.generate(run_dir["onnx"], PROMPT, 4).tokens
        with pytest.raises(BackendUnavailableError, match="'absent-lm' is unavailable here: runtime missing"):
            edgekit.generate(run_dir["onnx"], PROMPT, 4, backend="absent-lm")


def test_cli_prints_the_continuation_and_refuses_bad_input(run_dir, capsys):
    assert main(["--quiet", "generate", str(run_dir["onnx"]), "The list type", "--max-new-tokens", "5"]) == 0
    text = capsys.readouterr().out
    assert text.rstrip("\n") == edgekit.generate(run_dir["onnx"], "The list type", 5).text
    assert main(["--quiet", "generate", str(run_dir["onnx"]), "5,17,42,7", "--ids", "--max-new-tokens", "3",
                 "--top-k", "4", "--seed", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["tokens"] == edgekit.generate(run_dir["onnx"], PROMPT, 3, top_k=4, seed=2).tokens
    assert out["backend"] == ORT and out["prompt_tokens"] == PROMPT[0].tolist()
    assert main(["--quiet", "generate", str(run_dir["onnx"]), "x" * 400, "--max-new-tokens", "4"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("edgekit: error: the prompt has") and "Traceback" not in err
    with pytest.raises(SystemExit) as e:
        main(["generate", str(run_dir["onnx"]), "hi", "--backend", "nope"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "invalid choice: 'nope'" in err and all(b in err for b in causal_lm_backends(None))
