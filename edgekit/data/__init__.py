"""Datasets (digits, synthetic, npz, image folders, documentation topics, JSONL/CSV text), deterministic splits
and calibration sets."""
from edgekit.data import text_lm  # noqa: F401  (registers pydoc_lm and text_lm)
from edgekit.data.calibration import check_calibration, load_calibration, make_calibration
from edgekit.data.datasets import DATASETS, DataConfig, load_data, read_npz
from edgekit.data.splits import Split, Splits, make_splits, split_indices
from edgekit.data.text import DOC_TOPIC_GROUPS, encode, load_tokenizer, read_text_file, train_tokenizer

__all__ = ["DATASETS", "DOC_TOPIC_GROUPS", "DataConfig", "Split", "Splits", "check_calibration", "encode",
           "load_calibration", "load_data", "load_tokenizer", "make_calibration", "make_splits", "read_npz",
           "read_text_file", "split_indices", "train_tokenizer"]
