"""Perplexity budget for LM quantisation (``int8_dynamic``, ``int4``) and SmoothQuant calibration of a KV-cache graph.

The LM counterpart of :mod:`edgekit.techniques.quantize.budget` (the classifier's accuracy budget): the budget is
``max_perplexity_increase`` percent over the float parent's **validation** perplexity, measured through the ONNX
KV-cache graph itself (empty past, every window scored in one pass). When the quantised graph exceeds it, every
quantised weight MatMul is ranked by sensitivity — the perplexity recovered on ``sensitivity_windows`` validation
windows when that MatMul alone is kept float (all-quantised minus leave-one-float-out) — and the most sensitive are
kept float one at a time, re-measured on ``budget_windows``, until the budget holds. If it only holds with every
MatMul float, the result says so (``all_float``) and a warning is logged: the artifact is then a float graph, never
presented as a quantised one.

Example:
    >>> res = enforce_perplexity_budget(build, "lm.onnx", "lm.int8.onnx", val, 1.0, candidates=names, work_dir=d)
    >>> res.float_layers, res.final_perplexity
"""
from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from pydantic import Field

from edgekit._log import progress
from edgekit.errors import AccuracyBudgetError, ConfigError
from edgekit.techniques.base import TechniqueConfig
from edgekit.techniques.quantize.budget import BuildFn

logger = logging.getLogger(__name__)

_ROUNDING_PCT = 1e-3  # percent: closer perplexities are equal (float graphs rebuilt or smoothed: rounding only)


class PerplexityBudgetFields(TechniqueConfig):
    """The perplexity-budget fields shared by the LM quantisation stages (``int8_dynamic``, ``int4``)."""

    max_perplexity_increase: Optional[float] = Field(
        None, ge=0, description="budget in percent over the float parent's validation perplexity (through its ONNX "
                                "graph); above it the most sensitive weight MatMuls stay float (null = no budget)")
    budget_windows: int = Field(64, gt=0, description="validation windows (evenly spaced over the split) the "
                                                      "perplexity budget is measured on")
    sensitivity_windows: int = Field(16, gt=0, description="of the budget windows, how many (evenly spaced) each "
                                                           "MatMul's sensitivity (perplexity recovered when it alone "
                                                           "stays float) is measured on")


@dataclass
class PerplexityStep:
    """One MatMul kept float and the validation perplexity measured afterwards."""

    layer: str
    sensitivity: float  # perplexity recovered (sensitivity windows) when this MatMul alone is float
    val_perplexity: float
    increase_pct: float  # over the float parent's validation perplexity


@dataclass
class PerplexityBudgetResult:
    """Outcome of :func:`enforce_perplexity_budget` (the shape of :class:`budget.BudgetResult`)."""

    fp32_perplexity: float
    quant_perplexity: float  # every candidate quantised
    final_perplexity: float
    max_increase: float
    windows: int
    sensitivity_windows: int = 0
    float_layers: List[str] = field(default_factory=list)
    steps: List[PerplexityStep] = field(default_factory=list)
    sensitivity: List[Tuple[str, float]] = field(default_factory=list)
    met: bool = True
    all_float: bool = False  # the budget held only with every candidate float: no MatMul is quantised
    path: Optional[Path] = None  # the artifact chosen

    @property
    def increase_pct(self) -> float:
        return _increase(self.final_perplexity, self.fp32_perplexity)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["path"] = str(self.path) if self.path else None
        d["sensitivity"] = [[n, round(s, 6)] for n, s in self.sensitivity]
        d["increase_pct"] = round(self.increase_pct, 4)
        return d

    def metrics(self) -> Dict[str, Any]:
        """Flat stage metrics (prefixed ``budget_`` so the stage's own val/test perplexity keeps its names)."""
        return {"budget_fp32_val_perplexity": round(self.fp32_perplexity, 4),
                "budget_all_quantised_val_perplexity": round(self.quant_perplexity, 4),
                "budget_val_perplexity": round(self.final_perplexity, 4),
                "budget_increase_pct": round(self.increase_pct, 4), "max_perplexity_increase": self.max_increase,
                "budget_met": self.met, "budget_all_float": self.all_float, "float_layers": len(self.float_layers)}

    def kept_float(self) -> List[Dict[str, Any]]:
        """``{node, reason, val_perplexity_cost}`` per MatMul kept float (what ``ptq.kept_float_reasons`` lists)."""
        return [{"node": s.layer, "reason": f"perplexity budget: kept float (alone float, it recovers "
                                            f"{s.sensitivity:.4g} perplexity on {self.sensitivity_windows} "
                                            "validation windows)",
                 "val_perplexity_cost": round(s.sensitivity, 6)} for s in self.steps]


def _increase(ppl: float, ref: float) -> float:
    return 100.0 * (ppl / ref - 1.0)


def _within(ppl: float, ref: float, budget: float) -> bool:
    """``ppl`` is within ``budget`` percent of ``ref`` (a float-identical graph differs by rounding only)."""
    return _increase(ppl, ref) <= budget + _ROUNDING_PCT


def lm_windows(split: Any, n: int, what: str) -> Tuple[np.ndarray, np.ndarray]:
    """``n`` next-token windows ``(x [n, T], y [n, T])`` of a causal-LM split, evenly spaced over it (documents
    differ: the first windows alone need not be typical of the split), checked."""
    x, y = getattr(split, "x", None), getattr(split, "y", None)
    if x is None or y is None or np.asarray(x).ndim != 2 or np.shape(x) != np.shape(y):
        raise ConfigError(f"{what} needs causal-LM data: next-token windows x [N, T] with targets y [N, T] "
                          "(data.name: pydoc_lm | text_lm)")
    idx = spread(len(x), n)
    return np.asarray(x[idx], np.int64), np.asarray(y[idx], np.int64)


def spread(total: int, n: int) -> np.ndarray:
    """``min(n, total)`` indices evenly spaced over ``range(total)`` (all of them when ``n >= total``)."""
    return np.unique(np.linspace(0, total - 1, min(n, total)).round().astype(np.int64)) if total else \
        np.zeros(0, np.int64)


def graph_feeds(path: str | Path, x: np.ndarray, batch: int = 8, threads: Optional[int] = 1) -> List[Dict[str, Any]]:
    """Feeds of a KV-cache graph for token windows ``x [N, T]`` with an empty past (prefill), ``batch`` at a time:
    what SmoothQuant calibrates on."""
    from edgekit.export.causal_lm import OrtCausalLM

    lm = OrtCausalLM(path, threads=threads)
    return [lm.feed(ids, lm.layout.empty_past(len(ids)))
            for ids in (np.ascontiguousarray(x[i:i + batch], np.int64) for i in range(0, len(x), batch))]


def graph_perplexity(path: str | Path, x: np.ndarray, y: np.ndarray, threads: Optional[int] = 1,
                     batch: int = 1) -> float:
    """Perplexity of a KV-cache ONNX graph on windows ``x`` with next tokens ``y`` (empty past): the number
    :func:`edgekit.bench.decode.perplexity` gives, without a decoder object. One window per call by default, as the
    report measures: dynamic INT8 quantises activations per call, so batching windows would change the number."""
    from edgekit.export.causal_lm import OrtCausalLM, token_nll

    lm = OrtCausalLM(path, threads=threads)
    nll, n = 0.0, 0
    for i in range(0, len(x), batch):
        ids = x[i:i + batch]
        nll += token_nll(lm.step(ids, lm.layout.empty_past(len(ids)))[0], y[i:i + batch])
        n += y[i:i + batch].size
    return math.exp(nll / n)


def enforce_perplexity_budget(build: BuildFn, fp32_path: Path, quant_path: Path, val: Any, max_increase: float, *,
                              candidates: Sequence[str], work_dir: Path, windows: int = 64,
                              sensitivity_windows: int = 16, threads: Optional[int] = 1) -> PerplexityBudgetResult:
    """Keep the most perplexity-sensitive weight MatMuls float until validation perplexity is within ``max_increase``
    percent of the float graph's.

    Args:
        build: re-quantises with the given MatMuls kept float and writes to the given path.
        fp32_path / quant_path: the float parent graph and the graph with every candidate quantised.
        val: the validation split (next-token windows).
        max_increase: budget in percent of the float perplexity.
        candidates: the quantised MatMul node names (of the graph ``build`` quantises).
        windows / sensitivity_windows: validation windows for the budget / for ranking.

    Returns:
        PerplexityBudgetResult (``all_float`` when every candidate ended float; ``met`` False when even that is
        over the budget: the caller raises :func:`perplexity_budget_error`).

    Example:
        >>> res = enforce_perplexity_budget(build, fp32, q, splits.val, 0.5, candidates=names, work_dir=d)
    """
    x, y = lm_windows(val, windows, "max_perplexity_increase")
    ref = graph_perplexity(fp32_path, x, y, threads)
    quant = graph_perplexity(quant_path, x, y, threads)
    res = PerplexityBudgetResult(ref, quant, quant, max_increase, len(x), path=quant_path)
    if _within(quant, ref, max_increase) or not candidates:
        res.met = _within(quant, ref, max_increase)
        return res
    logger.info(f"quantised val perplexity {quant:.4g} vs float {ref:.4g} (+{_increase(quant, ref):.2f}% > "
                f"{max_increase}%): ranking {len(candidates)} MatMuls by sensitivity")
    few = spread(len(x), sensitivity_windows)
    res.sensitivity_windows = len(few)
    res.sensitivity = _rank(build, candidates, quant_path, x[few], y[few], work_dir, threads)
    excluded: List[str] = []
    for step, (layer, score) in enumerate(progress(res.sensitivity, desc="ppl fallback", total=len(candidates))):
        excluded.append(layer)
        path = build(list(excluded), work_dir / f"ppl_fallback_{step}.onnx")
        ppl = graph_perplexity(path, x, y, threads)
        res.steps.append(PerplexityStep(layer, score, ppl, _increase(ppl, ref)))
        res.float_layers.append(layer)
        res.final_perplexity, res.path = ppl, path
        logger.info(f"  float {layer}: val perplexity {ppl:.4g} ({_increase(ppl, ref):+.2f}%)")
        if _within(ppl, ref, max_increase):
            break
    res.met = _within(res.final_perplexity, ref, max_increase)
    res.all_float = len(res.float_layers) == len(candidates)
    if res.all_float and res.met:
        logger.warning(f"perplexity budget {max_increase}% held only with every one of the {len(candidates)} weight "
                       "MatMuls float: no MatMul is quantised; relax max_perplexity_increase to quantise them")
    return res


def _rank(build: BuildFn, candidates: Sequence[str], quant_path: Path, x: np.ndarray, y: np.ndarray, work_dir: Path,
          threads: Optional[int]) -> List[Tuple[str, float]]:
    """``[(MatMul, perplexity recovered when it alone is float)]``, most sensitive first."""
    base = graph_perplexity(quant_path, x, y, threads)
    scores = []
    for i, layer in enumerate(progress(list(candidates), desc="ppl sensitivity", total=len(candidates))):
        path = build([layer], work_dir / f"ppl_sens_{i}.onnx")
        scores.append((layer, base - graph_perplexity(path, x, y, threads)))
        path.unlink(missing_ok=True)
    return sorted(scores, key=lambda t: -t[1])


def perplexity_budget_error(res: PerplexityBudgetResult, where: str) -> AccuracyBudgetError:
    """The error for a budget that keeping every weight MatMul float could not meet (what else is quantised — e.g.
    INT4 embeddings — costs more than the budget), with the measured numbers attached (``err.measured``)."""
    from edgekit.techniques.quantize.budget import measured_error

    return measured_error(
        f"{where}: validation perplexity {res.final_perplexity:.4g} vs float {res.fp32_perplexity:.4g} "
        f"(+{res.increase_pct:.3g}%, budget max_perplexity_increase={res.max_increase}%) even with all "
        f"{len(res.float_layers)} weight MatMuls float (all quantised: {res.quant_perplexity:.4g}); what stays "
        "quantised costs more than the budget (int4: set embeddings: false), or relax max_perplexity_increase", res)


def budget_record(res: Optional[PerplexityBudgetResult]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """(sidecar part, metrics part) of a budget outcome; both empty without a budget."""
    if res is None:
        return {}, {}
    side = {"perplexity_budget": {k: v for k, v in res.to_dict().items() if k != "path"},
            "float_layers": list(res.float_layers), "kept_float": res.kept_float(),
            "fallback": [asdict(s) for s in res.steps]}
    if res.all_float:
        side["precision"] = "weight MatMuls fp32 (the perplexity budget kept every one float)"
    return side, res.metrics()


__all__ = ["PerplexityBudgetFields", "PerplexityBudgetResult", "PerplexityStep", "budget_record",
           "enforce_perplexity_budget", "perplexity_budget_error", "graph_feeds", "graph_perplexity", "lm_windows"]
