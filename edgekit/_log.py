"""Logging and progress bars on the standard library's ``logging``.

Every module logs to ``logging.getLogger(__name__)`` (children of the ``edgekit`` logger). A library user
configures logging as usual; the CLI calls :func:`configure_cli_logging` (status lines on stderr, silent
with ``--quiet``). Progress bars are drawn on a TTY unless the ``edgekit`` logger is set above INFO.

Example:
    >>> import logging
    >>> logging.getLogger("edgekit").setLevel(logging.WARNING)   # no status lines, no progress bars
"""
from __future__ import annotations

import logging
import sys
from typing import Iterable, Optional, TypeVar

T = TypeVar("T")
ROOT = "edgekit"


def progress_enabled() -> bool:
    """True when progress bars should be drawn: stderr is a TTY and the edgekit logger shows INFO."""
    level = logging.getLogger(ROOT).level
    return (level == logging.NOTSET or level <= logging.INFO) and sys.stderr.isatty()


def progress(iterable: Iterable[T], desc: str = "", total: Optional[int] = None, leave: bool = False):
    """Wrap ``iterable`` in a tqdm bar (or return it unchanged when progress is disabled)."""
    if not progress_enabled():
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, leave=leave, dynamic_ncols=True, file=sys.stderr)


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at emit time (test capture and redirection replace it)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def configure_cli_logging(quiet: bool = False) -> None:
    """Status lines of the edgekit loggers on stderr as plain messages; only warnings and errors when quiet."""
    logger = logging.getLogger(ROOT)
    if not any(isinstance(h, _CurrentStderr) for h in logger.handlers):
        handler = _CurrentStderr()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.propagate = False
