"""Benchmarking: latency harness, ONNX MAC counter, machine peaks, reports and plots.

Importing this package is cheap: submodules (torch, onnx, onnxruntime, matplotlib) load on first use.

Example:
    >>> from edgekit.bench import benchmark, count_macs_onnx
    >>> res = benchmark(["fp32.onnx", "int8.onnx"], batches=(1, 8), threads=2, out_dir="bench_out")
    >>> count_macs_onnx("fp32.onnx").total
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "benchmark": "api", "ModelSpec": "specs",
    "BenchResult": "results", "SCHEMA": "results",
    "count_macs_onnx": "macs", "MacReport": "macs", "NodeMacs": "macs",
    "environment": "hardware", "measure_peak": "hardware", "measure_gpu_peak": "hardware", "Peak": "hardware",
    "run_interleaved": "latency", "paired_ratios": "latency", "Case": "latency",
    "parse_batches": "data",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'edgekit.bench' has no attribute '{name}'")
