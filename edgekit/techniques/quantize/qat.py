"""Quantisation-aware training: fake-quant in the target's scheme, KD from the float model, QDQ export.

``prepare_qat`` traces the model with torch.fx, folds BatchNorm into the preceding Conv (what the
deployed graph computes), wraps every Conv/Linear so its weights are fake-quantised per channel
(symmetric int8) and inserts activation fake-quant where ONNX Runtime / TensorRT quantise: the model
input, the inputs of Conv/Linear, and the outputs of Conv/Linear/Add (after a directly following ReLU,
so ORT absorbs it). Activations are uint8 asymmetric for ``target: cpu`` and symmetric int8 (zero point
0) for ``target: tensorrt``. Activation scales start from observer ranges on calibration data computed
with ORT's MinMax rule (the PTQ scales) and stay fixed while the weights fine-tune; the default loss is
Hinton KD from the float model. Export goes through the dynamo exporter, which writes
QuantizeLinear/DequantizeLinear; the coverage report then checks ORT really runs it in int8.

Example:
    >>> res = qat(model, splits.train, splits.val, "model.qat.onnx", config={"target": "cpu", "epochs": 2})
    >>> res.val_accuracy, res.int8_mac_fraction
"""
from __future__ import annotations

import copy
import logging
import operator
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Literal, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from edgekit._io import atomic_path, write_sidecar
from edgekit._log import progress
from edgekit.errors import ConfigError

logger = logging.getLogger(__name__)


class QatConfig(BaseModel):
    """QAT settings: target scheme, fine-tuning schedule, distillation and observer initialisation."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target: Literal["cpu", "tensorrt"] = Field("cpu", description="cpu (uint8 asym. activations) | tensorrt (symmetric int8)")
    epochs: int = Field(2, ge=0, description="fine-tuning epochs")
    lr: float = Field(0.001, gt=0, description="peak learning rate (small: the model is already trained)")
    grad_clip: Optional[float] = Field(2.0, gt=0, description="clip the gradient norm (fake-quant fine-tuning is fragile)")
    optimizer: Literal["sgd", "adam", "adamw"] = Field("sgd", description="optimiser")
    batch_size: int = Field(64, gt=0, description="samples per step")
    weight_decay: float = Field(0.0, ge=0, description="weight decay")
    temperature: float = Field(4.0, gt=0, description="KD softmax temperature")
    alpha: float = Field(0.9, ge=0, le=1, description="weight of the KD loss vs cross-entropy (with a teacher)")
    calibration_samples: int = Field(128, gt=0, description="samples for the initial activation ranges")
    min_int8_mac_fraction: float = Field(0.5, ge=0, le=1, description="fail unless ORT runs at least this share of MACs in int8")


@dataclass
class QatResult:
    """The exported QDQ model and what QAT achieved (accuracies in %, measured through ORT)."""

    path: Path
    target: str
    val_accuracy_before: float  # fake-quant model with observer scales, before fine-tuning (torch)
    val_accuracy_torch: float  # after fine-tuning (torch fake-quant)
    val_accuracy: float  # the exported artifact through ONNX Runtime CPU
    int8_mac_fraction: float
    float_layers: list = field(default_factory=list)
    history: list = field(default_factory=list)
    seconds: float = 0.0
    sidecar: Dict[str, Any] = field(default_factory=dict)


class ActFakeQuant(nn.Module):
    """Per-tensor activation fake-quant; observes min/max first, then quantises with fixed scale/zero point."""

    def __init__(self, signed: bool):
        super().__init__()
        self.signed = signed
        self.qmin, self.qmax = (-128, 127) if signed else (0, 255)
        self.observing, self.export_mode = False, False
        self.register_buffer("lo", torch.tensor(float("inf")))
        self.register_buffer("hi", torch.tensor(float("-inf")))
        self.scale, self.zero_point = 1.0, 0

    def freeze(self) -> None:
        """Scale and zero point from the observed range, as ORT's MinMax calibration computes them."""
        lo, hi = min(float(self.lo), 0.0), max(float(self.hi), 0.0)
        if self.signed:  # symmetric, zero point 0
            self.scale, self.zero_point = max(abs(lo), abs(hi), 1e-8) / 127.0, 0
        else:
            self.scale = max(hi - lo, 1e-8) / 255.0
            self.zero_point = int(min(255, max(0, round(-lo / self.scale))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing:
            self.lo = torch.minimum(self.lo, x.detach().min())
            self.hi = torch.maximum(self.hi, x.detach().max())
            return x
        if self.export_mode:
            qd = torch.ops.quantized_decomposed
            dt = torch.int8 if self.signed else torch.uint8
            q = qd.quantize_per_tensor(x, self.scale, self.zero_point, self.qmin, self.qmax, dt)
            return qd.dequantize_per_tensor(q, self.scale, self.zero_point, self.qmin, self.qmax, dt)
        return torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero_point, self.qmin, self.qmax)


class QuantWeight(nn.Module):
    """A Conv/Linear whose weights are fake-quantised per output channel (symmetric int8, zero point 0)."""

    def __init__(self, mod: nn.Module):
        super().__init__()
        self.mod = mod
        self.export_mode = False
        self.frozen_scale: Optional[torch.Tensor] = None  # set for export: a constant, not graph ops

    def _scale(self) -> torch.Tensor:
        if self.export_mode and self.frozen_scale is not None:
            return self.frozen_scale
        w = self.mod.weight.detach()
        return (w.abs().amax(dim=tuple(range(1, w.dim()))).clamp(min=1e-8) / 127.0).float()

    def qweight(self) -> torch.Tensor:
        w, scale = self.mod.weight, self._scale()
        if self.export_mode:
            qd = torch.ops.quantized_decomposed
            zp = torch.zeros_like(scale, dtype=torch.int64)
            q = qd.quantize_per_channel(w, scale, zp, 0, -127, 127, torch.int8)
            return qd.dequantize_per_channel(q, scale, zp, 0, -127, 127, torch.int8)
        zp = torch.zeros_like(scale, dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(w, scale, zp, 0, -127, 127)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.mod, nn.Linear):
            return F.linear(x, self.qweight(), self.mod.bias)
        return self.mod._conv_forward(x, self.qweight(), self.mod.bias)


_RELU_FNS = {torch.relu, F.relu}
_ADD_FNS = {operator.add, operator.iadd, torch.add}


def _is_relu(node, modules) -> bool:
    return ((node.op == "call_module" and isinstance(modules.get(node.target), nn.ReLU))
            or (node.op == "call_function" and node.target in _RELU_FNS)
            or (node.op == "call_method" and node.target in ("relu", "relu_")))


def _is_add(node) -> bool:
    nodes = [a for a in node.args if hasattr(a, "op")]
    return len(nodes) == 2 and ((node.op == "call_function" and node.target in _ADD_FNS)
                                or (node.op == "call_method" and node.target in ("add", "add_")))


def prepare_qat(model: nn.Module, target: str = "cpu") -> torch.fx.GraphModule:
    """Fold BN, wrap Conv/Linear with weight fake-quant and insert activation fake-quant for ``target``.

    Raises:
        ConfigError: the model cannot be traced by torch.fx (e.g. recurrent models: use dynamic quantisation).

    Example:
        >>> qmodel = prepare_qat(model, "cpu"); calibrate_qat(qmodel, splits.train.x[:128])
    """
    import torch.ao.quantization.fx._decomposed  # noqa: F401  (registers quantized_decomposed ops for export)
    from torch.fx.experimental.optimization import fuse

    if target not in ("cpu", "tensorrt"):
        raise ConfigError(f"QAT target must be 'cpu' or 'tensorrt', got '{target}'")
    recurrent = [type(mod).__name__ for mod in model.modules() if isinstance(mod, nn.RNNBase)]
    if recurrent:
        raise ConfigError(f"QAT supports convolutional / linear models; this one has {', '.join(recurrent)} layers: "
                          "use dynamic quantisation (stage quantize, mode: dynamic) for recurrent models")
    if not any(isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Linear)) for mod in model.modules()):
        raise ConfigError(f"QAT found no Conv/Linear layer to quantise in {type(model).__name__}")
    m = copy.deepcopy(model).cpu().eval()
    try:
        gm = fuse(m)  # Conv+BN folded (eval statistics)
    except Exception as e:
        raise ConfigError(f"QAT needs a torch.fx-traceable model; {type(model).__name__} is not "
                          f"({type(e).__name__}: {str(e)[:160]}); use dynamic quantisation for recurrent models") from None
    for p in gm.parameters():  # fused biases come back frozen
        p.requires_grad_(True)
    signed = target == "tensorrt"
    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and isinstance(modules.get(node.target), (nn.Conv1d, nn.Conv2d, nn.Linear)):
            parent, _, attr = node.target.rpartition(".")
            holder = gm.get_submodule(parent) if parent else gm
            setattr(holder, attr, QuantWeight(modules[node.target]))
    modules = dict(gm.named_modules())
    graph, quantized, counter = gm.graph, {}, [0]

    def fq_after(node):
        if node in quantized or node.op == "call_module" and isinstance(modules.get(node.target), ActFakeQuant):
            return
        name = f"act_fq_{counter[0]}"
        counter[0] += 1
        gm.add_submodule(name, ActFakeQuant(signed))
        with graph.inserting_after(node):
            q = graph.call_module(name, (node,))
        node.replace_all_uses_with(q, delete_user_cb=lambda u: u is not q)
        quantized[node] = q
        modules[name] = gm.get_submodule(name)

    def out_of(node):
        users = list(node.users)
        return users[0] if len(users) == 1 and _is_relu(users[0], modules) else node

    for node in list(graph.nodes):
        if node.op == "placeholder":
            fq_after(node)
        elif node.op == "call_module" and isinstance(modules.get(node.target), QuantWeight):
            src = node.args[0]
            if hasattr(src, "op"):
                fq_after(src)
            out = out_of(node)
            if not any(u.op == "output" for u in out.users):  # logits stay float
                fq_after(out)
        elif _is_add(node):
            out = out_of(node)
            if not any(u.op == "output" for u in out.users):
                fq_after(out)
    graph.lint()
    gm.recompile()
    gm.edgekit_qat_target = target
    return gm


def _act_quants(model: nn.Module):
    return [m for m in model.modules() if isinstance(m, ActFakeQuant)]


def calibrate_qat(model: nn.Module, x: np.ndarray, batch_size: int = 64) -> None:
    """Observe activation ranges on ``x`` and freeze every activation fake-quant's scale/zero point."""
    fqs = _act_quants(model)
    for m in fqs:
        m.observing = True
    model.eval()
    with torch.no_grad():
        for i in progress(range(0, len(x), batch_size), desc="qat calibrate"):
            model(torch.from_numpy(np.ascontiguousarray(x[i:i + batch_size], dtype=np.float32)))
    for m in fqs:
        m.observing = False
        m.freeze()


def _set_export(model: nn.Module, on: bool) -> None:
    for m in model.modules():
        if isinstance(m, QuantWeight):
            m.export_mode = False
            m.frozen_scale = m._scale().clone() if on else None
        if isinstance(m, (ActFakeQuant, QuantWeight)):
            m.export_mode = on


def export_qat(model: nn.Module, sample: np.ndarray, path: str | Path, parity_data: Optional[np.ndarray] = None) -> Path:
    """Export a QAT model as QDQ ONNX with the dynamo exporter (QuantizeLinear/DequantizeLinear)."""
    import onnx

    from edgekit.export.onnx import export_onnx

    path = Path(path)
    _set_export(model, True)
    try:
        with tempfile.TemporaryDirectory(prefix="edgekit-qat-export-") as d, torch.no_grad():
            tmp = Path(d) / "qat.onnx"
            export_onnx(model, sample, tmp, exporter="dynamo", parity_data=parity_data, atol=float("inf"),
                        min_top1_agreement=90.0)
            proto = onnx.load(str(tmp))  # the dynamo exporter may write weights as external data: inline them
            with atomic_path(path, suffix=".onnx") as final:
                onnx.save(proto, str(final))
    finally:
        _set_export(model, False)
    return path


def qat(model: nn.Module, train, val, out_path: str | Path, *, config: QatConfig | dict | None = None,
        teacher: Any = "float", calib: Optional[np.ndarray] = None, seed: int = 0, threads: Optional[int] = 2) -> QatResult:
    """Quantisation-aware fine-tuning of ``model``; writes a QDQ ONNX model that ORT runs in int8.

    Args:
        model: trained float model (not modified).
        train / val: labelled Splits (fine-tuning data / early-stopping and reported accuracy).
        out_path: the ``.onnx`` to write (atomically, with sidecar).
        config: :class:`QatConfig` or dict of its fields.
        teacher: ``"float"`` (default: distil from the float model), an ``nn.Module``, or None (plain CE).
        calib: inputs for the initial activation ranges (default: the first training samples).

    Raises:
        ConfigError: untraceable/recurrent model or bad settings. QuantizationError: ORT does not run the export in int8.

    Example:
        >>> res = qat(model, splits.train, splits.val, "qat.onnx", config={"epochs": 2})
    """
    from edgekit.backends import open_runner
    from edgekit.core.train import TrainConfig, evaluate, fit
    from edgekit.techniques.quantize.config import TARGETS, make_config
    from edgekit.techniques.quantize.coverage import int8_coverage

    t0 = time.perf_counter()
    cfg = config if isinstance(config, QatConfig) else make_config(QatConfig, **(config or {}))
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
    teacher_mod = copy.deepcopy(model).eval() if isinstance(teacher, str) and teacher == "float" else teacher
    loss_fn = None
    if teacher_mod is not None:  # KD from the float model; kd_loss_fn freezes the teacher as before
        from edgekit.techniques.distill.distill import kd_loss_fn

        loss_fn = kd_loss_fn(teacher_mod, temperature=cfg.temperature, alpha=cfg.alpha)

    tc = TrainConfig(epochs=cfg.epochs, lr=cfg.lr, optimizer=cfg.optimizer, batch_size=cfg.batch_size,
                     weight_decay=cfg.weight_decay, schedule="cosine", grad_clip=cfg.grad_clip)
    fitres = fit(qmodel, train, val, tc, seed=seed, loss_fn=loss_fn, desc="qat")
    after = evaluate(qmodel, val)
    with tempfile.TemporaryDirectory(prefix="edgekit-qat-", dir=out_path.parent if out_path.parent.is_dir() else None) as d:
        tmp = Path(d) / "qat.onnx"
        export_qat(qmodel, val.x[:32], tmp, parity_data=val.x[:256])
        cov = int8_coverage(tmp)
        if cov.int8_fraction < cfg.min_int8_mac_fraction:
            from edgekit.techniques.quantize.ptq import QuantizationError

            raise QuantizationError(f"QAT export runs only {cov.int8_fraction:.0%} of its MACs in int8 on ONNX Runtime "
                               f"(min_int8_mac_fraction {cfg.min_int8_mac_fraction}); float layers: {cov.float_layers}")
        ort_val = evaluate(open_runner(tmp, "ort-cpu", threads=threads), val)
        with atomic_path(out_path, suffix=".onnx") as final:
            shutil.copyfile(tmp, final)
    scheme = TARGETS.get(cfg.target)
    side = {"kind": "onnx", "precision": "int8", "target": cfg.target, "mode": "qat",
            "quant_scheme": {**scheme.to_dict(), "op_types": "Conv/Linear inputs, Conv/Linear/Add outputs"},
            "calibration": {"method": "minmax-observer", "samples": int(len(calib))},
            "float_layers": [], "int8_mac_fraction": round(cov.int8_fraction, 6), "int8_mac_fraction_backend": "ort-cpu",
            "runtime_float_layers": cov.float_layers,
            "qat": {"epochs": cfg.epochs, "lr": cfg.lr, "kd": teacher_mod is not None, "val_accuracy_before": before,
                    "val_accuracy_torch": after, "val_accuracy_ort": ort_val}}
    write_sidecar(out_path, side)
    logger.info(f"QAT ({cfg.target}): val {before:.2f}% -> {after:.2f}% (torch), {ort_val:.2f}% via ORT; {cov.summary()}")
    return QatResult(out_path, cfg.target, before, after, ort_val, cov.int8_fraction, cov.float_layers,
                     fitres.history, time.perf_counter() - t0, side)
