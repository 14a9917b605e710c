"""INT8 post-training quantisation on ONNX Runtime's tool: static (QDQ, calibrated) and dynamic.

``quantize(onnx_path, config, *, calib, out_path, val=None)`` = validate → ORT pre-processing (shape
inference, BN folding / graph optimisation) → calibrate once (MinMax / Entropy / Percentile) → QDQ
quantisation in the target's flavour (``cpu``: U8S8, ``tensorrt``: symmetric S8S8, see
:mod:`edgekit.techniques.quantize.config`) → optional accuracy budget with layer fallback → int8 coverage after
ORT optimisation → atomic write + sidecar. ``mode: dynamic`` goes to
:func:`edgekit.techniques.quantize.dynamic.quantize_dynamic_model`.

Example:
    >>> res = quantize("model.onnx", {"target": "cpu"}, calib="calib_data/digits32_rgb.npz", out_path="model.int8.onnx")
    >>> res.artifact, res.metrics["int8_mac_fraction"], res.sidecar["float_layers"]
"""
from __future__ import annotations

import functools
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from edgekit._io import atomic_path, write_sidecar
from edgekit.backends import default_backend
from edgekit.core.tensors import num_samples
from edgekit.errors import ConfigError, EdgekitError, validated_config
from edgekit.techniques.base import Result, Technique, register_technique
from edgekit.techniques.quantize._ort import (
    QuantizationError,
    float_inputs,
    graph_nodes,
    load_float_model,
    preprocess,
    quantised_nodes,
    quiet,
)
from edgekit.techniques.quantize.config import CALIBRATION_METHODS, TARGETS, QuantizeConfig

logger = logging.getLogger(__name__)

__all__ = ["QuantizeResult", "QuantizationError", "quantize", "load_float_model", "preprocess"]


@dataclass(kw_only=True)
class QuantizeResult(Result):
    """The written int8 artifact (``artifact``) and what it is: target, scheme, calibration, coverage, fallback."""

    target: str
    mode: str  # "static" | "dynamic"
    scheme: Dict[str, Any]
    calibration: Optional[Dict[str, Any]]
    float_layers: List[str]  # nodes kept float in the graph (exclude + fallback)
    int8_mac_fraction: float  # of MACs running int8 kernels on ORT CPU after graph optimisation
    coverage: Dict[str, Any]
    runtime_float_layers: List[str] = field(default_factory=list)  # contraction nodes ORT CPU runs in float
    fallback: List[Dict[str, Any]] = field(default_factory=list)
    accuracy: Dict[str, float] = field(default_factory=dict)  # fp32_val / int8_val when a val split was given
    seconds: float = 0.0
    source: str = ""
    speed: Optional[Dict[str, Any]] = None  # the speed check's measurements and decision (speed.SpeedDecision)
    kept_float: List[Dict[str, Any]] = field(default_factory=list)  # {node, op_type, reason} per float node
    smoothquant: Optional[Dict[str, Any]] = None  # SmoothQuant's report (alpha, smoothed tensors, ranges)
    fusion: Optional[Dict[str, Any]] = None  # ORT transformer fusions applied to the int8 graph
    quantised_graph: str = ""  # the file quantised when it is not ``source`` (a fused export's unfused sibling)

    def __post_init__(self) -> None:
        self.sidecar = {
            "kind": "onnx", "precision": "int8", "target": self.target, "mode": self.mode, "quant_scheme": self.scheme,
            "calibration": self.calibration, "float_layers": self.float_layers,
            "int8_mac_fraction": round(self.int8_mac_fraction, 6),
            "int8_mac_fraction_backend": default_backend("onnx", "cpu"),
            "runtime_float_layers": self.runtime_float_layers, "fallback": self.fallback, "accuracy": self.accuracy,
            "speed": self.speed, "kept_float": self.kept_float, "smoothquant": self.smoothquant,
            **({"fusion": self.fusion} if self.fusion else {}),
            **({"quantised_graph": self.quantised_graph} if self.quantised_graph else {}),
            "coverage": {k: self.coverage.get(k) for k in ("total_macs", "int8_macs", "optimized_ops")},
            "source": self.source}
        self.metrics = {"int8_mac_fraction": self.int8_mac_fraction, "float_layers": len(self.float_layers),
                        **{k: v for k, v in self.accuracy.items() if k != "max_accuracy_drop"},
                        "quantize_seconds": round(self.seconds, 2)}


def check_request(onnx_path: Any, out_path: Any, cfg: QuantizeConfig, val: Any):
    """Checks shared by static and dynamic quantisation, before any work: returns (float model, excluded nodes)."""
    out = Path(out_path)
    if out.suffix.lower() != ".onnx":
        raise ConfigError(f"out_path must end in .onnx, got {out}")
    src = Path(onnx_path)
    model = load_float_model(src)
    if out.resolve() == src.resolve():
        raise ConfigError(f"out_path {out} would overwrite the float model; choose another file")
    excluded = cfg.exclude.match(graph_nodes(model), "quantize.exclude", f"node of {src.name}") if cfg.exclude else []
    if val is not None and getattr(val, "y", None) is None:
        raise ConfigError("val must be a labelled Split (x, y) to measure accuracy")
    if cfg.max_accuracy_drop is not None and val is None:
        raise ConfigError("max_accuracy_drop needs a labelled validation split (val=splits.val)")
    return model, excluded


def quantize(onnx_path: str | os.PathLike, config: QuantizeConfig | dict | None = None, *, calib: Any = None,
             out_path: str | os.PathLike, val: Any = None, threads: Optional[int] = 2) -> QuantizeResult:
    """Quantise a float ONNX model to an int8 model for ``config.target`` and write it to ``out_path``.

    Args:
        onnx_path: float ONNX model (one float32 input).
        config: :class:`QuantizeConfig` or a dict of its fields (``mode``, ``target``, ``method``, ``samples``,
            ``exclude``, ``max_accuracy_drop``, ...).
        calib: calibration data for ``mode: static``: an ``.npz`` path (array ``x``), a numpy array ``[N, ...]``
            or a Split — never the test split.
        out_path: where the int8 ``.onnx`` goes (atomically, with a ``.json`` sidecar).
        val: labelled validation Split; with it the fp32/int8 accuracies are measured and
            ``max_accuracy_drop`` is enforced by falling the most sensitive layers back to float.
        threads: ONNX Runtime threads for accuracy and latency measurements.

    Returns:
        QuantizeResult (``artifact``, ``metrics``, ``sidecar``: target, scheme, calibration, float layers, coverage).

    Raises:
        ConfigError, InputFileError, ShapeError: bad settings / model / calibration data (before any work).
        AccuracyBudgetError: the budget could not be met (no output file is written).

    Example:
        >>> res = quantize("fp32.onnx", {"target": "cpu", "max_accuracy_drop": 0.5},
        ...                calib="calib_data/digits32_rgb.npz", out_path="int8.onnx", val=splits.val)
        >>> res.int8_mac_fraction
        0.99
    """
    cfg = resolve_mode(onnx_path, validated_config(QuantizeConfig, config, "quantize"))
    if cfg.mode == "dynamic":
        from edgekit.techniques.quantize._rnn import quantize_dynamic_best  # GRU: op or unrolled, the faster

        return quantize_dynamic_best(onnx_path, cfg, out_path=out_path, val=val, threads=threads)
    from edgekit.core.onnx_graph import graph_inputs
    from edgekit.core.tensors import sample_shapes, take
    from edgekit.techniques.quantize._calibration import calibration_inputs

    t0 = time.perf_counter()
    given, onnx_path = onnx_path, static_source(onnx_path)
    model, excluded = check_request(onnx_path, out_path, cfg, val)
    if calib is None:
        raise ConfigError("static quantisation needs calibration data: calib= an .npz path (an array x, or one "
                          "array per model input), an array, named arrays or a Split")
    where = str(calib) if isinstance(calib, (str, os.PathLike)) else None
    x = calibration_inputs(calib, model, cfg.samples, where=where)
    if val is not None:
        calibration_inputs(take(val.x, slice(0, 1)), model, where="validation split")  # fits the model inputs
    input_name = graph_inputs(model)[0].name
    shapes = sample_shapes(x)
    del model
    out = _quantize_static(Path(onnx_path), Path(out_path), cfg, x, input_name, excluded, val, threads,
                           shapes if isinstance(shapes, dict) else {input_name: shapes})
    calibration = {"method": cfg.method, "samples": int(num_samples(x)), "batch_size": cfg.batch_size,
                   **({"percentile": cfg.percentile} if cfg.method == "percentile" else {}),
                   "source": where or "array", "inputs": sorted(x) if isinstance(x, dict) else [input_name]}
    scheme = {**TARGETS.get(cfg.target).to_dict(), "per_channel": cfg.per_channel}
    if out["op_types"]:
        scheme["op_types"] = out["op_types"]
    result = QuantizeResult(
        artifact=Path(out_path), target=cfg.target, mode="static", scheme=scheme, calibration=calibration,
        float_layers=[*out["excluded"], *(step["layer"] for step in out["fallback"]),
                      *((out["speed"] or {}).get("float_nodes") or [])],
        int8_mac_fraction=out["coverage"].int8_fraction, coverage=out["coverage"].to_dict(),
        runtime_float_layers=out["coverage"].float_layers, fallback=out["fallback"], accuracy=out["accuracy"],
        seconds=time.perf_counter() - t0, source=str(given), speed=out["speed"],
        kept_float=kept_float_reasons(out, excluded), smoothquant=out["smoothquant"], fusion=out["fusion"],
        quantised_graph=Path(onnx_path).name if Path(onnx_path) != Path(given) else "")
    write_sidecar(out_path, result.sidecar)
    logger.info(f"quantised {Path(onnx_path).name} -> {Path(out_path).name} (target {cfg.target}, {cfg.method}): "
                f"{out['coverage'].summary()}")
    return result


def _quantize_static(src: Path, out_path: Path, cfg: QuantizeConfig, x: Any, input_name: str,
                     excluded: Sequence[str], val: Any, threads: Optional[int],
                     shapes: Dict[str, Any]) -> Dict[str, Any]:
    """Pre-process, calibrate and quantise (with budget fallback when ``val`` is given); copy the chosen model to
    ``out_path``. Returns its coverage report, fallback history, accuracies, the op types quantised (None = the
    target's) and every node kept float by rule (user exclusions, attention products of a transformer)."""
    from edgekit.techniques.quantize._calibration import inputs_reader
    from edgekit.techniques.quantize.budget import budget_error, enforce_budget, history
    from edgekit.techniques.quantize.coverage import int8_coverage

    tmp_root = out_path.parent if out_path.parent.is_dir() else None
    with tempfile.TemporaryDirectory(prefix="edgekit-quant-", dir=tmp_root) as d:
        work = Path(d)
        pre = preprocess(src, work / "preprocessed.onnx")
        smooth = _smooth(pre, work, cfg, x, input_name)
        pre = smooth.path if smooth is not None else pre
        op_types, excluded, rules = static_policy(pre, cfg, excluded)
        cache = work / "calibration.json"
        build = functools.partial(_static, pre, cfg=cfg, reader=None, cache=cache, op_types=op_types)
        first = _static(pre, work / "int8.onnx", cfg, inputs_reader(x, input_name, cfg.batch_size), cache, excluded,
                        op_types)
        coverage = functools.lru_cache(maxsize=None)(lambda p: int8_coverage(p, inputs=shapes))
        chosen, fallback, accuracy = first, [], {}
        if val is not None:
            budget = cfg.max_accuracy_drop if cfg.max_accuracy_drop is not None else float("inf")
            res = enforce_budget(lambda excl, path: build(path, exclude=excl), pre, first, val,
                                 budget, candidates=[n for n in quantised_nodes(first) if n not in excluded],
                                 coverage_fn=lambda p: coverage(p).int8_fraction, work_dir=work,
                                 base_exclude=excluded, max_layers=cfg.max_fallback_layers,
                                 sensitivity_samples=cfg.sensitivity_samples, threads=threads)
            accuracy = {"fp32_val": res.fp32_accuracy, "int8_val_all_layers": res.int8_accuracy,
                        "int8_val": res.final_accuracy,
                        **({"max_accuracy_drop": cfg.max_accuracy_drop} if cfg.max_accuracy_drop is not None else {})}
            if not res.met:
                raise budget_error(res, str(src))
            fallback, chosen = history(res), res.path
        speed = None
        if cfg.speed_fallback and cfg.target == _timed_target():
            base = [*excluded, *(step["layer"] for step in fallback)]
            decision = _speed_check(pre, chosen, cfg, x, input_name, val, threads, work, base, op_types, accuracy)
            chosen, speed = decision.path, decision.to_dict()
            if val is not None and decision.accuracy:
                accuracy["int8_val"] = decision.accuracy[decision.policy]
        cov = coverage(chosen)
        fusion = _refuse(src, chosen, work, cfg, x, input_name) if cfg.target == _timed_target() else None
        with atomic_path(out_path, suffix=".onnx") as tmp:
            shutil.copyfile(work / "fused.onnx" if fusion else chosen, tmp)
    return {"coverage": cov, "fallback": fallback, "accuracy": accuracy, "op_types": op_types,
            "excluded": list(excluded), "speed": speed, "rules": rules,
            "smoothquant": smooth.to_dict() if smooth is not None else None, "fusion": fusion}


def _refuse(src: Path, chosen: Path, work: Path, cfg: QuantizeConfig, x: Any, input_name: str):
    """Fuse the chosen static INT8 graph like the fp32 export it came from (``src`` is a fused export's unfused
    sibling): ``{"applied", "counts"}`` with ``work/fused.onnx`` written, or None (not a fused source, nothing
    fused, or outputs moved)."""
    from edgekit._io import read_sidecar
    from edgekit.core.tensors import is_named, take
    from edgekit.export.fuse import fuse_like

    fused_name = (read_sidecar(src).get("fusion") or {}).get("fused")
    settings = (read_sidecar(src.with_name(fused_name)).get("fusion") or {}) if fused_name else {}
    if not settings.get("applied"):
        return None
    sample = take(x, slice(0, cfg.batch_size))
    counts = fuse_like(chosen, work / "fused.onnx", settings, dict(sample) if is_named(x) else {input_name: sample})
    return {"applied": True, "counts": counts, "of": "static int8 graph (attention unfused: its MatMuls are int8)"} \
        if counts else None


def _smooth(pre: Path, work: Path, cfg: QuantizeConfig, x: Any, input_name: str):
    """SmoothQuant the pre-processed graph when ``cfg.smoothquant`` asks for it (its report), else None."""
    if cfg.smoothquant is None:
        return None
    from edgekit.core.tensors import is_named, num_samples, take
    from edgekit.techniques.quantize.smoothquant import smooth_onnx

    named = x if is_named(x) else {input_name: x}
    n = num_samples(named)
    feeds = [dict(take(named, slice(i, i + cfg.batch_size))) for i in range(0, n, cfg.batch_size)]
    return smooth_onnx(pre, work / "smoothed.onnx", feeds, alpha=cfg.smoothquant.alpha)


def resolve_mode(onnx_path: Any, cfg: QuantizeConfig) -> QuantizeConfig:
    """``cfg`` with its mode decided when it was left out (null): dynamic INT8 for a transformer graph (Softmax /
    LayerNormalization / fused Attention) on a target that runs dynamic INT8 — it holds accuracy without
    calibration, where all-op static INT8 collapses — else static (always static when smoothquant is set)."""
    if cfg.mode is not None:
        return cfg
    mode = "static"
    if cfg.smoothquant is None and TARGETS.get(cfg.target).dynamic:
        from edgekit.techniques.quantize._ort import is_transformer

        model = load_float_model(Path(onnx_path))
        mode = "dynamic" if is_transformer(model) else "static"
        if mode == "dynamic":
            logger.info(f"{Path(onnx_path).name} is a transformer: quantize mode defaults to dynamic INT8 "
                        "(set mode: static for calibrated INT8 with transformer exclusions)")
    return cfg.model_copy(update={"mode": mode})


def static_source(onnx_path: Any) -> Any:
    """The graph static INT8 quantises: a fused transformer export's unfused sibling (ONNX Runtime's QDQ quantiser
    has no static form of the fused Attention op, so it would leave the QKV projections float), else the file."""
    from edgekit.backends.base import unfused_sibling

    chosen = unfused_sibling(onnx_path)
    if chosen != onnx_path:
        logger.info(f"{Path(onnx_path).name} is a fused graph: static INT8 quantises its unfused sibling "
                    f"{Path(chosen).name}")
    return chosen


def kept_float_reasons(out: Dict[str, Any], user: Sequence[str]) -> List[Dict[str, Any]]:
    """Every node the static INT8 model keeps float, with why: the user's exclusions, the transformer rules
    (normalisation, Softmax, GELU, residual Adds, embeddings, attention products), the accuracy budget's
    fallback and the speed check's float layers."""
    rows = [{"node": n, "reason": "quantize.exclude (user)"} for n in user]
    rows += [r for r in out["rules"] if r["node"] not in set(user)]
    rows += [{"node": step["layer"], "reason": f"accuracy budget: fell back to float (sensitivity "
                                               f"{step.get('sensitivity', 0):.2f} points)"} for step in out["fallback"]]
    rows += [{"node": n, "reason": "speed: its int8 kernel is slower than fp32 on ONNX Runtime CPU"}
             for n in (out["speed"] or {}).get("float_nodes") or []]
    return rows


def _timed_target() -> Optional[str]:
    """The quantisation target the speed check can time here: the one the default CPU ONNX backend wants."""
    from edgekit.backends import backend_spec

    return backend_spec(default_backend("onnx", "cpu")).quant_target


def _speed_check(pre: Path, chosen: Path, cfg: QuantizeConfig, x: Any, input_name: str, val: Any,
                 threads: Optional[int], work: Path, base: Sequence[str], op_types: Optional[Sequence[str]],
                 accuracy: Dict[str, float]):
    """Run :func:`speed.choose_speed_policy` on ``chosen`` with the two fallback policies built from ``pre``."""
    import numpy as np
    import onnx

    from edgekit.core.tensors import num_samples
    from edgekit.techniques.quantize.speed import CONTRACTIONS, choose_speed_policy, float_closure

    model = onnx.load(str(pre), load_external_data=False)
    cache = work / "calibration.json"

    def policies(flagged: Sequence[str]):
        closure = float_closure(model, [*base, *flagged])
        keep = set(base) | set(flagged)
        contractions = [n.name for n in model.graph.node if n.op_type in CONTRACTIONS and n.name not in keep]
        if not contractions:  # every contraction flagged: a fallback would be a float model posing as int8
            return {}
        return {"exclude-flagged": ([n for n in closure if n not in base],
                                    lambda p: _static(pre, p, cfg, None, cache, closure, op_types)),
                "contractions-only": (list(flagged), lambda p: _static(pre, p, cfg, None, cache, sorted(keep),
                                                                       list(CONTRACTIONS), contractions))}

    n = num_samples(x)
    named = isinstance(x, dict)

    def sample(batch: int) -> Any:
        idx = np.arange(batch) % n
        return {k: np.ascontiguousarray(v[idx]) for k, v in x.items()} if named else np.ascontiguousarray(x[idx])

    acc_fn = (lambda p: _val_accuracy(p, val, threads)) if val is not None else None
    budget = cfg.max_accuracy_drop if val is not None else None
    return choose_speed_policy(pre, chosen, policies, sample, cfg.speed_batches, work, threads=threads,
                               accuracy_fn=acc_fn, max_drop=budget)


def _val_accuracy(path: Path, val: Any, threads: Optional[int]) -> float:
    """Top-1 accuracy (%) of an ONNX model on ``val`` (one array or named arrays) through ORT CPU."""
    import numpy as np

    from edgekit.backends import open_runner
    from edgekit.core.tensors import num_samples, take

    with open_runner(path, default_backend("onnx", "cpu"), threads=threads) as runner:
        n = num_samples(val.x)
        logits = np.concatenate([np.asarray(runner(take(val.x, slice(i, i + 256)))).reshape(min(256, n - i), -1)
                                 for i in range(0, n, 256)])
    return float(100.0 * (logits.argmax(1) == np.asarray(val.y)).mean())


def static_policy(pre: Path, cfg: QuantizeConfig, excluded: Sequence[str]):
    """(op types to quantise or None for the target's, nodes kept float, rule rows) for a pre-processed model.

    A transformer graph quantised op by op collapses (LayerNorm, Softmax, GELU and residual Adds in int8), and
    its attention products Q·Kᵀ, P·V (two activations) lose the most; so on a target that quantises every op,
    a graph with Softmax/LayerNormalization gets its contractions with constant weights only (MatMul, Gemm,
    Conv): LayerNorm, Softmax, GELU, residual Adds, embedding Gathers and the activation x activation MatMuls
    stay float, each listed with its reason (``transformer_scope: false`` quantises every op: the naive form).
    """
    import onnx

    from edgekit.techniques.quantize._ort import (
        CONTRACTION_OPS,
        activation_matmuls,
        is_transformer,
        transformer_float_nodes,
    )

    if not cfg.transformer_scope or TARGETS.get(cfg.target).op_types is not None:
        return None, list(excluded), []
    model = onnx.load(str(pre), load_external_data=False)
    if not is_transformer(model):
        return None, list(excluded), []
    extra = [n for n in activation_matmuls(model) if n not in excluded]
    rules = transformer_float_nodes(model)
    logger.info(f"transformer graph: quantising {sorted(CONTRACTION_OPS)} only; {len(rules)} nodes stay float "
                f"(LayerNorm, Softmax, GELU, residual Adds, embeddings, {len(extra)} attention MatMuls)")
    return sorted(CONTRACTION_OPS), [*excluded, *extra], rules


def _static(pre: Path, out: Path, cfg: QuantizeConfig, reader, cache: Path, exclude: Sequence[str],
            op_types: Optional[Sequence[str]] = None, only_nodes: Optional[Sequence[str]] = None) -> Path:
    from onnxruntime.quantization import QuantFormat, quantize_static

    args = TARGETS.get(cfg.target).ort_arguments()
    args["per_channel"] = cfg.per_channel
    if op_types:
        args["op_types_to_quantize"] = list(op_types)
    if only_nodes is not None:
        args["nodes_to_quantize"] = list(only_nodes)
    cal = CALIBRATION_METHODS.get(cfg.method).ort_arguments(cfg.percentile)
    extra = {**args.pop("extra_options"), **cal.pop("extra_options")}
    if exclude:  # float layers get their float inputs back (float_inputs): every Relu must stay explicit
        extra["QDQKeepRemovableActivations"] = True
    with quiet():
        try:
            quantize_static(str(pre), str(out), reader, quant_format=QuantFormat.QDQ, nodes_to_exclude=list(exclude),
                            calibration_cache_path=str(cache), extra_options=extra, **args, **cal)
        except EdgekitError:
            raise
        except Exception as e:
            raise QuantizationError(f"ONNX Runtime quantize_static failed on {cfg.target} int8: "
                                    f"{type(e).__name__}: {str(e)[:240]}") from None
    float_inputs(out, exclude)
    return out


register_technique(Technique(
    "quantize", QuantizeConfig, consumes="onnx", produces="onnx", apply=quantize,
    description="INT8 post-training quantisation of an ONNX model for a target (static calibrated QDQ with an "
                "accuracy budget, or dynamic)",
    needs_torch=False,
    variant_suffix=lambda config: f"{'int8-dynamic' if config.mode == 'dynamic' else 'int8'}-{config.target}"))
