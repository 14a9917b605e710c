""""Did it actually get faster?" diagnostics and the report's headline logic."""
from _helpers.models import misaligned_small_cnn

from edgekit._io import write_sidecar
from edgekit.models import save_checkpoint
from edgekit.pipeline.diagnostics import misaligned_channels, step_diagnostics
from edgekit.pipeline.report import final_variant
from edgekit.pipeline.stages import Variant


def rows_for(name, backend, p50s, speedup, baseline=False):
    return [{"model": name, "backend": backend, "batch": b, "p50_ms": ms, "speedup": speedup if b == 1 else None,
             "baseline": baseline} for b, ms in p50s.items()]


def test_paying_step_is_not_flagged():
    v = {"a": Variant("a"), "b": Variant("b", parent="a")}
    rows = rows_for("a", "ort-cpu", {1: 2.0, 8: 12.0}, 1.0, True) + rows_for("b", "ort-cpu", {1: 1.0, 8: 6.0}, 2.0)
    assert step_diagnostics(v, rows) == []


def test_flat_latency_over_batch_is_reported_as_call_overhead():
    v = {"a": Variant("a"), "b": Variant("b", parent="a")}
    rows = rows_for("a", "ort-cpu", {1: 0.10, 8: 0.20}, 1.0, True) + rows_for("b", "ort-cpu", {1: 0.10, 8: 0.19}, 1.02)
    (f,) = step_diagnostics(v, rows)
    assert f["variant"] == "b" and f["step_speedup"] == 1.02
    assert any("call overhead dominates" in c for c in f["causes"])


def test_qdq_for_another_target_and_low_coverage_and_float_layers(tmp_path):
    onnx = tmp_path / "q.onnx"
    onnx.write_bytes(b"")
    write_sidecar(onnx, {"target": "tensorrt", "precision": "int8"})
    v = {"a": Variant("a"),
         "b": Variant("b", parent="a", onnx=str(onnx), meta={"int8_mac_fraction": 0.55, "float_layers": ["conv1"]})}
    rows = rows_for("a", "ort-cpu", {1: 1.0}, 1.0, True) + rows_for("b", "ort-cpu", {1: 1.4}, 0.7)
    (f,) = step_diagnostics(v, rows)
    text = " ".join(f["causes"])
    assert "made for target 'tensorrt' runs on ort-cpu, which wants target 'cpu'" in text
    assert "55% of MACs run in int8" in text and "conv1" in text


def test_misaligned_channels_are_named(tmp_path):
    path = save_checkpoint(misaligned_small_cnn(), tmp_path / "m.pt")
    assert misaligned_channels(str(path)) == ["0.0:5"]


def test_final_variant_skips_artifacts_made_for_another_target(tmp_path):
    cpu, trt = tmp_path / "cpu.onnx", tmp_path / "trt.onnx"
    for p, t in ((cpu, "cpu"), (trt, "tensorrt")):
        p.write_bytes(b"")
        write_sidecar(p, {"target": t})
    chosen = [Variant("ref"), Variant("int8-cpu", onnx=str(cpu)), Variant("int8-trt", onnx=str(trt))]
    assert final_variant(chosen, "ort-cpu").name == "int8-cpu"
    assert final_variant(chosen, "tensorrt").name == "int8-trt"


def test_report_section_compares_backends_on_the_same_file():
    from edgekit.bench.pairs import backend_pairs
    from edgekit.pipeline.report import _pairs_section

    rows = [{"model": m, "backend": b, "batch": n, "artifact": f"/run/{m}.onnx", "speedup_rounds": r}
            for m, b, n, r in (("ref", "ort-cpu", 1, [2.0, 2.0]), ("ref", "other", 1, [3.0, 2.0]),
                               ("ref", "ort-cpu", 8, [1.0, 1.0]), ("ref", "other", 8, [2.0, 1.5]))]
    lines = _pairs_section([Variant("ref")], backend_pairs(rows))
    assert lines[0] == "## Backends on the same file (vs ort-cpu)"
    assert "| ref | other | ref.onnx | 1.25× (1.00–1.50) | 1.75× (1.50–2.00) |" in lines
    assert _pairs_section([Variant("ref")], []) == []


def test_float_baseline_comes_from_the_backend_specs(tmp_path):
    from edgekit.pipeline.report import _baseline_meaning, float_baseline_backend

    ref = Variant("ref", checkpoint=str(tmp_path / "r.pt"), onnx=str(tmp_path / "r.onnx"))
    assert float_baseline_backend(["ort-cpu", "torch"], ref) == "torch"
    assert float_baseline_backend(["ort-cpu", "torch"], Variant("ref", onnx="r.onnx")) == "ort-cpu"
    assert _baseline_meaning("ref", "torch") == "PyTorch eager fp32 of the reference model"
    assert _baseline_meaning("ref", "ort-cpu") == "ref on ort-cpu: the recipe has no float-baseline target (torch)"


def test_pay_off_check_uses_the_alignment_pruning_defaults_to_on_this_cpu(tmp_path, monkeypatch):
    """24 channels are a multiple of ORT's declared 8 but not of the 16 that AVX-512 kernels block by."""
    import torch.nn as nn

    import edgekit.core.platform as platform
    from edgekit.models import create_model

    model = create_model("small_cnn", width=8, depth=2)
    model[0][0], model[0][1] = nn.Conv2d(3, 24, 3, 1, 1, bias=False), nn.BatchNorm2d(24)
    model[1][0] = nn.Conv2d(24, 16, 3, 2, 1, bias=False)
    ckpt = save_checkpoint(model.eval(), tmp_path / "m.pt")
    v = {"a": Variant("a"), "b": Variant("b", parent="a", checkpoint=str(ckpt))}
    rows = rows_for("a", "ort-cpu", {1: 1.0}, 1.0, True) + rows_for("b", "ort-cpu", {1: 1.0}, 1.0)
    real = platform.environment()
    for flags, flagged in ((["avx2"], False), (["avx2", "avx512f"], True)):
        monkeypatch.setattr(platform, "environment", lambda f=flags: {**real, "isa_flags": f})
        causes = " ".join(c for f in step_diagnostics(v, rows) for c in f["causes"])
        assert ("not multiples of 16" in causes and "0.0:24" in causes) is flagged, causes
