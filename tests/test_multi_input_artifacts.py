"""Third-party ONNX files with several and integer inputs (a Hugging Face BERT exported with input_ids,
attention_mask, token_type_ids) through every artifact-level command: runners, MACs, bench, quantize."""
from __future__ import annotations

import json
import warnings

import numpy as np
import onnx
import pytest
from _helpers.onnx_models import conv_net_onnx
from _helpers.runs import run_cli

from edgekit.backends import open_runner
from edgekit.core.measure.macs import count_macs_onnx
from edgekit.core.onnx_graph import onnx_signature, position_rows
from edgekit.errors import ConfigError, ShapeError

NAMES = ("input_ids", "attention_mask", "token_type_ids")
VOCAB, HIDDEN, LAYERS, HEADS, FFN, POSITIONS, LABELS = 100, 32, 2, 2, 64, 64, 3


@pytest.fixture(scope="module")
def bert_onnx(tmp_path_factory):
    """A tiny HF BertForSequenceClassification exported (torchscript) with three named int64 inputs."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                     intermediate_size=FFN, max_position_embeddings=POSITIONS, num_labels=LABELS,
                     attn_implementation="eager")
    model = BertForSequenceClassification(cfg).eval()

    class Text3(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.m(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).logits

    wrapper = Text3(model).eval()  # export restores the wrapper's mode on every child: eval, so no dropout
    path = tmp_path_factory.mktemp("bert") / "bert.onnx"
    example = (torch.randint(0, VOCAB, (2, 16)), torch.ones(2, 16, dtype=torch.long),
               torch.zeros(2, 16, dtype=torch.long))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, example, str(path), dynamo=False, input_names=list(NAMES),
                          output_names=["logits"], opset_version=17,
                          dynamic_axes={n: {0: "batch", 1: "sequence"} for n in NAMES} | {"logits": {0: "batch"}})
    return path, wrapper


def bert_inputs(n=4, t=16, seed=0):
    rng = np.random.default_rng(seed)
    return {"input_ids": rng.integers(0, VOCAB, (n, t)), "attention_mask": np.ones((n, t), np.int64),
            "token_type_ids": np.zeros((n, t), np.int64)}


def expected_macs(t):
    """Per sample: Q,K,V,O + FFN per token and layer, Q·Kᵀ and P·V per layer, pooler and classifier."""
    per_layer = t * (4 * HIDDEN * HIDDEN + 2 * HIDDEN * FFN) + 2 * t * t * HIDDEN
    return LAYERS * per_layer + HIDDEN * HIDDEN + HIDDEN * LABELS


def test_signature_from_the_onnx_graph_names_dtypes_and_vocabulary(bert_onnx):
    sig = onnx_signature(bert_onnx[0])
    assert sig.names == NAMES and all(s.dtype == "int64" for s in sig.inputs)
    assert sig["input_ids"].shape == ("batch", "sequence")
    assert sig.vocab_size == VOCAB and sig.token_inputs == ("input_ids",)
    assert position_rows(bert_onnx[0]) == POSITIONS


@pytest.mark.parametrize("backend", ["ort-cpu", "openvino"])
def test_runners_take_named_integer_inputs_and_match_torch(bert_onnx, backend):
    import torch

    path, module = bert_onnx
    x = bert_inputs()
    with torch.inference_mode():
        ref = module(**{k: torch.from_numpy(v) for k, v in x.items()}).numpy()
    with open_runner(path, backend, threads=1) as runner:
        assert runner.input_names == NAMES
        np.testing.assert_allclose(runner(x), ref, atol=1e-4)
        np.testing.assert_allclose(runner({k: v.astype(np.int32) for k, v in x.items()}), ref, atol=1e-4)


@pytest.mark.parametrize("mutate, match", [
    (lambda d: d.pop("attention_mask"), "missing attention_mask.*the model takes input_ids: int64"),
    (lambda d: d.update(position_ids=d["input_ids"]), "unexpected position_ids"),
    (lambda d: d.update(input_ids=d["input_ids"].astype(np.float32)), "'input_ids' is int64.*float32"),
    (lambda d: d.update(input_ids=d["input_ids"] + VOCAB), f"outside the model's vocabulary \\[0, {VOCAB}\\)"),
    (lambda d: d.update(attention_mask=d["attention_mask"][:, :, None]), "'attention_mask' has shape"),
])
def test_bad_named_inputs_are_clear_errors_naming_the_input(bert_onnx, mutate, match):
    x = bert_inputs()
    mutate(x)
    with open_runner(bert_onnx[0], "ort-cpu", threads=1) as runner, pytest.raises(ShapeError, match=match):
        runner(x)


def test_one_array_for_a_three_input_model_says_what_it_takes(bert_onnx):
    with open_runner(bert_onnx[0], "ort-cpu", threads=1) as runner:
        with pytest.raises(ShapeError, match="takes 3 named inputs.*pass a mapping"):
            runner(bert_inputs()["input_ids"])


def test_ort_spinning_is_off_by_default_and_a_documented_option(bert_onnx):
    with open_runner(bert_onnx[0], "ort-cpu", threads=1) as off, \
            open_runner(bert_onnx[0], "ort-cpu", threads=1, spinning=True) as on:
        assert off.info["spinning"] is False and on.info["spinning"] is True
        np.testing.assert_array_equal(off(bert_inputs()), on(bert_inputs()))
    with pytest.raises(ConfigError, match="unknown ort-cpu option.*allowed: spinning"):
        open_runner(bert_onnx[0], "ort-cpu", spin=True)


def test_torch_runner_calls_a_module_with_named_inputs(bert_onnx):
    _, module = bert_onnx
    x = bert_inputs(n=2)
    with open_runner(module, "torch", threads=1) as runner:
        plain = runner(x)
    sig = onnx_signature(bert_onnx[0]).to_dict()
    with open_runner(module, "torch", threads=1, signature=sig) as runner:
        np.testing.assert_allclose(runner(x), plain, atol=1e-6)
        with pytest.raises(ShapeError, match="'input_ids' is int64"):
            runner({**x, "input_ids": x["input_ids"].astype(np.float32)})


@pytest.mark.parametrize("t", [16, 32])
def test_macs_of_a_torchscript_bert_resolve_run_time_reshapes(bert_onnx, t):
    rep = count_macs_onnx(bert_onnx[0], inputs={"input_ids": (t,)})
    assert rep.total == expected_macs(t) and rep.unknown == []
    assert rep.input_shapes == {n: [t] for n in NAMES}  # attention_mask/token_type_ids bound by the axis name
    assert rep.shape_inference == "symbolic"
    assert count_macs_onnx(bert_onnx[0], sequence=t).total == rep.total


def test_macs_say_when_shapes_stay_unknown(bert_onnx, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rep = count_macs_onnx(bert_onnx[0], sequence=POSITIONS * 2)  # longer than the position table: no shapes
    assert rep.shape_inference == "incomplete" and rep.unknown
    assert list(tmp_path.iterdir()) == []  # ORT's symbolic inference leaves no temp file in the working directory


def test_dynamic_int8_of_bert_quantises_the_matmuls(bert_onnx, tmp_path):
    from edgekit.techniques.quantize.ptq import quantize

    res = quantize(bert_onnx[0], {"mode": "dynamic"}, out_path=tmp_path / "dyn.onnx")
    ops = {n.op_type for n in onnx.load(str(res.artifact)).graph.node}
    assert "MatMulInteger" in ops and res.int8_mac_fraction > 0.5
    x = bert_inputs()
    ref = open_runner(bert_onnx[0], "ort-cpu", threads=1)(x)
    got = open_runner(res.artifact, "ort-cpu", threads=1)(x)
    assert np.abs(got - ref).max() < 0.05 and (got.argmax(1) == ref.argmax(1)).all()


def test_nothing_to_quantise_is_decided_by_the_ops_present(tmp_path):
    from edgekit.techniques.quantize.ptq import quantize

    path, _ = conv_net_onnx(tmp_path / "cnn.onnx", 4)
    with pytest.raises(ConfigError, match="nothing to quantise: no LSTM/MatMul node with constant weights.*the "
                                          "graph has Conv, Flatten, Gemm"):
        quantize(path, {"mode": "dynamic", "op_types": ["LSTM", "MatMul"]}, out_path=tmp_path / "q.onnx")
    assert not (tmp_path / "q.onnx").exists()
    res = quantize(path, {"mode": "dynamic"}, out_path=tmp_path / "q.onnx")  # its Gemm has constant weights
    assert res.int8_mac_fraction > 0


def test_static_int8_calibrates_every_named_input_and_keeps_attention_products_float(bert_onnx, tmp_path):
    from edgekit.techniques.quantize.ptq import quantize

    np.savez(tmp_path / "calib.npz", **bert_inputs(n=16), y=np.zeros(16, np.int64))
    res = quantize(bert_onnx[0], {"mode": "static", "samples": 8, "speed_fallback": False},
                   calib=tmp_path / "calib.npz", out_path=tmp_path / "st.onnx")
    side = json.loads((tmp_path / "st.onnx.json").read_text())
    assert side["calibration"]["inputs"] == sorted(NAMES) and side["calibration"]["samples"] == 8
    assert side["quant_scheme"]["op_types"] == ["Conv", "ConvTranspose", "Gemm", "MatMul"]
    assert len(res.float_layers) == 2 * LAYERS  # Q·Kᵀ and P·V per layer
    assert 0.8 < res.int8_mac_fraction < 1.0
    x = bert_inputs(seed=1)
    ref = open_runner(bert_onnx[0], "ort-cpu", threads=1)(x)
    assert np.abs(open_runner(res.artifact, "ort-cpu", threads=1)(x) - ref).max() < 0.05


@pytest.mark.parametrize("arrays, match", [
    (lambda x: {k: v for k, v in x.items() if k != "token_type_ids"}, "missing token_type_ids"),
    (lambda x: {**x, "input_ids": x["input_ids"].astype(np.float32)}, "'input_ids' is int64"),
])
def test_bad_calibration_data_is_refused_before_work_naming_the_user_file(bert_onnx, tmp_path, arrays, match):
    from edgekit.techniques.quantize.ptq import quantize

    calib = tmp_path / "calib.npz"
    np.savez(calib, **arrays(bert_inputs()))
    with pytest.raises(ShapeError, match=match) as err:
        quantize(bert_onnx[0], {"mode": "static"}, calib=calib, out_path=tmp_path / "q.onnx")
    assert str(calib) in str(err.value) and "preprocessed" not in str(err.value)


def test_cli_bench_with_typed_inputs_a_sequence_sweep_and_named_data(bert_onnx, tmp_path):
    path = str(bert_onnx[0])
    common = ["--threads", "1", "--warmup", "1", "--iters", "5", "--rounds", "2", "--no-plots"]
    r = run_cli("bench", path, *[a for n in NAMES for a in ("--input", f"{n}:int64:1x16")], "--batch", "1,2",
                "--out", str(tmp_path / "b1"), *common)
    assert r.returncode == 0, r.stderr
    rows = json.loads((tmp_path / "b1" / "bench.json").read_text())["rows"]
    assert [row["batch"] for row in rows] == [1, 2] and all(row["macs"] == expected_macs(16) for row in rows)
    r = run_cli("bench", path, "--seq", "8,16", "--out", str(tmp_path / "b2"), *common)
    assert r.returncode == 0, r.stderr
    rows = json.loads((tmp_path / "b2" / "bench.json").read_text())["rows"]
    assert [(row["sequence"], row["macs"]) for row in rows] == [(8, expected_macs(8)), (16, expected_macs(16))]
    assert "1 × seq 8" in r.stdout
    r = run_cli("bench", path, *[a for n in NAMES for a in ("--input", f"{n}:int64:1x16")], "--seq", "8,16",
                "--out", str(tmp_path / "b4"), *common)  # the sweep sets the sequence axis of --input shapes
    assert r.returncode == 0, r.stderr
    rows = json.loads((tmp_path / "b4" / "bench.json").read_text())["rows"]
    assert [(row["sequence"], row["macs"]) for row in rows] == [(8, expected_macs(8)), (16, expected_macs(16))]
    np.savez(tmp_path / "val.npz", **bert_inputs(n=6), y=np.arange(6) % LABELS)
    r = run_cli("bench", path, "--data", str(tmp_path / "val.npz"), "--out", str(tmp_path / "b3"), *common)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "b3" / "bench.json").read_text())["rows"][0]["accuracy"] is not None


@pytest.mark.parametrize("args, match", [
    (["--input", "input_ids:float32:1x16"], "model's input 'input_ids' is int64"),
    (["--input", "ids:int64:1x16"], r"--input names \['ids'\].*it takes input_ids: int64"),
    (["--input", "input_ids:int64"], "must be name:dtype:shape"),
    (["--seq", "0"], "sequence lengths must be positive"),
])
def test_cli_bench_bad_inputs_exit_2_with_one_line(bert_onnx, args, match):
    r = run_cli("bench", str(bert_onnx[0]), *args, "--iters", "2", "--rounds", "1")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert __import__("re").search(match, r.stderr), r.stderr


def test_synthetic_inputs_are_valid_token_ids_and_masks(bert_onnx):
    from edgekit.bench.data import synthetic_inputs

    x = synthetic_inputs(onnx_signature(bert_onnx[0]), {n: (32,) for n in NAMES}, batch=8)
    assert x["input_ids"].dtype == np.int64 and 0 <= x["input_ids"].min() and x["input_ids"].max() < VOCAB
    assert len(np.unique(x["input_ids"])) > 10
    assert (x["attention_mask"] == 1).all() and (x["token_type_ids"] == 0).all()


def test_cli_quantize_static_and_dynamic_on_the_three_input_onnx(bert_onnx, tmp_path):
    np.savez(tmp_path / "calib.npz", **bert_inputs(n=8))
    r = run_cli("quantize", str(bert_onnx[0]), "--out", str(tmp_path / "st.onnx"), "--calib",
                str(tmp_path / "calib.npz"), "--no-speed-fallback")
    assert r.returncode == 0, r.stderr
    assert "static int8 for target cpu" in r.stdout and "4 node(s) kept float" in r.stdout
    r = run_cli("quantize", str(bert_onnx[0]), "--out", str(tmp_path / "dyn.onnx"), "--mode", "dynamic",
                "--op-types", "MatMul")
    assert r.returncode == 0, r.stderr and "dynamic int8" in r.stdout
    r = run_cli("quantize", str(bert_onnx[0]), "--out", str(tmp_path / "x.onnx"))
    assert r.returncode == 2 and "one array per model input name" in r.stderr
    for temp in ("preprocessed", "edgekit-quant-", "edgekit-dynq-"):
        assert temp not in r.stderr
