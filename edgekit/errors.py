"""Errors a user can cause. The CLI prints them in one line and exits with code 2.

Every message says what was wrong, where (file, field, tensor, shape) and what is allowed.
"""
from __future__ import annotations

import difflib
from typing import Any, Iterable, Optional


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


def first_line(e: BaseException, limit: Optional[int] = None) -> str:
    """The first line of an exception's message (its class name when empty), cut to ``limit`` characters."""
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:limit]


def did_you_mean(name: str, allowed: Iterable[str]) -> str:
    """Return ' (did you mean 'x'?)' for the closest allowed name, or ''."""
    close = difflib.get_close_matches(str(name), list(allowed), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def validated_config(cls: type, value: Any, where: str) -> Any:
    """``value`` as a ``cls`` pydantic config: an instance passes through; a dict (None = defaults) is validated,
    and its problems raise :class:`ConfigError`, one per field (see :func:`format_validation_error`)."""
    from pydantic import ValidationError

    if isinstance(value, cls):
        return value
    try:
        return cls(**(value or {}))
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, where, cls)) from None


def format_validation_error(e: Any, where: str, model: Optional[type] = None) -> str:
    """One line per problem of a pydantic ValidationError: ``where.field.path: message (got value)``.

    Unknown keys get a "did you mean" and the allowed field names of ``model`` at that path.
    """
    lines = []
    for err in e.errors():
        loc = [str(p) for p in err["loc"]]
        got, msg = err.get("input"), err["msg"]
        if err["type"] == "value_error":
            msg = str(err.get("ctx", {}).get("error", msg))
            if loc and msg.startswith(loc[-1] + "."):  # nested config already named its field
                lines.append(".".join([where, *loc[:-1], msg]))
                continue
        if err["type"] == "extra_forbidden":
            allowed = _fields_at(model, loc[:-1])
            msg = "unknown field" + (did_you_mean(loc[-1], allowed) + "; allowed: " + ", ".join(allowed)
                                     if allowed else "")
            got = None
        path = ".".join([where, *loc])
        lines.append(f"{path}: {msg}" + ("" if got is None or isinstance(got, dict) else f" (got {got!r})"))
    return "; ".join(lines)


def _fields_at(model: Optional[type], loc: list) -> list:
    """Field names of the (nested) pydantic model at ``loc``, or [] if unknown."""
    from pydantic import BaseModel

    for part in loc:
        field = getattr(model, "model_fields", {}).get(part)
        ann = getattr(field, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        model = ann
    return list(getattr(model, "model_fields", {}))
