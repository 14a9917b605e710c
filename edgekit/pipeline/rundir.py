"""Run directories that are never lost or escaped: confined names, one writer at a time, bound to their recipe.

- :func:`check_run_name`: a run (or recipe) name is one path component of ``[A-Za-z0-9._-]``, at most 100
  characters, and not ``.``/``..``; :func:`confined` checks the resolved path stays inside the runs directory.
- :class:`RunLock`: an exclusive ``fcntl``/``msvcrt`` lock on ``<run>/.lock`` holding the writer's pid; a second
  writer (a concurrent ``--resume``) is refused at once, naming the holder. The OS releases the lock when the
  process dies, so a killed run never leaves a stale lock behind.
- :func:`recipe_fingerprint` / :func:`recipe_changes`: a run is bound to the hash of its validated recipe;
  resuming with another recipe is refused, naming what changed.

Example:
    >>> with RunLock(run_dir):
    ...     ...   # stages write here; nobody else can
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Dict, List, Optional

from edgekit.errors import ConfigError, RunDirectoryError

NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,100}$")
LOCK_FILE = ".lock"


def check_run_name(name: str, field: str = "--name") -> str:
    """Return ``name`` if it is a safe single path component; else ConfigError saying what is allowed."""
    if not isinstance(name, str) or not NAME_RE.match(name) or name in (".", ".."):
        shown = repr(name) if len(str(name)) <= 60 else repr(str(name)[:60]) + "…"
        raise ConfigError(f"{field}: {shown} is not a valid run name; use 1–100 characters from A–Z a–z 0–9 . _ - "
                          "(one folder name: no '/', no '..')")
    return name


def confined(base: Path, *parts: str) -> Path:
    """``base/parts...`` resolved, refusing any path that leaves ``base`` (symlinks included)."""
    root = Path(base).resolve()
    path = root.joinpath(*parts).resolve()
    if path != root and root not in path.parents:
        raise RunDirectoryError(f"{path} is outside the runs directory {root}; refusing to write there")
    return path


class RunLock:
    """Exclusive lock on a run directory for the lifetime of a ``with`` block (or until :meth:`release`)."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_FILE
        self._fd: Optional[int] = None

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if not _try_lock(fd):
            holder = _read_holder(fd)
            os.close(fd)
            raise RunDirectoryError(f"{self.path.parent} is in use by another edgekit process{holder}; wait for it to "
                                    "finish (edgekit never lets two processes write one run)")
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            _unlock(self._fd)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        pid = os.pread(fd, 32, 0).decode().strip()
    except (OSError, AttributeError, UnicodeDecodeError):
        return ""
    return f" (pid {pid})" if pid.isdigit() else ""


if os.name == "nt":  # pragma: no cover - exercised on Windows only
    import msvcrt

    def _try_lock(fd: int) -> bool:
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False

    def _unlock(fd: int) -> None:
        os.lseek(fd, 0, 0)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
else:
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError:
            return False

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)


def recipe_fingerprint(recipe_dump: Dict[str, Any]) -> str:
    """sha256 of a validated recipe's JSON dump (the run is bound to it)."""
    text = json.dumps(recipe_dump, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def recipe_changes(before: Dict[str, Any], after: Dict[str, Any], limit: int = 6) -> List[str]:
    """Dotted paths whose values differ between two recipe dumps (``stages[2].ratio: 0.3 -> 0.5``)."""
    out: List[str] = []

    def walk(a: Any, b: Any, path: str) -> None:
        if len(out) >= limit:
            return
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b), key=str):
                walk(a.get(k), b.get(k), f"{path}.{k}" if path else str(k))
        elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            for i, (x, y) in enumerate(zip(a, b)):
                walk(x, y, f"{path}[{i}]")
        elif a != b:
            out.append(f"{path or '(recipe)'}: {_short(a)} -> {_short(b)}")

    walk(before, after, "")
    return out


def _short(v: Any) -> str:
    text = json.dumps(v, default=str)
    return text if len(text) <= 40 else text[:37] + "..."
