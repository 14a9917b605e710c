"""Quantisation-aware training: fake-quant in the target's scheme, KD recovery, QDQ export that ORT runs in int8.

:func:`prepare_qat` folds BatchNorm into the preceding Conv (what the deployed graph computes), fake-quantises
every Conv/Linear's weights per channel and inserts activation fake-quant where ONNX Runtime / TensorRT quantise,
with the activation signedness and symmetry of the quantisation target's scheme (``TARGETS.get(target)``).
Activation scales start from observer ranges on calibration data (the PTQ scales) and stay fixed while the
weights fine-tune, with KD from ``teacher`` when given (:func:`edgekit.techniques.recovery.recover`). Export goes
through the dynamo exporter, which writes QuantizeLinear/DequantizeLinear; the coverage report then checks
ORT really runs it in int8.

Example:
    >>> res = qat(model, {"target": "cpu", "epochs": 2}, train=splits.train, val=splits.val,
    ...           out_path="model.qat.onnx", teacher=model)
    >>> res.metrics["val_accuracy"], res.sidecar["int8_mac_fraction"]
"""
from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Dict, Optional

import numpy as np
import torch
import torch.nn as nn
from pydantic import Field

from edgekit._io import atomic_path, write_sidecar
from edgekit.core.train import OPTIMIZERS
from edgekit.errors import ConfigError, validated_config
from edgekit.techniques.base import OneOf, Result, Technique, TechniqueConfig, register_technique
from edgekit.techniques.quantize._qat_graph import ActFakeQuant, QuantWeight, calibrate_qat, export_qat, prepare_qat
from edgekit.techniques.quantize.config import TARGETS
from edgekit.techniques.recovery import alpha_field, temperature_field

logger = logging.getLogger(__name__)

__all__ = ["ActFakeQuant", "QatConfig", "QatResult", "QuantWeight", "calibrate_qat", "export_qat", "prepare_qat", "qat"]


class QatConfig(TechniqueConfig):
    """QAT settings: target scheme, fine-tuning schedule, distillation and observer initialisation."""

    target: Annotated[str, OneOf(TARGETS)] = Field("cpu", description="quantisation target whose scheme is emulated")
    epochs: int = Field(2, ge=0, description="fine-tuning epochs")
    lr: float = Field(0.001, gt=0, description="peak learning rate (small: the model is already trained)")
    grad_clip: Optional[float] = Field(2.0, gt=0, description="clip the gradient norm (fake-quant fine-tuning is "
                                                              "fragile)")
    optimizer: OPTIMIZERS.name_type() = Field("sgd", description="optimiser (edgekit.core.train.OPTIMIZERS)")
    batch_size: int = Field(64, gt=0, description="samples per step")
    weight_decay: float = Field(0.0, ge=0, description="weight decay")
    temperature: float = temperature_field(4.0)
    alpha: float = alpha_field(0.9)
    calibration_samples: int = Field(128, gt=0, description="samples for the initial activation ranges")
    min_int8_mac_fraction: float = Field(0.5, ge=0, le=1, description="fail unless ORT runs at least this share of "
                                                                      "MACs in int8")


@dataclass(kw_only=True)
class QatResult(Result):
    """The exported QDQ model (``artifact``) and what QAT achieved (accuracies in %, measured through ORT)."""

    target: str
    val_accuracy_before: float  # fake-quant model with observer scales, before fine-tuning (torch)
    val_accuracy_torch: float  # after fine-tuning (torch fake-quant)
    val_accuracy: float  # the exported artifact through ONNX Runtime CPU
    int8_mac_fraction: float
    float_layers: list = field(default_factory=list)
    history: list = field(default_factory=list)
    seconds: float = 0.0


def qat(model: nn.Module, config: QatConfig | dict | None = None, *, train: Any, val: Any,
        out_path: str | Path, teacher: Optional[nn.Module] = None, calib: Optional[np.ndarray] = None,
        seed: int = 0, threads: Optional[int] = 2) -> QatResult:
    """Quantisation-aware fine-tuning of a copy of ``model`` (left unchanged); writes a QDQ ONNX model that ORT
    runs in int8.

    Args:
        model: trained float model.
        config: :class:`QatConfig` or dict of its fields.
        train / val: labelled Splits (fine-tuning data / early-stopping and reported accuracy).
        out_path: the ``.onnx`` to write (atomically, with sidecar).
        teacher: KD teacher (e.g. the float ``model`` itself), or None for plain cross-entropy.
        calib: inputs for the initial activation ranges (default: the first training samples).
        threads: ONNX Runtime threads for the accuracy of the export.

    Raises:
        ConfigError: untraceable/recurrent model or bad settings. QuantizationError: ORT does not run the export
        in int8.

    Example:
        >>> res = qat(model, {"epochs": 2}, train=splits.train, val=splits.val, out_path="qat.onnx", teacher=model)
    """
    from edgekit.core.train import TrainConfig, evaluate
    from edgekit.techniques.recovery import recover

    t0 = time.perf_counter()
    cfg = validated_config(QatConfig, config, "qat")
    out_path = Path(out_path)
    if out_path.suffix.lower() != ".onnx":
        raise ConfigError(f"out_path must end in .onnx, got {out_path}")
    if train.y is None or val is None or val.y is None:
        raise ConfigError("QAT needs labelled train and validation splits")
    torch.manual_seed(seed)
    qmodel = prepare_qat(model, cfg.target)
    calib = train.x[:cfg.calibration_samples] if calib is None else calib
    calibrate_qat(qmodel, calib)
    before = evaluate(qmodel, val)
    tc = TrainConfig(epochs=cfg.epochs, lr=cfg.lr, optimizer=cfg.optimizer, batch_size=cfg.batch_size,
                     weight_decay=cfg.weight_decay, schedule="cosine", grad_clip=cfg.grad_clip)
    fitted = recover(qmodel, teacher, train, val, tc, temperature=cfg.temperature, alpha=cfg.alpha, seed=seed,
                     desc="qat")
    after = evaluate(qmodel, val)
    cov, ort_val = _export_checked(qmodel, val, out_path, cfg, threads)
    side = {"kind": "onnx", "precision": "int8", "target": cfg.target, "mode": "qat",
            "quant_scheme": {**TARGETS.get(cfg.target).to_dict(),
                             "op_types": "Conv/Linear inputs, Conv/Linear/Add outputs"},
            "calibration": {"method": "minmax-observer", "samples": int(len(calib))},
            "float_layers": [], "int8_mac_fraction": round(cov.int8_fraction, 6),
            "int8_mac_fraction_backend": _cpu_backend(), "runtime_float_layers": cov.float_layers,
            "qat": {"epochs": cfg.epochs, "lr": cfg.lr, "kd": teacher is not None, "val_accuracy_before": before,
                    "val_accuracy_torch": after, "val_accuracy_ort": ort_val}}
    write_sidecar(out_path, side)
    logger.info(f"QAT ({cfg.target}): val {before:.2f}% -> {after:.2f}% (torch), {ort_val:.2f}% via ORT; "
                f"{cov.summary()}")
    seconds = time.perf_counter() - t0
    metrics: Dict[str, Any] = {"val_accuracy": ort_val, "val_accuracy_before_qat": before,
                               "int8_mac_fraction": cov.int8_fraction, "qat_seconds": round(seconds, 1)}
    return QatResult(artifact=out_path, metrics=metrics, sidecar=side, target=cfg.target, val_accuracy_before=before,
                     val_accuracy_torch=after, val_accuracy=ort_val, int8_mac_fraction=cov.int8_fraction,
                     float_layers=cov.float_layers, history=fitted.history, seconds=seconds)


def _cpu_backend() -> str:
    from edgekit.backends import default_backend

    return default_backend("onnx", "cpu")


def _export_checked(qmodel: nn.Module, val: Any, out_path: Path, cfg: QatConfig, threads: Optional[int]):
    """Export to a temporary file, check ORT's int8 coverage and accuracy, then move it to ``out_path``."""
    from edgekit.backends import open_runner
    from edgekit.core.train import evaluate
    from edgekit.errors import QuantizationError
    from edgekit.techniques.quantize.coverage import int8_coverage

    tmp_root = out_path.parent if out_path.parent.is_dir() else None
    with tempfile.TemporaryDirectory(prefix="edgekit-qat-", dir=tmp_root) as d:
        tmp = Path(d) / "qat.onnx"
        export_qat(qmodel, val.x[:32], tmp, parity_data=val.x[:256])
        cov = int8_coverage(tmp)
        if cov.int8_fraction < cfg.min_int8_mac_fraction:
            raise QuantizationError(f"QAT export runs only {cov.int8_fraction:.0%} of its MACs in int8 on ONNX "
                                    f"Runtime (min_int8_mac_fraction {cfg.min_int8_mac_fraction}); float layers: "
                                    f"{cov.float_layers}")
        ort_val = evaluate(open_runner(tmp, _cpu_backend(), threads=threads), val)
        with atomic_path(out_path, suffix=".onnx") as final:
            shutil.copyfile(tmp, final)
    return cov, ort_val


register_technique(Technique(
    "qat", QatConfig, consumes="module", produces="onnx", apply=qat,
    description="quantisation-aware training in the target's scheme, with KD from the float model, exported as QDQ",
    needs_labels=True, teacher="optional", variant_suffix=lambda config: f"qat-{config.target}"))
