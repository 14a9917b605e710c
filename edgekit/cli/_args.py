"""Argument types and the parser class shared by every `edgekit` sub-command.

A bad flag value is one line (``edgekit: error: --samples must be an integer in 1..1000000, got '1e9'``),
exit code 2, like every other edgekit error.
"""
from __future__ import annotations

import argparse
import math
import sys
from typing import Callable, NoReturn


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage block); sub-parsers inherit it."""

    def error(self, message: str) -> NoReturn:
        print(f"edgekit: error: {self.prog}: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def bounded_int(what: str, low: int, high: int) -> Callable[[str], int]:
    """An argparse type accepting integers in ``low..high`` only.

    Example:
        >>> p.add_argument("--samples", type=bounded_int("--samples", 1, 1_000_000))
    """

    def parse(text: str) -> int:
        t = text.strip()
        if not t.lstrip("-").isdigit() or not low <= int(t) <= high:
            raise argparse.ArgumentTypeError(f"{what} must be an integer in {low}..{high}, got '{text[:40]}'")
        return int(t)

    return parse


def bounded_float(what: str, low: float, high: float) -> Callable[[str], float]:
    """An argparse type accepting finite numbers with ``low < x <= high``.

    Example:
        >>> p.add_argument("--lr", type=bounded_float("--lr", 0, 10))
    """

    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            v = math.nan
        if not (math.isfinite(v) and low < v <= high):
            raise argparse.ArgumentTypeError(f"{what} must be a number with {low} < {what} ≤ {high}, "
                                             f"got '{text[:40]}'")
        return v

    return parse
