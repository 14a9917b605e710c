"""Export to ONNX with named, typed inputs and dynamic batch (and sequence) axes, checked by onnx.checker and a
parity test against PyTorch.

A model with one float input exports with the input ``input``; a model fed named inputs (a Hugging Face BERT:
``input_ids``, ``attention_mask``, ``token_type_ids``) exports with those names, int64 kept int64, through a small
wrapper that calls the model with keyword arguments and returns its prediction (``logits`` of a ModelOutput).
The sidecar records the graph's signature (names, dtypes, symbolic axes).
"""
from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn

from edgekit._io import atomic_path, write_sidecar
from edgekit.core.signature import InputSpec, Signature, dtype_name
from edgekit.core.tensors import Inputs, call_module, contiguous, is_named, num_samples, prediction, take, to_torch
from edgekit.errors import ExportError, LibraryError, ShapeError, calling, first_line


@dataclass
class ExportResult:
    """The written ONNX file and how closely it matches the PyTorch model."""

    path: Path
    opset: int
    max_abs_diff: float
    top1_agreement: float  # percent of samples whose argmax matches
    samples: int
    exporter: str

    def parity(self) -> dict:
        d = asdict(self)
        d.pop("path")
        return d


class _Prediction(nn.Module):
    """Calls ``model`` with the positional graph inputs as named arguments; returns only its prediction tensor."""

    def __init__(self, model: nn.Module, names: Optional[List[str]]):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        if self.names is None:
            return prediction(self.model(*args))
        return prediction(self.model(**dict(zip(self.names, args))))


def export_onnx(model: nn.Module, sample: Inputs, path: str | Path, *, opset: int = 17,
                parity_data: Optional[Inputs] = None, atol: float = 1e-3, min_top1_agreement: float = 99.0,
                exporter: Literal["torchscript", "dynamo"] = "torchscript", extra_meta: Optional[dict] = None,
                fuse: Any = "auto") -> ExportResult:
    """Export ``model`` to ONNX at ``path`` and verify it against PyTorch with ONNX Runtime.

    Args:
        model: the module (exported in eval mode, on CPU). Its output may be a tensor, tuple, dict or Hugging
            Face ModelOutput; the graph returns the prediction (``logits``).
        sample: one batch of real inputs, [N, ...]: one array, or a mapping of input name to array (token ids
            stay int64). Fixes the per-sample shapes, except axes the model's signature names (``sequence``).
        path: destination; written atomically with a ``.json`` sidecar holding the parity figures and signature.
        opset: ONNX opset (>= 17).
        parity_data: inputs for the parity check (default ``sample``).
        atol: maximum allowed absolute difference between ONNX Runtime and PyTorch outputs.
        min_top1_agreement: minimum percentage of samples whose top-1 class agrees.
        exporter: "torchscript" (fast, default) or "dynamo" (needed for fake-quant → Q/DQ export).
        fuse: "auto" (default: fuse transformer encoders with ONNX Runtime's transformer optimizer, leave other
            graphs alone), True (try on any graph) or False. A fused export keeps its unfused graph beside it
            (``<stem>.unfused.onnx``, for backends without ONNX Runtime contrib ops); the sidecar's ``fusion``
            entry records the fused op counts, the parity fused vs unfused and which file each backend runs
            (see :mod:`edgekit.export.fuse`).

    Raises:
        ShapeError: ``sample`` is not a batch the model accepts.
        ExportError: bad opset, an operator ONNX cannot express, the checker rejected the graph, or parity is
            outside tolerance.
        LibraryError: the PyTorch exporter failed otherwise on a model that runs in PyTorch.

    Example:
        >>> result = export_onnx(model, splits.val.x[:32], "model.onnx")    # one array or named arrays
        >>> result.max_abs_diff, result.top1_agreement
    """
    import onnx

    from edgekit.export.fuse import check_fuse_mode

    fuse = check_fuse_mode(fuse)
    if opset < 17:
        raise ExportError(f"opset must be >= 17, got {opset}")
    if exporter not in ("torchscript", "dynamo"):
        raise ExportError(f"exporter must be 'torchscript' or 'dynamo', got {exporter!r}")
    sample = contiguous(sample, np.float32, only_double=is_named(sample))
    model = model.eval().cpu()
    sig = export_signature(model, sample)
    x, plain = _check_runs(model, sample, sig)
    path = Path(path)
    with atomic_path(path, suffix=".onnx") as tmp:
        # a plain tensor-to-tensor model is exported as it is, so node names stay the module paths users know
        # (quantize's exclude lists name them); the wrapper is only for named inputs and structured outputs
        wrapped = model if plain else _Prediction(model, list(sig.names) if is_named(sample) else None).eval()
        _run_exporter(wrapped, x, tmp, opset, exporter, sig)
        model.eval()  # the exporter restores the wrapper's mode; make sure the parity run is in eval mode
        try:
            onnx.checker.check_model(str(tmp), full_check=True)
        except Exception as e:
            raise ExportError(f"{path}: onnx.checker rejected the exported graph: {first_line(e, 300)}") from None
        max_diff, agree, n = _parity(model, tmp, sample if parity_data is None else parity_data, path, sig)
        if not (max_diff <= atol) or agree < min_top1_agreement:
            raise ExportError(
                f"{path}: ONNX output disagrees with PyTorch (max |diff| {max_diff:.2e}, allowed {atol:.0e}; "
                f"top-1 agreement {agree:.1f}%, required {min_top1_agreement:.1f}%) — nothing was written")
    result = ExportResult(path, opset, max_diff, agree, n, exporter)
    meta = {"kind": "onnx", "precision": "fp32", "parity": result.parity(), "signature": sig.to_dict(),
            **(extra_meta or {})}
    fusion = _fuse(model, path, fuse, sample if parity_data is None else parity_data, sig, atol)
    if fusion is not None:
        meta["fusion"] = fusion
        if fusion.get("applied"):
            from edgekit.export.fuse import unfused_path

            write_sidecar(unfused_path(path), {**meta, "fusion": {"applied": False, "fused": path.name}})
    write_sidecar(path, meta)
    return result


def _fuse(model: nn.Module, path: Path, fuse: Any, data: Inputs, sig: Signature, atol: float) -> Optional[dict]:
    """Fuse the written export in place when ``fuse`` asks for it (see :func:`edgekit.export.fuse.fuse_onnx`);
    returns the sidecar's ``fusion`` entry, or None when fusion was not tried."""
    from edgekit.export.fuse import fuse_onnx, fusion_settings, is_encoder_graph

    if fuse is False or (fuse == "auto" and not is_encoder_graph(path)):
        return None
    kind, heads, hidden = fusion_settings(model)
    data = contiguous(take(data, slice(0, 64)), np.float32, only_double=is_named(data))
    feeds = dict(data) if is_named(data) else {sig.names[0]: data}
    return fuse_onnx(path, model_type=kind, num_heads=heads, hidden_size=hidden, feeds=feeds,
                     atol=max(atol, 1e-4))


def export_signature(model: nn.Module, sample: Inputs) -> Signature:
    """The graph's signature: the model's own (``edgekit_signature``, e.g. a Hugging Face model's) restricted to
    the sample's inputs, else one inferred from the sample (batch axis dynamic, other axes fixed)."""
    own: Optional[Signature] = getattr(model, "edgekit_signature", None)
    if not is_named(sample):
        if sample.ndim < 2 or len(sample) == 0:
            raise ShapeError(f"export sample must be a non-empty batch [N, ...], got shape {list(sample.shape)}")
        if own is not None and len(own.inputs) == 1:
            spec = own.inputs[0]
            return Signature((InputSpec("input", spec.dtype, spec.shape),), own.output, own.task)
        return Signature.for_array(sample.shape[1:], dtype_name(sample.dtype))
    if own is not None:
        names = [n for n in own.names if n in sample] + [n for n in sample if n not in own.names]
        specs = tuple(own[n] if n in own.names else _spec(n, sample[n]) for n in names)
        return Signature(specs, own.output, own.task, own.vocab_size, own.max_positions,
                         tuple(t for t in own.token_inputs if t in names))
    return Signature(tuple(_spec(n, a) for n, a in sample.items()))


def _spec(name: str, a: np.ndarray) -> InputSpec:
    if a.ndim < 1 or a.shape[0] == 0:
        raise ShapeError(f"export sample input '{name}' must be a non-empty batch [N, ...], got shape {list(a.shape)}")
    return InputSpec(name, dtype_name(a.dtype), ("batch", *[int(d) for d in a.shape[1:]]))


def _check_runs(model: nn.Module, sample: Inputs, sig: Signature) -> Tuple[Tuple[torch.Tensor, ...], bool]:
    """The example tensors (first two samples) in graph order, after checking the model runs on them, and whether
    the model is plain (one tensor in, one tensor out)."""
    if is_named(sample):
        sig.check(sample, where="export sample")
    xs = to_torch(take(sample, slice(0, 2)))
    try:
        with torch.no_grad():
            out = call_module(model, xs)
            prediction(out)
    except (RuntimeError, TypeError, IndexError) as e:
        what = sig.describe() if is_named(sample) else f"per-sample shape {list(sample.shape[1:])}"
        raise ShapeError(f"model cannot take inputs of {what}: {first_line(e, 200)}") from None
    if is_named(sample):
        return tuple(xs[n] for n in sig.names), False
    return (xs,), isinstance(out, torch.Tensor)


def _axes(sig: Signature) -> Dict[str, Dict[int, str]]:
    """Dynamic axes by input name: the batch axis and every axis the signature names (``sequence``)."""
    out = {spec.name: {i: (d if isinstance(d, str) else "batch") for i, d in enumerate(spec.shape)
                       if i == 0 or isinstance(d, str)} for spec in sig.inputs}
    out["logits"] = {0: "batch"}
    return out


def _run_exporter(model: nn.Module, x: Tuple[torch.Tensor, ...], out: Path, opset: int, exporter: str,
                  sig: Signature) -> None:
    """Run torch.onnx.export quietly. An operator ONNX cannot express is the model's (ExportError); any other
    failure inside the exporter is PyTorch's (LibraryError)."""
    quiet = io.StringIO()
    names = list(sig.names) if len(x) > 1 or sig.names != ("input",) else ["input"]
    axes = _axes(sig)
    try:
        with calling("torch.onnx", where=f"{exporter} export of {type(getattr(model, 'model', model)).__name__}"), \
                warnings.catch_warnings(), contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
            warnings.simplefilter("ignore")
            if exporter == "dynamo":
                dims: Dict[str, Any] = {}
                shapes = tuple({i: dims.setdefault(a, torch.export.Dim(a, min=1, max=4096)) for i, a in
                                axes[n].items()} for n in names)
                torch.onnx.export(model, x, str(out), input_names=names, output_names=["logits"],
                                  opset_version=max(opset, 18), dynamo=True, external_data=False,
                                  dynamic_shapes=shapes)
            else:
                torch.onnx.export(model, x, str(out), input_names=names, output_names=["logits"],
                                  opset_version=opset, dynamo=False, dynamic_axes=axes)
    except LibraryError as e:
        if isinstance(e.__cause__, torch.onnx.errors.UnsupportedOperatorError):
            raise ExportError(f"{type(getattr(model, 'model', model)).__name__} cannot be exported to ONNX: "
                              f"{first_line(e.__cause__, 300)}; replace that operation or register a custom "
                              "symbolic for it") from e.__cause__
        raise


def _parity(model: nn.Module, onnx_path: Path, data: Inputs, final_path: Path, sig: Signature, batch: int = 64):
    """Max |ONNX Runtime - PyTorch| and top-1 agreement (%) over ``data``; ``final_path`` names it in errors."""
    import onnxruntime as ort

    where = f"parity check of {final_path}"
    with calling("onnxruntime", where=where):
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    graph_names = [i.name for i in session.get_inputs()]
    data = contiguous(data, np.float32, only_double=is_named(data))
    n = num_samples(data)
    max_diff, agree = 0.0, 0
    with torch.no_grad():
        for i in range(0, n, batch):
            xb = take(data, slice(i, i + batch))
            ref = prediction(call_module(model, to_torch(xb))).float().numpy()
            feeds = {k: xb[k] for k in graph_names} if is_named(xb) else {graph_names[0]: xb}
            with calling("onnxruntime", where=where):
                got = session.run(None, feeds)[0]
            max_diff = max(max_diff, float(np.abs(ref - got).max()))
            agree += int((ref.argmax(-1) == got.argmax(-1)).sum())
    return max_diff, 100.0 * agree / max(1, n), n
