"""Running edgekit the way users do: one stage with a hand-built context, or the `edgekit` command."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def stage_context(tmp_path: Path, variants: dict, splits, stage_dir: str = "stage"):
    """A StageContext for calling one stage function directly: seed 0, 2 threads, no recipe, a new stage dir."""
    from edgekit.pipeline.stages import StageContext

    directory = tmp_path / stage_dir
    directory.mkdir(parents=True)
    return StageContext(tmp_path, directory, 0, 2, None, dict(variants), lambda: splits)


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m edgekit.cli --quiet ARGS`` in a subprocess (the caller's environment); text output."""
    return subprocess.run([sys.executable, "-m", "edgekit.cli", "--quiet", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=600)
