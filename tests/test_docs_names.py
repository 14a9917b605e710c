"""docs/ARCHITECTURE.md stays true: every `edgekit.…` name it mentions exists in the package."""
import importlib
import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parent.parent / "docs" / "ARCHITECTURE.md"
NAME = re.compile(r"\bedgekit(?:\.[A-Za-z_][A-Za-z0-9_]*)+")


def _resolve(dotted: str) -> bool:
    """True when ``dotted`` is a module, or an attribute chain reachable from the longest importable module prefix."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def _names() -> list:
    return sorted(set(NAME.findall(DOC.read_text(encoding="utf-8"))))


def test_the_document_names_edgekit_objects():
    assert len(_names()) >= 30, "docs/ARCHITECTURE.md should map the package by its real names"


@pytest.mark.parametrize("dotted", _names())
def test_every_name_in_architecture_md_exists(dotted):
    assert _resolve(dotted), f"docs/ARCHITECTURE.md mentions {dotted}, which does not exist"


def test_the_resolver_rejects_a_missing_name():
    assert _resolve("edgekit.errors.ConfigError") and not _resolve("edgekit.errors.NoSuchError")
    assert not _resolve("edgekit.no_such_module.thing")
