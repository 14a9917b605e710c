"""Every edgekit error class. The CLI prints them in one line and exits with code 2 (traceback with ``--debug``).

Errors a user can cause say what was wrong, where (file, field, tensor, shape) and what is allowed.
Failures *inside* a library edgekit calls on already-checked input are :class:`LibraryError`: the message
names the library, its first line and where, and says that it is not a problem with the user's input.

Example:
    >>> with calling("onnxruntime", where="model.onnx"):
    ...     session = ort.InferenceSession("model.onnx")
"""
from __future__ import annotations

import contextlib
import difflib
from typing import Any, Iterable, Iterator, Optional


class EdgekitError(Exception):
    """Base class of every edgekit error: user input, the environment, or a library failing (:class:`LibraryError`)."""


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


class TrainingDivergedError(EdgekitError):
    """Training produced a non-finite loss (too high a learning rate, or bad data): the model is not usable."""


class ExportError(EdgekitError):
    """Export failed, or the exported model disagrees with PyTorch beyond tolerance."""


class QuantizationError(EdgekitError):
    """ONNX Runtime's quantiser failed on a model that passed validation, or its result runs too little in int8."""


class EngineBuildError(EdgekitError):
    """TensorRT could not parse the ONNX model or build an engine from it."""


class EngineCompatibilityError(InputFileError):
    """A TensorRT engine was built for another TensorRT version or GPU, or is not an edgekit engine."""


# import name (as passed to :func:`calling`) -> the name users know the library by
LIBRARY_NAMES = {
    "onnxruntime": "ONNX Runtime", "openvino": "OpenVINO", "tensorrt": "TensorRT", "torch_pruning": "Torch-Pruning",
    "onnx": "onnx", "torch.onnx": "PyTorch export", "torch": "PyTorch",
}
REPORT_HINT = "this is not a problem with your input; please report it with --debug output"


class LibraryError(EdgekitError):
    """A library edgekit calls (ONNX Runtime, OpenVINO, TensorRT, Torch-Pruning, onnx, PyTorch export) failed on
    input edgekit had already checked: an internal error, not the user's.

    Attributes:
        library: the library's display name, e.g. "ONNX Runtime".
        detail: the first line of the library's own message.
        where: what edgekit was doing or on which file (may be empty).
    """

    def __init__(self, library: str, detail: str, where: str = ""):
        self.library, self.detail, self.where = library, detail, where
        at = f" ({where})" if where else ""
        super().__init__(f"internal error: {library} failed{at}: {detail} — {REPORT_HINT}")


def library_error(library: str, exc: BaseException, where: Any = "") -> LibraryError:
    """A :class:`LibraryError` for exception ``exc`` raised inside ``library`` while working on ``where``.

    ``library`` is an import name from :data:`LIBRARY_NAMES` (e.g. "onnxruntime") or a display name.

    Example:
        >>> str(library_error("onnxruntime", RuntimeError("[ONNXRuntimeError] : 1 : FAIL"), "model.onnx"))
        'internal error: ONNX Runtime failed (model.onnx): RuntimeError: [ONNXRuntimeError] : 1 : FAIL — this is ...'
    """
    detail = first_line(exc, 300)
    if detail != type(exc).__name__:
        detail = f"{type(exc).__name__}: {detail}"
    return LibraryError(LIBRARY_NAMES.get(library, library), detail, str(where) if where else "")


@contextlib.contextmanager
def calling(library: str, where: Any = "") -> Iterator[None]:
    """Turn any non-edgekit exception raised in the block into a :class:`LibraryError` naming ``library``.

    Edgekit errors, ``MemoryError`` (the machine, not a library bug), ``KeyboardInterrupt`` and ``SystemExit``
    pass through unchanged. The original exception is chained, so ``--debug`` shows its traceback.

    Example:
        >>> with calling("onnxruntime", where=path):
        ...     session = ort.InferenceSession(path)
    """
    try:
        yield
    except (EdgekitError, MemoryError):
        raise
    except Exception as e:
        raise library_error(library, e, where) from e


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


# errno -> what the user should know; the path comes from the exception itself
_OS_PROBLEMS = {
    "ENOSPC": "no space left on the device", "EDQUOT": "disk quota exceeded", "EROFS": "read-only file system",
    "EACCES": "permission denied", "EPERM": "operation not permitted", "ENAMETOOLONG": "file name too long",
    "ENOENT": "no such file or directory", "EISDIR": "is a directory", "ENOTDIR": "not a directory",
    "EEXIST": "already exists", "EMFILE": "too many open files",
}


def as_edgekit_error(exc: BaseException) -> EdgekitError:
    """The one-line :class:`EdgekitError` for an exception that escaped to the command line.

    File-system errors name the path and the problem (full disk, read-only, name too long); a pydantic
    ValidationError is listed per field; an exception from a library edgekit calls becomes a
    :class:`LibraryError` naming it; anything else is an internal error with its first line.

    Example:
        >>> str(as_edgekit_error(OSError(28, "No space left on device", "runs/x/model.onnx")))
        'runs/x/model.onnx: no space left on the device (ENOSPC)'
    """
    import errno as errno_mod

    if isinstance(exc, EdgekitError):
        return exc
    if isinstance(exc, OSError) and exc.errno is not None:
        code = errno_mod.errorcode.get(exc.errno, str(exc.errno))
        path = exc.filename if exc.filename is not None else ""
        problem = _OS_PROBLEMS.get(code, exc.strerror or str(exc))
        return RunDirectoryError(f"{_short_path(path)}: {problem} ({code})" if path else f"{problem} ({code})")
    if isinstance(exc, MemoryError):
        return EdgekitError("out of memory: the input is larger than this machine can hold")
    if type(exc).__name__ == "ValidationError" and hasattr(exc, "errors"):
        return ConfigError(format_validation_error(exc, str(getattr(exc, "title", "input"))))
    library = type(exc).__module__.split(".")[0]
    if library in LIBRARY_NAMES:
        return library_error(library, exc)
    return EdgekitError(f"internal error: {type(exc).__name__}: {first_line(exc, 300)} — {REPORT_HINT}")


def _short_path(path: Any, limit: int = 200) -> str:
    text = str(path)
    return text if len(text) <= limit else text[:limit // 2] + "…" + text[-limit // 2:]
