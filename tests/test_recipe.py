"""Recipe validation: every problem reported with its field path, line and allowed values."""
import pytest

from edgekit.errors import ConfigError, InputFileError
from edgekit.pipeline.recipe import load_recipe, validate_recipe
from recipes import TINY


def write(tmp_path, text, name="r.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_tiny_recipe_is_valid_and_named_after_its_file(tmp_path):
    r = load_recipe(write(tmp_path, TINY, "tiny.yaml"))
    assert r.name == "tiny" and [s.type for s in r.stages] == ["train"]


def test_every_shipped_recipe_validates():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "recipes"
    files = sorted(f for f in root.glob("*.yaml") if f.name != "TEMPLATE.yaml")  # the template is all comments
    assert files
    for f in files:
        load_recipe(f)


def test_malformed_yaml_reports_line_and_column(tmp_path):
    with pytest.raises(ConfigError, match=r"malformed YAML at line \d+, column \d+: expected"):
        load_recipe(write(tmp_path, "seed: 0\nmodel:\n  name: [unclosed\n"))


def test_unknown_keys_get_did_you_mean_and_line(tmp_path):
    text = TINY.replace("    lr: 0.1", "    lrr: 0.1").replace("  iters: 5", "  itters: 5")
    with pytest.raises(ConfigError) as e:
        load_recipe(write(tmp_path, text))
    msg = str(e.value)
    assert "2 problems" in msg
    assert "stages[0].lrr (line 14): unknown key (did you mean 'lr'?)" in msg
    assert "benchmark.itters" in msg and "did you mean 'iters'" in msg


def test_out_of_range_and_wrong_types_name_the_field():
    raw = {"model": {"name": "resnet_cifar"}, "seed": "zero",
           "stages": [{"type": "train", "epochs": -1}], "benchmark": {"batches": [0]}}
    with pytest.raises(ConfigError) as e:
        validate_recipe(raw)
    msg = str(e.value)
    assert "seed: Input should be a valid integer" in msg
    assert "stages[0].epochs: Input should be greater than or equal to 0" in msg
    assert "benchmark.batches[0]: Input should be greater than 0" in msg


def test_unknown_stage_type_lists_allowed():
    with pytest.raises(ConfigError, match=r"stages\[0\].type: unknown stage 'trian' \(did you mean 'train'\?\); allowed: .*export"):
        validate_recipe({"model": {"name": "resnet_cifar"}, "stages": [{"type": "trian"}]})


def test_model_source_needs_exactly_one():
    with pytest.raises(ConfigError, match="exactly one of name, checkpoint, onnx"):
        validate_recipe({"model": {"name": "resnet_cifar", "onnx": "m.onnx"}})


def test_literal_typo_gets_suggestion():
    with pytest.raises(ConfigError, match="did you mean 'digits'"):
        validate_recipe({"model": {"name": "resnet_cifar"}, "data": {"name": "digitz"}})


def test_missing_recipe_file(tmp_path):
    with pytest.raises(InputFileError, match="recipe not found"):
        load_recipe(tmp_path / "none.yaml")


def test_template_is_generated_from_the_schema_and_up_to_date():
    from pathlib import Path

    from edgekit.pipeline.template import render_template

    shipped = (Path(__file__).resolve().parents[1] / "recipes" / "TEMPLATE.yaml").read_text()
    assert shipped == render_template(), "run: edgekit recipe template --out recipes/TEMPLATE.yaml"
    for stage in ("train", "distill", "prune", "quantize", "qat", "export", "compile"):
        assert f"# - type: {stage}" in shipped
