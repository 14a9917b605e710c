"""Datasets (digits, synthetic, npz, image folders), deterministic splits and calibration sets."""
from edgekit.data.calibration import check_calibration, load_calibration, make_calibration
from edgekit.data.datasets import DATASETS, DataConfig, load_data, read_npz
from edgekit.data.splits import Split, Splits, make_splits, split_indices

__all__ = ["DATASETS", "DataConfig", "Split", "Splits", "check_calibration", "load_calibration", "load_data",
           "make_calibration", "make_splits", "read_npz", "split_indices"]
