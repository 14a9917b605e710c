"""GPU runners: pure parts everywhere; torch-cuda / TensorRT / ort-cuda on an NVIDIA GPU (marked, else skipped)."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from _helpers.onnx_models import conv_relu_onnx as make_onnx

import edgekit.backends.ort_cuda as ort_cuda
import edgekit.backends.tensorrt.runner as trt_runner
import edgekit.core.platform as platform_facts
from edgekit._io import read_sidecar, write_sidecar
from edgekit.backends import open_runner, probe_backend
from edgekit.core.platform import runtime_status
from edgekit.errors import BackendUnavailableError, ConfigError, EngineCompatibilityError, ShapeError

HAS_CUDA = torch.cuda.is_available()
HAS_TRT = runtime_status("tensorrt")[0] is not None
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs an NVIDIA GPU with PyTorch CUDA: "
                                + (platform_facts.cuda_unavailable_reason() or "CUDA unavailable"))
needs_trt = pytest.mark.skipif(not (HAS_CUDA and HAS_TRT), reason="needs TensorRT and a CUDA GPU: "
                               + (runtime_status("tensorrt")[1] or platform_facts.cuda_unavailable_reason()
                                  or "unavailable"))


# ----------------------------------------------------------------------------- runs everywhere


def test_trt_dtypes_map_to_real_torch_dtypes():
    assert trt_runner.torch_dtype_name("HALF") == "float16"
    assert trt_runner.torch_dtype_name("DataType.FLOAT") == "float32"
    for trt_name, torch_name in trt_runner.TRT_TO_TORCH_DTYPE.items():
        assert isinstance(getattr(torch, torch_name), torch.dtype), trt_name
    with pytest.raises(ConfigError, match="INT4 has no PyTorch equivalent"):
        trt_runner.torch_dtype_name("INT4")


def test_io_tensors_are_read_by_name():
    enum = lambda n: SimpleNamespace(name=n)  # noqa: E731  (TensorRT enums expose .name)
    tensors = {"input": ("INPUT", "FLOAT", (-1, 3, 32, 32)), "logits": ("OUTPUT", "HALF", (-1, 10))}
    names = list(tensors)
    engine = SimpleNamespace(num_io_tensors=2, get_tensor_name=lambda i: names[i],
                             get_tensor_mode=lambda n: enum(tensors[n][0]),
                             get_tensor_dtype=lambda n: enum(tensors[n][1]),
                             get_tensor_shape=lambda n: tensors[n][2])
    assert trt_runner.io_tensors(engine) == [
        {"name": "input", "mode": "INPUT", "dtype": "FLOAT", "shape": [-1, 3, 32, 32]},
        {"name": "logits", "mode": "OUTPUT", "dtype": "HALF", "shape": [-1, 10]}]


def test_io_binding_runner_matches_plain_ort_on_cpu(tmp_path):
    path = make_onnx(tmp_path / "m.onnx")
    x = np.random.default_rng(0).standard_normal((5, 3, 4, 4)).astype(np.float32)
    bound = ort_cuda.OrtDeviceRunner(str(path), ["CPUExecutionProvider"], 1, "ort-iobinding", "cpu", 0)
    plain = open_runner(path, backend="ort-cpu", threads=1)
    np.testing.assert_allclose(bound(x), plain(x), rtol=1e-6, atol=1e-6)
    out = bound.run_prepared(bound.prepare(x))
    assert out.device_name().lower() == "cpu" and bound.to_numpy(out).shape == (5, 2, 4, 4)


def test_ort_runner_refuses_a_silent_cpu_fallback(tmp_path):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed here")
    with pytest.warns(UserWarning), pytest.raises(BackendUnavailableError, match="fell back to"):
        ort_cuda.OrtDeviceRunner(str(make_onnx(tmp_path / "m.onnx")),
                            [("CUDAExecutionProvider", {}), "CPUExecutionProvider"], None, "ort-cuda", "cuda", 0)


def test_gpu_backends_say_why_they_are_unavailable(tmp_path):
    for name in ("tensorrt", "ort-cuda", "torch-cuda"):
        ok, reason = probe_backend(name)
        assert ok or len(reason) > 10
    if not (HAS_CUDA and HAS_TRT):
        with pytest.raises(BackendUnavailableError, match="backend 'tensorrt' is unavailable here: "):
            open_runner(make_onnx(tmp_path / "m.onnx"), backend="tensorrt")


class _FakeContext:
    """An IExecutionContext stand-in on host memory: y = 2 * x[:, :2], aux = row index."""

    def __init__(self):
        self.addr, self.shapes, self.streams = {}, {}, []

    def set_input_shape(self, name, shape):
        if not 1 <= shape[0] <= 8:
            return False  # outside the profile, as TensorRT reports it
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name):
        n = self.shapes["x"][0]
        return (n, 2) if name == "y" else (n,)

    def set_tensor_address(self, name, ptr):
        self.addr[name] = ptr

    def execute_async_v3(self, stream_handle):
        import ctypes

        self.streams.append(stream_handle)
        n = self.shapes["x"][0]
        x = np.ctypeslib.as_array((ctypes.c_float * (n * 3)).from_address(self.addr["x"])).reshape(n, 3)
        y = np.ctypeslib.as_array((ctypes.c_float * (n * 2)).from_address(self.addr["y"])).reshape(n, 2)
        aux = np.ctypeslib.as_array((ctypes.c_int32 * n).from_address(self.addr["aux"]))
        y[:] = 2 * x[:, :2]
        aux[:] = np.arange(n)
        return True


class _HostTensorRTRunner(trt_runner.TensorRTRunner):
    """TensorRTRunner with host tensors and a fake stream, to test binding logic without a GPU."""

    def _device_and_stream(self):
        return torch.device("cpu"), SimpleNamespace(cuda_stream=1234, synchronize=lambda: None)

    def _on_stream(self):
        import contextlib

        return contextlib.nullcontext()


def test_tensorrt_runner_binds_by_name_and_sets_shapes_per_call(monkeypatch):
    import edgekit.backends.tensorrt.build as trtx

    enum = lambda n: SimpleNamespace(name=n)  # noqa: E731
    io = {"x": ("INPUT", "FLOAT", (-1, 3)), "y": ("OUTPUT", "FLOAT", (-1, 2)), "aux": ("OUTPUT", "INT32", (-1,))}
    names, ctx = list(io), _FakeContext()
    engine = SimpleNamespace(num_io_tensors=3, get_tensor_name=lambda i: names[i],
                             get_tensor_mode=lambda n: enum(io[n][0]), get_tensor_dtype=lambda n: enum(io[n][1]),
                             get_tensor_shape=lambda n: io[n][2], create_execution_context=lambda: ctx)
    identity = {"tensorrt_version": "10.3.0", "gpu_name": "NVIDIA L4", "compute_capability": "8.9"}
    loaded = SimpleNamespace(engine=engine, sidecar={"precision": "fp16", "profile": {"x": {"max": [8, 3]}}},
                             identity=identity)
    monkeypatch.setattr(trtx, "load_engine", lambda path: loaded)
    runner = _HostTensorRTRunner("m.engine")
    assert runner.input_name == "x" and runner.input_shape == (None, 3) and runner.info["precision"] == "fp16"
    for n in (3, 5):
        x = np.arange(n * 3, dtype=np.float32).reshape(n, 3)
        np.testing.assert_array_equal(runner(x), 2 * x[:, :2])
        assert ctx.shapes["x"] == (n, 3) and set(ctx.addr) == {"x", "y", "aux"}
        assert runner._bound[2].dtype == torch.int32 and runner._bound[2].tolist() == list(range(n))
    assert ctx.streams == [1234, 1234]
    with pytest.raises(ShapeError, match=r"shape \[9, 3\] is outside the engine's optimisation profile"):
        runner(np.zeros((9, 3), np.float32))
    with pytest.raises(ShapeError, match="expects shape Nx3"):
        runner(np.zeros((2, 4), np.float32))


# ----------------------------------------------------------------------------- torch-cuda baselines


def _bench(runners: dict, x: np.ndarray) -> dict:
    """Time runners interleaved on the GPU (CUDA events); return latency summaries by name."""
    from edgekit.core.measure.latency import Case, run_interleaved, summarize

    cases = [Case(name, r, r.prepare(x), device="cuda") for name, r in runners.items()]
    res = run_interleaved(cases, warmup=10, iters=60, rounds=6, desc="gpu")
    return {name: summarize(res.all_times(i), len(x)) for i, name in enumerate(runners)}


@pytest.mark.gpu
@pytest.mark.slow
@needs_cuda
def test_torch_cuda_fp32_fp16_digits_resnet(trained_resnet8):
    from edgekit.core.train import evaluate

    m = trained_resnet8
    runners = {p: open_runner(m.checkpoint, backend="torch-cuda", precision=p) for p in ("fp32", "fp16")}
    device = torch.cuda.get_device_name()
    assert all(r.info["device"] == device and r.info["precision"] == p for p, r in runners.items())
    acc = {p: evaluate(r, m.splits.test) for p, r in runners.items()}
    assert abs(acc["fp32"] - m.test_accuracy) <= 0.5 and abs(acc["fp16"] - acc["fp32"]) <= 1.0
    stats = _bench(runners, m.splits.test.x[:1])
    assert all(0 < s["p50_ms"] < 1000 and s["iters"] >= 60 for s in stats.values())
    print(json.dumps({"device": device, "model": "digits resnet_cifar-8", "batch": 1, "accuracy": acc,
                      "p50_ms": {p: round(s["p50_ms"], 4) for p, s in stats.items()}}))


@pytest.mark.gpu
@pytest.mark.slow
@needs_cuda
def test_torch_cuda_fp32_fp16_resnet18_224():
    from edgekit.models import create_model

    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=1000)
    runners = {p: open_runner(model, backend="torch-cuda", precision=p) for p in ("fp32", "fp16")}
    x = np.random.default_rng(0).standard_normal((8, 3, 224, 224)).astype(np.float32)
    a, b = runners["fp32"](x), runners["fp16"](x)
    assert np.isfinite(b).all() and np.abs(a - b).max() <= 0.05 * np.abs(a).max() + 1e-2
    for batch in (1, 8):
        stats = _bench(runners, x[:batch])
        assert all(0 < s["p50_ms"] < 1000 for s in stats.values())
        print(json.dumps({"device": torch.cuda.get_device_name(), "model": "resnet18@224", "batch": batch,
                          "p50_ms": {p: round(s["p50_ms"], 4) for p, s in stats.items()}}))


# ----------------------------------------------------------------------------- TensorRT


@pytest.mark.gpu
@pytest.mark.tensorrt
@needs_trt
@pytest.mark.parametrize("precision,max_drop", [("fp32", 0.3), ("fp16", 1.0)])
def test_tensorrt_engine_accuracy_and_cache(trained_resnet8, tmp_path, precision, max_drop):
    from edgekit.core.train import evaluate

    m = trained_resnet8
    ort_acc = evaluate(open_runner(m.onnx, backend="ort-cpu"), m.splits.test)
    opts = dict(precision=precision, batch_range=(1, 32, 256), cache_dir=str(tmp_path / "cache"))
    runner = open_runner(m.onnx, backend="tensorrt", **opts)
    assert runner.info["precision"] == precision and runner.info["device"] == torch.cuda.get_device_name()
    assert runner.info["engine_cached"] is False
    assert abs(evaluate(runner, m.splits.test) - ort_acc) <= max_drop
    x = m.splits.test.x
    for n in (1, 5, 256):
        assert runner(x[:n]).shape == (n, 10)
    with pytest.raises(ShapeError, match="outside the engine's optimisation profile"):
        runner(np.zeros((300, *x.shape[1:]), np.float32))
    again = open_runner(m.onnx, backend="tensorrt", **opts)
    assert again.info["engine_cached"] is True and again.info["build_seconds"] == 0.0
    stats = _bench({"tensorrt": again}, x[:1])
    assert 0 < stats["tensorrt"]["p50_ms"] < 100


@pytest.mark.gpu
@pytest.mark.tensorrt
@needs_trt
def test_engine_from_another_tensorrt_is_refused(trained_resnet8, tmp_path):
    from edgekit.backends.tensorrt.build import build_engine

    onnx_path, cache = trained_resnet8.onnx, tmp_path / "cache"
    result = build_engine(onnx_path, tmp_path / "copy.engine", precision="fp16", cache_dir=cache)
    write_sidecar(result.path, dict(read_sidecar(result.path), tensorrt_version="8.6.1"))
    with pytest.raises(EngineCompatibilityError, match="built with TensorRT 8.6.1"):
        open_runner(result.path, backend="tensorrt")
    engine = build_engine(onnx_path, precision="fp16", cache_dir=cache)
    assert engine.cached
    with pytest.raises(ConfigError, match="only apply when building from ONNX"):
        open_runner(engine.path, backend="tensorrt", precision="int8")
    assert open_runner(engine.path, backend="tensorrt")(trained_resnet8.splits.test.x[:2]).shape == (2, 10)


@pytest.mark.gpu
@pytest.mark.tensorrt
@needs_trt
def test_int8_engine_from_qdq_onnx(tmp_path):
    path = make_onnx(tmp_path / "q.onnx", qdq=True)
    x = np.random.default_rng(2).uniform(-2, 2, (4, 3, 4, 4)).astype(np.float32)
    runner = open_runner(path, backend="tensorrt", batch_range=(1, 4, 8), cache_dir=str(tmp_path / "c"))
    assert runner.info["precision"] == "int8"  # Q/DQ ONNX defaults to an int8 engine
    ref = open_runner(path, backend="ort-cpu")(x)
    assert np.abs(runner(x) - ref).max() <= 0.1


@pytest.mark.gpu
@needs_cuda
def test_ort_cuda_matches_ort_cpu(tmp_path):
    ok, reason = probe_backend("ort-cuda")
    if not ok:
        pytest.skip(reason)
    path = make_onnx(tmp_path / "m.onnx")
    x = np.random.default_rng(3).standard_normal((6, 3, 4, 4)).astype(np.float32)
    runner = open_runner(path, backend="ort-cuda")
    assert runner.run_prepared(runner.prepare(x)).device_name().lower() == "cuda"
    np.testing.assert_allclose(runner(x), open_runner(path, backend="ort-cpu")(x), rtol=1e-3, atol=1e-3)


@pytest.mark.gpu
@pytest.mark.tensorrt
@needs_trt
def test_three_input_bert_engine_takes_named_int64_inputs_at_every_sequence_length(tmp_path):
    """A BERT export (input_ids, attention_mask, token_type_ids: int64[batch, sequence]) builds with one profile
    for the shared sequence axis (from the position table) and matches ONNX Runtime at two lengths."""
    from _helpers.hf_models import tiny_bert_dir

    from edgekit.core.tensors import NamedInputs
    from edgekit.export import export_onnx
    from edgekit.models.hf import load_hf

    model = load_hf(tiny_bert_dir(tmp_path / "bert"), "sequence-classification").eval()
    rng = np.random.default_rng(0)

    def batch(n, t):
        return NamedInputs(input_ids=rng.integers(0, 50, (n, t)).astype(np.int64),
                           attention_mask=np.ones((n, t), np.int64), token_type_ids=np.zeros((n, t), np.int64))

    path = export_onnx(model, batch(2, 16), tmp_path / "bert.onnx").path
    runner = open_runner(path, backend="tensorrt", precision="fp32", batch_range=(1, 4, 8),
                         cache_dir=str(tmp_path / "c"))
    assert runner.info["profile"]["input_ids"] == {"min": [1, 1], "opt": [4, 64], "max": [8, 64]}
    ref = open_runner(path, backend="ort-cpu")
    for n, t in ((1, 8), (4, 64)):
        x = batch(n, t)
        np.testing.assert_allclose(runner(x), ref(x), rtol=1e-3, atol=1e-3)
