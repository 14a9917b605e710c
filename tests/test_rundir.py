"""Run directories: confined names, one writer at a time, bound to their recipe."""
from __future__ import annotations

import subprocess
import sys

import pytest

from edgekit.errors import ConfigError, RunDirectoryError
from edgekit.pipeline.rundir import RunLock, check_run_name, confined, recipe_changes, recipe_fingerprint


@pytest.mark.parametrize("name", ["../x", "/abs", "a/b", "..", ".", "", "x" * 101, "naïve", "a b"])
def test_unsafe_run_names_are_refused(name):
    with pytest.raises(ConfigError, match="not a valid run name"):
        check_run_name(name)


def test_confined_refuses_escapes_and_symlinks(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    assert confined(runs, "r", "1") == (runs / "r" / "1").resolve()
    with pytest.raises(RunDirectoryError, match="outside the runs directory"):
        confined(runs, "..", "x")
    (runs / "link").symlink_to(tmp_path)
    with pytest.raises(RunDirectoryError, match="outside the runs directory"):
        confined(runs, "link", "x")


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    code = ("import sys, time; from edgekit.pipeline.rundir import RunLock; "
            f"l = RunLock({str(tmp_path)!r}).acquire(); print('locked', flush=True); time.sleep(30)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirectoryError, match=rf"in use by another edgekit process \(pid {holder.pid}\)"):
            RunLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    with RunLock(tmp_path):  # the OS released the dead holder's lock
        pass


def test_recipe_binding_names_what_changed():
    a = {"seed": 0, "stages": [{"type": "prune", "ratio": 0.3}], "model": {"name": "resnet_cifar"}}
    b = {"seed": 0, "stages": [{"type": "prune", "ratio": 0.5}], "model": {"name": "resnet_cifar"}}
    assert recipe_fingerprint(a) == recipe_fingerprint(dict(a)) != recipe_fingerprint(b)
    assert recipe_changes(a, b) == ["stages[0].ratio: 0.3 -> 0.5"]
