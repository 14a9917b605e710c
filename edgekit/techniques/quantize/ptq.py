"""INT8 post-training quantisation on ONNX Runtime's tool: static (QDQ, calibrated) and dynamic.

``quantize`` = validate → ORT pre-processing (shape inference, BN folding / graph optimisation) →
calibrate once (MinMax / Entropy / Percentile) → QDQ quantisation in the target's flavour
(``cpu``: U8S8, ``tensorrt``: symmetric S8S8, see :mod:`edgekit.techniques.quantize.config`) → optional
accuracy budget with layer fallback → int8 coverage after ORT optimisation → atomic write + sidecar.

Example:
    >>> res = quantize("model.onnx", "calib_data/digits32_rgb.npz", "model.int8.onnx", target="cpu")
    >>> res.int8_mac_fraction, res.float_layers
"""
from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from edgekit._io import atomic_path, read_sidecar, require_file, write_sidecar
from edgekit.errors import ConfigError, EdgekitError, InputFileError, did_you_mean
from edgekit.techniques.quantize.config import (
    CALIBRATION_METHODS,
    TARGETS,
    DynamicQuantizeConfig,
    QuantizeConfig,
    make_config,
)

logger = logging.getLogger(__name__)

QUANTISED_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul",
                 "MatMulInteger", "ConvInteger", "QGemm", "DynamicQuantizeLSTM", "DynamicQuantizeMatMul",
                 "MatMulIntegerToFloat", "QLinearAdd", "QAttention"}
_CONTRACTION_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}


class QuantizationError(EdgekitError):
    """ONNX Runtime's quantiser failed on a model that passed validation."""


@dataclass
class QuantizeResult:
    """The written int8 artifact and what it is: target, scheme, calibration, coverage, fallback."""

    path: Path
    target: str
    mode: str  # "static" | "dynamic"
    scheme: Dict[str, Any]
    calibration: Optional[Dict[str, Any]]
    float_layers: List[str]  # nodes kept float in the graph (exclude_nodes + fallback)
    int8_mac_fraction: float  # of MACs running int8 kernels on ORT CPU after graph optimisation
    coverage: Dict[str, Any]
    runtime_float_layers: List[str] = field(default_factory=list)  # contraction nodes ORT CPU runs in float
    fallback: List[Dict[str, Any]] = field(default_factory=list)
    accuracy: Dict[str, float] = field(default_factory=dict)  # fp32_val / int8_val when a val split was given
    seconds: float = 0.0

    def sidecar(self) -> Dict[str, Any]:
        """The sidecar dict written beside the artifact."""
        return {"kind": "onnx", "precision": "int8", "target": self.target, "mode": self.mode,
                "quant_scheme": self.scheme, "calibration": self.calibration, "float_layers": self.float_layers,
                "int8_mac_fraction": round(self.int8_mac_fraction, 6), "int8_mac_fraction_backend": "ort-cpu",
                "runtime_float_layers": self.runtime_float_layers, "fallback": self.fallback,
                "accuracy": self.accuracy,
                "coverage": {"total_macs": self.coverage.get("total_macs"), "int8_macs": self.coverage.get("int8_macs"),
                             "optimized_ops": self.coverage.get("optimized_ops")}}


def load_float_model(onnx_path: str | os.PathLike):
    """Load an ONNX model for quantisation; refuse missing, unreadable or already-quantised files."""
    import onnx

    p = require_file(onnx_path, "ONNX model")
    if p.suffix.lower() != ".onnx":
        raise InputFileError(f"{p}: expected an .onnx model file")
    try:
        model = onnx.load(str(p))
    except Exception as e:
        raise InputFileError(f"{p}: not a readable ONNX model ({type(e).__name__}: {str(e)[:160]})") from None
    found = sorted({n.op_type for n in model.graph.node} & QUANTISED_OPS)
    if found or read_sidecar(p).get("precision") == "int8":
        raise InputFileError(f"{p}: the model is already quantised (contains {', '.join(found) or 'int8 sidecar'}); "
                             "quantise the float (fp32) ONNX export instead")
    return model


def quantised_nodes(qdq_path: str | os.PathLike) -> List[str]:
    """Names of the compute nodes of a QDQ model that read a dequantised input (the quantised layers)."""
    import onnx

    model = onnx.load(os.fspath(qdq_path), load_external_data=False)
    dq_out = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return [n.name for n in model.graph.node
            if n.op_type not in ("QuantizeLinear", "DequantizeLinear") and any(i in dq_out for i in n.input)]


def _check_exclude(model, exclude: Sequence[str], where: str) -> None:
    names = [n.name for n in model.graph.node if n.name]
    for e in exclude:
        if e not in names:
            layers = [n.name for n in model.graph.node if n.op_type in _CONTRACTION_OPS][:12]
            raise ConfigError(f"exclude_nodes: node '{e}' is not in {where}{did_you_mean(e, names)}; "
                              f"quantisable layers include: {', '.join(layers)}")


@contextlib.contextmanager
def _quiet():
    """Silence ORT quantiser warnings/prints (they go to logging and stdout)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def preprocess(src: Path, dst: Path) -> Path:
    """ORT's quantisation pre-processing (shape inference, constant/BN folding); names every node."""
    import onnx
    from onnxruntime.quantization import quant_pre_process

    with _quiet():
        try:
            quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
        except Exception as e:  # optimisation can fail on exotic graphs: retry with shape inference only
            logger.info(f"quantisation pre-processing with optimisation failed ({str(e)[:120]}); retrying without it")
            try:
                quant_pre_process(str(src), str(dst), skip_optimization=True, skip_symbolic_shape=True)
            except Exception as e2:
                raise QuantizationError(f"{src}: ONNX Runtime pre-processing failed: {str(e2)[:200]}") from None
    model = onnx.load(str(dst))
    seen, changed = set(), False
    for i, n in enumerate(model.graph.node):
        if not n.name or n.name in seen:
            n.name, changed = f"{n.op_type}_{i}", True
        seen.add(n.name)
    if changed:
        onnx.save(model, str(dst))
    return dst


def float_inputs(path: Path, nodes: Sequence[str]) -> None:
    """Feed ``nodes`` their float activations: bypass ``Q → DQ`` pairs on their inputs, drop dead Q/DQ.

    ORT's ``nodes_to_exclude`` keeps a node's weights float, but its input tensor stays quantised when the
    producer quantises its output. A layer that falls back must see float inputs, or the error stays.
    """
    import onnx

    if not nodes:
        return
    model = onnx.load(str(path))
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    wanted = set(nodes)
    for n in g.node:
        if n.name not in wanted:
            continue
        for i, name in enumerate(n.input):
            dq = producer.get(name)
            q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            if q is not None and q.op_type == "QuantizeLinear":
                n.input[i] = q.input[0]
    graph_outputs = {o.name for o in g.output}
    while True:
        used = {i for n in g.node for i in n.input} | graph_outputs
        dead = [n for n in g.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
                and not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            g.node.remove(n)
    used = {i for n in g.node for i in n.input}
    for init in [i for i in g.initializer if i.name not in used]:
        g.initializer.remove(init)
    onnx.save(model, str(path))


def _static(pre: Path, out: Path, cfg: QuantizeConfig, reader, cache: Path, exclude: Sequence[str]) -> Path:
    from onnxruntime.quantization import QuantFormat, quantize_static

    scheme = TARGETS.get(cfg.target)
    args = scheme.ort_arguments()
    args["per_channel"] = cfg.per_channel
    cal = CALIBRATION_METHODS.get(cfg.method).ort_arguments(cfg.percentile)
    extra = {**args.pop("extra_options"), **cal.pop("extra_options")}
    if exclude:  # float layers get their float inputs back (float_inputs): every Relu must stay explicit
        extra["QDQKeepRemovableActivations"] = True
    with _quiet():
        try:
            quantize_static(str(pre), str(out), reader, quant_format=QuantFormat.QDQ, nodes_to_exclude=list(exclude),
                            calibration_cache_path=str(cache), extra_options=extra, **args, **cal)
        except EdgekitError:
            raise
        except Exception as e:
            raise QuantizationError(f"{pre.name}: ONNX Runtime quantize_static failed: "
                                    f"{type(e).__name__}: {str(e)[:240]}") from None
    float_inputs(out, exclude)
    return out


def quantize(onnx_path: str | os.PathLike, calib: Any, out_path: str | os.PathLike, *, target: str = "cpu",
             method: str = "minmax", percentile: float = 99.99, samples: int = 128, per_channel: bool = True,
             exclude_nodes: Sequence[str] = (), val: Any = None, max_accuracy_drop: Optional[float] = None,
             max_fallback_layers: int = 8, batch_size: int = 16, threads: Optional[int] = 2,
             sensitivity_samples: int = 256) -> QuantizeResult:
    """Statically quantise a float ONNX model to an int8 QDQ model for ``target``.

    Args:
        onnx_path: float ONNX model (one float32 input).
        calib: calibration data: an ``.npz`` path (array ``x``), a numpy array ``[N, ...]`` or a Split —
            never the test split.
        out_path: where the int8 ``.onnx`` goes (atomically, with a ``.json`` sidecar).
        target: ``cpu`` (uint8 asym. activations, int8 per-channel weights) or ``tensorrt`` (symmetric int8).
        method: calibration method ``minmax`` | ``entropy`` | ``percentile`` (with ``percentile``).
        samples: calibration samples used (the first N).
        per_channel: per-output-channel weight scales.
        exclude_nodes: ONNX node names kept in float.
        val: labelled validation Split; with it the fp32/int8 accuracies are measured (and the budget enforced).
        max_accuracy_drop: budget in points on ``val``; the most sensitive layers fall back to float until it
            holds, else AccuracyBudgetError with the measured numbers.
        max_fallback_layers: most layers the budget may fall back.

    Returns:
        QuantizeResult (path, target, scheme, calibration, float_layers, int8_mac_fraction, fallback, accuracy).

    Raises:
        ConfigError, InputFileError, ShapeError: bad settings / model / calibration data (before any work).
        AccuracyBudgetError: the budget could not be met (no output file is written).

    Example:
        >>> res = quantize("fp32.onnx", "calib_data/digits32_rgb.npz", "int8.onnx", target="cpu",
        ...                val=splits.val, max_accuracy_drop=0.5)
        >>> res.int8_mac_fraction
        0.99
    """
    from edgekit.techniques.quantize._calibration import array_reader, model_input, prepare_calibration
    from edgekit.techniques.quantize.budget import budget_error, enforce_budget, history
    from edgekit.techniques.quantize.coverage import int8_coverage

    t0 = time.perf_counter()
    cfg = make_config(QuantizeConfig, target=target, method=method, percentile=percentile, samples=samples,
                      batch_size=batch_size, per_channel=per_channel, exclude_nodes=tuple(exclude_nodes),
                      max_accuracy_drop=max_accuracy_drop, max_fallback_layers=max_fallback_layers,
                      sensitivity_samples=sensitivity_samples, threads=threads)
    out_path = Path(out_path)
    if out_path.suffix.lower() != ".onnx":
        raise ConfigError(f"out_path must end in .onnx, got {out_path}")
    src = Path(onnx_path)
    model = load_float_model(src)
    if out_path.resolve() == src.resolve():
        raise ConfigError(f"out_path {out_path} would overwrite the float model; choose another file")
    _check_exclude(model, cfg.exclude_nodes, str(src))
    x = prepare_calibration(calib, model, cfg.samples, where=str(calib) if isinstance(calib, (str, os.PathLike)) else None)
    if val is not None and getattr(val, "y", None) is None:
        raise ConfigError("val must be a labelled Split (x, y) to measure accuracy")
    if cfg.max_accuracy_drop is not None and val is None:
        raise ConfigError("max_accuracy_drop needs a validation split (val=splits.val)")
    if val is not None:
        prepare_calibration(val.x[:1], model, where="validation split")  # same shape as the model input
    input_name = model_input(model)[0]
    scheme = TARGETS.get(cfg.target)
    del model

    with tempfile.TemporaryDirectory(prefix="edgekit-quant-", dir=out_path.parent if out_path.parent.is_dir() else None) as d:
        work = Path(d)
        pre = preprocess(src, work / "preprocessed.onnx")
        cache = work / "calibration.json"
        first = _static(pre, work / "int8.onnx", cfg, array_reader(x, input_name, cfg.batch_size), cache,
                        cfg.exclude_nodes)
        coverage = functools.lru_cache(maxsize=None)(int8_coverage)  # the last fallback step is also the result
        cov = coverage(first)
        chosen, fallback_hist, accuracy = first, [], {}
        if val is not None:
            build = lambda excl, path: _static(pre, path, cfg, None, cache, excl)  # noqa: E731
            candidates = [n for n in quantised_nodes(first) if n not in cfg.exclude_nodes]
            budget = cfg.max_accuracy_drop if cfg.max_accuracy_drop is not None else float("inf")
            res = enforce_budget(build, pre, first, val, budget, candidates=candidates,
                                 coverage_fn=lambda p: coverage(p).int8_fraction, work_dir=work,
                                 base_exclude=cfg.exclude_nodes, max_layers=cfg.max_fallback_layers,
                                 sensitivity_samples=cfg.sensitivity_samples, threads=cfg.threads)
            accuracy = {"fp32_val": res.fp32_accuracy, "int8_val_all_layers": res.int8_accuracy,
                        "int8_val": res.final_accuracy,
                        **({"max_accuracy_drop": cfg.max_accuracy_drop} if cfg.max_accuracy_drop is not None else {})}
            if not res.met:
                raise budget_error(res, str(src))
            fallback_hist = history(res)
            if res.path != first:
                chosen, cov = res.path, coverage(res.path)
        with atomic_path(out_path, suffix=".onnx") as tmp:
            shutil.copyfile(chosen, tmp)
    result = QuantizeResult(
        path=out_path, target=cfg.target, mode="static", scheme={**scheme.to_dict(), "per_channel": cfg.per_channel},
        calibration={"method": cfg.method, "samples": int(len(x)), "batch_size": cfg.batch_size,
                     **({"percentile": cfg.percentile} if cfg.method == "percentile" else {}),
                     "source": str(calib) if isinstance(calib, (str, os.PathLike)) else "array"},
        float_layers=[*cfg.exclude_nodes, *(step["layer"] for step in fallback_hist)],
        int8_mac_fraction=cov.int8_fraction, coverage=cov.to_dict(), runtime_float_layers=cov.float_layers,
        fallback=fallback_hist, accuracy=accuracy, seconds=time.perf_counter() - t0)
    write_sidecar(out_path, {**result.sidecar(), "source": str(src)})
    logger.info(f"quantised {src.name} -> {out_path.name} (target {cfg.target}, {cfg.method}): {cov.summary()}")
    return result


def quantize_dynamic_model(onnx_path: str | os.PathLike, out_path: str | os.PathLike, *, per_channel: bool = False,
                           op_types: Sequence[str] = ("LSTM", "GRU", "MatMul", "Gemm", "Attention"),
                           exclude_nodes: Sequence[str] = (), val: Any = None, threads: Optional[int] = 2
                           ) -> QuantizeResult:
    """Dynamically quantise a float ONNX model (int8 weights, activations quantised at run time; CPU).

    Suits LSTM/GRU and Transformer Linear layers, where static activation ranges vary per input.

    Args:
        onnx_path: float ONNX model.
        out_path: where the int8 ``.onnx`` goes (atomically, with sidecar; target ``cpu``).
        per_channel: per-channel weight scales.
        op_types: ONNX op types to quantise.
        exclude_nodes: node names kept in float.
        val: labelled validation Split; when given fp32/int8 accuracies are recorded.

    Example:
        >>> res = quantize_dynamic_model("lstm.onnx", "lstm.int8.onnx", val=splits.val)
        >>> res.accuracy
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from edgekit.backends import open_runner
    from edgekit.core.train import evaluate
    from edgekit.techniques.quantize.coverage import int8_coverage

    t0 = time.perf_counter()
    cfg = make_config(DynamicQuantizeConfig, per_channel=per_channel, op_types=tuple(op_types),
                      exclude_nodes=tuple(exclude_nodes))
    out_path = Path(out_path)
    if out_path.suffix.lower() != ".onnx":
        raise ConfigError(f"out_path must end in .onnx, got {out_path}")
    src = Path(onnx_path)
    model = load_float_model(src)
    _check_exclude(model, cfg.exclude_nodes, str(src))
    if val is not None and getattr(val, "y", None) is None:
        raise ConfigError("val must be a labelled Split (x, y) to measure accuracy")
    del model
    with tempfile.TemporaryDirectory(prefix="edgekit-dynq-", dir=out_path.parent if out_path.parent.is_dir() else None) as d:
        work = Path(d)
        pre = preprocess(src, work / "preprocessed.onnx")
        tmp_out = work / "int8.onnx"
        with _quiet():
            try:
                quantize_dynamic(str(pre), str(tmp_out), op_types_to_quantize=list(cfg.op_types),
                                 per_channel=cfg.per_channel, weight_type=QuantType.QInt8,
                                 nodes_to_exclude=list(cfg.exclude_nodes))
            except Exception as e:
                raise QuantizationError(f"{src}: ONNX Runtime quantize_dynamic failed: {str(e)[:240]}") from None
        cov = int8_coverage(tmp_out)
        if cov.int8_macs == 0:
            raise ConfigError(f"{src}: dynamic quantisation found nothing to quantise among op types "
                              f"{list(cfg.op_types)} (use static quantisation for CNNs)")
        accuracy = {}
        if val is not None:
            accuracy = {"fp32_val": evaluate(open_runner(pre, "ort-cpu", threads=threads), val),
                        "int8_val": evaluate(open_runner(tmp_out, "ort-cpu", threads=threads), val)}
        with atomic_path(out_path, suffix=".onnx") as tmp:
            shutil.copyfile(tmp_out, tmp)
    scheme = {"target": "cpu", "activations": "uint8 (dynamic, per batch)", "activation_symmetric": False,
              "weights": "int8", "weight_symmetric": True, "per_channel": cfg.per_channel,
              "op_types": list(cfg.op_types)}
    result = QuantizeResult(out_path, "cpu", "dynamic", scheme, None, list(cfg.exclude_nodes), cov.int8_fraction,
                            cov.to_dict(), cov.float_layers, [], accuracy, time.perf_counter() - t0)
    write_sidecar(out_path, {**result.sidecar(), "source": str(src)})
    logger.info(f"dynamically quantised {src.name} -> {out_path.name}: {cov.summary()}")
    return result


_WARN_BACKENDS = {"cpu": ("tensorrt", "ort-cuda", "ort-trt"), "tensorrt": ("ort-cpu", "openvino", "torch")}


def check_target(artifact_path: str | os.PathLike, backend: str) -> Optional[str]:
    """Return a warning when an int8 artifact runs on a backend it was not quantised for, else None.

    Example:
        >>> check_target("model.trt-int8.onnx", "ort-cpu")
        "model.trt-int8.onnx was quantised for target 'tensorrt' (symmetric int8) but runs on 'ort-cpu' ..."
    """
    side = read_sidecar(artifact_path)
    target = side.get("target")
    if side.get("precision") != "int8" or not target:
        return None
    if target == "tensorrt" and (backend.startswith("ort-cpu") or backend in _WARN_BACKENDS["tensorrt"]):
        frac = side.get("int8_mac_fraction")
        cov = f" (only {frac:.0%} of its MACs run in int8 there)" if isinstance(frac, (int, float)) else ""
        return (f"{Path(artifact_path).name} was quantised for target 'tensorrt' (symmetric int8, zero point 0) "
                f"but runs on '{backend}'{cov}; ONNX Runtime's fast x86 int8 kernels want target 'cpu' (U8S8)")
    if target == "cpu" and backend in _WARN_BACKENDS["cpu"]:
        return (f"{Path(artifact_path).name} was quantised for target 'cpu' (uint8 asymmetric activations) but runs "
                f"on '{backend}'; TensorRT wants symmetric int8 (quantise with target 'tensorrt')")
    return None


__all__ = ["QuantizeResult", "QuantizationError", "check_target", "quantize", "quantize_dynamic_model",
           "load_float_model", "preprocess"]
