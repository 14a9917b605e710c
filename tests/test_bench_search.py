"""benchmarks/bench_search.py's pure parts: what a search offers the joint re-measurement, the paired-by-seed
difference of two strategies, keeping the parts a partial run did not measure, and the strategies' table."""
from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    yield importlib.import_module("bench_search")
    sys.modules.pop("bench_search", None)


def _row(trial, state="complete", fidelity=1.0, feasible=True, ratio=0.1, artifact=None):
    return {"trial": trial, "state": state, "fidelity": fidelity, "feasible": feasible, "latency_ratio": ratio,
            "artifact": artifact or f"/c/{trial}.onnx", "baseline_artifact": "/c/teacher.onnx"}


def test_search_picks_offers_chosen_and_each_in_budget_full_fidelity_artifact_once(bench):
    rows = [_row(0, ratio=0.12), _row(1, ratio=0.10, artifact="/c/0.onnx"),   # the same artifact measured twice
            _row(2, state="pruned", fidelity=0.5, ratio=0.05),                 # stopped at the short rung
            _row(3, feasible=False, ratio=0.04),                               # misses the accuracy budget
            _row(4, ratio=0.09)]
    picks = bench.search_picks({"trials": rows, "chosen": {"trial": 4, "artifact": "/c/4.onnx"}})
    assert picks["in_budget"] == ["/c/0.onnx", "/c/4.onnx"]
    assert picks["chosen"] == "/c/4.onnx" and picks["chosen_trial"] == 4
    assert picks["trial_best"] == 0.09  # the lowest trial figure among in-budget full-fidelity trials
    assert picks["baselines"] == ["/c/teacher.onnx"]
    none = bench.search_picks({"trials": [_row(0, feasible=False)], "chosen": None})
    assert none["chosen"] is None and none["in_budget"] == [] and none["trial_best"] is None


def test_paired_difference_mean_and_t_half_width(bench):
    d = bench.paired_difference([0.10, 0.12, 0.11], [0.13, 0.15, 0.12])  # differences -0.03, -0.03, -0.01
    assert d["n"] == 3 and d["mean"] == pytest.approx(-0.0233, abs=1e-4)
    assert d["half_width"] == pytest.approx(4.3027 * 0.011547 / 3 ** 0.5, abs=1e-4)  # t(0.975, 2 df)
    assert d["verdict"] == "no difference beyond the CI"
    clear = bench.paired_difference([0.10, 0.11, 0.12, 0.10], [0.13, 0.141, 0.149, 0.13])
    assert clear["verdict"] == "a lower" and clear["mean"] + clear["half_width"] < 0
    assert bench.paired_difference([0.2, 0.2], [0.1, 0.11])["verdict"] == "a higher"
    dropped = bench.paired_difference([0.1, None, 0.12], [0.13, 0.14, None])  # a seed either side lacks is left out
    assert dropped["n"] == 1 and dropped["mean"] == pytest.approx(-0.03) and dropped["verdict"] == "too few seeds"


def test_a_partial_run_keeps_the_saved_parts(bench, tmp_path):
    saved = tmp_path / "search.json"
    saved.write_text(json.dumps({"scale": "full", "date": "old", "acceptance": {"a": 1}, "strategies": {"s": 0},
                                 "workers": {"w": 2}}))
    new = {"scale": "full", "date": "new", "strategies": {"s": 1}}
    merged = bench.merge_parts(new, saved, ["strategies"])
    assert merged == {"scale": "full", "date": "old", "acceptance": {"a": 1}, "strategies": {"s": 1},
                      "workers": {"w": 2}}
    assert bench.merge_parts(new, saved, list(bench.PARTS)) == new          # a full run replaces the file
    assert bench.merge_parts({**new, "scale": "small"}, saved, ["strategies"])["date"] == "new"  # other scale
    assert bench.merge_parts(new, tmp_path / "absent.json", ["strategies"]) == new


def test_strategies_table_flags_a_choice_over_the_test_budget(bench):
    runs, arts = {}, {}
    for n, (r0, r1) in {"tpe-hyperband": (0.08, 0.09), "random": (0.10, 0.12)}.items():
        for seed, ratio in enumerate((r0, r1)):
            path = f"/c/{n}-{seed}.onnx"
            arts[path] = {"ratio": ratio, "ci": [ratio - 0.01, ratio + 0.01], "test_accuracy": 99.0,
                          "test_drop": 0.8 if path == "/c/random-1.onnx" else 0.2}
            runs[f"{n}/{seed}"] = {"chosen": path, "chosen_ratio": ratio, "best_found": ratio, "trial_best": ratio,
                                   "wall_s": 10.0}
    st = {"trials": 12, "seeds": [0, 1], "date": "d", "load": [0.1, 0.2], "runs": runs,
          "joint": {"rounds": 20, "max_accuracy_drop": 0.5, "artifacts": arts},
          "summary": {n: {"chosen_ratio": 0.1, "best_found": 0.1, "trial_best": 0.1, "found_in_budget": "2/2",
                          "mean_wall_s": 10.0} for n in ("tpe-hyperband", "random")},
          "difference": {k: bench.paired_difference([0.08, 0.09], [0.10, 0.12])
                         for k in ("chosen_ratio", "best_found", "trial_best")}}
    md = "\n".join(bench._strategies_md(st))
    assert "| 0 | 0.080 (0.070–0.090) | +0.20 | 0.100 (0.090–0.110) | +0.20 | -0.020 |" in md
    assert "+0.80 (over budget)" in md
    assert "- chosen, re-measured: -0.0250 ± " in md
