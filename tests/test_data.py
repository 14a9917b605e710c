"""Datasets, deterministic splits and calibration sets."""
import numpy as np
import pytest

from edgekit.data import (
    DATASETS,
    DataConfig,
    check_calibration,
    load_calibration,
    load_data,
    make_calibration,
    make_splits,
    split_indices,
)
from edgekit.errors import ConfigError, InputFileError, ShapeError


def test_digits_images_and_sequences():
    s = load_data({"name": "digits", "image_size": 16, "channels": 3}, seed=0)
    assert s.train.x.shape[1:] == (3, 16, 16) and s.num_classes == 10
    assert len(s.train) + len(s.val) + len(s.test) == 1797
    q = load_data({"name": "digits_seq"}, seed=0)
    assert q.input_shape == (8, 8)


def test_splits_are_deterministic_disjoint_and_seeded():
    a = split_indices(100, (0.6, 0.2, 0.2), seed=1)
    b = split_indices(100, (0.6, 0.2, 0.2), seed=1)
    c = split_indices(100, (0.6, 0.2, 0.2), seed=2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[2], c[2])
    assert len(set(a[0]) | set(a[1]) | set(a[2])) == 100
    assert not (set(a[0]) & set(a[2]))


def test_bad_split_fractions():
    with pytest.raises(ConfigError, match="summing to 1"):
        split_indices(10, (0.5, 0.5, 0.5), 0)


def test_npz_user_data(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.standard_normal((50, 4, 4)).astype(np.float32), y=rng.integers(0, 3, 50))
    s = load_data({"name": "npz", "path": str(tmp_path / "d.npz"), "split": [0.6, 0.2, 0.2]}, seed=0)
    assert s.input_shape == (4, 4) and s.num_classes == 3
    np.savez(tmp_path / "bad.npz", x=np.full((4, 2), np.nan, np.float32))
    with pytest.raises(ShapeError, match="NaN"):
        load_data({"name": "npz", "path": str(tmp_path / "bad.npz")}, seed=0)
    np.savez(tmp_path / "noy.npz", z=np.zeros(3))
    with pytest.raises(InputFileError, match="array named 'x'"):
        load_data({"name": "npz", "path": str(tmp_path / "noy.npz")}, seed=0)
    with pytest.raises(InputFileError, match="not found"):
        load_data({"name": "npz", "path": str(tmp_path / "nope.npz")}, seed=0)


def test_image_folder(tmp_path):
    from PIL import Image

    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(5):
            pixels = np.full((10, 10, 3), i * 20 + (cls == "dog") * 100, np.uint8)
            Image.fromarray(pixels).save(tmp_path / cls / f"{i}.png")
    s = load_data({"name": "image_folder", "path": str(tmp_path), "image_size": 8, "channels": 3,
                   "split": [0.6, 0.2, 0.2]}, seed=0)
    assert s.input_shape == (3, 8, 8) and s.num_classes == 2


def test_make_calibration_draws_from_training_split_only(tmp_path):
    out = make_calibration({"name": "digits", "image_size": 8}, tmp_path / "c.npz", samples=40, seed=0)
    x = load_calibration(out, (1, 8, 8))
    s = load_data({"name": "digits", "image_size": 8}, seed=0)
    train = {row.tobytes() for row in s.train.x}
    test = {row.tobytes() for row in s.test.x}
    assert len(x) == 40 and all(r.tobytes() in train for r in x) and not any(r.tobytes() in test for r in x)


def test_calibration_validation():
    with pytest.raises(ShapeError, match=r"samples have shape \[3, 8, 8\].*expects \[1, 8, 8\]"):
        check_calibration(np.zeros((4, 3, 8, 8), np.float32), (1, 8, 8))
    with pytest.raises(ShapeError, match="empty"):
        check_calibration(np.zeros((0, 1, 8, 8), np.float32), (1, 8, 8))
    with pytest.raises(ShapeError, match="floating point"):
        check_calibration(np.zeros((2, 1, 8, 8), np.int64), (1, 8, 8))


def test_shipped_calibration_set_fits_the_demo_recipe():
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "calib_data" / "digits32_rgb.npz"
    x = load_calibration(path, (3, 32, 32))
    assert x.dtype == np.float32 and len(x) >= 64


def _ramp(config, seed):
    """A plugin dataset: 30 samples of 2 features whose label is the sign of the first."""
    x = np.linspace(-1, 1, 60, dtype=np.float32).reshape(30, 2)
    return make_splits(x, (x[:, 0] > 0).astype(np.int64), config.split, seed, "ramp", 2)


def test_a_registered_dataset_works_in_load_data_the_recipe_and_its_schema():
    from edgekit.pipeline.recipe import recipe_json_schema, validate_recipe

    with DATASETS.temporary("ramp", _ramp):
        s = load_data({"name": "ramp", "split": [0.6, 0.2, 0.2]}, seed=0)
        assert s.name == "ramp" and s.input_shape == (2,) and len(s.train) == 18
        recipe = validate_recipe({"model": {"name": "resnet_cifar"}, "data": {"name": "ramp"}})
        assert recipe.data.name == "ramp"
        assert "ramp" in recipe_json_schema()["$defs"]["DataConfig"]["properties"]["name"]["enum"]
    assert "ramp" not in DataConfig.model_json_schema()["properties"]["name"]["enum"]
    with pytest.raises(ConfigError, match=r"data\.name: unknown dataset 'ramp'; valid: digits, digits_seq"):
        load_data({"name": "ramp"})


def test_data_config_enum_is_the_registry_and_typos_get_a_suggestion():
    assert DataConfig.model_json_schema()["properties"]["name"]["enum"] == DATASETS.names()
    with pytest.raises(ConfigError, match=r"data\.name: unknown dataset 'digts' \(did you mean 'digits'\?\)"):
        load_data({"name": "digts"})
    with pytest.raises(ConfigError, match=r"data\.imge_size: unknown field \(did you mean 'image_size'\?\)"):
        load_data({"name": "digits", "imge_size": 8})


def test_make_calib_dataset_choices_come_from_the_registry():
    from edgekit.cli.main import build_parser

    with DATASETS.temporary("ramp", _ramp):
        args = build_parser().parse_args(["data", "make-calib", "--dataset", "ramp", "--out", "c.npz"])
    assert args.dataset == "ramp"
