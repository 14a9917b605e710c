"""INT8 forms of recurrent models: the unrolled GRU graph, the measured choice between forms, its record."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from edgekit._io import read_sidecar
from edgekit.export import export_onnx
from edgekit.models import create_model
from edgekit.techniques.quantize._rnn import _choose, unroll_gru
from edgekit.techniques.quantize.ptq import quantize


def _run(path, x):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


@pytest.fixture(scope="module")
def gru_onnx(tmp_path_factory, digits_seq):
    torch.manual_seed(0)
    model = create_model("rnn_classifier", hidden_size=16, num_layers=2, cell="gru").eval()
    return export_onnx(model, digits_seq.val.x[:8], tmp_path_factory.mktemp("gru") / "gru.onnx").path


def test_unrolled_gru_computes_what_the_gru_op_computes(gru_onnx, tmp_path, digits_seq):
    new, done, kept = unroll_gru(onnx.load(str(gru_onnx)))
    assert len(done) == 2 and kept == {}
    assert "GRU" not in {n.op_type for n in new.graph.node}
    path = tmp_path / "unrolled.onnx"
    onnx.save(new, str(path))
    for batch in (1, 5):
        x = digits_seq.val.x[:batch]
        assert np.allclose(_run(path, x), _run(gru_onnx, x), atol=1e-5)


def test_bidirectional_gru_stays_an_op_with_the_reason(tmp_path):
    torch.manual_seed(0)
    model = create_model("rnn_classifier", hidden_size=8, cell="gru", bidirectional=True).eval()
    path = export_onnx(model, np.zeros((2, 8, 8), np.float32), tmp_path / "bi.onnx").path
    _, done, kept = unroll_gru(onnx.load(str(path)))
    assert done == [] and "direction" in next(iter(kept.values()))


def test_dynamic_quantisation_of_a_gru_measures_both_forms_and_records_the_choice(gru_onnx, tmp_path, digits_seq):
    out = tmp_path / "gru.int8.onnx"
    res = quantize(gru_onnx, {"mode": "dynamic"}, out_path=out, val=digits_seq.val)
    record = read_sidecar(out)["rnn_forms"]
    forms = record["forms"]
    assert set(forms) == {"op", "unrolled"}
    assert forms["unrolled"]["int8_mac_fraction"] == 1.0 and forms["op"]["int8_mac_fraction"] < 0.1
    best = max((f for f in forms if forms[f]["correct"]), key=lambda f: forms[f]["geomean_speedup"])
    assert record["chosen"] == best == res.metrics["rnn_form"]
    assert record["faster_than_fp32"] == (forms[best]["geomean_speedup"] > 1.0)
    assert set(forms[best]["speedup_vs_fp32"]) == {"1", "8"}
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert ("GRU" in ops) == (best == "op")
    assert res.int8_mac_fraction == pytest.approx(forms[best]["int8_mac_fraction"], abs=1e-4)


def test_lstm_keeps_dynamic_quantize_lstm(trained_lstm, tmp_path):
    out = tmp_path / "lstm.int8.onnx"
    res = quantize(trained_lstm.onnx, {"mode": "dynamic"}, out_path=out, val=trained_lstm.splits.val)
    assert "DynamicQuantizeLSTM" in {n.op_type for n in onnx.load(str(out)).graph.node}
    assert res.sidecar["rnn_forms"]["chosen"] == "op" and res.int8_mac_fraction == 1.0


class _Res:
    def __init__(self, fp32, int8, share):
        self.accuracy, self.int8_mac_fraction = {"fp32_val": fp32, "int8_val": int8}, share


def test_a_faster_form_that_loses_accuracy_is_not_chosen():
    speed = {"op": {1: {"speedup": 0.9}, 8: {"speedup": 0.95}}, "unrolled": {1: {"speedup": 2.0}, 8: {"speedup": 3.0}}}
    chosen, table = _choose({"op": _Res(97.0, 97.0, 0.01), "unrolled": _Res(97.0, 95.0, 1.0)}, speed, 0.5)
    assert chosen == "op" and table["unrolled"]["correct"] is False
    chosen, _ = _choose({"op": _Res(97.0, 97.0, 0.01), "unrolled": _Res(97.0, 96.8, 1.0)}, speed, 0.5)
    assert chosen == "unrolled"
