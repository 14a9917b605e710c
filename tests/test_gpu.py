"""GPU runners: pure parts everywhere; torch-cuda / TensorRT / ort-cuda on an NVIDIA GPU (marked, else skipped)."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import edgekit.runtime.gpu_runners as gpu
from edgekit.errors import BackendUnavailableError, ConfigError, ShapeError
from edgekit.export.tensorrt import EngineCompatibilityError, tensorrt_status
from edgekit.fileio import read_sidecar, write_sidecar
from edgekit.runtime import open_runner, probe_backend
from test_tensorrt import make_onnx

HAS_CUDA = torch.cuda.is_available()
HAS_TRT = tensorrt_status()[0] is not None
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs an NVIDIA GPU with PyTorch CUDA: "
                                + (gpu.cuda_unavailable_reason() or "CUDA unavailable"))
needs_trt = pytest.mark.skipif(not (HAS_CUDA and HAS_TRT), reason="needs TensorRT and a CUDA GPU: "
                               + (tensorrt_status()[1] or gpu.cuda_unavailable_reason() or "unavailable"))


# ----------------------------------------------------------------------------- runs everywhere


def test_trt_dtypes_map_to_real_torch_dtypes():
    assert gpu.torch_dtype_name("HALF") == "float16" and gpu.torch_dtype_name("DataType.FLOAT") == "float32"
    for trt_name, torch_name in gpu.TRT_TO_TORCH_DTYPE.items():
        assert isinstance(getattr(torch, torch_name), torch.dtype), trt_name
    with pytest.raises(ConfigError, match="INT4 has no PyTorch equivalent"):
        gpu.torch_dtype_name("INT4")


def test_io_tensors_are_read_by_name():
    enum = lambda n: SimpleNamespace(name=n)  # noqa: E731  (TensorRT enums expose .name)
    tensors = {"input": ("INPUT", "FLOAT", (-1, 3, 32, 32)), "logits": ("OUTPUT", "HALF", (-1, 10))}
    names = list(tensors)
    engine = SimpleNamespace(num_io_tensors=2, get_tensor_name=lambda i: names[i],
                             get_tensor_mode=lambda n: enum(tensors[n][0]), get_tensor_dtype=lambda n: enum(tensors[n][1]),
                             get_tensor_shape=lambda n: tensors[n][2])
    assert gpu.io_tensors(engine) == [
        {"name": "input", "mode": "INPUT", "dtype": "FLOAT", "shape": [-1, 3, 32, 32]},
        {"name": "logits", "mode": "OUTPUT", "dtype": "HALF", "shape": [-1, 10]}]


def test_io_binding_runner_matches_plain_ort_on_cpu(tmp_path):
    path = make_onnx(tmp_path / "m.onnx")
    x = np.random.default_rng(0).standard_normal((5, 3, 4, 4)).astype(np.float32)
    bound = gpu.OrtDeviceRunner(str(path), ["CPUExecutionProvider"], 1, "ort-iobinding", "cpu", 0)
    plain = open_runner(path, backend="ort-cpu", threads=1)
    np.testing.assert_allclose(bound(x), plain(x), rtol=1e-6, atol=1e-6)
    out = bound.run_prepared(bound.prepare(x))
    assert out.device_name().lower() == "cpu" and bound.to_numpy(out).shape == (5, 2, 4, 4)


def test_ort_runner_refuses_a_silent_cpu_fallback(tmp_path):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed here")
    with pytest.warns(UserWarning), pytest.raises(BackendUnavailableError, match="fell back to"):
        gpu.OrtDeviceRunner(str(make_onnx(tmp_path / "m.onnx")),
                            [("CUDAExecutionProvider", {}), "CPUExecutionProvider"], None, "ort-cuda", "cuda", 0)


def test_gpu_backends_say_why_they_are_unavailable(tmp_path):
    for name in ("tensorrt", "ort-cuda", "torch-cuda"):
        ok, reason = probe_backend(name)
        assert ok or len(reason) > 10
    if not (HAS_CUDA and HAS_TRT):
        with pytest.raises(BackendUnavailableError, match="backend 'tensorrt' is unavailable here: "):
            open_runner(make_onnx(tmp_path / "m.onnx"), backend="tensorrt")


# ----------------------------------------------------------------------------- torch-cuda baselines


def _bench_torch_cuda(model, shape, batch):
    """Time fp32 and fp16 eager runs interleaved; return summaries and outputs on one batch."""
    from edgekit.bench.latency import Case, run_interleaved, summarize

    x = np.random.default_rng(0).standard_normal((batch, *shape)).astype(np.float32)
    runners = {p: open_runner(model, backend="torch-cuda", precision=p) for p in ("fp32", "fp16")}
    cases = [Case(p, r, r.prepare(x), device="cuda") for p, r in runners.items()]
    res = run_interleaved(cases, warmup=10, iters=60, rounds=6, desc="torch-cuda")
    summary = {p: summarize(res.all_times(i), batch) for i, p in enumerate(runners)}
    outputs = {p: r(x) for p, r in runners.items()}
    return runners, summary, outputs


@pytest.mark.gpu
@pytest.mark.slow
@needs_cuda
@pytest.mark.parametrize("arch,kwargs,shape", [
    ("resnet18", {"width": 0.5, "stem": "cifar", "num_classes": 10}, (3, 32, 32)),  # the digits ResNet
    ("resnet18", {"num_classes": 1000}, (3, 224, 224)),                             # ResNet-18 @ 224
])
def test_torch_cuda_fp32_fp16_baselines(arch, kwargs, shape):
    from edgekit.models import create_model

    model = create_model(arch, **kwargs)
    runners, summary, outputs = _bench_torch_cuda(model, shape, batch=8)
    device = torch.cuda.get_device_name()
    assert all(r.info["device"] == device for r in runners.values())
    for stats in summary.values():
        assert 0 < stats["p50_ms"] < 1000 and stats["iters"] >= 60
    a, b = outputs["fp32"], outputs["fp16"]
    assert np.isfinite(b).all() and np.abs(a - b).max() <= 0.05 * np.abs(a).max() + 1e-2
    print(json.dumps({"device": device, "arch": arch, "shape": shape, "batch": 8,
                      "p50_ms": {p: round(s["p50_ms"], 4) for p, s in summary.items()}}))


# ----------------------------------------------------------------------------- TensorRT


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from edgekit.export.onnx import export_onnx
    from edgekit.models import create_model

    d = tmp_path_factory.mktemp("trt")
    torch.manual_seed(0)
    model = create_model("resnet_cifar", depth=8, width=0.5, num_classes=10)
    x = np.random.default_rng(1).standard_normal((8, 3, 32, 32)).astype(np.float32)
    export_onnx(model, x, d / "m.onnx")
    return d, d / "m.onnx", x


@pytest.mark.gpu
@pytest.mark.tensorrt
@needs_trt
@pytest.mark.parametrize("precision,tol", [("fp32", 1e-3), ("fp16", 3e-2)])
def test_tensorrt_engine_matches_onnxruntime(exported, precision, tol):
    d, onnx_path, x = exported
    ref = open_runner(onnx_path, backend="ort-cpu")(x)
    opts = dict(precision=precision, batch_range=(1, 4, 16), cache_dir=str(d / "cache"))
    runner = open_runner(onnx_path, backend="tensorrt", **opts)
    assert runner.info["precision"] == precision and runner.info["device"] == torch.cuda.get_device_name()
    for n in (1, 5, 8):
        out = runner(x[:n])
        assert out.shape == (n, 10)
        assert np.abs(out - ref[:n]).max() <= tol * max(1.0, np.abs(ref).max())
    with pytest.raises(ShapeError, match="outside the engine's optimisation profile"):
        runner(np.zeros((32, 3, 32, 32), np.float32))
    again = open_runner(onnx_path, backend="tensorrt", **opts)
    assert again.info["engine_cached"] is True and again.info["build_seconds"] == 0.0


@pytest.mark.gpu
@pytest.mark.tensorrt
@needs_trt
def test_tensorrt_timing_uses_the_runner_stream(exported):
    from edgekit.bench.latency import Case, run_interleaved, summarize

    d, onnx_path, x = exported
    runner = open_runner(onnx_path, backend="tensorrt", precision="fp16", cache_dir=str(d / "cache"))
    res = run_interleaved([Case("trt", runner, runner.prepare(x[:1]), device="cuda")], warmup=5, iters=50, rounds=5)
    assert 0 < summarize(res.all_times(0), 1)["p50_ms"] < 100


@pytest.mark.gpu
@pytest.mark.tensorrt
@needs_trt
def test_engine_from_another_tensorrt_is_refused(exported):
    d, onnx_path, _ = exported
    from edgekit.export.tensorrt import build_engine

    result = build_engine(onnx_path, d / "copy.engine", precision="fp16", cache_dir=d / "cache")
    write_sidecar(result.path, dict(read_sidecar(result.path), tensorrt_version="8.6.1"))
    with pytest.raises(EngineCompatibilityError, match="built with TensorRT 8.6.1"):
        open_runner(result.path, backend="tensorrt")
    with pytest.raises(ConfigError, match="only apply when building from ONNX"):
        open_runner(build_engine(onnx_path, precision="fp16", cache_dir=d / "cache").path, backend="tensorrt",
                    precision="int8")


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
