"""The front door for YAML files users hand to edgekit (recipes): bounded, strict, parsed once.

What it refuses, each with a one-line :class:`~edgekit.errors.ConfigError` naming the file and the place:

- files over ``max_bytes``, binary files, text that is not UTF-8 (with the byte offset and a hint for UTF-16 or
  Latin-1 files saved by Windows editors);
- duplicate keys in a mapping (YAML would silently keep the last one: ``epochs: 0`` could disable training);
- anchors/aliases that expand to more than ``max_nodes`` nodes (a "billion laughs" bomb is refused in
  microseconds, before anything is built);
- non-finite numbers (``.inf``, ``.nan``): no edgekit setting accepts them;
- tags that build Python objects (``!!python/...``): the safe loader never constructs them.

The document is composed once; :class:`YamlDocument` keeps the node tree so errors found later (schema
validation) can still report line numbers.

Example:
    >>> doc = load_yaml("recipes/digits_resnet.yaml")
    >>> doc.data["stages"][0]["type"], doc.line_of(["stages", 0, "type"])
    ('train', 12)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Sequence

import yaml

from edgekit.errors import ConfigError, InputFileError

MAX_BYTES = 1 << 20  # 1 MiB: the largest shipped recipe is ~3 KB
MAX_NODES = 100_000


@dataclass
class YamlDocument:
    """A parsed YAML file: the plain data plus its node tree (for line numbers)."""

    data: Any
    root: Optional[yaml.Node]
    source: str

    def line_of(self, path: Sequence[Any]) -> Optional[int]:
        """1-based line of the value at ``path`` (keys and list indices); the nearest parent's when absent."""
        node = self.root
        for key in path:
            if node is None:
                return None
            if isinstance(node, yaml.MappingNode) and isinstance(key, str):
                match = [(k, v) for k, v in node.value if getattr(k, "value", None) == key]
                if not match:
                    return node.start_mark.line + 1
                node = match[0][1]
            elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and 0 <= key < len(node.value):
                node = node.value[key]
            else:
                return node.start_mark.line + 1
        return node.start_mark.line + 1 if node is not None else None


def decode_text(raw: bytes, source: str) -> str:
    """UTF-8 text of ``raw`` (a UTF-8 BOM is allowed), or ConfigError saying what the file is instead."""
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ConfigError(f"{source}: the file is UTF-16 text; save it as UTF-8")
    if b"\x00" in raw[:4096]:
        raise ConfigError(f"{source}: this is a binary file, not a YAML text file")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        hint = " (it looks like Latin-1/Windows-1252 text: save it as UTF-8)" if _looks_latin1(raw) else ""
        raise ConfigError(f"{source}: not UTF-8 text: invalid byte 0x{raw[e.start]:02x} at byte offset {e.start}"
                          f"{hint}") from None


def _looks_latin1(raw: bytes) -> bool:
    return all(b >= 0x20 or b in (9, 10, 13) for b in raw[:4096])


def load_yaml(path: str | Path, *, max_bytes: int = MAX_BYTES, max_nodes: int = MAX_NODES) -> YamlDocument:
    """Read and parse a user YAML file through the checks in the module docstring."""
    p = Path(path)
    if not p.is_file():
        raise InputFileError(f"{p}: file not found" if not p.exists() else f"{p}: not a file")
    size = p.stat().st_size
    if size > max_bytes:
        raise ConfigError(f"{p}: {size:,} bytes is larger than the {max_bytes:,}-byte limit for a YAML file")
    with open(p, "rb") as f:
        raw = f.read(max_bytes + 1)
    return parse_yaml(decode_text(raw, str(p)), str(p), max_nodes=max_nodes)


def parse_yaml(text: str, source: str = "<yaml>", *, max_nodes: int = MAX_NODES) -> YamlDocument:
    """Parse YAML ``text`` once (compose, bound, construct) with the checks in the module docstring."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: malformed YAML{_mark(e)}: {_problem(e)}") from None
    except RecursionError:
        raise ConfigError(f"{source}: the YAML is nested too deeply to be a recipe") from None
    if root is None:
        return YamlDocument(None, None, source)
    _check_size(root, source, max_nodes)
    _check_duplicates(root, source)
    try:
        data = _Constructor().construct_document(root)
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: cannot read YAML{_mark(e)}: {_problem(e)}") from None
    _check_finite(data, source, [], YamlDocument(data, root, source))
    return YamlDocument(data, root, source)


class _Constructor(yaml.constructor.SafeConstructor):
    """The safe constructor on an already composed tree (PyYAML's own loaders compose and construct together)."""

    def __init__(self) -> None:
        super().__init__()
        self.deep_construct = True


def _mark(e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    return f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""


def _problem(e: yaml.YAMLError) -> str:
    return (getattr(e, "problem", None) or str(e).splitlines()[0]).strip()


def _check_size(root: yaml.Node, source: str, max_nodes: int) -> None:
    """Count the nodes the document expands to, following aliases (shared nodes count every time)."""
    sizes: dict = {}

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        sizes[key] = 1  # a cycle (recursive alias) counts once here; the constructor refuses it later
        if isinstance(node, yaml.SequenceNode):
            total = 1 + sum(size(c) for c in node.value)
        elif isinstance(node, yaml.MappingNode):
            total = 1 + sum(size(k) + size(v) for k, v in node.value)
        else:
            total = 1
        sizes[key] = total
        if total > max_nodes:
            raise ConfigError(f"{source}: the YAML expands to more than {max_nodes:,} values (anchors/aliases at "
                              f"line {node.start_mark.line + 1} repeat a large block); refusing to build it")
        return total

    size(root)


def _check_duplicates(root: yaml.Node, source: str) -> None:
    seen_nodes: set = set()
    stack: List[yaml.Node] = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen_nodes:
            continue
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first: dict = {}
            for k, v in node.value:
                key = getattr(k, "value", None)
                if isinstance(k, yaml.ScalarNode) and key in first:
                    raise ConfigError(f"{source}: duplicate key '{key}' at line {k.start_mark.line + 1} (first at "
                                      f"line {first[key]}); YAML would silently keep only the last one")
                first.setdefault(key, k.start_mark.line + 1)
                stack += [k, v]
        elif isinstance(node, yaml.SequenceNode):
            stack += node.value


def _check_finite(value: Any, source: str, path: list, doc: YamlDocument, parents: tuple = ()) -> None:
    if isinstance(value, (dict, list)):
        if id(value) in parents:
            raise ConfigError(f"{source}: {'.'.join(str(p) for p in path)}: a recursive alias (a value that contains "
                              "itself) cannot be a recipe setting")
        parents = (*parents, id(value))
    if isinstance(value, float) and not math.isfinite(value):
        where = ".".join(str(p) for p in path) or "(top level)"
        line = doc.line_of(path)
        raise ConfigError(f"{source}: {where}{f' (line {line})' if line else ''}: {value!r} is not a finite number; "
                          "no edgekit setting accepts infinity or NaN")
    if isinstance(value, dict):
        for k, v in value.items():
            _check_finite(v, source, [*path, k], doc, parents)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_finite(v, source, [*path, i], doc, parents)
