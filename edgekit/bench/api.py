"""``benchmark()``: latency, throughput, memory, MACs, efficiency, accuracy and paired speedups.

Three steps, one module each: ``plan`` (open every model on every backend, check inputs), ``run`` (time the
cases interleaved in rounds with the GEMM peak) and ``rows`` (one row per model x backend x batch).

Example:
    >>> from edgekit.bench import benchmark
    >>> res = benchmark(["fp32.onnx", "int8.onnx"], backends="torch,ort-cpu", batches=(1, 8), threads=2)
    >>> print(res.to_markdown()); res.write("bench_out")
"""
from __future__ import annotations

import os
import resource
import time
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple, Union

from edgekit.bench.data import parse_batches, parse_inputs, parse_sequences
from edgekit.bench.results import SCHEMA, BenchResult
from edgekit.bench.specs import ModelSpec
from edgekit.core.measure.latency import ROUND_STATS, Precision, validate_settings
from edgekit.errors import ConfigError


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def _match_baseline(baseline: Any, keys: List[Tuple[str, str]], specs: List[ModelSpec]) -> Tuple[str, str]:
    if baseline is None:
        return keys[0]
    if isinstance(baseline, tuple):
        name, backend = baseline
    else:
        name, _, backend = str(baseline).partition("@")
    if name not in {s.name for s in specs}:  # a path given: map it to the model that has that artifact
        for s in specs:
            if any(isinstance(a, (str, os.PathLike)) and Path(a).resolve() == Path(name).resolve()
                   for a in s.artifacts.values()):
                name = s.name
                break
    for key in keys:
        if key[0] == name and (not backend or key[1] == backend):
            return key
    allowed = ", ".join(f"{m}@{b}" for m, b in keys)
    raise ConfigError(f"baseline '{baseline}' is not among the benchmarked models; allowed: {allowed}")


def benchmark(models: Any, backends: Union[str, Sequence[str], None] = None, batches: Any = (1,),
              threads: Optional[int] = None, warmup: int = 10, iters: Optional[int] = None,
              min_time: Optional[float] = None, rounds: int = 20, baseline: Any = None, data: Any = None,
              out_dir: Union[str, os.PathLike, None] = None, input_shape: Optional[Sequence[int]] = None,
              plots: bool = True, round_stat: str = "min", inputs: Any = None,
              sequences: Any = None, ci_target: Optional[float] = None, max_seconds: float = 120.0) -> BenchResult:
    """Time models on backends and batch sizes, interleaved in rounds, with paired speedups.

    Args:
        models: a path (.onnx / .pt / .engine), an ``nn.Module``, a ``ModelSpec`` or a list of them
            (pipeline variants with ``name``/``checkpoint``/``onnx``/``engine`` attributes work too).
        backends: backend names (``edgekit.backends.BACKENDS``) as a list or ``"a,b"``; None = the default
            ONNX backend on the CPU (``ort-cpu``). Unavailable ones are skipped with their reason unless none
            is left (then BackendUnavailableError).
        batches: batch sizes (ints or "1,8,32").
        threads: intra-op CPU threads; None = the CPUs this process may use. Recorded in the result.
        warmup: untimed iterations per case before timing.
        iters / min_time: total timed iterations, or minimum timed seconds, per case (default 1 s).
        rounds: interleaved rounds; each gives one per-round speedup ratio.
        baseline: model name or path (optionally ``name@backend``); default the first model on the first backend.
        data: held-out split (``.x`` float32 [N, ...] or ``{input name: array}``, ``.y`` int64), an ``.npz``
            path (``x``/``y``, or one array per input name + ``y``) or ``"digits"``: adds top-1 accuracy (%)
            measured through the same runner.
        out_dir: when given, writes bench.json / .csv / .md and plots there.
        input_shape: per-sample input shape when the artifact does not fix it.
        plots: write PNG plots along with the tables (when ``out_dir`` is given).
        round_stat: per-round latency behind ratios and efficiency: "min" (default; robust to the
            additive noise of a shared machine), "p25" or "median".
        inputs: synthetic inputs by name, ``["input_ids:int64:1x128", ...]`` or ``{name: (dtype, shape)}`` (shape
            batch first; the batch sizes replace it). Integer inputs get valid values: token ids inside the
            vocabulary (the embedding table's rows), masks of ones.
        sequences: sequence lengths to sweep for models with a dynamic sequence axis ("32,128"); every row
            then carries its ``sequence``.
        ci_target / max_seconds: adaptive rounds until every speed-up's 95 % CI half-width is at most ``ci_target``
            of its median, or 3 × ``rounds`` / ``max_seconds`` per batch (``config.adaptive`` says which).

    Returns:
        BenchResult with one row per model x backend x batch.

    Example:
        >>> res = benchmark(["a.onnx", "b.onnx"], batches="1,8", threads=2, iters=200)
        >>> res.rows[1]["speedup"]
        >>> benchmark("bert.onnx", inputs=["input_ids:int64:1x128", "attention_mask:int64:1x128",
        ...                                "token_type_ids:int64:1x128"], sequences="32,128")
    """
    from edgekit.bench.plan import make_plan
    from edgekit.bench.rows import peak_summary
    from edgekit.core.platform import environment, load_average

    batch_list, min_time = _checked_settings(batches, warmup, iters, min_time, rounds, round_stat, threads)
    precision = _precision(ci_target, rounds, max_seconds)
    input_specs, seq_list = _checked_inputs(inputs, sequences, data)
    env, backend_list = environment(), _backend_names(backends)
    threads = threads or env["cores_usable"]
    plan = make_plan(models, backend_list, threads, data, input_shape, max(batch_list), input_specs,
                     seq_list[0] if seq_list else None)
    try:
        base_key = _match_baseline(baseline, plan.keys, plan.specs)
        accuracy = plan.accuracy()
        t0, load_start = time.time(), load_average()
        rows, timings, peak_gpu, shapes = _sweep(plan, seq_list, batch_list, base_key, accuracy,
                                                 (warmup, iters, min_time, rounds, round_stat, precision))
        timing_s = time.time() - t0
    finally:
        plan.close()
    result = BenchResult(
        rows=rows, skipped=plan.skipped, environment=env,
        peak={"cpu": peak_summary(timings, threads), "gpu": peak_gpu},
        config={"backends": backend_list, "batches": batch_list, "threads": threads, "warmup": warmup,
                "iters": iters, "min_time": min_time, "rounds": rounds, "round_stat": round_stat,
                "input_shapes": shapes, "sequences": seq_list,
                "data": _data_info(plan.split),
                "timing_s": round(timing_s, 1), "peak_rss_mb": round(_peak_rss_mb(), 1),
                "adaptive": [t.adaptive | {"batch": t.batch} for t in timings if t.adaptive] or None,
                "load_avg_1m": [load_start, load_average()]},
        baseline={"model": base_key[0], "backend": base_key[1]},
    )
    if out_dir is not None:
        result.write(out_dir, plots=plots)
    return result


def _precision(ci_target: Optional[float], rounds: int, max_seconds: float) -> Optional[Precision]:
    if ci_target is not None and not (0 < ci_target < 1):
        raise ConfigError(f"ci_target is a fraction of the median speed-up in (0, 1), e.g. 0.05; got {ci_target}")
    return Precision(ci_target, 3 * rounds, max_seconds) if ci_target else None


def _checked_inputs(inputs: Any, sequences: Any, data: Any) -> Tuple[Optional[dict], Optional[List[int]]]:
    input_specs, seq_list = parse_inputs(inputs) if inputs else None, parse_sequences(sequences)
    if seq_list and data is not None:
        raise ConfigError("a sequence sweep (sequences/--seq) uses synthetic inputs; it cannot be combined with data "
                          "(whose sequence length is fixed)")
    return input_specs, seq_list


def _data_info(split: Any) -> Optional[dict]:
    return None if split is None else {"n": int(len(split.x)), "source": getattr(split, "source", None)}


def _sweep(plan: Any, seq_list: Optional[List[int]], batch_list: List[int], base_key: Tuple[str, str],
           accuracy: dict, timing: tuple) -> Tuple[List[dict], list, Optional[dict], dict]:
    """Time the plan at every batch size (and sequence length): rows, timings, GPU peak, input shapes used."""
    from edgekit.bench.rows import batch_rows
    from edgekit.bench.run import run_plan

    rows: List[dict] = []
    timings: list = []
    peak_gpu, shapes = None, {}
    for seq in seq_list or [None]:
        if seq is not None:
            plan.set_sequence(seq)
        macs = plan.macs()
        batch_timings, peak_gpu = run_plan(plan, batch_list, *timing)
        timings += batch_timings
        for t in batch_timings:
            rows += [{**row, **({"sequence": seq} if seq is not None else {})}
                     for row in batch_rows(plan, t, base_key, macs, accuracy, peak_gpu)]
        shapes.update({f"{k}@{seq}" if seq else k: _shown(v) for k, v in plan.shapes.items()})
    return rows, timings, peak_gpu, shapes


def _shown(shape: Any) -> Any:
    """A per-sample shape (tuple) or ``{input: shape}`` as JSON-friendly lists."""
    return {k: list(v) for k, v in shape.items()} if isinstance(shape, dict) else list(shape)


def _checked_settings(batches: Any, warmup: int, iters: Optional[int], min_time: Optional[float], rounds: int,
                      round_stat: str, threads: Optional[int]) -> Tuple[List[int], Optional[float]]:
    """Cheap validation first, before heavy imports and work; returns the batch list and ``min_time``."""
    batch_list = parse_batches(batches)
    validate_settings(warmup, iters, min_time, rounds)
    if round_stat not in ROUND_STATS:
        raise ConfigError(f"round_stat must be one of {', '.join(ROUND_STATS)}, got {round_stat!r}")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"threads must be a positive integer, got {threads!r}")
    return batch_list, (1.0 if iters is None and min_time is None else min_time)


def _backend_names(backends: Union[str, Sequence[str], None]) -> List[str]:
    """``"a,b"`` or a list of names (None: the default ONNX backend on this CPU)."""
    if backends is None:
        from edgekit.backends import default_backend

        return [default_backend("onnx", "cpu")]
    return [b.strip() for b in ([backends] if isinstance(backends, str) else backends) for b in b.split(",")
            if b.strip()]


__all__ = ["ModelSpec", "benchmark", "SCHEMA"]
