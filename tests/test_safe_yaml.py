"""The YAML front door: every malformed or hostile file is one clear ConfigError, found before anything is built."""
from __future__ import annotations

import time

import pytest

from edgekit.core.safe_yaml import load_yaml, parse_yaml
from edgekit.errors import ConfigError, InputFileError

BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
    for p, c in zip("abcdefgh", "bcdefghi"))


@pytest.mark.parametrize("text, match", [
    ("seed: 1\nseed: 2\n", r"duplicate key 'seed' at line 2 \(first at line 1\)"),
    ("train:\n  lr: .inf\n", r"train.lr \(line 2\): inf is not a finite number"),
    ("x: [1, 2\n", "malformed YAML at line 2"),
    ("x: !!python/object/apply:os.system ['echo pwned']\n", "cannot read YAML"),
    ("a: &a [*a]\n", "recursive"),
    ("[" * 5000 + "]" * 5000, "nested too deeply"),
])
def test_bad_yaml_is_one_config_error(text, match):
    with pytest.raises(ConfigError, match=match):
        parse_yaml(text, "r.yaml")


def test_alias_bomb_is_refused_fast_with_bounded_work():
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match="expands to more than 100,000 values"):
        parse_yaml(BOMB, "bomb.yaml")
    assert time.perf_counter() - t0 < 1.0


@pytest.mark.parametrize("raw, match", [
    ("seed: 1\nname: caf\xe9\n".encode("latin-1"), r"invalid byte 0xe9 at byte offset 17 \(it looks like Latin-1"),
    ("seed: 1\n".encode("utf-16"), "UTF-16"),
    (b"\x7fELF\x00\x00\x01", "binary file"),
])
def test_files_that_are_not_utf8_text_are_named(tmp_path, raw, match):
    p = tmp_path / "r.yaml"
    p.write_bytes(raw)
    with pytest.raises(ConfigError, match=match):
        load_yaml(p)


def test_size_limit_missing_file_and_line_numbers(tmp_path):
    p = tmp_path / "big.yaml"
    p.write_text("x: " + "a" * 2000 + "\n")
    with pytest.raises(ConfigError, match="larger than the 1,000-byte limit"):
        load_yaml(p, max_bytes=1000)
    with pytest.raises(InputFileError, match="file not found"):
        load_yaml(tmp_path / "nope.yaml")
    doc = parse_yaml("model:\n  name: x\nstages:\n  - type: train\n    lr: 0.1\n", "r.yaml")
    assert doc.data["stages"][0]["lr"] == 0.1 and doc.line_of(["stages", 0, "lr"]) == 5
    assert doc.line_of(["stages", 0, "missing"]) == 4
    p.write_bytes("\ufeffseed: 3\n".encode("utf-8"))
    assert load_yaml(p).data == {"seed": 3}
