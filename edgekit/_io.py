"""Atomic file writing and hashing: every artifact is written to a temp file, then renamed."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

from edgekit.errors import ConfigError, InputFileError, RunDirectoryError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    Example:
        >>> with atomic_path("model.onnx") as tmp:
        ...     onnx.save(model, tmp)
    """
    path = Path(path)
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunDirectoryError(f"cannot create directory {parent}: {e.strerror}") from None
    if not os.access(parent, os.W_OK):
        raise RunDirectoryError(f"directory {parent} is not writable")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or ".tmp", dir=parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file, raising InputFileError with the file name when missing or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"{path}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputFileError(f"{path}: not valid JSON ({e})") from None


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Return the hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def require_file(path: str | os.PathLike, what: str = "file") -> Path:
    """Return ``Path(path)`` or raise InputFileError if it is not an existing file."""
    p = Path(path)
    if not p.exists():
        raise InputFileError(f"{what} not found: {p}")
    if not p.is_file():
        raise InputFileError(f"{what} is not a file: {p}")
    return p


def sidecar_path(artifact: str | os.PathLike) -> Path:
    """Path of the JSON sidecar that describes an artifact (``model.onnx`` -> ``model.onnx.json``)."""
    p = Path(artifact)
    return p.with_name(p.name + ".json")


def write_sidecar(artifact: str | os.PathLike, info: dict) -> Path:
    """Write (atomically) the JSON sidecar describing ``artifact``."""
    return write_json_atomic(sidecar_path(artifact), info)


def read_sidecar(artifact: str | os.PathLike) -> dict:
    """Return the sidecar dict of ``artifact``, or {} when it has none."""
    p = sidecar_path(artifact)
    return read_json(p) if p.is_file() else {}


NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"


def _head(path: Path, n: int = 8) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def check_npz_file(path: str | os.PathLike, what: str = "file") -> Path:
    """Return ``Path(path)`` if it is an existing .npz archive; a plain ``.npy`` array or anything else is named.

    Example:
        >>> check_npz_file("calib_data/digits32_rgb.npz", "stages[2].calibration")
    """
    p = require_file(path, what)
    head = _head(p)
    if head.startswith(NPY_MAGIC):
        raise InputFileError(f"{what}: {p} is a single NumPy array (.npy), not an .npz archive; save it with "
                             f"np.savez('{p.with_suffix('.npz').name}', x=..., y=...)")
    if not head.startswith(ZIP_MAGIC):
        raise InputFileError(f"{what}: {p} is not an .npz archive (np.savez output with arrays x and y)")
    return p


# what an existing file must look like for --out to replace it without --force
_KIND_SNIFFERS = {
    "onnx": lambda head: head[:1] == b"\x08",  # an ONNX protobuf starts with its ir_version field
    "npz": lambda head: head.startswith(ZIP_MAGIC),
    "checkpoint": lambda head: head.startswith(ZIP_MAGIC),  # torch.save's zip format
    "text": lambda head: b"\x00" not in head,
}
KIND_SUFFIXES = {"onnx": (".onnx",), "npz": (".npz",), "checkpoint": (".pt", ".pth"), "text": (".yaml", ".yml"),
                 "dir": ()}


def check_output(out: str | os.PathLike | None, kind: str, *, inputs: Iterable[str | os.PathLike | None] = (),
                 force: bool = False, what: str = "--out") -> Path | None:
    """Refuse an output path that would destroy something: an input of the same command (always), an existing
    file of another kind or a directory (unless ``force``), or a file name without the kind's suffix.

    ``kind`` is one of :data:`KIND_SUFFIXES` (``"dir"`` for a folder of results: an existing *file* there is
    refused). Call it before any expensive work; ``out=None`` (no output asked for) passes.

    Example:
        >>> check_output(args.out, "onnx", inputs=[args.checkpoint], force=args.force)
    """
    if out is None:
        return None
    p = Path(out)
    for inp in inputs:
        if inp and Path(inp).exists() and p.exists() and os.path.samefile(inp, p):
            raise InputFileError(f"{what} {p} is an input of this command; edgekit never overwrites its input "
                                 "— choose another output path")
    suffixes = KIND_SUFFIXES[kind]
    if kind == "dir":
        if p.exists() and not p.is_dir():
            raise InputFileError(f"{what} {p} is an existing file; give a directory for the results")
        return p
    if p.suffix.lower() not in suffixes:
        raise ConfigError(f"{what} {p}: the output is {'an' if kind[0] in 'aeiou' else 'a'} {kind} file and must "
                          f"end in {' or '.join(suffixes)}")
    if p.is_dir():
        raise InputFileError(f"{what} {p} is a directory; give a file path")
    if p.exists() and not force and not _KIND_SNIFFERS[kind](_head(p)):
        raise InputFileError(f"{what} {p} exists and is not {'an' if kind[0] in 'aeiou' else 'a'} {kind} file; "
                             "refusing to overwrite it (pass --force to replace it)")
    return p
