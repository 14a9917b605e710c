"""Report helpers, held-out data loading, and the benchmarks/run_all.py section assembly."""
from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from edgekit.bench.data import HeldOut, as_split, load_npz, parse_batches
from edgekit.bench.plots import pareto_front
from edgekit.bench.results import BenchResult, format_speedup
from edgekit.errors import InputFileError, ShapeError

ROOT = Path(__file__).resolve().parent.parent


def test_pareto_front():
    pts = [(5.0, 90.0), (1.0, 80.0), (2.0, 85.0), (3.0, 84.0), (4.0, 90.0), (6.0, 95.0)]
    assert pareto_front(pts) == [1, 2, 4, 5]  # (3, 84) dominated by (2, 85); (5, 90) by (4, 90)
    assert pareto_front([]) == []


def test_format_speedup_and_schema_check():
    assert format_speedup({"baseline": True}) == "1.00× (baseline)"
    assert format_speedup({"speedup": 3.2149, "speedup_min": 3.05, "speedup_max": 3.4}) == "3.21× (3.05–3.40)"
    assert format_speedup({"speedup": 3.2149, "speedup_min": 3.05, "speedup_max": 3.4, "speedup_ci": [3.1, 3.3]}) \
        == "3.21× (3.05–3.40) [CI 3.10–3.30]"
    with pytest.raises(InputFileError, match="edgekit-bench/1"):
        BenchResult.from_dict({"schema": "something/2", "rows": []})


def test_load_warning_only_when_oversubscribed():
    env = {"cores_usable": 2, "threading_env": {}}
    busy = BenchResult(rows=[], environment=env, config={"load_avg_1m": [1.0, 3.5]})
    assert "load average 3.5 on 2 usable cores" in busy.load_warning()
    assert "KMP_BLOCKTIME=0" in busy.load_warning() and "OMP_WAIT_POLICY=PASSIVE" in busy.load_warning()
    spinning_stopped = BenchResult(rows=[], environment={**env, "threading_env": {"KMP_BLOCKTIME": "0"}},
                                   config={"load_avg_1m": [1.0, 3.5]})
    quiet_hint = spinning_stopped.load_warning()
    assert "load average 3.5" in quiet_hint and "KMP_BLOCKTIME" not in quiet_hint
    assert BenchResult(rows=[], environment=env, config={"load_avg_1m": [0.4, 1.2]}).load_warning() is None
    assert BenchResult(rows=[], environment=env, config={"load_avg_1m": [None, None]}).load_warning() is None


def test_npz_validation(tmp_path):
    x = np.random.default_rng(0).standard_normal((10, 3, 4, 4)).astype(np.float32)
    np.savez(tmp_path / "ok.npz", x=x, y=np.arange(10))
    split = load_npz(tmp_path / "ok.npz")
    assert split.x.dtype == np.float32 and split.y.dtype == np.int64 and split.x.shape == (10, 3, 4, 4)
    np.savez(tmp_path / "noy.npz", x=x)
    assert load_npz(tmp_path / "noy.npz").y is None
    np.savez(tmp_path / "named.npz", images=x, mask=np.ones((10, 4), np.int64), y=np.arange(10))
    named = load_npz(tmp_path / "named.npz")  # one array per model input name, dtypes kept
    assert set(named.x) == {"images", "mask"} and named.x["mask"].dtype == np.int64 and len(named.y) == 10
    np.savez(tmp_path / "onlyy.npz", y=np.arange(10))
    with pytest.raises(InputFileError, match="needs an array 'x'.*or one array per model input"):
        load_npz(tmp_path / "onlyy.npz")
    np.savez(tmp_path / "ragged.npz", a=x, b=x[:4])
    with pytest.raises(ShapeError, match="disagree on the number of samples"):
        load_npz(tmp_path / "ragged.npz")
    np.savez(tmp_path / "bady.npz", x=x, y=np.arange(9))
    with pytest.raises(ShapeError, match=r"'y' must be integer labels of shape \[10\]"):
        load_npz(tmp_path / "bady.npz")
    x_nan = x.copy()
    x_nan[0, 0, 0, 0] = np.nan
    np.savez(tmp_path / "nan.npz", x=x_nan)
    with pytest.raises(InputFileError, match="NaN"):
        load_npz(tmp_path / "nan.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(InputFileError, match="not a readable .npz"):
        load_npz(tmp_path / "junk.npz")
    with pytest.raises(ShapeError, match="data.y must have shape"):
        as_split(types.SimpleNamespace(x=x, y=np.arange(3)))
    assert isinstance(as_split(types.SimpleNamespace(x=x, y=np.arange(10))), HeldOut)


def test_named_dataset_fits_the_model_input_shape():
    split = as_split("digits", like_shape=(3, 16, 16))
    assert split.x.shape[1:] == (3, 16, 16) and split.y is not None and len(split.x) == len(split.y)
    native = as_split("digits")
    assert native.x.shape[1:] == (1, 8, 8)
    assert split.source == "digits:test"


def test_batch_list_forms():
    assert parse_batches((1, 8, 32)) == [1, 8, 32] and parse_batches(np.int64(4)) == [4]


@pytest.fixture
def run_all(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    mod = importlib.import_module("run_all")
    yield mod
    sys.modules.pop("run_all", None)


def test_benchmarks_md_is_what_the_saved_results_render_to(run_all, tmp_path):
    """Every section whose script saved a results file is exactly what `run_all.py --render` makes of that file:
    the figures in docs/BENCHMARKS.md come from benchmarks/results/, not from hand edits."""
    import shutil

    doc = ROOT / "docs" / "BENCHMARKS.md"
    out = tmp_path / "BENCHMARKS.md"
    shutil.copyfile(doc, out)
    assert run_all.main(["--render", "--out", str(out)]) == 0
    assert out.read_text() == doc.read_text()
    saved = [n for n in run_all.SECTIONS if run_all.rendered(n) is not None]
    assert len(saved) >= 7 and all(f"<!-- section: {n} -->" in out.read_text() for n in saved)
    for n in run_all.SECTIONS:
        sys.modules.pop(n, None)


def test_run_all_concatenates_sections_and_only_replaces_one(run_all, tmp_path, monkeypatch):
    calls = []

    def fake(name, text):
        m = types.ModuleType(name)

        def run(ctx):
            calls.append((name, ctx.quick, ctx.threads))
            assert ctx.img_dir == tmp_path / "img"
            return f"## {name}\n\n{text}"

        m.run = run
        monkeypatch.setitem(sys.modules, name, m)

    fake("sec_a", "first")
    fake("sec_b", "second")
    monkeypatch.setattr(run_all, "SECTIONS", ["sec_a", "sec_b"])
    out = tmp_path / "BENCHMARKS.md"
    assert run_all.main(["--quick", "--threads", "1", "--out", str(out)]) == 0
    doc = out.read_text()
    assert doc.startswith("# edgekit benchmarks") and doc.index("## sec_a") < doc.index("## sec_b")
    assert calls == [("sec_a", True, 1), ("sec_b", True, 1)]
    # --only reruns one section and keeps the other exactly as it was
    fake("sec_b", "second, regenerated")
    assert run_all.main(["--only", "sec_b", "--out", str(out)]) == 0
    doc2 = out.read_text()
    assert "first" in doc2 and "second, regenerated" in doc2 and len(calls) == 3
    assert list(run_all.existing_sections(doc2)) == ["sec_a", "sec_b"]
    assert run_all.main(["--only", "nope", "--out", str(out)]) == 2
    # a failing script keeps its previous section, the others are still regenerated, exit code 1
    broken = types.ModuleType("sec_a")
    broken.run = lambda ctx: 1 / 0
    monkeypatch.setitem(sys.modules, "sec_a", broken)
    fake("sec_b", "third version")
    assert run_all.main(["--out", str(out)]) == 1
    doc3 = out.read_text()
    assert "first" in doc3 and "third version" in doc3
    assert run_all.main(["--skip", "sec_a", "--out", str(out)]) == 0 and "first" in out.read_text()


def _row(model, backend, batch, rounds, artifact="m.onnx"):
    return {"model": model, "backend": backend, "batch": batch, "artifact": artifact, "speedup_rounds": rounds}


def test_backend_pairs_are_per_round_ratios_on_the_same_file():
    from edgekit.bench.pairs import backend_pairs, format_ratio

    rows = [_row("ref", "torch", 1, [1.0, 1.0, 1.0], "ref.pt"), _row("ref", "ort-cpu", 1, [2.0, 2.5, 3.0], "ref.onnx"),
            _row("ref", "fake", 1, [4.0, 2.5, 6.0], "ref.onnx"), _row("q", "ort-cpu", 1, [10.0, 8.0, 9.0], "q.onnx"),
            _row("q", "fake", 1, [5.0, 8.0, 9.0], "q.xml"),  # another file: not a pair
            _row("ref", "ort-cpu", 8, [2.0, 2.0], "ref.onnx"), _row("ref", "fake", 8, [3.0, 1.0], "ref.onnx")]
    pairs = backend_pairs(rows)
    assert [(p["model"], p["batch"], p["backend"], p["reference"]) for p in pairs] == [
        ("ref", 1, "fake", "ort-cpu"), ("ref", 8, "fake", "ort-cpu")]
    assert pairs[0]["ratio_rounds"] == [2.0, 1.0, 2.0] and pairs[0]["ratio"] == 2.0
    assert (pairs[1]["ratio"], pairs[1]["ratio_min"], pairs[1]["ratio_max"]) == (1.0, 0.5, 1.5)
    assert format_ratio(pairs[1]) == "1.00× (0.50–1.50)"
    assert [p["backend"] for p in backend_pairs(rows, reference="fake")] == ["ort-cpu", "ort-cpu"]
    assert backend_pairs([_row("a", "fake", 1, [1.0])]) == []


def test_bench_backends_renders_one_section_per_backend_pair(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    bench_backends = importlib.import_module("bench_backends")
    pair = {"model": "demo-int8", "backend": "openvino", "batch": 1, "ratio": 1.2, "ratio_min": 1.1, "ratio_max": 1.3}
    r = {"reference": "ort-cpu", "backends": ["ort-cpu", "openvino"], "threads": 2, "files": {"demo-int8": "d.onnx"},
         "pairs": [pair], "environment_line": "AMD EPYC; 2 threads.", "load_warning": None, "load_avg_1m": [0.5, 0.7],
         "timing": {"warmup": 1, "min_time": 0.1, "rounds": 3, "round_stat": "min"}, "table": "| t |"}
    md = bench_backends.render(r)
    assert md.startswith("## Backends: OpenVINO CPU vs ONNX Runtime CPU on the same files")
    assert "| demo-int8 (`d.onnx`) | 1.20× (1.10–1.30) | – |" in md and "[0.5, 0.7]" in md
    sys.modules.pop("bench_backends", None)


def test_accuracy_differences_are_paired_over_the_same_samples_with_a_ci_and_mcnemar():
    """Two models that disagree on a few samples: the difference, an interval around it that excludes 0 only when
    the evidence is lopsided, and McNemar's exact p-value from the discordant samples."""
    import numpy as np

    from edgekit.core.measure.accuracy import mcnemar_exact_p, paired_accuracy_difference

    base = np.ones(200, bool)
    model = base.copy()
    model[:30] = False  # 30 samples lost, none gained: a real 15-point drop
    d = paired_accuracy_difference(model, base)
    lo, hi = d["accuracy_delta_ci"]
    assert d["accuracy_delta"] == -15.0 and lo < -15.0 < hi < 0
    assert d["mcnemar_p"] < 1e-6
    mixed = base.copy()
    mixed[:3] = False
    other = base.copy()
    other[3:6] = False  # 3 lost, 3 gained against it: no evidence either way
    same = paired_accuracy_difference(mixed, other)
    assert same["accuracy_delta"] == 0.0 and same["accuracy_delta_ci"][0] < 0 < same["accuracy_delta_ci"][1]
    assert same["mcnemar_p"] == 1.0 and mcnemar_exact_p(0, 0) == 1.0
    with pytest.raises(ValueError, match="same non-empty samples"):
        paired_accuracy_difference(model[:10], base)
