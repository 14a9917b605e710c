"""Timing harness: interleaving order, paired ratios under drift, statistics, settings validation."""
from __future__ import annotations

import numpy as np
import pytest

from edgekit.core.measure import latency
from edgekit.core.measure.latency import Case, paired_ratios, plan_iterations, ratio_summary, run_interleaved, summarize
from edgekit.errors import ConfigError


class FakeClock:
    """A nanosecond clock that only moves when a fake runner 'computes'."""

    def __init__(self):
        self.now = 0

    def __call__(self) -> int:
        return self.now


class FakeRunner:
    """Costs ``cost_ms * drift()`` on the fake clock per call and logs its calls."""

    def __init__(self, name, cost_ms, clock, log, drift=lambda: 1.0):
        self.name, self.cost_ms, self.clock, self.log, self.drift = name, cost_ms, clock, log, drift
        self.input_dtype = np.dtype(np.float32)

    def run_prepared(self, prepared):
        self.log.append(self.name)
        self.clock.now += int(self.cost_ms * self.drift() * 1e6)

    def synchronize(self):
        self.log.append(self.name + ".sync")


@pytest.fixture
def clock(monkeypatch):
    c = FakeClock()
    monkeypatch.setattr(latency.time, "perf_counter_ns", c)
    return c


def test_rounds_interleave_cases_in_blocks(clock):
    log = []
    cases = [Case(n, FakeRunner(n, 1.0, clock, log), None) for n in "ABC"]
    res = run_interleaved(cases, warmup=2, iters=6, min_time=None, rounds=3)
    assert res.order == [0, 1, 2] * 3
    assert res.iters_per_round == [2, 2, 2]
    calls = [c for c in log if not c.endswith(".sync")]
    # warm-up: one untimed + 2 (warmup) iterations per case, before any round
    assert calls[:9] == ["A"] * 3 + ["B"] * 3 + ["C"] * 3
    # each round: per case one untimed + 2 timed iterations, A's block, then B's, then C's
    assert calls[9:] == (["A"] * 3 + ["B"] * 3 + ["C"] * 3) * 3
    # every run is followed by a synchronize (the timer sees run + sync)
    assert all(log[i + 1] == log[i] + ".sync" for i in range(0, len(log), 2))
    assert [len(r) for r in res.times[0]] == [2, 2, 2]


def test_paired_ratio_is_exact_under_drift_that_ruins_pooled_medians(clock):
    """The machine slows down 1x..4x across rounds; B is always 2.5x faster than A *within* a round."""
    state = {"round_factor": 1.0}
    log = []
    a = FakeRunner("A", 10.0, clock, log, drift=lambda: state["round_factor"])
    b = FakeRunner("B", 4.0, clock, log, drift=lambda: state["round_factor"])
    cases = [Case("A", a, None), Case("B", b, None)]

    original = latency.make_block_timer

    def drifting_timer(case):
        timer = original(case)

        def block(n):
            if case.key == "A":  # each new round (A runs first) the machine gets slower
                state["round_factor"] = 1.0 + 3.0 * (len(res_rounds) / 4)
                res_rounds.append(1)
            return timer(n)

        return block

    res_rounds = []
    latency.make_block_timer = drifting_timer
    try:
        res = run_interleaved(cases, warmup=1, iters=20, min_time=None, rounds=5)
    finally:
        latency.make_block_timer = original
    med = res.round_medians
    ratios = paired_ratios(med[0], med[1])
    assert np.allclose(ratios, 2.5)
    summary = ratio_summary(ratios)
    assert summary["speedup"] == pytest.approx(2.5) and summary["speedup_min"] == pytest.approx(2.5)
    assert summary["speedup_max"] == pytest.approx(2.5) and len(summary["speedup_rounds"]) == 5
    # pooled latencies spread widely with the drift, so unpaired comparisons would be noisy
    assert med[0].max() / med[0].min() > 2.5


def test_paired_ratio_median_and_spread():
    r = paired_ratios(np.array([10.0, 12.0, 9.0]), np.array([5.0, 4.0, 3.0]))
    assert r.tolist() == [2.0, 3.0, 3.0]
    s = ratio_summary(r)
    assert (s["speedup"], s["speedup_min"], s["speedup_max"]) == (3.0, 2.0, 3.0)
    lo, hi = s["speedup_ci"]  # bootstrap interval of the median: inside the rounds' range, around the median
    assert 2.0 <= lo <= 3.0 <= hi <= 3.0
    assert ratio_summary(np.array([2.0, 3.0]))["speedup_ci"] is None  # too few rounds for an interval
    with pytest.raises(ValueError):
        paired_ratios(np.ones(3), np.ones(2))


def test_min_time_sizes_blocks_and_adds_rounds_until_reached(clock):
    log = []
    fast = FakeRunner("F", 2.0, clock, log)
    res = run_interleaved([Case("F", fast, None)], warmup=1, iters=None, min_time=0.1, rounds=5)
    assert res.iters_per_round == [10]  # 100 ms / 5 rounds / 2 ms
    assert res.all_times(0).sum() >= 100.0 - 1e-9
    assert np.allclose(res.all_times(0), 2.0)
    # the warm-up overestimated a runner that then speeds up: extra rounds top the total up to min_time
    calls = {"n": 0}

    def speeding_up():
        calls["n"] += 1
        return 1.0 if calls["n"] <= 2 else 0.6

    log2 = []
    r2 = run_interleaved([Case("S", FakeRunner("S", 4.0, clock, log2, speeding_up), None)], warmup=1, iters=None,
                         min_time=0.1, rounds=5)
    assert r2.iters_per_round == [5]  # sized from the 4 ms warm-up; then each call takes 2.4 ms
    assert len(r2.times[0]) == 9 and r2.all_times(0).sum() == pytest.approx(108.0)  # 5 rounds + 4 extra


def test_round_time_budget_for_reference_cases(clock):
    log = []
    cases = [Case("M", FakeRunner("M", 1.0, clock, log), None),
             Case("peak", FakeRunner("P", 0.5, clock, log), None, round_time_s=0.01)]
    res = run_interleaved(cases, warmup=1, iters=4, min_time=None, rounds=2)
    assert res.iters_per_round == [2, 20]


def test_summarize_statistics():
    ms = np.arange(1, 101, dtype=float)
    s = summarize(ms, batch=4)
    assert s["p50_ms"] == pytest.approx(50.5) and s["p90_ms"] == pytest.approx(90.1)
    assert s["p99_ms"] == pytest.approx(99.01) and s["mean_ms"] == pytest.approx(50.5)
    assert s["std_ms"] == pytest.approx(np.std(ms, ddof=1)) and s["iters"] == 100
    assert s["throughput"] == pytest.approx(4 * 1000 / 50.5)
    with pytest.raises(ValueError):
        summarize(np.array([]), 1)


@pytest.mark.parametrize("kwargs, match", [
    ({"iters": 10, "min_time": 1.0}, "not both"),
    ({"iters": 0}, "iters"),
    ({"min_time": -1.0}, "min_time"),
    ({"rounds": 0}, "rounds"),
    ({"warmup": -1}, "warmup"),
])
def test_bad_settings_are_config_errors(kwargs, match):
    args = {"warmup": 1, "iters": None, "min_time": None, "rounds": 2, **kwargs}
    with pytest.raises(ConfigError, match=match):
        latency.validate_settings(**args)


def test_plan_iterations():
    assert plan_iterations(1.0, rounds=10, iters=95, min_time=None) == 10
    assert plan_iterations(5.0, rounds=4, iters=None, min_time=1.0) == 50
    assert plan_iterations(1e4, rounds=4, iters=None, min_time=1.0) == 1


def test_min_round_stat_survives_preemption_that_breaks_block_medians(clock):
    """Contention adds time to some iterations; the block minimum still sees the model's own cost."""
    calls = {"A": 0, "B": 0}

    def spiky(name):
        def drift():
            calls[name] += 1
            return 1.0 if calls[name] % 3 == 0 else 8.0  # two of three calls preempted
        return drift

    log = []
    cases = [Case("A", FakeRunner("A", 9.0, clock, log, spiky("A")), None),
             Case("B", FakeRunner("B", 3.0, clock, log, spiky("B")), None)]
    res = run_interleaved(cases, warmup=1, iters=12, min_time=None, rounds=4)
    mins = res.round_stat("min")
    assert np.allclose(paired_ratios(mins[0], mins[1]), 3.0)
    assert np.allclose(mins[0], 9.0) and np.allclose(res.round_stat("median")[0], 72.0)
    with pytest.raises(ConfigError, match="allowed: min, p25, median"):
        res.round_stat("mean")


def test_min_is_compared_at_equal_sample_size():
    """A fast case gets more iterations per round than a slow one; a plain block minimum would then be
    luckier for the fast case and inflate its speedup. Equal-size chunks remove that bias."""
    rng = np.random.default_rng(0)

    def block(cost, n):  # 80% of calls preempted (4x slower), independently
        return cost * np.where(rng.random(n) < 0.2, 1.0, 4.0)

    res = latency.Interleaved(times=[[block(10.0, 2) for _ in range(300)], [block(2.0, 10) for _ in range(300)]],
                              reference=[False, False])
    fair = res.round_stat("min")
    assert np.median(paired_ratios(fair[0], fair[1])) == pytest.approx(5.0)
    naive = [np.array([b.min() for b in t]) for t in res.times]
    assert np.median(paired_ratios(naive[0], naive[1])) == pytest.approx(20.0)  # the unequal minimum's bias
    # a reference case (GEMM peak) keeps its whole-block statistic
    ref = latency.Interleaved(times=res.times, reference=[False, True]).round_stat("min")
    assert np.allclose(ref[1], [b.min() for b in res.times[1]])


def test_ort_sessions_stop_spinning_when_run_returns(trained_resnet8):
    """Interleaved benchmarks alternate between many ORT sessions: an idle session's workers must not keep
    spinning after run() returns, or they take a core from the next session's block (measured: 2× slower)."""
    from edgekit.backends import open_runner
    from edgekit.bench.peak import GemmProbe

    sessions = [open_runner(trained_resnet8.onnx, "ort-cpu", threads=2).session, GemmProbe("fp32", 64, 2).session]
    for s in sessions:
        assert s.get_session_options().get_session_config_entry("session.force_spinning_stop") == "1"


def test_adaptive_rounds_stop_when_the_ci_is_narrow_or_at_the_cap(monkeypatch):
    """A steady 2x pair meets a 5 % CI target after the minimum rounds; a pair whose per-round ratio swings 1x..3x
    keeps adding rounds until the round cap, and the outcome is recorded."""
    import itertools

    from edgekit.core.measure.latency import Precision

    def timers(swing):
        ratio = itertools.cycle([1.0, 3.0, 2.0, 1.5, 2.5] if swing else [2.0])

        def make(case):
            def block(n):
                ms = 4.0 if case.key == "A" else 4.0 / next(ratio)
                return np.full(n, ms)
            return block
        return make

    cases = [Case("A", None, None), Case("B", None, None)]
    for swing, rounds_run, met in ((False, 4, True), (True, 12, False)):
        monkeypatch.setattr(latency, "make_block_timer", timers(swing))
        res = run_interleaved(cases, warmup=1, iters=8, min_time=None, rounds=4,
                              precision=Precision(ci_target=0.05, max_rounds=12, max_seconds=60))
        assert len(res.times[0]) == rounds_run and res.adaptive["met"] is met
        assert res.adaptive["rounds"] == rounds_run
