"""Search strategy details that decide what a search finds at a given number of trials: the default's short-rung
stopping (only trials that cannot win stop early), and configurations drawn again (answered from the earlier trial,
not built, timed or counted again). A stand-in worker answers the jobs, so nothing is trained."""
from __future__ import annotations

import json

import pytest
import yaml
from test_search import TINY  # the tiny search recipe of tests/test_search.py

from edgekit.errors import ConfigError

# TINY without its INT8 stage; 4 student epochs so the short rung (1/2) differs from full length
RECIPE = {**json.loads(json.dumps(TINY)), "threads": 1}
RECIPE["stages"] = RECIPE["stages"][:2]
RECIPE["stages"][1]["train"]["epochs"] = 4
RECIPE["search"] = {"objective": {"minimize": "latency", "batch": 1, "backend": "ort-cpu"},
                    "constraints": {"max_accuracy_drop": 1.0},
                    "space": {"student.student.width": [2, 4, 8]},
                    "fidelity": {"min_fraction": 0.5, "reduction_factor": 2}}


def _setup(tmp_path, student_width=8, **search):
    from edgekit.search.driver import prepare_search

    raw = json.loads(json.dumps(RECIPE))
    raw["search"].update(search)
    raw["stages"][1]["student"]["width"] = student_width
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return prepare_search(path, out_dir=tmp_path / "s")


class Worker:
    """Latency grows with width; accuracy with epochs (a drop of 2 points at half the epochs, 0 at all of them)."""

    def __init__(self, refuse=()):
        self.calls, self.refuse = [], set(refuse)

    def __call__(self, job):
        width, frac = job["raw"]["stages"][1]["student"]["width"], job["fraction"]
        self.calls.append((width, frac))
        if width in self.refuse:
            raise ConfigError(f"width {width} is refused")
        drop = 2.0 * (1 - frac) * 2
        return {"val_accuracy": 90.0 - drop, "teacher_val_accuracy": 90.0, "accuracy_drop": drop,
                "latency_ratio": width / 10, "latency_ms": width / 10, "size_mb": 0.01, "stages": [],
                "artifact": f"w{width}.onnx", "baseline_artifact": "t.onnx"}


def _pool(worker):
    import contextlib

    @contextlib.contextmanager
    def pool():
        yield worker
    return pool()


def test_a_drawn_again_configuration_is_answered_from_its_earlier_trial_and_not_counted(tmp_path):
    from edgekit.search.driver import finished_trials, run_study
    from edgekit.search.results import trial_rows

    setup = _setup(tmp_path, strategy="random", budget={"trials": 3}, seed=1)
    worker = Worker()
    study, _ = run_study(setup, pool=_pool(worker))
    rows = trial_rows(study, setup)
    # three distinct widths measured once each, however often the sampler drew them
    assert sorted(w for w, _ in worker.calls) == [2, 4, 8]
    assert sorted(r["params"]["student.student.width"] for r in rows) == [2, 4, 8]
    assert len(finished_trials(study)) == 3
    repeats = [t for t in study.trials if "duplicate_of" in t.user_attrs]
    for t in repeats:  # the sampler is told the earlier outcome
        assert t.value == study.trials[t.user_attrs["duplicate_of"]].value


def test_a_budget_larger_than_the_space_stops_when_only_repeats_are_drawn(tmp_path):
    from edgekit.search.driver import MAX_REPEATS_IN_A_ROW, finished_trials, run_study

    setup = _setup(tmp_path, strategy="random", budget={"trials": 10})
    worker = Worker(refuse={8})
    study, _ = run_study(setup, pool=_pool(worker))
    assert len(finished_trials(study)) == 3 and len(worker.calls) == 3  # the refusal counts once, too
    assert sum("duplicate_of" in t.user_attrs for t in study.trials) >= MAX_REPEATS_IN_A_ROW


def _study_with_incumbent(latency_ratio, drop=0.0):
    import optuna
    from optuna.distributions import CategoricalDistribution

    study = optuna.create_study()
    study.add_trial(optuna.trial.create_trial(
        params={"w": 2}, distributions={"w": CategoricalDistribution([2, 4, 8])}, value=latency_ratio,
        user_attrs={"metrics": {"fidelity": 1.0, "latency_ratio": latency_ratio, "val_accuracy": 90.0 - drop},
                    "excess": {"max_accuracy_drop": drop - 1.0}}))
    return study


def _short_rung_trial(study, latency_ratio, excess, slack=None, val_accuracy=88.0):
    from optuna.distributions import CategoricalDistribution

    trial = study.ask({"w": CategoricalDistribution([2, 4, 8])})
    trial.set_user_attr("metrics", {"fidelity": 0.5, "latency_ratio": latency_ratio, "val_accuracy": val_accuracy,
                                    "accuracy_slack": slack})
    trial.set_user_attr("excess", excess)
    return study._storage.get_trial(trial._trial_id)


@pytest.mark.parametrize("ratio,excess,stopped", [
    (0.50, {}, True),                              # slower than the fastest in-budget trial by more than 10 %
    (0.21, {}, False),                             # within the margin: it may still be the fastest
    (0.10, {"max_accuracy_drop": 0.4}, True),      # fast, but expected to miss the budget after its gain
    (0.10, {"max_accuracy_drop": -0.2}, False),    # fast and expected to meet it: promoted
])
def test_tpe_bound_stops_a_short_rung_only_when_it_cannot_win(ratio, excess, stopped):
    from edgekit.search.config import Fidelity
    from edgekit.search.strategies import STRATEGIES

    _, pruner, rungs = STRATEGIES.get("tpe-bound")(seed=0, trials=12, fidelity=Fidelity(min_fraction=0.5))
    assert rungs == [0.5, 1.0]
    study = _study_with_incumbent(0.2)
    assert pruner.prune(study, _short_rung_trial(study, ratio, excess)) is stopped


def test_tpe_bound_promotes_everything_in_budget_until_a_full_length_trial_meets_the_budget():
    from edgekit.search.config import Fidelity
    from edgekit.search.strategies import STRATEGIES

    _, pruner, _ = STRATEGIES.get("tpe-bound")(seed=0, trials=12, fidelity=Fidelity(min_fraction=0.5))
    study = _study_with_incumbent(0.2, drop=3.0)  # the only full-length trial missed the accuracy budget
    assert pruner.prune(study, _short_rung_trial(study, 5.0, {})) is False


def test_tpe_bound_for_an_accuracy_objective_bounds_by_the_expected_accuracy():
    from edgekit.search.config import Fidelity
    from edgekit.search.strategies import STRATEGIES

    _, pruner, _ = STRATEGIES.get("tpe-bound")(seed=0, trials=12, fidelity=Fidelity(min_fraction=0.5),
                                               objective="accuracy")
    study = _study_with_incumbent(0.2)  # val accuracy 90
    assert pruner.prune(study, _short_rung_trial(study, 0.1, {}, slack=None, val_accuracy=85.0)) is False
    assert pruner.prune(study, _short_rung_trial(study, 0.1, {}, slack=1.0, val_accuracy=85.0)) is True
    assert pruner.prune(study, _short_rung_trial(study, 0.1, {}, slack=1.0, val_accuracy=89.5)) is False


def test_tpe_bound_search_end_to_end_stops_slower_trials_at_the_short_rung(tmp_path):
    from edgekit.search.driver import run_study

    setup = _setup(tmp_path, student_width=2, budget={"trials": 3}, seed=0)  # trial 0: the recipe's width 2
    assert setup.config.strategy == "tpe-bound"  # the default
    worker = Worker()
    study, rungs = run_study(setup, pool=_pool(worker))
    assert rungs == [0.5, 1.0]
    # width 2 (trial 0) completes within budget at 0.2; widths 4 and 8 (0.4, 0.8) cannot beat it: each stops after
    # its short fine-tune, and each is measured once
    assert worker.calls[:2] == [(2, 0.5), (2, 1.0)]
    assert sorted(worker.calls[2:]) == [(4, 0.5), (8, 0.5)]
