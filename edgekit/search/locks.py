"""Cross-process locks (``fcntl.flock``) that keep trials from disturbing each other's timing.

Compute (training, export, calibration, accuracy) holds the *work* lock shared, one stage at a time; timing holds
it exclusively, so while a trial is timed no other worker on this machine computes. A *gate* lock gives timing
priority: a timer takes the gate first, so no new compute starts while it waits for the running stages to end.
One lock file per cache key makes sure a shared stage (the teacher, a distilled student) is built once.

Example:
    >>> with compute_slot(lock_dir):
    ...     train_one_stage()
    >>> with timing_slot(lock_dir):
    ...     time_candidate_against_baseline()
"""
from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, shared: bool = False) -> Iterator[None]:
    """Hold an flock on ``path`` (created if missing) for the block."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


@contextlib.contextmanager
def compute_slot(lock_dir: str | os.PathLike) -> Iterator[None]:
    """Compute that may overlap other compute, but never a timing run."""
    with file_lock(Path(lock_dir) / "gate.lock"):
        pass  # wait while a timer is queued
    with file_lock(Path(lock_dir) / "work.lock", shared=True):
        yield


@contextlib.contextmanager
def timing_slot(lock_dir: str | os.PathLike) -> Iterator[None]:
    """The machine to ourselves (among this search's workers): serialised timing."""
    with file_lock(Path(lock_dir) / "gate.lock"):
        with file_lock(Path(lock_dir) / "work.lock"):
            yield


__all__ = ["compute_slot", "file_lock", "timing_slot"]
