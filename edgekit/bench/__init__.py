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
    "benchmark": "api", "ModelSpec": "specs", "BenchResult": "results", "SCHEMA": "results",
    "count_macs_onnx": "edgekit.core.measure.macs", "MacReport": "edgekit.core.measure.macs",
    "NodeMacs": "edgekit.core.measure.macs",
    "environment": "edgekit.core.platform", "GemmProbe": "peak", "measure_gpu_peak": "peak",
    "run_interleaved": "edgekit.core.measure.latency", "paired_ratios": "edgekit.core.measure.latency",
    "Case": "edgekit.core.measure.latency",
    "parse_batches": "data",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module = _EXPORTS[name] if "." in _EXPORTS[name] else f"{__name__}.{_EXPORTS[name]}"
        return getattr(importlib.import_module(module), name)
    raise AttributeError(f"module 'edgekit.bench' has no attribute '{name}'")
