"""Errors a user can cause. The CLI prints them in one line and exits with code 2.

Every message says what was wrong, where (file, field, tensor, shape) and what is allowed.
"""
from __future__ import annotations

import difflib
from typing import Iterable


class EdgekitError(Exception):
    """Base class for every error caused by user input or environment."""


class ConfigError(EdgekitError):
    """A recipe or stage configuration value is invalid."""


class InputFileError(EdgekitError):
    """A file is missing, unreadable, corrupt or of the wrong kind."""


class ShapeError(EdgekitError):
    """Data or model input/output shapes do not fit together."""


class BackendUnavailableError(EdgekitError):
    """A runtime backend cannot run here (package, driver or hardware missing)."""


class AccuracyBudgetError(EdgekitError):
    """A compression step could not meet its accuracy budget."""


class RunDirectoryError(EdgekitError):
    """A run directory exists, is not writable or is not resumable."""


def did_you_mean(name: str, allowed: Iterable[str]) -> str:
    """Return ' (did you mean 'x'?)' for the closest allowed name, or ''."""
    close = difflib.get_close_matches(str(name), list(allowed), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
