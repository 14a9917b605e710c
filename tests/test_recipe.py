"""Recipe validation: every problem reported with its field path, line and allowed values."""
import json
import re
from pathlib import Path

import numpy as np
import pytest

from edgekit.errors import ConfigError, InputFileError
from edgekit.pipeline.recipe import load_recipe, validate_recipe

TINY = (Path(__file__).parent / "data" / "tiny_recipe.yaml").read_text()  # a tiny valid recipe


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
    with pytest.raises(ConfigError,
                       match=r"stages\[0\].type: unknown stage 'trian' \(did you mean 'train'\?\); allowed: .*export"):
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


@pytest.mark.parametrize("stage, key, new", [
    ({"type": "prune", "ratio": 0.3, "protect": ["fc"]}, "protect", "exclude"),
    ({"type": "prune", "ratio": 0.3, "kd_alpha": 0.5}, "kd_alpha", "alpha"),
    ({"type": "prune", "ratio": 0.3, "kd_temperature": 2.0}, "kd_temperature", "temperature"),
    ({"type": "quantize", "exclude_nodes": ["/fc/Gemm"], "percentile": 99.0}, "exclude_nodes", "exclude"),
])
def test_renamed_keys_are_refused_with_their_new_name(tmp_path, stage, key, new):
    import yaml

    raw = yaml.safe_load(TINY)
    typo, meant = ("tempreature", "temperature") if "ratio" in stage else ("percentil", "percentile")
    raw["stages"].append({**stage, typo: 1})  # another problem in the same stage is reported too
    with pytest.raises(ConfigError) as e:
        load_recipe(write(tmp_path, yaml.safe_dump(raw, sort_keys=False)))
    msg = str(e.value)
    assert "2 problems" in msg
    assert re.search(rf"stages\[1\]\.{key} \(line \d+\): renamed to '{new}'", msg), msg
    assert f"stages[1].{typo}" in msg and f"did you mean '{meant}'" in msg


@pytest.mark.parametrize("value, message", [("original", "'original' was renamed to 'parent'"),
                                            ("none", "'none' is now null")])
def test_old_teacher_values_are_refused(value, message):
    raw = {"model": {"name": "resnet_cifar"}, "stages": [{"type": "prune", "ratio": 0.3, "teacher": value}]}
    with pytest.raises(ConfigError, match=rf"stages\[0\]\.teacher: {message}"):
        validate_recipe(raw)


def test_enums_come_from_the_registries():
    from edgekit.backends import BACKENDS
    from edgekit.pipeline.recipe import recipe_json_schema
    from edgekit.pipeline.stages import STAGES
    from edgekit.techniques.prune.config import IMPORTANCES
    from edgekit.techniques.quantize.config import CALIBRATION_METHODS, TARGETS

    schema = json.dumps(recipe_json_schema())
    defs = recipe_json_schema()["$defs"]
    assert defs["Target"]["properties"]["backend"]["enum"] == BACKENDS.names()
    assert defs["QuantizeStage"]["properties"]["target"]["enum"] == TARGETS.names()
    assert defs["QuantizeStage"]["properties"]["method"]["enum"] == CALIBRATION_METHODS.names()
    assert defs["PruneStage"]["properties"]["importance"]["enum"] == IMPORTANCES.names()
    assert {f'"const": "{name}"' for name in STAGES.names()} <= {f'"const": "{n}"' for n in STAGES.names()
                                                                 if f'"const": "{n}"' in schema}
    with pytest.raises(ConfigError, match=r"targets\[0\]\.backend: unknown backend 'ort-cpx' \(did you mean 'ort-cpu'"):
        validate_recipe({"model": {"name": "resnet_cifar"}, "targets": [{"backend": "ort-cpx"}]})


def test_a_temporary_target_goes_through_the_recipe_schema_and_quantizes(tmp_path, trained_resnet8):
    """Adding a quantisation target is one registry entry: the recipe accepts it and PTQ follows its scheme."""
    from dataclasses import replace

    import onnx
    from onnx import numpy_helper

    from edgekit.pipeline.runner import run_recipe
    from edgekit.techniques.quantize.config import TARGETS

    scheme = replace(TARGETS.get("cpu"), target="s8cpu", activations="int8", activation_symmetric=True,
                     description="int8 symmetric activations for a CPU runtime that wants S8S8")
    text = (f"model: {{onnx: {trained_resnet8.onnx}}}\n"
            "data: {name: digits, image_size: 16, channels: 3}\n"
            "stages:\n  - type: quantize\n    target: s8cpu\n    samples: 32\n")
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=r"stages\[0\]\.target \(line 5\): unknown quantisation target 's8cpu'"):
        load_recipe(path)
    with TARGETS.temporary("s8cpu", scheme):
        recipe = load_recipe(path)
        result = run_recipe(recipe, runs_dir=tmp_path / "runs", name="t", report=False)
    v = result.variants["reference-int8-s8cpu"]
    assert v.meta["target"] == "s8cpu" and v.meta["quant_scheme"]["activations"] == "int8"
    m = onnx.load(v.onnx)
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    zps = [inits[n.input[2]] for n in m.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits]
    assert zps and all(z.dtype == np.int8 and not z.any() for z in zps)  # the scheme's symmetric int8 activations
    assert v.metrics["test_accuracy"] > 50.0
