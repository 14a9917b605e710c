"""Progress bars: shown on a TTY, silent with --quiet (EDGEKIT_QUIET=1) or when piped."""
from __future__ import annotations

import os
import sys
from typing import Iterable, Optional, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress_enabled() -> bool:
    """True when progress bars should be drawn."""
    if os.environ.get("EDGEKIT_QUIET", "") not in ("", "0"):
        return False
    return sys.stderr.isatty()


def progress(iterable: Iterable[T], desc: str = "", total: Optional[int] = None, leave: bool = False):
    """Wrap ``iterable`` in a tqdm bar (or return it unchanged when progress is disabled)."""
    if not progress_enabled():
        return iterable
    return tqdm(iterable, desc=desc, total=total, leave=leave, dynamic_ncols=True, file=sys.stderr)


def log(msg: str) -> None:
    """Print a status line to stderr unless quiet."""
    if os.environ.get("EDGEKIT_QUIET", "") in ("", "0"):
        print(msg, file=sys.stderr, flush=True)
