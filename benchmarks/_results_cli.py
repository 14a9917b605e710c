"""The shell every results-saving benchmark script shares: measure (or re-render a saved results file), save the
JSON, print the Markdown; and the ``run(ctx)`` entry that ``run_all.py`` calls."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Callable, List, Optional

from edgekit._io import write_json_atomic


def results_main(argv: Optional[List[str]], doc: str, default_out: Path, to_markdown: Callable[[dict], str],
                 add_args: Callable[[argparse.ArgumentParser], None],
                 measure: Callable[[argparse.Namespace], dict]) -> int:
    """Parse the script's own options (``add_args``) plus ``--out`` / ``--from-json``; print the Markdown of a new
    measurement (saved to ``--out``) or of a saved results file."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    add_args(p)
    p.add_argument("--out", type=Path, default=default_out)
    p.add_argument("--from-json", type=Path, help="re-render the markdown from a saved results file")
    a = p.parse_args(argv)
    if a.from_json:
        print(to_markdown(json.loads(a.from_json.read_text())))
        return 0
    res = measure(a)
    write_json_atomic(a.out, res)
    print(to_markdown(res))
    return 0


def run_section(ctx: Any, results_name: str, measure: Callable[[str], dict], to_markdown: Callable[[dict], str]) -> str:
    """The ``benchmarks/run_all.py`` interface: measure (quick or full), save ``results/<results_name>``, render."""
    res = measure("quick" if ctx.quick else "full")
    write_json_atomic(Path(ctx.results_dir) / results_name, res)
    return to_markdown(res)
