"""Dynamic INT8 quantisation on ONNX Runtime: int8 weights, activations quantised at run time (CPU).

Suits LSTM/GRU and Transformer Linear layers, where static activation ranges vary per input.

Example:
    >>> res = quantize_dynamic_model("lstm.onnx", {"mode": "dynamic"}, out_path="lstm.int8.onnx", val=splits.val)
    >>> res.sidecar["accuracy"]
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

from edgekit._io import atomic_path, write_sidecar
from edgekit.errors import ConfigError, QuantizationError, validated_config
from edgekit.techniques.quantize._ort import preprocess, quiet
from edgekit.techniques.quantize.config import QuantizeConfig
from edgekit.techniques.quantize.ptq import QuantizeResult, check_request

logger = logging.getLogger(__name__)


def quantize_dynamic_model(onnx_path: str | os.PathLike, config: QuantizeConfig | dict | None = None, *,
                           out_path: str | os.PathLike, val: Any = None, threads: Optional[int] = 2
                           ) -> QuantizeResult:
    """Dynamically quantise a float ONNX model (``config.op_types``, ``config.per_channel``, ``config.exclude``).

    Args:
        onnx_path: float ONNX model.
        config: :class:`QuantizeConfig` or a dict of its fields (``mode`` is taken as ``dynamic``).
        out_path: where the int8 ``.onnx`` goes (atomically, with sidecar).
        val: labelled validation Split; when given fp32/int8 accuracies are recorded.
        threads: ONNX Runtime threads for the accuracy measurement.

    Example:
        >>> res = quantize_dynamic_model("lstm.onnx", {"op_types": ["LSTM"]}, out_path="lstm.int8.onnx")
        >>> res.int8_mac_fraction
    """
    raw = config.model_dump() if isinstance(config, QuantizeConfig) else dict(config or {})
    cfg = validated_config(QuantizeConfig, {**raw, "mode": "dynamic"}, "quantize")
    t0 = time.perf_counter()
    model, excluded = check_request(onnx_path, out_path, cfg, val)
    src, out_path = Path(onnx_path), Path(out_path)
    _check_something_to_quantise(model, cfg, excluded, src)
    shapes = _mac_shapes(model, val)
    del model
    tmp_root = out_path.parent if out_path.parent.is_dir() else None
    with tempfile.TemporaryDirectory(prefix="edgekit-dynq-", dir=tmp_root) as d:
        pre = preprocess(src, Path(d) / "preprocessed.onnx")
        tmp_out = _dynamic(pre, Path(d) / "int8.onnx", cfg, excluded)
        from edgekit.core.onnx_graph import onnx_precision
        from edgekit.techniques.quantize.coverage import int8_coverage

        if onnx_precision(tmp_out) != "int8":
            raise QuantizationError(f"{src}: ONNX Runtime's quantize_dynamic left every {list(cfg.op_types)} node "
                                    "in float (no int8 op in its output)")
        cov = int8_coverage(tmp_out, **shapes)
        accuracy = _accuracy(pre, tmp_out, val, threads) if val is not None else {}
        with atomic_path(out_path, suffix=".onnx") as tmp:
            shutil.copyfile(tmp_out, tmp)
        fusion = _unfused_twin(src, out_path, cfg, excluded, Path(d))
    scheme = {"target": cfg.target, "activations": "uint8 (dynamic, per batch)", "activation_symmetric": False,
              "weights": "int8", "weight_symmetric": True, "per_channel": cfg.per_channel,
              "op_types": list(cfg.op_types)}
    result = QuantizeResult(artifact=out_path, target=cfg.target, mode="dynamic", scheme=scheme, calibration=None,
                            float_layers=list(excluded), int8_mac_fraction=cov.int8_fraction, coverage=cov.to_dict(),
                            runtime_float_layers=cov.float_layers, accuracy=accuracy,
                            seconds=time.perf_counter() - t0, source=str(src), fusion=fusion)
    write_sidecar(out_path, result.sidecar)
    logger.info(f"dynamically quantised {src.name} -> {out_path.name}: {cov.summary()}")
    return result


def _unfused_twin(src: Path, out_path: Path, cfg: QuantizeConfig, excluded: list, work: Path):
    """For a fused export (one with an unfused sibling): dynamic INT8 of the sibling as well, written as
    ``<out stem>.unfused.onnx``, for backends that run the fused fp32 ops but not ONNX Runtime's int8 ones
    (OpenVINO has no QAttention). Returns the sidecar's ``fusion`` entry, or None for an unfused source."""
    from edgekit.backends.base import unfused_sibling
    from edgekit.export.fuse import backend_files, contrib_ops, unfused_path

    sibling = Path(unfused_sibling(src))
    ops = contrib_ops(out_path)
    if sibling == src or not ops:
        return None
    twin = unfused_path(out_path)
    pre = preprocess(sibling, work / "sibling.preprocessed.onnx")
    with atomic_path(twin, suffix=".onnx") as tmp:
        _dynamic(pre, tmp, cfg, excluded)
    write_sidecar(twin, {"kind": "onnx", "precision": "int8", "target": cfg.target, "mode": "dynamic",
                         "source": str(sibling), "fusion": {"applied": False, "fused": out_path.name}})
    return {"applied": True, "contrib_ops": ops, "unfused": twin.name, "backends": backend_files(ops)}


def _check_something_to_quantise(model, cfg: QuantizeConfig, excluded: list, src: Path) -> None:
    """ConfigError unless the graph holds a node of ``cfg.op_types`` with int8-able weights (decided by the ops
    present, not by a MAC count: MACs can be unknown where shapes are computed at run time)."""
    from edgekit.techniques.quantize._ort import weighted_nodes

    found = [n for n in weighted_nodes(model, cfg.op_types) if n not in set(excluded)]
    if not found:
        present = sorted({n.op_type for n in model.graph.node})
        raise ConfigError(f"{src}: dynamic quantisation found nothing to quantise: no {'/'.join(cfg.op_types)} node "
                          f"with constant weights{' outside exclude' if excluded else ''} (the graph has "
                          f"{', '.join(present[:12])}{' ...' if len(present) > 12 else ''}); use static "
                          "quantisation for CNNs (Conv)")


def _mac_shapes(model, val: Any) -> dict:
    """Shapes for the int8 MAC count: the validation data's per-sample shapes, else a text model's sequence
    length (``DEFAULT_SEQUENCE`` for a dynamic sequence axis)."""
    from edgekit.core.onnx_graph import onnx_signature, position_rows
    from edgekit.core.tensors import sample_shapes
    from edgekit.techniques.quantize._ort import DEFAULT_SEQUENCE

    if val is not None:
        shapes = sample_shapes(val.x)
        if isinstance(shapes, dict):
            return {"inputs": shapes}
        return {"input_shape": shapes}
    sig = onnx_signature(model)
    dynamic = sig is not None and any(isinstance(d, str) for spec in sig.inputs for d in spec.sample_shape)
    if not dynamic or all(s.is_float for s in sig.inputs):
        return {}
    return {"sequence": min(DEFAULT_SEQUENCE, position_rows(model) or DEFAULT_SEQUENCE)}


def _dynamic(pre: Path, out: Path, cfg: QuantizeConfig, excluded: list) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    _infer_contrib_types(pre)
    with quiet():
        try:
            quantize_dynamic(str(pre), str(out), op_types_to_quantize=list(cfg.op_types), per_channel=cfg.per_channel,
                             weight_type=QuantType.QInt8, nodes_to_exclude=list(excluded))
        except Exception as e:
            raise QuantizationError(f"ONNX Runtime quantize_dynamic failed: {str(e)[:240]}") from None
    return out


def _infer_contrib_types(path: Path) -> None:
    """Give the tensors of a fused transformer graph their types: ONNX's shape inference skips ONNX Runtime's
    contrib ops (Attention, SkipLayerNormalization, ...), and the dynamic quantiser needs the type of every
    tensor it quantises; ONNX Runtime's symbolic shape inference knows them. Graphs without contrib ops are
    left as they are."""
    import onnx

    model = onnx.load(str(path))
    if not any(n.domain == "com.microsoft" for n in model.graph.node):
        return
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    try:
        inferred = SymbolicShapeInference.infer_shapes(model, auto_merge=True, guess_output_rank=True)
    except Exception as e:  # it raises plain Exceptions on graphs it cannot finish
        raise QuantizationError(f"{path.name}: symbolic shape inference of the fused graph failed "
                                f"({str(e)[:160]}); quantise the unfused export instead") from None
    onnx.save(inferred, str(path))


def _accuracy(fp32: Path, int8: Path, val: Any, threads: Optional[int]) -> dict:
    from edgekit.backends import default_backend, open_runner
    from edgekit.core.train import evaluate

    backend = default_backend("onnx", "cpu")
    return {"fp32_val": evaluate(open_runner(fp32, backend, threads=threads), val),
            "int8_val": evaluate(open_runner(int8, backend, threads=threads), val)}
