"""Text files for language-model tests, built from CPython's bundled documentation (offline)."""
from __future__ import annotations

from pathlib import Path


def tiny_corpus(directory: Path, documents: int = 24) -> Path:
    """A UTF-8 file of the first ``documents`` pydoc documents, blank-line separated."""
    from edgekit.data.text import pydoc_documents

    docs = pydoc_documents()
    path = directory / "docs.txt"
    path.write_text("\n\n".join(docs[n] for n in sorted(docs)[:documents]), encoding="utf-8")
    return path
