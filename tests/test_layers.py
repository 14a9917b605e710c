"""Imports point down or sideways through edgekit's layers, and no two packages import each other.

Layers (DESIGN §1): errors/registry/_io/_log (0) → core (1) → models, data, backends, export (2) → techniques (3)
→ bench (4) → pipeline (5) → cli (6). Every import counts: module level, inside functions, and
``importlib.import_module("edgekit....")`` with a literal name.
"""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import edgekit

ROOT = Path(edgekit.__file__).resolve().parent
LAYERS = {"errors": 0, "registry": 0, "_io": 0, "_log": 0, "core": 1, "models": 2, "data": 2, "backends": 2,
          "export": 2, "techniques": 3, "bench": 4, "pipeline": 5, "search": 5.5, "cli": 6}

def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve_from(module: str, is_package: bool, node: ast.ImportFrom) -> list[str]:
    """Absolute names imported by ``from X import a, b`` (a name that is a submodule counts as that module)."""
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[:len(base) - node.level + 1]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    out = []
    for alias in node.names:
        sub = f"{target}.{alias.name}"
        if target == "edgekit" and alias.name in getattr(edgekit, "_API", {}):
            out.append(edgekit._API[alias.name])  # a lazy top-level name imports its module
        elif (ROOT.parent / Path(*sub.split("."))).with_suffix(".py").is_file() or \
                (ROOT.parent / Path(*sub.split("."))).is_dir():
            out.append(sub)
        else:
            out.append(target)
    return out


def _is_import_module_call(node: ast.AST) -> bool:
    """``importlib.import_module("literal")`` or ``import_module("literal")``."""
    if not isinstance(node, ast.Call) or not node.args:
        return False
    name = getattr(node.func, "attr", getattr(node.func, "id", ""))
    return name == "import_module" and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)


def _imports(source: str, module: str, is_package: bool = False) -> set[str]:
    """The edgekit modules that ``module`` (whose code is ``source``) imports anywhere."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            found.update(_resolve_from(module, is_package, node))
        elif _is_import_module_call(node):
            found.add(node.args[0].value)
    return {name for name in found if name == "edgekit" or name.startswith("edgekit.")}


def import_graph() -> dict[str, set[str]]:
    """edgekit module -> the edgekit modules it imports anywhere in its source."""
    return {_module_name(p): _imports(p.read_text(encoding="utf-8"), _module_name(p), p.name == "__init__.py")
            for p in sorted(ROOT.rglob("*.py"))}


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "edgekit"


def _layer(module: str) -> int | None:
    return LAYERS.get(_package(module))


def _edges() -> list[tuple[str, str]]:
    return [(src, dst) for src, targets in import_graph().items() for dst in sorted(targets)]


def test_every_package_has_a_layer():
    packages = {_package(_module_name(p)) for p in ROOT.rglob("*.py")} - {"edgekit"}
    assert packages <= set(LAYERS), f"give these a layer in DESIGN §1 and here: {sorted(packages - set(LAYERS))}"


def test_no_upward_imports():
    upward = [f"{src} (layer {_layer(src)}) imports {dst} (layer {_layer(dst)})" for src, dst in _edges()
              if _layer(src) is not None and _layer(dst) is not None
              and _layer(dst) > _layer(src)]
    assert not upward, "\n".join(upward)


def _package_cycles(edges) -> list[list[str]]:
    """Strongly connected groups of more than one package (Tarjan)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for src, dst in edges:
        a, b = _package(src), _package(dst)
        if a != b and "edgekit" not in (a, b):
            graph[a].add(b)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in list(graph):
        if v not in index:
            visit(v)
    return groups


def test_no_import_cycles_between_packages():
    edges = list(_edges())
    cycles = _package_cycles(edges)
    detail = [f"{' ↔ '.join(c)}: " + ", ".join(f"{s} → {d}" for s, d in edges
                                               if _package(s) in c and _package(d) in c and _package(s) != _package(d))
              for c in cycles]
    assert not cycles, "\n".join(detail)


def test_the_checker_sees_function_level_relative_and_dynamic_imports():
    source = ("import importlib\nfrom ..errors import first_line\nfrom . import train\n\ndef f():\n"
              "    from edgekit.pipeline import recipe\n    importlib.import_module('edgekit.cli.main')\n")
    assert _imports(source, "edgekit.core._probe") == {"edgekit.errors", "edgekit.core.train",
                                                        "edgekit.pipeline.recipe", "edgekit.cli.main"}
    assert _package_cycles([("edgekit.a.x", "edgekit.b.y"), ("edgekit.b.z", "edgekit.c.w"),
                            ("edgekit.c.q", "edgekit.a.r"), ("edgekit.c.q", "edgekit.d.s")]) == [["a", "b", "c"]]


HEAVY = ("torch", "onnxruntime", "tensorrt", "openvino", "matplotlib", "torch_pruning", "transformers")


def test_import_edgekit_is_lean():
    """``import edgekit`` (and its error/registry modules) loads no framework, runtime or plotting library."""
    import subprocess
    import sys

    code = ("import sys, edgekit, edgekit.errors, edgekit.registry, edgekit._io, edgekit._log; "
            f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", f"import edgekit loaded: {proc.stdout.strip()}"
