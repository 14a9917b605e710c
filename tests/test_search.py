"""`edgekit search`: bad input caught before work, a tiny end-to-end search (tables, Pareto, chosen model and its
recipe), killing and resuming, constraints no trial meets, Ray (a local two-node cluster) and fast failure on a
dead Ray address."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from _helpers.runs import run_cli

from edgekit.errors import BackendUnavailableError, ConfigError, RunDirectoryError

TINY = {
    "seed": 0, "threads": 2,
    "model": {"name": "small_cnn", "kwargs": {"width": 8, "depth": 2}},
    "data": {"name": "digits", "image_size": 8, "channels": 1},
    "stages": [
        {"type": "train", "name": "reference", "epochs": 2, "lr": 0.1},
        {"type": "distill", "name": "student", "student": {"name": "small_cnn", "width": 8, "depth": 2},
         "train": {"epochs": 2, "lr": 0.1}},
        {"type": "quantize", "name": "student-int8", "target": "cpu", "samples": 32},
    ],
    "targets": [{"backend": "ort-cpu"}],
    "search": {
        "objective": {"minimize": "latency", "batch": 1, "backend": "ort-cpu"},
        "constraints": {"max_accuracy_drop": 60},
        "space": {"student.student.width": [2, 4, 8]},
        "budget": {"trials": 3},
        "fidelity": {"min_fraction": 0.5, "reduction_factor": 2},
        "measure": {"rounds": 3, "warmup": 2, "min_time": 0.03, "final_rounds": 4},
    },
}


def _recipe(tmp_path: Path, name: str = "tiny_search", **search) -> Path:
    raw = json.loads(json.dumps(TINY))
    raw["search"].update(search)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _env() -> dict:
    root = str(Path(__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}


# --- bad input, caught before any training -------------------------------------------------------------------

def test_empty_space_is_an_error(tmp_path):
    from edgekit.search.driver import prepare_search

    with pytest.raises(ConfigError, match=r"search.space is empty"):
        prepare_search(_recipe(tmp_path, space={}), out_dir=tmp_path / "s")
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("path, message", [
    ("student.temprature", r"stage 'student' \(distill\) has no field 'temprature' \(did you mean 'temperature'\?\)"),
    ("student.train.epoch", r"has no field 'epoch' \(did you mean 'epochs'\?\)"),
    ("student.student.widht", r"architecture 'small_cnn' has no argument 'widht' \(did you mean 'width'\?\)"),
    ("studnet.alpha", r"no stage 'studnet' \(did you mean 'student'\?\)"),
    ("stages[7].alpha", r"the recipe has 3 stages, no stages\[7\]"),
])
def test_unknown_field_gets_did_you_mean(tmp_path, path, message):
    from edgekit.search.driver import prepare_search

    with pytest.raises(ConfigError, match=message):
        prepare_search(_recipe(tmp_path, space={path: [1, 2]}), out_dir=tmp_path / "s")


def test_values_the_stage_rejects_and_unknown_search_keys(tmp_path):
    from edgekit.search.driver import prepare_search

    with pytest.raises(ConfigError, match=r"search.space\['student.alpha'\] = 2.0: .*alpha"):
        prepare_search(_recipe(tmp_path, space={"student.alpha": {"low": 0.5, "high": 2.0}}), out_dir=tmp_path / "s")
    with pytest.raises(ConfigError, match=r"search.budjet: unknown field \(did you mean 'budget'\?\)"):
        prepare_search(_recipe(tmp_path, budjet={"trials": 2}), out_dir=tmp_path / "s")
    with pytest.raises(ConfigError, match=r"unknown strategy 'tpe'; allowed: random, tpe-bound, tpe-hyperband"):
        prepare_search(_recipe(tmp_path, strategy="tpe"), out_dir=tmp_path / "s")


def test_dead_ray_address_fails_within_seconds_and_starts_nothing(tmp_path):
    recipe = _recipe(tmp_path)
    t0 = time.time()
    proc = run_cli("search", str(recipe), "--out", str(tmp_path / "s"), "--ray", "127.0.0.1:9")
    assert proc.returncode == 2, proc.stderr
    assert "no Ray head answers" in proc.stderr and "Nothing was started" in proc.stderr
    assert time.time() - t0 < 60  # interpreter start + recipe checks; the probe itself is bounded by 3 s
    assert not (tmp_path / "s").exists()


def test_fidelity_rungs_and_epoch_scaling(tmp_path):
    from edgekit.pipeline.recipe import validate_recipe
    from edgekit.search.config import Fidelity
    from edgekit.search.space import scale_epochs

    assert Fidelity(min_fraction=0.25, reduction_factor=2).fractions() == [0.25, 0.5, 1.0]
    assert Fidelity(min_fraction=0.1, reduction_factor=3).fractions() == pytest.approx([1 / 9, 1 / 3, 1.0])
    raw = {k: v for k, v in json.loads(json.dumps(TINY)).items() if k != "search"}
    raw["stages"][1]["train"]["epochs"] = 8
    scaled = scale_epochs(raw, validate_recipe(raw), start=1, fraction=0.25)
    assert scaled["stages"][0]["epochs"] == 2  # the shared teacher keeps its epochs
    assert scaled["stages"][1]["train"]["epochs"] == 2


def test_recipe_values_start_the_search_only_when_they_lie_in_the_space(tmp_path):
    from edgekit.search.driver import prepare_search
    from edgekit.search.space import recipe_values

    space = {"student.student.width": [2, 4, 8], "student-int8.samples": {"low": 16, "high": 64, "step": 16},
             "student.temperature": {"low": 1.0, "high": 8.0}}
    setup = prepare_search(_recipe(tmp_path, space=space), out_dir=tmp_path / "a")
    values, outside = recipe_values(setup.recipe, setup.dims)  # temperature: the distill stage's default
    assert values == {"student.student.width": 8, "student-int8.samples": 32, "student.temperature": 4.0}
    assert outside == []
    space.update({"student.student.width": [2, 4], "student-int8.samples": {"low": 20, "high": 60, "step": 20}})
    setup = prepare_search(_recipe(tmp_path, "b", space=space), out_dir=tmp_path / "b")
    assert recipe_values(setup.recipe, setup.dims)[1] == ["student.student.width = 8", "student-int8.samples = 32"]


def test_stepped_floats_are_written_as_stepped(tmp_path):
    """Optuna stores a stepped draw as 0.6000000000000001; tables and the reproducing recipe say 0.6."""
    import optuna

    from edgekit.search.driver import prepare_search
    from edgekit.search.report import reproducing_recipe
    from edgekit.search.results import trial_rows

    setup = prepare_search(_recipe(tmp_path, space={"student.temperature": {"low": 0.3, "high": 0.9, "step": 0.1}}),
                           out_dir=tmp_path / "s")
    study = optuna.create_study()
    study.enqueue_trial({"student.temperature": 0.6000000000000001})
    study.optimize(lambda t: setup.dims[0].suggest(t), n_trials=1)
    assert study.trials[0].params["student.temperature"] != 0.6  # what Optuna keeps
    row = trial_rows(study, setup)[0]
    assert row["params"] == {"student.temperature": 0.6}
    assert reproducing_recipe(setup, row["params"])["stages"][1]["temperature"] == 0.6


def test_timing_waits_for_running_compute():
    from edgekit.search.locks import compute_slot, timing_slot

    events = []
    lock_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"edgekit-locks-{os.getpid()}"

    def timer():
        with timing_slot(lock_dir):
            events.append("timing")

    with compute_slot(lock_dir):
        t = threading.Thread(target=timer)
        t.start()
        time.sleep(0.3)
        events.append("compute done")
    t.join(5)
    assert events == ["compute done", "timing"]


def _row(trial, ratio, acc, feasible=True, fidelity=1.0, state="complete"):
    return {"trial": trial, "state": state, "fidelity": fidelity, "latency_ratio": ratio, "val_accuracy": acc,
            "feasible": feasible, "artifact": f"t{trial}.onnx", "excess": {}}


def test_pareto_front_keeps_the_fastest_feasible_trial_and_scores_penalise_misses():
    from edgekit.search.config import SearchConfig
    from edgekit.search.driver import constraint_excess, score
    from edgekit.search.results import pareto_rows

    rows = [_row(0, 0.5, 99.0), _row(1, 0.3, 98.0, feasible=False), _row(2, 0.4, 97.0), _row(3, 0.2, 95.0, False),
            _row(4, 0.1, 99.5, fidelity=0.5, state="pruned")]
    front = [r["trial"] for r in pareto_rows(rows)]
    assert front[:3] == [3, 1, 0] and 2 in front and 4 not in front  # 2: dominated only by infeasible trials
    cfg = SearchConfig(space={"a.b": [1]}, constraints={"max_accuracy_drop": 0.5, "max_size_mb": 1.0})
    metrics = {"accuracy_drop": 1.5, "latency_ms": 2.0, "size_mb": 0.5, "latency_ratio": 0.4, "val_accuracy": 97.0}
    excess = constraint_excess(metrics, cfg)
    assert excess == {"max_accuracy_drop": 1.0, "max_size_mb": -0.5}
    assert score(metrics, excess, cfg) == pytest.approx(0.8)  # one point over the drop budget doubles the ratio
    assert score({**metrics, "accuracy_drop": 0.2}, constraint_excess({**metrics, "accuracy_drop": 0.2}, cfg),
                 cfg) == pytest.approx(0.4)


def test_successive_halving_prunes_at_short_fidelity_and_records_constraints(tmp_path):
    """The strategy loop with a stand-in worker: slow configs stop at the first rung; constraints reach TPE."""
    import optuna

    from edgekit.search.driver import _run_trial, prepare_search
    from edgekit.search.strategies import STRATEGIES

    # the INT8 method is searched too, so a student recurs in trials that differ later (each point is measured once)
    setup = prepare_search(_recipe(tmp_path, space={"student.student.width": [2, 4, 8, 16],
                                                    "student-int8.method": ["minmax", "percentile"]},
                                   fidelity={"min_fraction": 0.25, "reduction_factor": 2}), out_dir=tmp_path / "s")
    calls = []

    def fake_worker(job):  # wider = slower; accuracy grows with epochs
        width, frac = job["raw"]["stages"][1]["student"]["width"], job["fraction"]
        if width == 16:
            raise ConfigError("macs_target 0.2 is unreachable")  # a point of the space a stage rejects
        calls.append((width, frac, job["raw"]["stages"][1]["train"]["epochs"]))
        drop = 40.0 if width == 2 else 10.0 * (1 - frac)
        return {"val_accuracy": 90.0 - drop, "teacher_val_accuracy": 90.0, "accuracy_drop": drop,
                "latency_ratio": width / 16, "latency_ms": width / 10, "size_mb": 0.01, "stages": []}

    sampler, pruner, rungs = STRATEGIES.get("tpe-hyperband")(seed=0, trials=12, fidelity=setup.config.fidelity)
    assert rungs == [0.25, 0.5, 1.0]
    study = optuna.create_study(sampler=sampler, pruner=pruner)
    study.optimize(lambda t: _run_trial(t, setup, rungs, fake_worker, 1), n_trials=12)
    states = [t.state.name for t in study.trials]
    assert "PRUNED" in states and "COMPLETE" in states
    assert {e for _, f, e in calls if f == 0.25} == {1} and {e for _, f, e in calls if f == 1.0} == {2}
    short, full = sum(f == 0.25 for _, f, _ in calls), sum(f == 1.0 for _, f, _ in calls)
    assert short > full  # some trials stopped after their short fine-tune
    rejected = [t for t in study.trials
                if t.params["student.student.width"] == 16 and "duplicate_of" not in t.user_attrs]
    assert rejected and all(t.state.name == "PRUNED" and "unreachable" in t.user_attrs["error"] for t in rejected)
    # what TPE splits on (Optuna's FrozenTrial.constraints, > 0: infeasible): a refused point is infeasible, and a
    # trial stopped at a short rung tells whether it met the budget there when its student's gain is known
    assert all(t.constraints == {"stage_rejects": 1.0} for t in rejected)
    stopped = [t for t in study.trials if t.state.name == "PRUNED" and "rung0" in t.user_attrs]
    assert stopped and all(set(t.constraints) == ({"max_accuracy_drop"} if t.user_attrs["metrics"]["accuracy_slack"]
                                                  is not None else set()) for t in stopped)
    # a short rung is judged by the accuracy it is expected to reach: the gain measured on completed trials with the
    # same student (here 7.5 points from 1/4 of the epochs to all of them) is taken off its accuracy excess; before
    # one has completed, the gain is unknown and the rung does not judge accuracy
    slacks = [t.user_attrs["rung0"]["accuracy_slack"] for t in study.trials if "rung0" in t.user_attrs]
    assert slacks[0] is None and max(s for s in slacks if s is not None) == pytest.approx(7.5)
    width2 = [t for t in study.trials if t.params["student.student.width"] == 2 and t.state.name == "COMPLETE"]
    for t in width2:  # 40 points over a 60-point budget is still met; the constraint value is recorded
        assert t.system_attrs and any(v == pytest.approx(-20.0) for v in t.system_attrs.values())


def test_a_short_rung_expects_the_gain_of_its_own_student():
    """The accuracy slack of a short rung comes from completed trials sharing the first searched stage's values; a
    student none has completed is not judged on accuracy there (its gain is unknown, and small ones gain most)."""
    import optuna
    from optuna.distributions import CategoricalDistribution

    from edgekit.search.driver import expected_accuracy_gain, judged_excess

    study = optuna.create_study()
    dist = {"depth": CategoricalDistribution([8, 14])}

    def done(depth, short, full):
        study.add_trial(optuna.trial.create_trial(params={"depth": depth}, distributions=dist, value=0.1, user_attrs={
            "rung0": {"val_accuracy": short}, "rung1": {"val_accuracy": full}}))

    done(14, 98.9, 99.4)
    done(14, 98.6, 99.4)
    excess = {"max_accuracy_drop": 1.5, "max_size_mb": -0.2}
    assert expected_accuracy_gain(study, 0, 1) == pytest.approx(0.65)              # every student alike
    assert expected_accuracy_gain(study, 0, 1, {"depth": 8}) is None
    assert judged_excess(excess, study, 0, 1, {"depth": 8}) == ({"max_size_mb": -0.2}, None)
    assert judged_excess(excess, study, 0, 1, {"depth": 14}) == ({"max_accuracy_drop": 0.85, "max_size_mb": -0.2},
                                                                  pytest.approx(0.65))
    done(8, 96.4, 98.9)
    assert judged_excess(excess, study, 0, 1, {"depth": 8})[0]["max_accuracy_drop"] == pytest.approx(-1.0)
    assert judged_excess(excess, study, 1, 1, {"depth": 8}) == (excess, 0.0)       # full fidelity: as measured


# --- real searches on a tiny model ------------------------------------------------------------------------------

def _rows(search_dir: Path) -> list:
    with open(search_dir / "search.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_search_kill_resume_outputs_and_chosen_recipe(tmp_path):
    """Killed after its first trial, the search resumes without re-running it and writes every output."""
    recipe, out = _recipe(tmp_path, budget={"trials": 3}), tmp_path / "s"  # the space's 3 widths
    cmd = [sys.executable, "-m", "edgekit.cli", "--quiet", "search", str(recipe), "--out", str(out)]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if (out / "search.csv").is_file() and any(r["state"] in ("complete", "pruned") for r in _rows(out)):
            break
        time.sleep(0.5)
    assert proc.poll() is None, "the search ended before it could be killed: " + proc.stderr.read().decode()[-400:]
    os.killpg(proc.pid, signal.SIGKILL)  # the CLI and its worker processes, as a killed terminal would
    proc.wait(30)
    before = {r["trial"]: r for r in json.loads((out / "search.json").read_text())["trials"]
              if r["state"] in ("complete", "pruned")}
    assert before
    again = run_cli("search", str(recipe), "--out", str(out))
    assert again.returncode == 2 and "--resume" in again.stderr  # never overwritten
    resumed = subprocess.run(cmd + ["--resume"], env=_env(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    trials = json.loads((out / "search.json").read_text())["trials"]
    done = [r for r in trials if r["state"] in ("complete", "pruned")]
    assert sorted(r["params"]["student.student.width"] for r in done) == [2, 4, 8]  # each configuration once
    for number, row in before.items():  # finished trials kept exactly as they were measured
        assert next(r for r in trials if r["trial"] == number)["rungs"] == row["rungs"]
    assert sum(r["cached_stages"] for r in done) >= len(done)  # the teacher is built once and shared
    assert {r["fidelity"] for r in done} <= {0.5, 1.0}
    first = next(r for r in trials if r["trial"] == 0)  # the search starts from the recipe as written
    assert first["from_recipe"] and first["params"] == {"student.student.width": 8}
    assert not any(r["from_recipe"] for r in trials if r["trial"] != 0 and r["requeued_from"] is None)
    for f in ("search.csv", "pareto.md", "pareto.png", "chosen/model.onnx", "chosen/recipe.yaml", "study.db"):
        assert (out / f).is_file(), f
    assert "chosen:" in resumed.stdout and "reproduce: edgekit run" in resumed.stdout
    summary = json.loads((out / "search.json").read_text())
    chosen = next(r for r in trials if r["trial"] == summary["chosen"]["trial"])
    plain = yaml.safe_load((out / "chosen" / "recipe.yaml").read_text())
    assert "search" not in plain
    assert plain["stages"][1]["student"]["width"] == chosen["params"]["student.student.width"]
    from edgekit.pipeline.recipe import validate_recipe

    validate_recipe(plain)
    assert summary["chosen"]["latency_ratio_ci"][0] <= summary["chosen"]["latency_ratio"]


@pytest.mark.slow
def test_unmeetable_constraint_names_closest_trials_and_the_failed_constraint(tmp_path):
    from edgekit.search import run_search

    recipe = _recipe(tmp_path, constraints={"max_accuracy_drop": 60, "max_size_mb": 0.000001},
                     budget={"trials": 2}, strategy="random")
    with pytest.raises(ConfigError) as e:
        run_search(recipe, out_dir=tmp_path / "s")
    msg = str(e.value)
    assert "none of 2 measured trial(s) met" in msg and "closest" in msg
    assert "failed max_size_mb 1e-06 (got" in msg and "failed max_accuracy_drop" not in msg
    assert len(_rows(tmp_path / "s")) == 2 and not (tmp_path / "s" / "chosen").exists()
    with pytest.raises(RunDirectoryError, match="pass --resume"):
        run_search(recipe, out_dir=tmp_path / "s")


@pytest.mark.distributed  # not `slow`: CI runs it wherever ray is installed (the dev extra), ~1 min
def test_search_on_a_local_ray_cluster(tmp_path):
    """Head + one worker node on 127.0.0.1, started and shut down here; two trials run as Ray tasks."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # keep Ray on 127.0.0.1 (read when ray is imported)
    pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    from edgekit.search import run_search

    os.environ["PYTHONPATH"] = _env()["PYTHONPATH"]  # the Ray workers import edgekit from this checkout
    t0 = time.time()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "node_ip_address": "127.0.0.1",
                                                            "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
        cluster.wait_for_nodes()
        res = run_search(_recipe(tmp_path, budget={"trials": 2}, strategy="random"), out_dir=tmp_path / "s",
                         ray_address=cluster.address, workers=2)
    finally:
        cluster.shutdown()
    assert len([r for r in res.rows if r["state"] == "complete"]) == 2, (res.rows, _study_trials(tmp_path / "s"))
    assert res.chosen_artifact.is_file() and (tmp_path / "s" / "pareto.png").is_file()
    assert time.time() - t0 < 180


def _study_trials(search_dir: Path) -> list:
    """Every trial in a search's study.db (repeats included): state, params, user attributes."""
    import optuna

    study = optuna.load_study(study_name="search", storage=f"sqlite:///{search_dir / 'study.db'}")
    return [(t.number, t.state.name, t.params, t.datetime_start, t.datetime_complete,
             {k: v for k, v in t.user_attrs.items() if not k.startswith("rung")}) for t in study.trials]


def test_ray_error_type_for_bad_address_form():
    from edgekit.search.executors import check_ray_address

    with pytest.raises(ConfigError, match="expected HOST:PORT"):
        check_ray_address("localhost")
    with pytest.raises(BackendUnavailableError, match="no Ray head answers"):
        check_ray_address("127.0.0.1:9", timeout_s=1)
