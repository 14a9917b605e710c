"""Accuracy budget for INT8: rank layers by sensitivity, fall the most sensitive back to float one at a time.

The budget is ``max_accuracy_drop`` accuracy points on the **validation** split (test stays untouched).
Sensitivity of a layer = how much the int8 model's logits move towards the float model's when only
that layer is kept in float (mean squared logit error, all-int8 minus leave-one-float-out). Each step
re-quantises with one more layer excluded (calibration is reused), re-measures validation accuracy
through ONNX Runtime, and times the artifact against the all-int8 one (interleaved, batch 1), so the
report says what each float layer cost in latency.

Example:
    >>> res = enforce_budget(build, "fp32.onnx", "int8.onnx", splits.val, max_drop=0.5, candidates=layers,
    ...                      work_dir=tmp)
    >>> res.float_layers, res.final_accuracy
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from edgekit._log import progress
from edgekit.errors import AccuracyBudgetError

logger = logging.getLogger(__name__)

BuildFn = Callable[[Sequence[str], Path], Path]  # (layers kept float, output path) -> quantised model path


@dataclass
class FallbackStep:
    """One layer fallen back to float and what the model measured afterwards."""

    layer: str
    sensitivity: float
    val_accuracy: float
    accuracy_drop: float
    int8_mac_fraction: float
    latency_ms: float  # batch 1, median of round medians
    slowdown_vs_int8: float  # paired ratio: this artifact's latency / all-int8 latency (>1 = slower)


@dataclass
class BudgetResult:
    """Outcome of :func:`enforce_budget`."""

    fp32_accuracy: float
    int8_accuracy: float  # all layers int8 (besides user exclusions)
    final_accuracy: float
    max_drop: float
    float_layers: List[str] = field(default_factory=list)
    steps: List[FallbackStep] = field(default_factory=list)
    sensitivity: List[Tuple[str, float]] = field(default_factory=list)
    met: bool = True
    path: Optional[Path] = None  # the artifact meeting the budget (or the last one tried)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["path"] = str(self.path) if self.path else None
        d["sensitivity"] = [[n, round(s, 6)] for n, s in self.sensitivity]
        return d


def _runner(path: Path, threads: Optional[int]):
    from edgekit.backends import default_backend, open_runner

    return open_runner(path, default_backend("onnx", "cpu"), threads=threads)


def _accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    return float(100.0 * (logits.argmax(1) == y).mean())


def layer_sensitivity(build: BuildFn, candidates: Sequence[str], base_exclude: Sequence[str], x: np.ndarray,
                      ref_logits: np.ndarray, int8_logits: np.ndarray, work_dir: Path,
                      threads: Optional[int] = None) -> List[Tuple[str, float]]:
    """Rank ``candidates`` by how much keeping each one alone in float reduces the logit error vs fp32.

    Returns:
        ``[(layer, score)]`` sorted most sensitive first (score = MSE(all int8) - MSE(layer float)).
    """
    from edgekit.core.train import predict

    base_err = float(np.mean((int8_logits - ref_logits) ** 2))
    scores = []
    for i, layer in enumerate(progress(list(candidates), desc="sensitivity", total=len(candidates))):
        path = build([*base_exclude, layer], work_dir / f"sens_{i}.onnx")
        logits = predict(_runner(path, threads), x)
        scores.append((layer, base_err - float(np.mean((logits - ref_logits) ** 2))))
        path.unlink(missing_ok=True)
    return sorted(scores, key=lambda t: -t[1])


def _paired_slowdown(a, b, x1: np.ndarray) -> Tuple[float, float]:
    """Batch-1 latency (ms) of runner ``b`` and its paired slowdown vs runner ``a`` (the all-int8 model)."""
    from edgekit.core.measure.latency import Case, paired_ratios, run_interleaved

    res = run_interleaved([Case("int8", a, a.prepare(x1)), Case("fallback", b, b.prepare(x1))],
                          warmup=5, iters=90, min_time=None, rounds=3, desc="fallback latency")
    med = res.round_medians
    return float(np.median(med[1])), float(np.median(paired_ratios(med[1], med[0])))


def enforce_budget(build: BuildFn, fp32_path: Path, int8_path: Path, val, max_drop: float, *,
                   candidates: Sequence[str], coverage_fn: Callable[[Path], float], work_dir: Path,
                   base_exclude: Sequence[str] = (), max_layers: int = 8, sensitivity_samples: int = 256,
                   threads: Optional[int] = 2) -> BudgetResult:
    """Fall back the most sensitive layers to float until val accuracy is within ``max_drop`` of fp32.

    Args:
        build: re-quantises with the given layers kept float and writes to the given path.
        fp32_path / int8_path: the float model and the all-int8 model (same calibration).
        val: labelled validation :class:`edgekit.data.Split`.
        max_drop: budget in accuracy points.
        candidates: quantised layer (node) names that may fall back.
        coverage_fn: ``path -> int8 MAC fraction`` (recorded per step).
        max_layers: most layers to fall back before giving up.

    Returns:
        BudgetResult (``met`` False when the budget could not be met within ``max_layers``).

    Example:
        >>> res = enforce_budget(build, fp32, int8, splits.val, 0.5, candidates=names, coverage_fn=cov, work_dir=d)
    """
    from edgekit.core.train import predict

    fp32_logits = predict(_runner(fp32_path, threads), val.x)
    int8_runner = _runner(int8_path, threads)
    int8_logits = predict(int8_runner, val.x)
    fp32_acc, int8_acc = _accuracy(fp32_logits, val.y), _accuracy(int8_logits, val.y)
    result = BudgetResult(fp32_acc, int8_acc, int8_acc, max_drop, path=int8_path)
    if fp32_acc - int8_acc <= max_drop or not candidates or max_layers == 0:
        result.met = fp32_acc - int8_acc <= max_drop
        return result
    logger.info(f"int8 val accuracy {int8_acc:.2f}% vs fp32 {fp32_acc:.2f}% (drop {fp32_acc - int8_acc:.2f} > "
        f"{max_drop}): ranking {len(candidates)} layers by sensitivity")
    n = min(sensitivity_samples, len(val.x))
    ranked = layer_sensitivity(build, candidates, base_exclude, val.x[:n], fp32_logits[:n], int8_logits[:n],
                               work_dir, threads)
    result.sensitivity = ranked
    x1 = val.x[:1]
    excluded = list(base_exclude)
    steps = ranked[:max_layers]
    for step, (layer, score) in enumerate(progress(steps, desc="fallback", total=len(steps))):
        excluded.append(layer)
        path = build(excluded, work_dir / f"fallback_{step}.onnx")
        runner = _runner(path, threads)
        acc = _accuracy(predict(runner, val.x), val.y)
        lat, slow = _paired_slowdown(int8_runner, runner, x1)
        result.steps.append(FallbackStep(layer, score, acc, fp32_acc - acc, coverage_fn(path), lat, slow))
        result.float_layers.append(layer)
        result.final_accuracy, result.path = acc, path
        logger.info(f"  float {layer}: val {acc:.2f}% (drop {fp32_acc - acc:.2f}), {slow:.2f}x the all-int8 latency")
        if fp32_acc - acc <= max_drop:
            result.met = True
            return result
    result.met = False
    return result


def measured_error(message: str, res: Any) -> AccuracyBudgetError:
    """An AccuracyBudgetError carrying the budget outcome's measured numbers (``err.measured = res.to_dict()``)."""
    err = AccuracyBudgetError(message)
    err.measured = res.to_dict()  # type: ignore[attr-defined]
    return err


def budget_error(res: BudgetResult, where: str) -> AccuracyBudgetError:
    """The AccuracyBudgetError for a budget that fallback could not meet, with the measured numbers attached."""
    return measured_error(
        f"{where}: int8 validation accuracy {res.final_accuracy:.2f}% vs fp32 {res.fp32_accuracy:.2f}% "
        f"(drop {res.fp32_accuracy - res.final_accuracy:.2f} points, budget max_accuracy_drop={res.max_drop}) "
        f"after falling back {len(res.float_layers)} layer(s) to float {res.float_layers} "
        f"(all-int8: {res.int8_accuracy:.2f}%); allow QAT (allow_qat: true), raise max_fallback_layers, "
        "or relax max_accuracy_drop", res)


def history(res: BudgetResult) -> List[Dict]:
    """Fallback steps as plain dicts (for sidecars and variant meta)."""
    return [asdict(s) for s in res.steps]
