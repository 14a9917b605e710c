"""Bad input to quantisation: clear EdgekitError subclasses, raised before work, and no output file."""
from __future__ import annotations

import numpy as np
import pytest

from edgekit.errors import ConfigError, EdgekitError, InputFileError, ShapeError


def _no_output(d):
    return not any(p.suffix in (".onnx", ".json", ".tmp") for p in d.iterdir())


@pytest.mark.parametrize("make,err,words", [
    (lambda s: s.train.x[:16, :, :8, :8], ShapeError, "expects"),        # wrong spatial shape
    (lambda s: s.train.x[:16, :1], ShapeError, "expects"),                 # wrong channels
    (lambda s: s.train.x[:0], ShapeError, "empty"),                        # empty
    (lambda s: np.where(np.arange(s.train.x[:16].size).reshape(s.train.x[:16].shape) == 5, np.nan,
                        s.train.x[:16]).astype(np.float32), ShapeError, "NaN"),
    (lambda s: (s.train.x[:16] * 100).astype(np.int32), ShapeError, "floating"),  # wrong dtype
])
def test_bad_calibration_data(trained_resnet8, tmp_path, make, err, words):
    from edgekit.techniques.quantize.ptq import quantize

    out = tmp_path / "q.onnx"
    with pytest.raises(err, match=words):
        quantize(trained_resnet8.onnx, calib=make(trained_resnet8.splits), out_path=out)
    assert _no_output(tmp_path)


def test_bad_calibration_npz(trained_resnet8, tmp_path):
    from edgekit.techniques.quantize.ptq import quantize

    bad = tmp_path / "calib.npz"
    np.savez(bad, x=np.zeros((4, 3, 8, 8), np.float32))
    with pytest.raises(ShapeError, match="expects"):
        quantize(trained_resnet8.onnx, calib=str(bad), out_path=tmp_path / "q.onnx")
    with pytest.raises(InputFileError, match="not found"):
        quantize(trained_resnet8.onnx, calib=str(tmp_path / "missing.npz"), out_path=tmp_path / "q.onnx")
    assert not (tmp_path / "q.onnx").exists()


def test_already_quantised_model_is_refused(trained_resnet8, tmp_path):
    from edgekit.techniques.quantize.ptq import quantize

    s = trained_resnet8.splits
    q = quantize(trained_resnet8.onnx, calib=s.train.x[:32], out_path=tmp_path / "int8.onnx").artifact
    with pytest.raises(InputFileError, match="already quantised"):
        quantize(q, calib=s.train.x[:32], out_path=tmp_path / "int8-again.onnx")
    assert not (tmp_path / "int8-again.onnx").exists()


@pytest.mark.parametrize("kw,words", [({"method": "minmaxx"}, "did you mean 'minmax'"),
                                      ({"target": "tpu"}, "valid: cpu, tensorrt"),
                                      ({"percentile": 120.0}, "percentile"),
                                      ({"samples": 0}, "samples"),
                                      ({"exclude": ["/no/such/Conv"]}, r"quantize\.exclude\.names: '/no/such/Conv' is "
                                                                      r"not a node.*include: /stem/stem\.0/Conv"),
                                      ({"exclude": {"patterns": ["/nowhere/*"]}}, "matches no node"),
                                      ({"exclude": {"types": ["LSTM"]}}, r"no node .* is a 'LSTM'; types present"),
                                      ({"exclude_nodes": ["/stem/stem.0/Conv"]}, "exclude_nodes: renamed to 'exclude'"),
                                      ({"mode": "dynamic", "target": "tensorrt"}, "mode 'dynamic' runs only on")])
def test_bad_settings(trained_resnet8, tmp_path, kw, words):
    from edgekit.techniques.quantize.ptq import quantize

    with pytest.raises(ConfigError, match=words):
        quantize(trained_resnet8.onnx, kw, calib=trained_resnet8.splits.train.x[:16], out_path=tmp_path / "q.onnx")
    assert _no_output(tmp_path)


def test_missing_and_non_onnx_model(tmp_path):
    from edgekit.techniques.quantize.ptq import quantize

    x = np.zeros((4, 3, 16, 16), np.float32)
    with pytest.raises(InputFileError):
        quantize(tmp_path / "nope.onnx", calib=x, out_path=tmp_path / "q.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(InputFileError, match="not a readable ONNX"):
        quantize(junk, calib=x, out_path=tmp_path / "q.onnx")
    assert not (tmp_path / "q.onnx").exists()


def test_errors_are_edgekit_errors_and_import_is_lean():
    import subprocess
    import sys

    code = "import sys, edgekit, edgekit.techniques.quantize.ptq, edgekit.techniques.quantize.config; " \
           "print('onnxruntime.quantization' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"
    assert issubclass(ShapeError, EdgekitError) and issubclass(ConfigError, EdgekitError)
