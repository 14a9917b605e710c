"""Built-in datasets (digits, synthetic) and user data (npz files, image folders), one registry."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edgekit._io import check_npz_file
from edgekit.data.splits import Split, Splits, make_splits
from edgekit.errors import ConfigError, InputFileError, ShapeError, first_line, validated_config
from edgekit.registry import Registry

DATASETS: Registry[Callable[[DataConfig, int], Splits]] = Registry("dataset")


class DataConfig(BaseModel):
    """Where data comes from and how it is shaped and split."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # checked against DATASETS when parsed, so a dataset a plugin registers works in a recipe
    name: DATASETS.name_type() = Field("digits", description="digits | digits_seq | synthetic | npz | image_folder | "
                                                              "doc_topics | text | pydoc_lm | text_lm")
    path: Optional[str] = Field(None, description="npz file, image folder, JSONL/CSV text file or UTF-8 text file "
                                                  "(for name npz / image_folder / text / text_lm)")
    image_size: Optional[int] = Field(None, gt=0, description="resize square images to this size (digits: 8 native)")
    channels: int = Field(1, description="1 (grey) or 3 (grey replicated / RGB)")
    shape: Optional[List[int]] = Field(None, description="per-sample shape for synthetic data, e.g. [3, 224, 224]; "
                                                          "[tokens per window] for pydoc_lm / text_lm")
    num_classes: int = Field(10, gt=0, description="classes for synthetic data")
    samples: int = Field(256, gt=0, description="number of synthetic samples")
    split: Tuple[float, float, float] = Field((0.6, 0.2, 0.2), description="train/val/test fractions")
    normalize: bool = Field(True, description="scale inputs to zero mean / unit variance (train statistics); "
                                              "float inputs only (token ids are never touched)")
    text_column: str = Field("text", description="text data: the column holding the text (JSONL/CSV)")
    label_column: str = Field("label", description="text data: the column holding the label (integer or name)")
    max_length: int = Field(128, gt=0, description="text data: tokens per sample (padded / truncated)")
    tokenizer: Optional[str] = Field(None, description="text data: tokenizer.json or a local directory with one "
                                                       "(default: BPE trained on the training split)")
    vocab_size: int = Field(4000, gt=5, description="text data: vocabulary size of the trained tokenizer")


def load_data(config: DataConfig | dict, seed: int = 0) -> Splits:
    """Load a dataset described by ``config`` and split it deterministically from ``seed``.

    Example:
        >>> splits = load_data({"name": "digits", "image_size": 32, "channels": 3}, seed=0)
        >>> splits.train.x.shape[1:]
        (3, 32, 32)
    """
    config = validated_config(DataConfig, config, "data")
    if config.channels not in (1, 3):
        raise ConfigError(f"data.channels must be 1 or 3, got {config.channels}")
    splits = DATASETS.get(config.name)(config, seed)
    floats = isinstance(splits.train.x, np.ndarray) and np.issubdtype(splits.train.x.dtype, np.floating)
    return _normalize(splits) if config.normalize and config.name != "synthetic" and floats else splits


def _normalize(s: Splits) -> Splits:
    """Scale every split by the training split's mean and standard deviation."""
    mean, std = float(s.train.x.mean()), float(s.train.x.std()) or 1.0
    f = lambda sp: Split(((sp.x - mean) / std).astype(np.float32), sp.y)  # noqa: E731
    return replace(s, train=f(s.train), val=f(s.val), test=f(s.test))


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of [N, C, H, W] float images with torch (no torchvision)."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        t = F.interpolate(torch.from_numpy(images), size=(size, size), mode="bilinear", align_corners=False)
    return t.numpy().astype(np.float32)


@DATASETS.register("digits")
def _digits(config: DataConfig, seed: int) -> Splits:
    """scikit-learn's 1797 8×8 handwritten digits (ships offline) as [C, S, S] images."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None]
    if config.image_size and config.image_size != 8:
        x = _resize(x, config.image_size)
    if config.channels == 3:
        x = np.repeat(x, 3, axis=1)
    return make_splits(x, d.target.astype(np.int64), config.split, seed, "digits", 10)


@DATASETS.register("digits_seq")
def _digits_seq(config: DataConfig, seed: int) -> Splits:
    """The same digits as sequences: 8 time steps (rows) of 8 features (pixels)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = d.images.astype(np.float32) / 16.0
    return make_splits(x, d.target.astype(np.int64), config.split, seed, "digits_seq", 10)


@DATASETS.register("synthetic")
def _synthetic(config: DataConfig, seed: int) -> Splits:
    """Random normal inputs with random labels: for latency-only work (accuracy is meaningless)."""
    if not config.shape or any(d <= 0 for d in config.shape):
        raise ConfigError(f"data.shape must list positive per-sample dims for synthetic data, got {config.shape}")
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((config.samples, *config.shape), dtype=np.float32)
    y = rng.integers(0, config.num_classes, config.samples).astype(np.int64)
    return replace(make_splits(x, y, config.split, seed, "synthetic", config.num_classes), labelled=False)


@DATASETS.register("npz")
def _npz(config: DataConfig, seed: int) -> Splits:
    """A user npz file with ``x`` (N × sample shape) and optional integer labels ``y``."""
    x, y = read_npz(config.path, "data.path")
    return make_splits(x, y, config.split, seed, Path(config.path).stem)


def read_npz(path: Optional[str], field: str = "path") -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Read and validate an npz with float ``x`` and optional integer ``y``; never unpickles."""
    if not path:
        raise ConfigError(f"{field} is required for npz data")
    p = check_npz_file(path, field)
    try:
        with np.load(p, allow_pickle=False) as f:
            if "x" not in f.files:
                found = ", ".join(f.files) or "none"
                raise InputFileError(f"{p}: npz must contain an array named 'x' (found: {found})")
            x, y = f["x"], (f["y"] if "y" in f.files else None)
    except ValueError as e:
        raise InputFileError(f"{p}: not a readable npz of plain arrays ({e})") from None
    except (OSError, EOFError) as e:
        raise InputFileError(f"{p}: not a readable npz file ({e})") from None
    if x.ndim < 2 or len(x) == 0:
        raise ShapeError(f"{p}: 'x' must be N × sample-shape with N > 0, got shape {list(x.shape)}")
    if not np.issubdtype(x.dtype, np.number):
        raise ShapeError(f"{p}: 'x' must be numeric, got dtype {x.dtype}")
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise ShapeError(f"{p}: 'x' contains NaN or infinite values")
    if y is not None:
        if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer):
            raise ShapeError(f"{p}: 'y' must be {len(x)} integer labels, got shape {list(y.shape)} dtype {y.dtype}")
        y = y.astype(np.int64)
    return x, y


@DATASETS.register("image_folder")
def _image_folder(config: DataConfig, seed: int) -> Splits:
    """Images in ``path/<class_name>/*.{png,jpg,jpeg,bmp}``; classes sorted by folder name."""
    from PIL import Image

    root = Path(config.path or "")
    if not config.path or not root.is_dir():
        raise InputFileError(f"data.path: image folder not found: {root}")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    if not classes:
        raise InputFileError(f"{root}: no class sub-folders (expected {root}/<class>/<image>.png)")
    size = config.image_size or 32
    xs, ys = [], []
    for label, cls in enumerate(classes):
        for f in sorted((root / cls).iterdir()):
            if f.suffix.lower() not in (".png", ".jpg", ".jpeg", ".bmp"):
                continue
            try:
                with Image.open(f) as im:
                    im = im.convert("RGB" if config.channels == 3 else "L").resize((size, size))
                    a = np.asarray(im, dtype=np.float32) / 255.0
            except OSError as e:  # PIL's UnidentifiedImageError is an OSError
                raise InputFileError(f"{f}: not a readable image ({first_line(e, 200)})") from None
            xs.append(a.transpose(2, 0, 1) if a.ndim == 3 else a[None])
            ys.append(label)
    if not xs:
        raise InputFileError(f"{root}: no images (.png/.jpg/.jpeg/.bmp) found in the class folders")
    return make_splits(np.stack(xs), np.array(ys, np.int64), config.split, seed, root.name, len(classes))
