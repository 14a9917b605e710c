"""TensorRT engine logic that runs without TensorRT: flags, Q/DQ, profiles, cache key, sidecar, cache reuse."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from _helpers.onnx_models import conv_relu_onnx as make_onnx
from onnx import TensorProto, helper

import edgekit.backends.tensorrt.build as trtx
import edgekit.backends.tensorrt.cache as trt_cache
import edgekit.backends.tensorrt.profile as trt_profile
import edgekit.core.onnx_graph as onnx_graph
from edgekit._io import read_sidecar, sidecar_path, write_sidecar
from edgekit.core.platform import runtime_status
from edgekit.errors import BackendUnavailableError, ConfigError, InputFileError

IDENTITY = {"tensorrt_version": "10.3.0", "gpu_name": "NVIDIA L4", "compute_capability": "8.9"}


# ----------------------------------------------------------------------------- precision flags


@pytest.mark.parametrize("precision,sparse,want_set,want_clear", [
    ("fp32", False, (), ("TF32",)),
    ("fp16", False, ("FP16",), ()),
    ("int8", False, ("INT8", "FP16"), ()),
    ("fp16", True, ("FP16", "SPARSE_WEIGHTS"), ()),
    ("int8", True, ("INT8", "FP16", "SPARSE_WEIGHTS"), ()),
])
def test_precision_flags(precision, sparse, want_set, want_clear):
    flags = trt_profile.precision_flags(precision, sparse)
    assert flags.set == want_set
    assert flags.clear == want_clear


def test_precision_flags_rejects_unknown_with_suggestion():
    with pytest.raises(ConfigError, match=r"'fp61'.*did you mean 'fp16'.*allowed: fp32, fp16, int8"):
        trt_profile.precision_flags("fp61")


# ----------------------------------------------------------------------------- ONNX inspection


def test_qdq_detection(tmp_path):
    assert onnx_graph.has_qdq(make_onnx(tmp_path / "q.onnx", qdq=True))
    assert not onnx_graph.has_qdq(make_onnx(tmp_path / "f.onnx"))


def test_corrupt_onnx_is_an_input_file_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf at all \x00\xff")
    with pytest.raises(InputFileError, match="bad.onnx"):
        onnx_graph.has_qdq(bad)


def test_graph_inputs_skip_initializers_and_mark_dynamic_dims(tmp_path):
    path = make_onnx(tmp_path / "m.onnx", extra_dynamic=True)
    model = onnx.load(str(path))
    model.graph.input.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, [2, 3, 1, 1]))
    onnx.save(model, str(path))
    assert onnx_graph.graph_inputs(path) == [onnx_graph.GraphInput("x", [None, 3, None, 4], TensorProto.FLOAT)]


# ----------------------------------------------------------------------------- profiles


DYN = [("x", [None, 3, 32, 32])]


@pytest.mark.parametrize("batch_range,triple", [
    (None, trt_profile.DEFAULT_BATCH_RANGE), ((1, 8, 32), (1, 8, 32)), ([2, 2, 4], (2, 2, 4)), (4, (4, 4, 4)),
    ({"min": 1, "opt": 4, "max": 16}, (1, 4, 16)),
])
def test_profile_from_batch_range(batch_range, triple):
    prof = trt_profile.compute_profile(DYN, batch_range)
    assert prof == {"x": {k: [b, 3, 32, 32] for k, b in zip(("min", "opt", "max"), triple)}}


@pytest.mark.parametrize("bad", [(8, 4, 32), (0, 1, 2), (1, 2), (1, 2.5, 4), (True, 1, 2)])
def test_profile_rejects_bad_batch_ranges(bad):
    with pytest.raises(ConfigError, match="batch_range"):
        trt_profile.compute_profile(DYN, bad)


def test_static_batch_uses_its_shape_and_rejects_a_conflicting_range():
    static = [("x", [1, 3, 8, 8])]
    assert trt_profile.compute_profile(static)["x"]["max"] == [1, 3, 8, 8]
    assert trt_profile.compute_profile(static, (1, 1, 1))["x"]["min"] == [1, 3, 8, 8]
    with pytest.raises(ConfigError, match="fixed batch of 1.*dynamic batch axis"):
        trt_profile.compute_profile(static, (1, 8, 32))


def test_dynamic_non_batch_dims_need_an_explicit_profile():
    inputs = [("x", [None, 3, None, 32])]
    with pytest.raises(ConfigError, match=r"dynamic dim 2 besides the batch.*explicit profile"):
        trt_profile.compute_profile(inputs, (1, 1, 8))
    prof = trt_profile.compute_profile(inputs, {"x": {"min": [1, 3, 16, 32], "opt": [4, 3, 32, 32],
                                                      "max": [8, 3, 64, 32]}})
    assert prof["x"]["opt"] == [4, 3, 32, 32]
    as_tuple = trt_profile.compute_profile(inputs, {"x": ([1, 3, 16, 32], [1, 3, 16, 32], [2, 3, 16, 32])})
    assert as_tuple["x"]["max"][0] == 2


BERT_INPUTS = [(n, ["batch", "sequence"]) for n in ("input_ids", "attention_mask", "token_type_ids")]


def test_named_axes_get_one_range_shared_by_every_input():
    prof = trt_profile.compute_profile(BERT_INPUTS, (1, 4, 8), axis_ranges={"sequence": (16, 128, 256)})
    assert set(prof) == {"attention_mask", "input_ids", "token_type_ids"}
    for shapes in prof.values():
        assert shapes == {"min": [1, 16], "opt": [4, 128], "max": [8, 256]}


def test_named_axes_without_a_range_and_bad_ranges_are_clear_errors():
    with pytest.raises(ConfigError, match=r"dim 1 \('sequence'\) besides the batch.*axis_ranges=\{'sequence'"):
        trt_profile.compute_profile(BERT_INPUTS, (1, 1, 8))
    with pytest.raises(ConfigError, match=r"axis 'sequense'.*did you mean 'sequence'"):
        trt_profile.compute_profile(BERT_INPUTS, (1, 1, 8), axis_ranges={"sequense": (1, 8, 8)})
    with pytest.raises(ConfigError, match=r"axis_ranges\['sequence'\].*min <= opt <= max"):
        trt_profile.compute_profile(BERT_INPUTS, (1, 1, 8), axis_ranges={"sequence": (64, 8, 128)})
    explicit = {n: {"min": [1, 8], "opt": [1, 8], "max": [1, 8]} for n, _ in BERT_INPUTS}
    with pytest.raises(ConfigError, match="either an explicit per-input profile or batch_range with axis_ranges"):
        trt_profile.compute_profile(BERT_INPUTS, explicit, axis_ranges={"sequence": (1, 8, 8)})


def token_onnx(path, max_positions=None):
    """input_ids, attention_mask: int64[batch, sequence] -> Gather(embedding 50×4) * mask -> y[batch, sequence, 4]."""
    import numpy as np
    from _helpers.onnx_models import onnx_model, value_info
    from onnx import numpy_helper

    nodes = [helper.make_node("Gather", ["emb", "input_ids"], ["e"]),
             helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["m", "ax"], ["m3"]), helper.make_node("Mul", ["e", "m3"], ["y"])]
    inits = [numpy_helper.from_array(np.ones((50, 4), np.float32), "emb"),
             numpy_helper.from_array(np.array([2], np.int64), "ax")]
    inputs = [value_info(n, ["batch", "sequence"], TensorProto.INT64) for n in ("input_ids", "attention_mask")]
    onnx.save(onnx_model(nodes, inputs, [value_info("y", ["batch", "sequence", 4])], inits), str(path))
    if max_positions:
        write_sidecar(path, {"signature": {"inputs": [], "max_positions": max_positions}})
    return path


def test_a_token_model_builds_with_the_sequence_range_of_its_position_table(tmp_path, fake_trt):
    onnx_path = token_onnx(tmp_path / "tok.onnx", max_positions=64)
    r = trtx.build_engine(onnx_path, precision="fp16", batch_range=(1, 2, 8), cache_dir=tmp_path / "c")
    want = {"min": [1, 1], "opt": [2, 64], "max": [8, 64]}
    assert fake_trt[-1]["profile"] == r.sidecar["profile"] == {"attention_mask": want, "input_ids": want}
    r = trtx.build_engine(onnx_path, precision="fp16", batch_range=(1, 2, 8), axis_ranges={"sequence": (8, 16, 32)},
                          cache_dir=tmp_path / "c")
    assert r.sidecar["profile"]["input_ids"] == {"min": [1, 8], "opt": [2, 16], "max": [8, 32]}
    with pytest.raises(ConfigError, match=r"'sequence'.*axis_ranges"):  # no position table known: ask for a range
        trtx.build_engine(token_onnx(tmp_path / "bare.onnx"), precision="fp16", cache_dir=tmp_path / "c")


def test_explicit_profile_is_validated():
    inputs = [("input", [None, 3, 32, 32])]
    with pytest.raises(ConfigError, match="'inptu'.*did you mean 'input'"):
        trt_profile.compute_profile(inputs, {"inptu": {"min": [1, 3, 32, 32], "opt": [1, 3, 32, 32],
                                                       "max": [1, 3, 32, 32]}})
    with pytest.raises(ConfigError, match="dim 1 is fixed at 3"):
        trt_profile.compute_profile(inputs, {"input": {"min": [1, 1, 32, 32], "opt": [1, 1, 32, 32],
                                                       "max": [1, 1, 32, 32]}})
    with pytest.raises(ConfigError, match="rank 4"):
        trt_profile.compute_profile(inputs, {"input": {"min": [1, 3], "opt": [1, 3], "max": [1, 3]}})
    with pytest.raises(ConfigError, match="min <= opt <= max"):
        trt_profile.compute_profile(inputs, {"input": {"min": [4, 3, 32, 32], "opt": [1, 3, 32, 32],
                                                       "max": [8, 3, 32, 32]}})


def test_profile_covers_every_input_sorted_by_name():
    prof = trt_profile.compute_profile([("z", [None, 4]), ("a", [None, 2])], (1, 2, 3))
    assert list(prof) == ["a", "z"]
    assert prof["z"] == {"min": [1, 4], "opt": [2, 4], "max": [3, 4]}


# ----------------------------------------------------------------------------- cache key and sidecar


BASE_KEY = dict(onnx_sha256="ab" * 32, tensorrt_version="10.3.0", gpu_name="NVIDIA L4", compute_capability="8.9",
                precision="fp16", sparse_weights=False, profile={"x": {"min": [1, 3], "opt": [8, 3], "max": [32, 3]}})


def test_cache_key_is_deterministic_and_order_insensitive():
    k1 = trt_cache.engine_cache_key(**BASE_KEY)
    reordered = dict(BASE_KEY, profile={"x": {"max": [32, 3], "min": [1, 3], "opt": [8, 3]}})
    assert k1 == trt_cache.engine_cache_key(**reordered)
    assert len(k1) == 64 and int(k1, 16) >= 0


@pytest.mark.parametrize("field,value", [
    ("onnx_sha256", "cd" * 32), ("tensorrt_version", "10.4.0"), ("gpu_name", "NVIDIA A100"),
    ("compute_capability", "8.0"), ("precision", "int8"), ("sparse_weights", True),
    ("profile", {"x": {"min": [1, 3], "opt": [4, 3], "max": [32, 3]}}),
])
def test_cache_key_changes_with_every_field(field, value):
    assert trt_cache.engine_cache_key(**BASE_KEY) != trt_cache.engine_cache_key(**dict(BASE_KEY, **{field: value}))


def good_sidecar(**over):
    return {"format": trt_cache.ENGINE_FORMAT, "onnx": "m.onnx", **IDENTITY, **over}


def test_sidecar_matching_this_machine_passes():
    assert trt_cache.validate_sidecar(good_sidecar(), IDENTITY, "m.engine") is None  # no exception


@pytest.mark.parametrize("over,pattern", [
    ({"tensorrt_version": "8.6.1"}, r"built with TensorRT 8\.6\.1 but this machine has TensorRT 10\.3\.0.*rebuild"),
    ({"gpu_name": "NVIDIA A100-SXM4-40GB", "compute_capability": "8.0"},
     r"built for NVIDIA A100.*8\.0.*NVIDIA L4.*8\.9"),
    ({"compute_capability": "8.6"}, r"compute capability 8\.6.*compute capability 8\.9"),
    ({"format": "something-else"}, "sidecar format"),
])
def test_sidecar_mismatch_is_refused(over, pattern):
    with pytest.raises(trt_cache.EngineCompatibilityError, match=pattern):
        trt_cache.validate_sidecar(good_sidecar(**over), IDENTITY, "m.engine")


def test_parser_errors_name_the_nodes():
    text = trtx.describe_parser_errors("m.onnx", [
        {"node": 3, "node_name": "/layer1/Conv", "node_operator": "Conv", "desc": "unsupported group count"},
        {"node": -1, "node_name": "", "node_operator": "", "desc": "graph has no outputs"}])
    assert "2 error(s)" in text
    assert "node 3 '/layer1/Conv' (Conv): unsupported group count" in text
    assert "graph: graph has no outputs" in text


def test_timing_cache_name_is_per_version_and_gpu():
    a = trt_cache.timing_cache_name(IDENTITY)
    assert a == "timing-trt10.3.0-nvidia-l4-sm89.cache"
    assert a != trt_cache.timing_cache_name(dict(IDENTITY, tensorrt_version="10.4.0"))


# ----------------------------------------------------------------------------- without TensorRT


def test_runtime_status_explains_missing_or_stub_packages(tmp_path, monkeypatch):
    version, reason = runtime_status("tensorrt")
    if version is None:
        assert "tensorrt" in reason.lower()
    stub = tmp_path / "stub" / "tensorrt"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("raise RuntimeError('TensorRT libraries were not found: "
                                      "install tensorrt-cu12-libs')\n")
    monkeypatch.syspath_prepend(str(tmp_path / "stub"))
    monkeypatch.delitem(sys.modules, "tensorrt", raising=False)
    version, reason = runtime_status("tensorrt")
    assert version is None
    assert "cannot load TensorRT's libraries (RuntimeError: TensorRT libraries were not found" in reason
    (stub / "__init__.py").write_text("__version__ = '10.0.0'\n")
    sys.modules.pop("tensorrt", None)
    try:
        version, reason = runtime_status("tensorrt")
    finally:
        sys.modules.pop("tensorrt", None)  # never leave the stub behind for later tests
    assert version is None and "stub" in reason


def test_build_validates_before_touching_tensorrt(tmp_path):
    fp = make_onnx(tmp_path / "f.onnx")
    with pytest.raises(ConfigError,
                       match="int8 engines are built from Q/DQ ONNX; quantise with target: tensorrt first"):
        trtx.build_engine(fp, precision="int8", cache_dir=tmp_path / "c")
    with pytest.raises(ConfigError, match="allowed: fp32, fp16, int8"):
        trtx.build_engine(fp, precision="bf16", cache_dir=tmp_path / "c")
    with pytest.raises(ConfigError, match="workspace_mb"):
        trtx.build_engine(fp, workspace_mb=0, cache_dir=tmp_path / "c")
    with pytest.raises(ConfigError, match="fixed batch of 2"):
        trtx.build_engine(make_onnx(tmp_path / "s.onnx", batch=2), batch_range=(1, 4, 8), cache_dir=tmp_path / "c")
    with pytest.raises(InputFileError, match="ONNX model not found"):
        trtx.build_engine(tmp_path / "missing.onnx")


def test_build_without_tensorrt_says_why(tmp_path):
    if runtime_status("tensorrt")[0] is not None:
        pytest.skip("TensorRT is installed here; covered by tests/test_gpu.py")
    with pytest.raises(BackendUnavailableError, match="TensorRT is unavailable: .*tensorrt"):
        trtx.build_engine(make_onnx(tmp_path / "f.onnx"), cache_dir=tmp_path / "c")


# ----------------------------------------------------------------------------- engine cache (TensorRT faked)


@pytest.fixture
def fake_trt(monkeypatch):
    """Replace the two TensorRT-touching calls; record every build."""
    calls = []

    def fake_build(onnx_path, flags, profile, workspace_mb, timing_cache):
        calls.append({"onnx": onnx_path, "flags": flags, "profile": profile, "timing_cache": timing_cache})
        timing_cache.parent.mkdir(parents=True, exist_ok=True)
        timing_cache.write_bytes(b"timing")
        return b"ENGINE:" + Path(onnx_path).read_bytes()[:16] + str(flags.set).encode()

    monkeypatch.setattr(trtx, "current_identity", lambda: dict(IDENTITY))
    monkeypatch.setattr(trtx, "_build_serialized", fake_build)
    return calls


def test_second_build_with_same_key_reuses_the_engine(tmp_path, fake_trt):
    onnx_path = make_onnx(tmp_path / "m.onnx")
    cache = tmp_path / "cache"
    first = trtx.build_engine(onnx_path, precision="fp16", batch_range=(1, 4, 8), cache_dir=cache)
    assert not first.cached and len(fake_trt) == 1
    assert first.path.parent == cache and first.path.read_bytes().startswith(b"ENGINE:")
    side = read_sidecar(first.path)
    assert side["cache_key"] == first.key and side["precision"] == "fp16" and side["tensorrt_version"] == "10.3.0"
    assert side["profile"] == {"x": {"min": [1, 3, 4, 4], "opt": [4, 3, 4, 4], "max": [8, 3, 4, 4]}}
    assert side["builder_flags"] == ["FP16"] and side["target"] == "tensorrt"
    assert fake_trt[0]["timing_cache"] == cache / trt_cache.timing_cache_name(IDENTITY)

    second = trtx.build_engine(onnx_path, precision="fp16", batch_range=(1, 4, 8), cache_dir=cache)
    assert second.cached and second.key == first.key and len(fake_trt) == 1

    out = tmp_path / "run" / "model.engine"
    third = trtx.build_engine(onnx_path, out, precision="fp16", batch_range=(1, 4, 8), cache_dir=cache)
    assert third.cached and len(fake_trt) == 1
    assert out.read_bytes() == first.path.read_bytes() and read_sidecar(out)["cache_key"] == first.key
    assert third.metrics()["cached"] is True and third.metrics()["engine_bytes"] == out.stat().st_size > 0


@pytest.mark.parametrize("change", ["precision", "profile", "sparse", "onnx"])
def test_a_different_key_rebuilds(tmp_path, fake_trt, change):
    onnx_path = make_onnx(tmp_path / "m.onnx")
    cache = tmp_path / "cache"
    base = dict(precision="fp16", batch_range=(1, 4, 8), cache_dir=cache)
    first = trtx.build_engine(onnx_path, **base)
    if change == "precision":
        again = trtx.build_engine(onnx_path, **dict(base, precision="fp32"))
    elif change == "profile":
        again = trtx.build_engine(onnx_path, **dict(base, batch_range=(1, 8, 8)))
    elif change == "sparse":
        again = trtx.build_engine(onnx_path, **base, sparse_weights=True)
    else:
        again = trtx.build_engine(make_onnx(tmp_path / "q.onnx", qdq=True), **base)
    assert not again.cached and again.key != first.key and len(fake_trt) == 2


def test_a_tampered_cache_entry_is_rebuilt(tmp_path, fake_trt):
    onnx_path = make_onnx(tmp_path / "m.onnx")
    first = trtx.build_engine(onnx_path, cache_dir=tmp_path / "cache")
    first.path.write_bytes(b"truncated")
    again = trtx.build_engine(onnx_path, cache_dir=tmp_path / "cache")
    assert not again.cached and len(fake_trt) == 2 and again.path.read_bytes().startswith(b"ENGINE:")


def test_load_engine_refuses_other_tensorrt_or_gpu(tmp_path, fake_trt):
    built = trtx.build_engine(make_onnx(tmp_path / "m.onnx"), tmp_path / "m.engine", cache_dir=tmp_path / "cache")
    side = read_sidecar(built.path)
    write_sidecar(built.path, dict(side, tensorrt_version="10.0.1"))
    with pytest.raises(trt_cache.EngineCompatibilityError,
                       match=r"TensorRT 10\.0\.1 but this machine has TensorRT 10\.3\.0"):
        trtx.load_engine(built.path)
    write_sidecar(built.path, dict(side, gpu_name="NVIDIA H100 80GB HBM3", compute_capability="9.0"))
    with pytest.raises(trt_cache.EngineCompatibilityError, match="built for NVIDIA H100"):
        trtx.load_engine(built.path)
    write_sidecar(built.path, side)
    built.path.write_bytes(b"other bytes")
    with pytest.raises(trt_cache.EngineCompatibilityError, match="does not match its sidecar"):
        trtx.load_engine(built.path)
    assert json.loads(sidecar_path(built.path).read_text())["cache_key"] == built.key


# ----------------------------------------------------------------------------- lean import


def test_import_edgekit_does_not_load_tensorrt():
    code = ("import edgekit, edgekit.backends.tensorrt.build, edgekit.backends.tensorrt.runner, "
            "edgekit.backends.ort_cuda, edgekit.bench.doctor, "
            "edgekit.cli.doctor; import sys; assert 'tensorrt' not in sys.modules, 'tensorrt imported'; "
            "assert 'pycuda' not in sys.modules")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


# ----------------------------------------------------------------------------- TensorRT 10 call sequence (fake module)


class _Recorder:
    """A stand-in for the ``tensorrt`` module recording the TensorRT 10.x calls edgekit makes."""

    __version__ = "10.9.9"

    def __init__(self, parse_ok=True):
        self.calls, self.parse_ok = [], parse_ok
        rec = self
        self.BuilderFlag = type("BuilderFlag", (), {n: n for n in ("FP16", "INT8", "SPARSE_WEIGHTS", "TF32")})
        self.MemoryPoolType = type("MemoryPoolType", (), {"WORKSPACE": "WORKSPACE"})

        class Logger:
            WARNING = "WARNING"

            def __init__(self, level):
                rec.calls.append(("Logger", level))

        class Cache:
            def __init__(self, blob):
                self.blob = blob

            def serialize(self):
                return memoryview(b"cache:" + self.blob)

        class Config:
            def set_flag(self, f): rec.calls.append(("set_flag", f))
            def clear_flag(self, f): rec.calls.append(("clear_flag", f))
            def set_memory_pool_limit(self, pool, size): rec.calls.append(("set_memory_pool_limit", pool, size))
            def add_optimization_profile(self, p): rec.calls.append(("add_optimization_profile", p.shapes))
            def create_timing_cache(self, blob):
                rec.calls.append(("create_timing_cache", bytes(blob)))
                return Cache(bytes(blob))
            def set_timing_cache(self, cache, ignore_mismatch):
                rec.calls.append(("set_timing_cache", ignore_mismatch))
                self.cache = cache
                return cache.blob != b"stale"
            def get_timing_cache(self): return self.cache

        class Profile:
            def __init__(self): self.shapes = {}
            def set_shape(self, name, mn, opt, mx): self.shapes[name] = (list(mn), list(opt), list(mx))

        class Builder:
            def __init__(self, logger): rec.calls.append(("Builder",))
            def create_network(self, flags):
                rec.calls.append(("create_network", flags))
                return "network"
            def create_builder_config(self): return Config()
            def create_optimization_profile(self): return Profile()
            def build_serialized_network(self, network, config):
                rec.calls.append(("build_serialized_network", network))
                return memoryview(b"PLAN")

        class Err:
            def node(self): return 7
            def node_name(self): return "/stem/Conv"
            def node_operator(self): return "Conv"
            def desc(self): return "Assertion failed: weights must be initializers"

        class OnnxParser:
            num_errors = 1

            def __init__(self, network, logger): rec.calls.append(("OnnxParser", network))
            def parse_from_file(self, path):
                rec.calls.append(("parse_from_file", path))
                return rec.parse_ok
            def get_error(self, i): return Err()

        self.Logger, self.Builder, self.OnnxParser, self.Runtime = Logger, Builder, OnnxParser, object


def test_build_uses_the_tensorrt10_api(tmp_path, monkeypatch):
    fake = _Recorder()
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    onnx_path = make_onnx(tmp_path / "m.onnx")
    tc = tmp_path / "t.cache"
    tc.write_bytes(b"old")
    profile = {"x": {"min": [1, 3, 4, 4], "opt": [2, 3, 4, 4], "max": [8, 3, 4, 4]}}
    blob = trtx._build_serialized(onnx_path, trt_profile.precision_flags("int8", True), profile, 64, tc)
    assert blob == b"PLAN" and tc.read_bytes() == b"cache:old"
    names = [c[0] for c in fake.calls]
    assert ("create_network", 0) in fake.calls and ("parse_from_file", str(onnx_path)) in fake.calls
    assert [c[1] for c in fake.calls if c[0] == "set_flag"] == ["INT8", "FP16", "SPARSE_WEIGHTS"]
    assert ("set_memory_pool_limit", "WORKSPACE", 64 << 20) in fake.calls
    assert ("add_optimization_profile", {"x": ([1, 3, 4, 4], [2, 3, 4, 4], [8, 3, 4, 4])}) in fake.calls
    assert ("create_timing_cache", b"old") in fake.calls and ("set_timing_cache", False) in fake.calls
    assert names.index("set_timing_cache") < names.index("build_serialized_network")
    trtx._build_serialized(onnx_path, trt_profile.precision_flags("fp32"), profile, 64, None)
    assert ("clear_flag", "TF32") in fake.calls
    tc.write_bytes(b"stale")  # rejected by set_timing_cache (other TensorRT/GPU): start empty, then save
    trtx._build_serialized(onnx_path, trt_profile.precision_flags("fp16"), profile, 64, tc)
    creates = [c for c in fake.calls if c[0] == "create_timing_cache"]
    assert creates[-2:] == [("create_timing_cache", b"stale"), ("create_timing_cache", b"")]
    assert tc.read_bytes() == b"cache:"


def test_parser_errors_surface_node_names(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", _Recorder(parse_ok=False))
    with pytest.raises(trtx.EngineBuildError, match=r"node 7 '/stem/Conv' \(Conv\): Assertion failed: weights"):
        trtx._build_serialized(make_onnx(tmp_path / "m.onnx"), trt_profile.precision_flags("fp16"), {}, 64, None)
