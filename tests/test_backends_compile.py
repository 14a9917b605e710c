"""The compile stage chooses a backend by a field and calls its declared compile hook; artifacts by suffix."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from edgekit._io import write_sidecar
from edgekit.backends import BACKENDS, BackendSpec, compiling_backends, register_backend
from edgekit.bench.specs import variant_artifacts
from edgekit.errors import BackendUnavailableError, ConfigError
from edgekit.pipeline.stage_compile import CompileStage, run_compile
from edgekit.pipeline.stages import StageContext, Variant


def _fake_compile(onnx_path, out_dir, precision="fp32", **options):
    if options:
        raise ConfigError(f"fake compile takes no options {sorted(options)}")
    out = Path(out_dir) / f"{Path(onnx_path).stem}-{precision}.fir"
    out.write_text(json.dumps({"from": str(onnx_path)}))
    write_sidecar(out, {"precision": precision, "onnx": str(onnx_path), "compiler": "fake 1.0"})
    return out


def _spec(name="fake-ir", probe=lambda: (True, ""), **kw):
    return BackendSpec(name, ("fake-ir", "onnx"), probe, lambda *a, **k: None, "cpu", "fake IR compiler",
                       priority=500, suffixes={"fake-ir": (".fir",)}, precisions=("fp32", "fp16"),
                       quant_target="cpu", tag="fir", compile=_fake_compile, **kw)


@pytest.fixture
def fake_backend():
    compiling_backends()  # fills the registry first
    spec = register_backend(_spec())
    yield spec
    BACKENDS.unregister(spec.name)


@pytest.fixture
def ctx(tmp_path):
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"onnx bytes")
    stage_dir = tmp_path / "stage"
    stage_dir.mkdir()
    parent = Variant("m", checkpoint=None, onnx=str(onnx), meta={"int8_mac_fraction": 0.9}, metrics={"params": 7})
    return StageContext(tmp_path, stage_dir, 0, 2, None, {"m": parent}, lambda: None)


def test_compile_with_the_backend_named_by_the_field(fake_backend, ctx):
    out = run_compile(ctx, CompileStage(backend="fake-ir", precision="fp16"))
    (v,) = out.variants
    assert v.name == "m-fir-fp16" and v.parent == "m" and v.onnx == ctx.variants["m"].onnx
    assert Path(v.engine).name == "m-fp16.fir" and Path(v.engine).parent == ctx.stage_dir
    assert v.meta["target"] == "cpu" and v.meta["precision"] == "fp16" and v.meta["backend"] == "fake-ir"
    assert v.meta["int8_mac_fraction"] == 0.9 and v.metrics == {"params": 7}
    assert out.metrics["artifact"] == v.engine and out.metrics["compiler"] == "fake 1.0"
    assert variant_artifacts(v) == {"onnx": v.onnx, "fake-ir": v.engine}  # classified by suffix, not by field


def test_only_options_the_recipe_set_reach_the_hook(fake_backend, ctx):
    assert CompileStage(backend="fake-ir").backend_options() == {}
    assert CompileStage(backend="fake-ir", sparse_weights=True).backend_options() == {"sparse_weights": True}
    with pytest.raises(ConfigError, match=r"fake compile takes no options \['sparse_weights'\]"):
        run_compile(ctx, CompileStage(backend="fake-ir", sparse_weights=True))
    with pytest.raises(ValidationError, match="backend 'fake-ir' compiles precisions fp32, fp16, not 'int8'"):
        CompileStage(backend="fake-ir", precision="int8")


def test_backend_field_is_checked_against_the_registry(fake_backend):
    with pytest.raises(ValidationError, match="backend 'ort-cpu' has no compile step; backends that compile: "
                                              ".*fake-ir"):
        CompileStage(backend="ort-cpu")
    with pytest.raises(ValidationError, match="unknown backend 'fake-irr'.*did you mean 'fake-ir'"):
        CompileStage(backend="fake-irr")
    assert CompileStage().backend_name() == compiling_backends()[0] != "fake-ir"  # lowest priority compiles


def test_unavailable_backend_is_skipped_unless_required(ctx):
    compiling_backends()
    with BACKENDS.temporary("fake-ir", _spec(probe=lambda: (False, "package 'fakeir' is not installed"))):
        assert run_compile(ctx, CompileStage(backend="fake-ir")).metrics == {
            "skipped": "package 'fakeir' is not installed"}
        with pytest.raises(BackendUnavailableError, match="required but fake-ir is unavailable: package 'fakeir'"):
            run_compile(ctx, CompileStage(backend="fake-ir", required=True))


def test_a_variant_without_onnx_cannot_be_compiled(fake_backend, tmp_path):
    ctx = StageContext(tmp_path, tmp_path, 0, 2, None, {"m": Variant("m", checkpoint="m.pt")}, lambda: None)
    with pytest.raises(ConfigError, match="variant 'm' has no ONNX artifact to compile"):
        run_compile(ctx, CompileStage(backend="fake-ir"))


def test_tensorrt_compile_hook_refuses_unknown_options(tmp_path):
    from edgekit.backends.tensorrt.runner import compile_engine

    with pytest.raises(ConfigError, match=r"unknown tensorrt compile option\(s\) \['colour'\]"):
        compile_engine(tmp_path / "m.onnx", tmp_path, colour="red")
