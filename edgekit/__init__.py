"""edgekit: make neural networks small and fast for edge devices, and prove it with measurements.

Every stage is a plain function on ``nn.Module``s or ONNX files::

    import edgekit
    splits = edgekit.load_data({"name": "digits", "image_size": 32, "channels": 3}, seed=0)
    model = edgekit.create_model("resnet_cifar", depth=20, num_classes=10, in_channels=3)
    edgekit.fit(model, splits.train, splits.val, {"epochs": 5, "lr": 0.1})
    edgekit.export_onnx(model, splits.val.x[:32], "model.onnx")
    edgekit.quantize("model.onnx", {"target": "cpu"}, calib=splits.train.x[:128], out_path="model.int8.onnx")
    edgekit.benchmark(["model.onnx", "model.int8.onnx"], batches=[1, 8], threads=2)

Names are imported lazily, so ``import edgekit`` stays light (no TensorRT, no CUDA, no quantiser).
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    # models and data
    "create_model": "edgekit.models", "load_checkpoint": "edgekit.models", "save_checkpoint": "edgekit.models",
    "model_names": "edgekit.models", "count_params": "edgekit.models",
    "load_data": "edgekit.data", "make_calibration": "edgekit.data", "load_calibration": "edgekit.data",
    # training and compression
    "fit": "edgekit.core.train", "evaluate": "edgekit.core.train", "predict": "edgekit.core.train",
    "TrainConfig": "edgekit.core.train",
    "distill": "edgekit.techniques.distill.distill", "prune": "edgekit.techniques.prune.prune",
    "sparsify": "edgekit.techniques.sparsity.sparsity", "quantize": "edgekit.techniques.quantize.ptq",
    "quantize_dynamic_model": "edgekit.techniques.quantize.dynamic", "qat": "edgekit.techniques.quantize.qat",
    "TECHNIQUES": "edgekit.techniques.base", "technique": "edgekit.techniques.base",
    "register_technique": "edgekit.techniques.base",
    # export, runtimes, benchmarks
    "export_onnx": "edgekit.export.onnx", "build_engine": "edgekit.backends.tensorrt.build",
    "open_runner": "edgekit.backends", "available_backends": "edgekit.backends",
    "benchmark": "edgekit.bench", "count_macs_onnx": "edgekit.core.measure.macs",
    "generate": "edgekit.bench.generation",
    # recipes
    "load_recipe": "edgekit.pipeline.recipe", "run_recipe": "edgekit.pipeline",
    "EdgekitError": "edgekit.errors",
}

__all__ = sorted(_API) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'edgekit' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list:
    return __all__
