"""Fake-quant graph for QAT: BN folded, per-channel weight fake-quant, activation fake-quant where ORT / TensorRT
quantise (the model input, the inputs of Conv/Linear, the outputs of Conv/Linear/Add after a directly following
ReLU), in the scheme of the quantisation target; calibration of the activation ranges; QDQ export."""
from __future__ import annotations

import copy
import operator
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from edgekit._io import atomic_path
from edgekit._log import progress
from edgekit.errors import ConfigError
from edgekit.techniques.quantize.config import TARGETS


class ActFakeQuant(nn.Module):
    """Per-tensor activation fake-quant; observes min/max first, then quantises with fixed scale/zero point.

    ``signed``: int8 (else uint8) values; ``symmetric``: scale from max |x|, zero point mid-range (0 for int8).
    """

    def __init__(self, signed: bool, symmetric: bool):
        super().__init__()
        self.signed, self.symmetric = signed, symmetric
        self.qmin, self.qmax = (-128, 127) if signed else (0, 255)
        self.observing, self.export_mode = False, False
        self.register_buffer("lo", torch.tensor(float("inf")))
        self.register_buffer("hi", torch.tensor(float("-inf")))
        self.scale, self.zero_point = 1.0, 0

    def freeze(self) -> None:
        """Scale and zero point from the observed range, as ORT's MinMax calibration computes them."""
        lo, hi = min(float(self.lo), 0.0), max(float(self.hi), 0.0)
        if self.symmetric:  # zero point at the middle of the range (0 for int8)
            half = (self.qmax - self.qmin) // 2
            self.scale = max(abs(lo), abs(hi), 1e-8) / half
            self.zero_point = 0 if self.signed else half + 1
        else:
            self.scale = max(hi - lo, 1e-8) / (self.qmax - self.qmin)
            self.zero_point = int(min(self.qmax, max(self.qmin, self.qmin + round(-lo / self.scale))))

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
    """A copy of ``model`` with BN folded, Conv/Linear weights fake-quantised and activation fake-quant inserted
    in the scheme of quantisation target ``target`` (``TARGETS.get(target)``).

    Raises:
        ConfigError: unknown target, a scheme QAT cannot emulate, or a model torch.fx cannot trace (e.g.
            recurrent models: use dynamic quantisation).

    Example:
        >>> qmodel = prepare_qat(model, "cpu"); calibrate_qat(qmodel, splits.train.x[:128])
    """
    import torch.ao.quantization.fx._decomposed  # noqa: F401  (registers quantized_decomposed ops for export)
    from torch.fx.experimental.optimization import fuse

    scheme = TARGETS.get(target)
    if scheme.weights != "int8" or not scheme.weight_symmetric or not scheme.per_channel:
        raise ConfigError(f"QAT emulates symmetric per-channel int8 weights; target '{target}' wants "
                          f"{scheme.weights} weights (symmetric {scheme.weight_symmetric}, per-channel "
                          f"{scheme.per_channel})")
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
                          f"({type(e).__name__}: {str(e)[:160]}); use dynamic quantisation for recurrent "
                          "models") from None
    for p in gm.parameters():  # fused biases come back frozen
        p.requires_grad_(True)
    signed, symmetric = scheme.activations == "int8", scheme.activation_symmetric
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
        gm.add_submodule(name, ActFakeQuant(signed, symmetric))
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
    return gm


def _act_quants(model: nn.Module):
    return [m for m in model.modules() if isinstance(m, ActFakeQuant)]


def calibrate_qat(model: nn.Module, x: np.ndarray, batch_size: int = 64) -> None:
    """Observe activation ranges on ``x`` and freeze every activation fake-quant's scale/zero point (in place)."""
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


def export_qat(model: nn.Module, sample: np.ndarray, path: str | Path,
               parity_data: Optional[np.ndarray] = None) -> Path:
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
