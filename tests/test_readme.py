"""The README's library snippet runs as written, and its documented commands exist."""
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _snippet() -> str:
    text = README.read_text()
    section = text.split("## Library", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_readme_library_snippet_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(_snippet(), "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "int8 accuracy:" in out
    acc = float(out.rsplit("int8 accuracy:", 1)[1].split()[0])
    assert acc > 80.0
    assert (tmp_path / "out" / "student.int8.onnx").is_file()


def test_readme_states_the_two_setup_commands():
    text = README.read_text()
    assert "make demo" in text and "make test" in text


def test_readme_cli_commands_exist():
    from edgekit.cli.main import build_parser

    parser = build_parser()
    subs = next(a for a in parser._actions if a.dest == "command").choices
    for cmd in re.findall(r"`edgekit (\w+)", README.read_text()):
        assert cmd in subs, cmd
