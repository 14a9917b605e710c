"""Importing this module registers every backend in the ``edgekit.backends`` package: each public module and
subpackage (and its public modules) is imported, and a backend module registers itself on import, so adding a
backend is adding one file. Heavy runtime imports stay lazy inside the backend modules."""
from __future__ import annotations

import importlib
import pkgutil

import edgekit.backends as _package


def _backend_modules() -> list:
    """Names of the public modules under ``edgekit.backends`` (names starting with '_' are private)."""
    found = pkgutil.walk_packages(_package.__path__, _package.__name__ + ".")
    return [m.name for m in found if not any(part.startswith("_") for part in m.name.split(".")[2:])]


for _name in _backend_modules():
    importlib.import_module(_name)
