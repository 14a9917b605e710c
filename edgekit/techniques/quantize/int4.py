"""Weight-only INT4 (ONNX Runtime ``MatMulNBits``, round-to-nearest per block) for decoder LMs, and the dynamic
INT8 (W8A8 ``MatMul``) alternative to compare against.

Weight-only INT4 stores each weight MatMul as 4-bit blocks of ``block_size`` input channels with a float scale
and zero point; ``accuracy_level=4`` lets the kernel quantise activations to int8 inside the op, which is what
makes it fast on CPUs with VNNI (without it INT4 decode gained 1.5× and INT8 weight-only ran 8× slower than fp32
on this machine; ``bits: 8`` with it, weight-only INT8, decoded about as fast as INT4).
``embeddings: true`` also quantises the token-embedding ``Gather`` (``GatherBlockQuantized``):
needed for the file to shrink below ~0.35× of fp32, because the embedding table is a large share of a small LM.

Example:
    >>> res = quantize_int4("student.onnx", {"block_size": 128}, out_path="student.int4.onnx")
    >>> res.metrics["size_ratio"] <= 0.3
    True
"""
from __future__ import annotations

import logging
import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Literal, Optional, Sequence

from pydantic import Field, field_validator, model_validator

from edgekit._io import atomic_path, write_sidecar
from edgekit.errors import ConfigError, InputFileError, QuantizationError, first_line, validated_config
from edgekit.techniques.base import Result, Technique, register_technique
from edgekit.techniques.quantize._ort import quiet
from edgekit.techniques.quantize.config import SmoothQuantConfig
from edgekit.techniques.quantize.lm_budget import (
    PerplexityBudgetFields,
    budget_record,
    enforce_perplexity_budget,
    perplexity_budget_error,
)

logger = logging.getLogger(__name__)

_BLOCK_SIZES = (16, 32, 64, 128, 256)


class Int4Config(PerplexityBudgetFields):
    """Weight-only 4-bit (or 8-bit) quantisation of ``MatMul`` weights (and optionally the embedding ``Gather``)."""

    bits: Literal[4, 8] = Field(4, description="weight bits per MatMulNBits block: 4 (default) or 8 (weight-only "
                                               "INT8: about twice the INT4 file, closer to fp32 perplexity)")

    block_size: int = Field(128, description="input channels per quantisation block: 16, 32, 64, 128 or 256; "
                                             "must divide every quantised weight's input size")
    accuracy_level: int = Field(4, ge=0, le=4, description="MatMulNBits compute: 0 = unset, 1 fp32, 2 fp16, 3 bf16, "
                                                           "4 int8 activations (fastest on CPU)")
    symmetric: bool = Field(False, description="symmetric blocks (no zero point)")
    embeddings: Optional[bool] = Field(
        None, description="also quantise the token embeddings (Gather, 4-bit blocks); null = yes at 4 bits, no at 8 "
                          "(ONNX Runtime's GatherBlockQuantized quantiser takes 4-bit blocks only)")

    @model_validator(mode="before")
    @classmethod
    def _embeddings_for_bits(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        bits = data.get("bits", 4)
        if data.get("embeddings") is None:
            return {**data, "embeddings": bits == 4}
        if data["embeddings"] and bits != 4:
            raise ValueError(f"embeddings: true needs bits: 4 (ONNX Runtime quantises the embedding Gather to 4-bit "
                             f"blocks only), got bits: {bits}; set embeddings: false or bits: 4")
        return data

    @field_validator("block_size")
    @classmethod
    def _known_block(cls, v: int) -> int:
        if v not in _BLOCK_SIZES:
            raise ValueError(f"block_size must be one of {list(_BLOCK_SIZES)}, got {v}")
        return v


class Int8DynamicConfig(PerplexityBudgetFields):
    """Dynamic INT8 (W8A8) of an ONNX LM's weight ``MatMul`` ops, optionally smoothed first (SmoothQuant)."""

    per_channel: bool = Field(True, description="one int8 scale per output channel (else per tensor)")
    smoothquant: Optional[SmoothQuantConfig] = Field(
        None, description="smooth activation outliers into the weights of the KV-cache graph first (per-channel "
                          "scales folded into the preceding LayerNorm or an explicit Mul), calibrated on training "
                          "windows, e.g. {alpha: 0.5}; null = off")
    samples: int = Field(64, gt=0, description="training windows SmoothQuant calibrates on (empty past)")


def _weight_inputs(model) -> Dict[str, List[tuple]]:
    """``{op: [(node name, weight name, dims)]}`` for MatMul / Gather nodes whose weight is an initializer."""
    inits = {i.name: tuple(i.dims) for i in model.graph.initializer}
    out: Dict[str, List[tuple]] = {"MatMul": [], "Gather": []}
    for n in model.graph.node:
        if n.op_type == "MatMul" and len(n.input) > 1 and n.input[1] in inits and len(inits[n.input[1]]) == 2:
            out["MatMul"].append((n.name, n.input[1], inits[n.input[1]]))
        elif n.op_type == "Gather" and n.input[0] in inits and len(inits[n.input[0]]) == 2:
            out["Gather"].append((n.name, n.input[0], inits[n.input[0]]))
    return out


def check_block_size(onnx_path: str | Path, block_size: int, embeddings: bool = True) -> Dict[str, List[tuple]]:
    """Refuse a block size MatMulNBits cannot use on this graph, before any work; returns the weights to quantise.

    Example:
        >>> check_block_size("lm.onnx", 128)["MatMul"][0]
        ('/lm_head/MatMul', 'onnx::MatMul_123', (256, 6148))
    """
    import onnx

    if block_size not in _BLOCK_SIZES:
        raise ConfigError(f"int4.block_size must be one of {list(_BLOCK_SIZES)}, got {block_size}")
    p = Path(onnx_path)
    if not p.is_file():
        raise InputFileError(f"ONNX file not found: {p}")
    weights = _weight_inputs(onnx.load(str(p), load_external_data=False))
    if not weights["MatMul"]:
        raise ConfigError(f"{p}: no MatMul with a constant 2-D weight to quantise (GPT-2 Conv1D exports as Gemm: "
                          "export with edgekit.export.causal_lm, which converts it to Linear)")
    sizes = {d[0] for _, _, d in weights["MatMul"]}
    if embeddings:
        sizes |= {d[1] for _, _, d in weights["Gather"]}
    bad = sorted(k for k in sizes if k % block_size)
    if bad:
        ok = [b for b in _BLOCK_SIZES if all(k % b == 0 for k in sizes)]
        raise ConfigError(f"{p}: int4.block_size {block_size} does not divide the input size(s) {bad} of the weights "
                          f"(hidden / FFN size); block sizes that fit: {ok or 'none'}")
    return weights


def quantize_int4(onnx_path: str | Path, config: Int4Config | dict | None = None, *, out_path: str | Path,
                  val: Any = None, threads: Optional[int] = 1) -> Result:
    """Quantise the weights of a float ONNX LM to 4 (or 8) bits (MatMulNBits, RTN); returns sizes and op counts.

    With ``max_perplexity_increase`` (and ``val``, the validation windows) the most perplexity-sensitive MatMuls
    stay float until the budget holds (:func:`lm_budget.enforce_perplexity_budget`).

    Example:
        >>> res = quantize_int4("lm.onnx", {"block_size": 32, "embeddings": True}, out_path="lm.int4.onnx")
        >>> res.sidecar["ops"]["MatMulNBits"]
        9
    """
    cfg = validated_config(Int4Config, config, "int4")
    src, out_path = Path(onnx_path), Path(out_path)
    _check_budget_request(src, cfg, val, "int4")
    weights = check_block_size(src, cfg.block_size, cfg.embeddings)
    import onnx

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgekit-int4-") as d:
        work = Path(d)

        def build(exclude, path: Path) -> Path:
            onnx.save(_int4_model(src, cfg, exclude), str(path))
            return path

        chosen, budget = _with_budget(build, src, cfg, val, threads, work, [n for n, _, _ in weights["MatMul"]])
        model = onnx.load(str(chosen))
    counts = _op_counts(model, ("MatMulNBits", "GatherBlockQuantized", "MatMul", "Gather"))
    if counts["MatMulNBits"] == 0 and not (budget and budget.all_float):
        # ORT logs an error and returns the model unchanged for some requests
        raise QuantizationError(f"{src.name}: MatMulNBits quantisation left the model unchanged ({counts})")
    with atomic_path(out_path, suffix=".onnx") as tmp:
        onnx.save(model, str(tmp))
    fp32, int4 = src.stat().st_size, out_path.stat().st_size
    side, extra = budget_record(budget)
    sidecar = {"scheme": {"weights": f"int{cfg.bits} (RTN, per block)", "bits": cfg.bits,
                          "block_size": cfg.block_size, "symmetric": cfg.symmetric,
                          "accuracy_level": cfg.accuracy_level, "embeddings": cfg.embeddings},
               "ops": counts, "weights_found": {k: len(v) for k, v in weights.items()}, "source": str(src), **side}
    metrics = {"size_bytes": int4, "fp32_size_bytes": fp32, "size_ratio": int4 / fp32,
               "seconds": time.perf_counter() - t0, **extra}
    write_sidecar(out_path, {**sidecar, **metrics})
    logger.info(f"int{cfg.bits} {src.name} -> {out_path.name}: {int4 / fp32:.3f}× size, {counts}")
    return Result(artifact=out_path, metrics=metrics, sidecar=sidecar)


def _int4_model(src: Path, cfg: Int4Config, exclude: Sequence[str] = ()):
    """The MatMulNBits model of ``src`` with the MatMuls in ``exclude`` left float."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    ops = ("MatMul", "Gather") if cfg.embeddings else ("MatMul",)
    algo = DefaultWeightOnlyQuantConfig(block_size=cfg.block_size, is_symmetric=cfg.symmetric, bits=cfg.bits,
                                        accuracy_level=cfg.accuracy_level or None, op_types_to_quantize=ops)
    float_model = onnx.load(str(src))  # before _ort_tool changes the working directory
    with _ort_tool(src, "MatMulNBits quantisation"):
        q = MatMulNBitsQuantizer(float_model, block_size=cfg.block_size, is_symmetric=cfg.symmetric,
                                 accuracy_level=cfg.accuracy_level or None, op_types_to_quantize=ops,
                                 algo_config=algo, nodes_to_exclude=list(exclude))
        q.process()
    model = q.model.model
    _keep_opset(model, src)
    return model


@contextmanager
def _ort_tool(src: Path, what: str) -> Iterator[None]:
    """Run an ONNX Runtime quantisation tool quietly in a scratch working directory (the tools drop temporary
    files in the current one: paths given to the tool must be absolute); its failure becomes a QuantizationError
    naming ``src`` and ``what``."""
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="edgekit-ortq-") as d:
        os.chdir(d)
        try:
            with quiet():
                yield
        except Exception as e:  # noqa: BLE001
            raise QuantizationError(f"{src.name}: ONNX Runtime {what} failed: {first_line(e)[:240]}") from None
        finally:
            os.chdir(cwd)


def _check_budget_request(src: Path, cfg: Any, val: Any, stage: str) -> None:
    """A perplexity budget needs validation windows and a KV-cache graph (checked before any work)."""
    if cfg.max_perplexity_increase is None:
        return
    from edgekit.export.causal_lm import OrtCausalLM
    from edgekit.techniques.quantize.lm_budget import lm_windows

    if val is None:
        raise ConfigError(f"{stage}.max_perplexity_increase needs the validation split (val=splits.val)")
    lm_windows(val, 1, f"{stage}.max_perplexity_increase")
    OrtCausalLM(src, threads=1)  # a KV-cache LM graph (ShapeError otherwise)


def _with_budget(build, src: Path, cfg: Any, val: Any, threads: Optional[int], work: Path,
                 candidates: List[str]):
    """(the chosen graph, the budget outcome or None): every candidate quantised, then, with a budget, the most
    sensitive MatMuls kept float until it holds."""
    first = build([], work / "quantised.onnx")
    if cfg.max_perplexity_increase is None:
        return first, None
    res = enforce_perplexity_budget(build, src, first, val, cfg.max_perplexity_increase, candidates=candidates,
                                    work_dir=work, windows=cfg.budget_windows,
                                    sensitivity_windows=cfg.sensitivity_windows, threads=threads)
    if not res.met:
        raise perplexity_budget_error(res, src.name)
    return res.path, res


def quantize_dynamic_int8(onnx_path: str | Path, config: Int8DynamicConfig | dict | None = None, *,
                          out_path: str | Path, train: Any = None, val: Any = None,
                          threads: Optional[int] = 1) -> Result:
    """Dynamic INT8 (int8 weights, uint8 activations quantised per call) of every weight MatMul of an LM graph.

    With ``smoothquant`` the KV-cache graph is first smoothed (:func:`smoothquant.smooth_onnx`, calibrated on
    ``samples`` training windows run with an empty past); with ``max_perplexity_increase`` the most sensitive
    MatMuls stay float until the validation perplexity is within the budget.

    Example:
        >>> quantize_dynamic_int8("lm.onnx", {"smoothquant": {"alpha": 0.5}}, out_path="lm.int8.onnx",
        ...                       train=splits.train).metrics["smoothed_matmuls"]
        9
    """
    import onnx

    cfg = validated_config(Int8DynamicConfig, config, "int8_dynamic")
    src, out_path = Path(onnx_path), Path(out_path)
    _check_smoothquant_request(src, cfg, train)
    _check_budget_request(src, cfg, val, "int8_dynamic")
    weights = check_block_size(src, 16, embeddings=False)  # same "is there anything to quantise" check
    with tempfile.TemporaryDirectory(prefix="edgekit-dq-") as d:
        work = Path(d)
        graph, smooth = _smoothed(src, cfg, train, threads, work)

        def build(exclude, path: Path) -> Path:
            return _dynamic(graph, path, cfg.per_channel, exclude)

        chosen, budget = _with_budget(build, src, cfg, val, threads, work, [n for n, _, _ in weights["MatMul"]])
        model = onnx.load(str(chosen))
    counts = _op_counts(model, ("MatMulInteger", "DynamicQuantizeMatMul", "MatMul"))
    if counts["MatMulInteger"] + counts["DynamicQuantizeMatMul"] == 0 and not (budget and budget.all_float):
        raise QuantizationError(f"{src.name}: dynamic INT8 quantised no MatMul ({counts})")
    with atomic_path(out_path, suffix=".onnx") as tmp:
        onnx.save(model, str(tmp))
    metrics = {"size_bytes": out_path.stat().st_size, "fp32_size_bytes": src.stat().st_size}
    metrics["size_ratio"] = metrics["size_bytes"] / metrics["fp32_size_bytes"]
    side, extra = budget_record(budget)
    sidecar = {"scheme": {"weights": "int8", "activations": "uint8 dynamic", "per_channel": cfg.per_channel},
               "ops": counts, "source": str(src), "smoothquant": smooth, **side}
    if smooth:
        metrics.update(smoothquant_alpha=smooth["alpha"], smoothed_matmuls=smooth["matmuls"])
    metrics.update(extra)
    write_sidecar(out_path, {**sidecar, **metrics})
    return Result(artifact=out_path, metrics=metrics, sidecar=sidecar)


def _dynamic(src: Path, out: Path, per_channel: bool, exclude: Sequence[str] = ()) -> Path:
    """ORT ``quantize_dynamic`` of the weight MatMuls of ``src`` (those in ``exclude`` left float) to ``out``."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src_file, out_file = str(src.resolve()), str(out.resolve())  # before _ort_tool changes the working directory
    with _ort_tool(src, "quantize_dynamic"):
        quantize_dynamic(src_file, out_file, op_types_to_quantize=["MatMul"], per_channel=per_channel,
                         weight_type=QuantType.QInt8, nodes_to_exclude=list(exclude))
    return out


def smoothable_matmuls(model) -> List[str]:
    """Names of the MatMuls SmoothQuant can smooth: a constant 2-D weight, its other input an activation."""
    from edgekit.techniques.quantize.smoothquant import smoothable

    return [n.name for nodes in smoothable(model).values() for n in nodes if n.op_type == "MatMul"]


def _check_smoothquant_request(src: Path, cfg: Int8DynamicConfig, train: Any) -> None:
    """SmoothQuant needs smoothable MatMuls, a KV-cache graph and training windows (checked before any work)."""
    if cfg.smoothquant is None:
        return
    import onnx

    from edgekit.export.causal_lm import OrtCausalLM
    from edgekit.techniques.quantize.lm_budget import lm_windows

    if not src.is_file():
        raise InputFileError(f"ONNX file not found: {src}")
    if not smoothable_matmuls(onnx.load(str(src), load_external_data=False)):
        raise ConfigError(f"int8_dynamic.smoothquant: {src.name} has no MatMul to smooth; SmoothQuant needs MatMul "
                          "nodes with a constant 2-D weight whose other input is an activation (Linear layers, GPT-2 "
                          "Conv1D exported as Linear by edgekit.export.causal_lm); remove smoothquant for this graph")
    if train is None:
        raise ConfigError("int8_dynamic.smoothquant needs training windows to calibrate on (train=splits.train)")
    lm_windows(train, 1, "int8_dynamic.smoothquant")
    OrtCausalLM(src, threads=1)  # a KV-cache LM graph (ShapeError otherwise)


def _smoothed(src: Path, cfg: Int8DynamicConfig, train: Any, threads: Optional[int], work: Path):
    """(the graph to quantise, SmoothQuant's record or None): ``src`` smoothed on ``cfg.samples`` training windows
    (empty past) when ``cfg.smoothquant`` asks for it."""
    if cfg.smoothquant is None:
        return src, None
    from edgekit.techniques.quantize.lm_budget import graph_feeds, lm_windows
    from edgekit.techniques.quantize.smoothquant import smooth_onnx

    x, _ = lm_windows(train, cfg.samples, "int8_dynamic.smoothquant")
    rep = smooth_onnx(src, work / "smoothed.onnx", graph_feeds(src, x, threads=threads), alpha=cfg.smoothquant.alpha)
    record = rep.to_dict()
    record.update(matmuls=sum(len(t.consumers) for t in rep.tensors), windows=len(x))
    return rep.path, record


def _keep_opset(model, src: Path) -> None:
    """Give the quantised graph its source's ONNX opset back: the quantiser raises it to 21, where ``ReduceMean``
    takes its axes as an input, so a Llama-style RMSNorm (``ReduceMean`` with an ``axes`` attribute) would no longer
    load. Only ``com.microsoft`` ops (MatMulNBits, GatherBlockQuantized) are added, so the source opset holds."""
    import onnx

    source = onnx.load(str(src), load_external_data=False)
    before = {o.domain: o.version for o in source.opset_import}
    added = {n.op_type for n in model.graph.node if n.domain in ("", "ai.onnx")} - \
        {n.op_type for n in source.graph.node}
    if added:  # the quantiser added default-domain ops (e.g. blocked DequantizeLinear): keep its opset
        return
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx") and before.get(o.domain) is not None:
            o.version = before[o.domain]


def _op_counts(model, ops) -> Dict[str, int]:
    counts = {o: 0 for o in ops}
    for n in model.graph.node:
        if n.op_type in counts:
            counts[n.op_type] += 1
    return counts


def _apply(model_path, config, *, out_path, val=None, threads=None) -> Result:
    return quantize_int4(model_path, config, out_path=out_path, val=val, threads=threads)


def _apply_int8(model_path, config, *, out_path, train=None, val=None, threads=None) -> Result:
    return quantize_dynamic_int8(model_path, config, out_path=out_path, train=train, val=val, threads=threads)


#: the technique descriptors; registered below, so ``int4`` and ``int8_dynamic`` are recipe stages
INT4_TECHNIQUE = Technique(
    "int4", Int4Config, "onnx", "onnx", _apply, "weight-only INT4 (MatMulNBits) of an ONNX LM's MatMul/embeddings",
    needs_torch=False, variant_suffix=lambda c: f"int4b{c.block_size}")
INT8_DYNAMIC_TECHNIQUE = Technique(
    "int8_dynamic", Int8DynamicConfig, "onnx", "onnx", _apply_int8,
    "dynamic INT8 (int8 weights, uint8 activations per call) of an ONNX LM's weight MatMuls", needs_torch=False,
    variant_suffix=lambda c: "int8dyn")
register_technique(INT4_TECHNIQUE)
register_technique(INT8_DYNAMIC_TECHNIQUE)

__all__ = ["INT4_TECHNIQUE", "INT8_DYNAMIC_TECHNIQUE", "Int4Config", "Int8DynamicConfig", "check_block_size",
           "quantize_dynamic_int8", "quantize_int4", "smoothable_matmuls"]
