"""``benchmark()``: latency, throughput, memory, MACs, efficiency, accuracy and paired speedups.

Example:
    >>> from edgekit.bench import benchmark
    >>> res = benchmark(["fp32.onnx", "int8.onnx"], backends=("ort-cpu",), batches=(1, 8), threads=2)
    >>> print(res.to_markdown()); res.write("bench_out")
"""
from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import BackendUnavailableError, ConfigError, EdgekitError, ShapeError
from ..progress import log
from .data import as_split, parse_batches
from .latency import Case, paired_ratios, ratio_summary, run_interleaved, summarize, validate_settings
from .results import SCHEMA, BenchResult

KINDS = ("module", "checkpoint", "onnx", "engine")


@dataclass
class ModelSpec:
    """A named model with one artifact per kind (``module``, ``checkpoint``, ``onnx``, ``engine``).

    Each backend runs the artifact kind it accepts, so one spec can be timed on torch (checkpoint)
    and on ONNX Runtime (onnx) as the same variant.

    Example:
        >>> ModelSpec("int8", {"onnx": "run/int8.onnx"})
    """

    name: str
    artifacts: Dict[str, Any] = field(default_factory=dict)
    input_shape: Optional[Tuple[int, ...]] = None

    def __post_init__(self) -> None:
        bad = [k for k in self.artifacts if k not in KINDS]
        if bad:
            raise ConfigError(f"model '{self.name}': unknown artifact kind(s) {bad}; allowed: {', '.join(KINDS)}")


def _as_specs(models: Any) -> List[ModelSpec]:
    """Normalise paths / modules / ModelSpecs / pipeline variants to a list of unique-named ModelSpecs."""
    import torch.nn as nn

    from ..runtime.base import artifact_kind

    items = [models] if isinstance(models, (str, os.PathLike, nn.Module, ModelSpec)) else list(models)
    if not items:
        raise ConfigError("no models to benchmark")
    specs: List[ModelSpec] = []
    for it in items:
        if isinstance(it, ModelSpec):
            specs.append(it)
        elif isinstance(it, nn.Module):
            specs.append(ModelSpec(type(it).__name__, {"module": it}))
        elif isinstance(it, (str, os.PathLike)):
            specs.append(ModelSpec(Path(it).stem, {artifact_kind(it): os.fspath(it)}))
        elif hasattr(it, "name") and any(getattr(it, k, None) for k in ("checkpoint", "onnx", "engine")):
            arts = {k: getattr(it, k) for k in ("checkpoint", "onnx", "engine") if getattr(it, k, None)}
            shape = (getattr(it, "meta", None) or {}).get("input_shape")
            specs.append(ModelSpec(str(it.name), arts, tuple(shape) if shape else None))
        else:
            raise ConfigError(f"cannot benchmark a {type(it).__name__}; give a path, an nn.Module or a ModelSpec")
    seen: Dict[str, int] = {}
    for s in specs:  # duplicate stems (a/model.onnx, b/model.onnx) get a numeric suffix
        seen[s.name] = seen.get(s.name, 0) + 1
        if seen[s.name] > 1:
            s.name = f"{s.name}#{seen[s.name]}"
    return specs


def _size_bytes(artifact: Any, kind: str) -> int:
    """Bytes on disk (ONNX external-data files included); in-memory tensor bytes for a module."""
    if kind == "module":
        return int(sum(t.numel() * t.element_size() for t in artifact.state_dict().values()))
    path = Path(artifact)
    total = path.stat().st_size
    if kind == "onnx":
        try:
            import onnx

            m = onnx.load(str(path), load_external_data=False)
            files = {e.value for t in m.graph.initializer for e in t.external_data if e.key == "location"}
            total += sum((path.parent / f).stat().st_size for f in files if (path.parent / f).is_file())
        except Exception:
            pass
    return int(total)


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def _pick_artifact(spec: ModelSpec, backend_kinds: Sequence[str]) -> Optional[Tuple[str, Any]]:
    for kind in backend_kinds:
        if kind in spec.artifacts:
            return kind, spec.artifacts[kind]
    return None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:240]


def _resolve_shape(spec: ModelSpec, runner: Any, input_shape, data) -> Tuple[int, ...]:
    if input_shape is not None:
        return tuple(int(d) for d in input_shape)
    if data is not None:
        return tuple(data.x.shape[1:])
    if spec.input_shape:
        return tuple(int(d) for d in spec.input_shape)
    dims = tuple(runner.input_shape[1:]) if runner.input_shape else ()
    if dims and all(isinstance(d, int) and d > 0 for d in dims):
        return dims
    raise ShapeError(f"model '{spec.name}': its input shape is not fixed in the artifact; "
                     "pass input_shape (per sample, e.g. (3, 224, 224)) or --data")


def _sample(shape: Tuple[int, ...], batch: int, dtype, data, seed: int = 0) -> np.ndarray:
    if data is not None:
        idx = np.arange(batch) % len(data.x)
        return np.ascontiguousarray(data.x[idx]).astype(dtype, copy=False)
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch, *shape), dtype=np.float32).astype(dtype, copy=False)


def _accuracy(runner: Any, data, eval_batch: int = 128) -> float:
    """Top-1 accuracy (%) of ``runner`` on ``data`` (static-batch engines get padded batches)."""
    fixed = runner.input_shape[0] if runner.input_shape and isinstance(runner.input_shape[0], int) else None
    bs = fixed or eval_batch
    correct = 0
    for start in range(0, len(data.x), bs):
        xb = data.x[start:start + bs]
        n = len(xb)
        if fixed and n < fixed:
            xb = np.concatenate([xb, np.repeat(xb[-1:], fixed - n, axis=0)])
        logits = runner(np.ascontiguousarray(xb))[:n]
        correct += int((np.asarray(logits).reshape(n, -1).argmax(1) == data.y[start:start + n]).sum())
    return 100.0 * correct / len(data.x)


def _macs(spec: ModelSpec, runners: Dict[str, Any], shape) -> Tuple[Optional[int], Optional[int], str]:
    """(total, int8, source) MACs per sample from the spec's ONNX graph, else from an exported module."""
    from ..fileio import read_sidecar
    from .macs import count_macs_onnx

    onnx_path = spec.artifacts.get("onnx")
    if onnx_path is None and "engine" in spec.artifacts:
        side = read_sidecar(spec.artifacts["engine"])
        cand = side.get("onnx") or side.get("source_onnx") or side.get("source")
        onnx_path = cand if cand and Path(cand).is_file() else None
    try:
        if onnx_path is not None:
            rep = count_macs_onnx(onnx_path, shape)
            return rep.total, rep.int8, "onnx"
        module = spec.artifacts.get("module") or next((getattr(r, "module", None) for r in runners.values()
                                                       if getattr(r, "module", None) is not None), None)
        if module is not None:
            return _macs_of_module(module, shape), 0, "onnx-export"
    except Exception as e:  # MACs are informative; never fail a benchmark on them
        log(f"bench: could not count MACs of '{spec.name}': {_first_line(e)}")
    return None, None, "unavailable"


def _macs_of_module(module: Any, shape) -> int:
    import io
    import warnings

    import onnx
    import torch

    from .macs import count_macs_onnx

    param = next(module.parameters(), None)
    x = torch.zeros((1, *shape), dtype=torch.float32, device=param.device if param is not None else "cpu")
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.float(), (x,), buf, dynamo=False, opset_version=17)
    return count_macs_onnx(onnx.load_from_string(buf.getvalue()), shape).total


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


def benchmark(models: Any, backends: Sequence[str] = ("ort-cpu",), batches: Any = (1,), threads: Optional[int] = None,
              warmup: int = 10, iters: Optional[int] = None, min_time: Optional[float] = None, rounds: int = 10,
              baseline: Any = None, data: Any = None, out_dir: Union[str, os.PathLike, None] = None,
              input_shape: Optional[Sequence[int]] = None, plots: bool = True) -> BenchResult:
    """Time models on backends and batch sizes, interleaved in rounds, with paired speedups.

    Args:
        models: a path (.onnx / .pt / .engine), an ``nn.Module``, a ``ModelSpec`` or a list of them
            (pipeline variants with ``name``/``checkpoint``/``onnx``/``engine`` attributes work too).
        backends: backend names (``edgekit.runtime.BACKENDS``); unavailable ones are skipped with their
            reason unless none is left (then BackendUnavailableError).
        batches: batch sizes (ints or "1,8,32").
        threads: intra-op CPU threads; None = the CPUs this process may use. Recorded in the result.
        warmup: untimed iterations per case before timing.
        iters / min_time: total timed iterations, or minimum timed seconds, per case (default 1 s).
        rounds: interleaved rounds; each gives one per-round speedup ratio.
        baseline: model name or path (optionally ``name@backend``); default the first model on the first backend.
        data: held-out split (``.x`` float32 [N, ...], ``.y`` int64), an ``.npz`` path or ``"digits"``:
            adds top-1 accuracy (%) measured through the same runner.
        out_dir: when given, writes bench.json / .csv / .md and plots there.
        input_shape: per-sample input shape when the artifact does not fix it.

    Returns:
        BenchResult with one row per model x backend x batch.

    Example:
        >>> res = benchmark(["a.onnx", "b.onnx"], batches="1,8", threads=2, iters=200)
        >>> res.rows[1]["speedup"]
    """
    from ..runtime import BACKENDS
    from ..runtime import _load_backends  # noqa: F401
    from .hardware import environment, measure_gpu_peak, measure_peak

    batch_list = parse_batches(batches)
    validate_settings(warmup, iters, min_time, rounds)
    if iters is None and min_time is None:
        min_time = 1.0
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"threads must be a positive integer, got {threads!r}")
    env = environment()
    threads = threads or env["cores_usable"]
    backend_list = [b.strip() for b in ([backends] if isinstance(backends, str) else backends) for b in b.split(",")
                    if b.strip()]
    if not backend_list:
        raise ConfigError("no backend given; valid: " + ", ".join(BACKENDS.names()))
    specs = [BACKENDS.get(b) for b in backend_list]  # unknown names -> ConfigError with did-you-mean
    models_ = _as_specs(models)
    split = as_split(data)

    skipped: List[dict] = []
    usable = []
    for bspec in specs:
        ok, reason = bspec.probe()
        if ok:
            usable.append(bspec)
        else:
            skipped.append({"model": "*", "backend": bspec.name, "reason": f"backend unavailable: {reason}"})
    if not usable:
        raise BackendUnavailableError("; ".join(f"backend '{s['backend']}' {s['reason']}" for s in skipped))

    from ..runtime.base import open_runner

    runners: Dict[Tuple[str, str], Any] = {}
    meta: Dict[Tuple[str, str], dict] = {}
    shapes: Dict[str, Tuple[int, ...]] = {}
    try:
        for spec in models_:
            for bspec in usable:
                picked = _pick_artifact(spec, bspec.artifact_kinds)
                if picked is None:
                    skipped.append({"model": spec.name, "backend": bspec.name,
                                    "reason": f"no {' or '.join(bspec.artifact_kinds)} artifact "
                                              f"(has: {', '.join(spec.artifacts) or 'none'})"})
                    continue
                kind, art = picked
                rss0 = _rss_mb()
                runner = open_runner(art, backend=bspec.name, threads=threads)
                runners[(spec.name, bspec.name)] = runner
                shape = _resolve_shape(spec, runner, input_shape, split)
                shapes.setdefault(spec.name, shape)
                x = _sample(shape, max(batch_list), runner.input_dtype, split)
                try:  # validates the input shape before any timing
                    runner.check_input(x)
                    runner(x)
                except EdgekitError:
                    raise
                except Exception as e:
                    raise ShapeError(f"model '{spec.name}' on {bspec.name} cannot run input of shape "
                                     f"{list(x.shape)}: {_first_line(e)}") from None
                meta[(spec.name, bspec.name)] = {
                    "kind": kind, "artifact": "<nn.Module>" if kind == "module" else os.fspath(art),
                    "size_bytes": _size_bytes(art, kind), "mem_delta_mb": round(_rss_mb() - rss0, 1),
                    "device": bspec.device, "precision": runner.info.get("precision", "fp32"),
                    "threads": runner.info.get("threads", threads),
                }
        keys = list(runners)
        if not keys:
            raise ConfigError("nothing to benchmark: " + "; ".join(f"{s['model']} on {s['backend']}: {s['reason']}"
                                                                   for s in skipped))
        base_key = _match_baseline(baseline, keys, models_)

        macs = {}
        for spec in models_:
            if spec.name in shapes:
                owned = {b: r for (m, b), r in runners.items() if m == spec.name}
                macs[spec.name] = _macs(spec, owned, shapes[spec.name])
        has_labels = split is not None and split.y is not None
        accuracy = {k: _accuracy(r, split) for k, r in runners.items()} if has_labels else {}

        t0 = time.time()
        peak_cpu = measure_peak(threads=threads) if any(m["device"] == "cpu" for m in meta.values()) else None
        peak_gpu = measure_gpu_peak() if any(m["device"] != "cpu" for m in meta.values()) else None

        rows: List[dict] = []
        for batch in batch_list:
            cases = [Case(k, runners[k], runners[k].prepare(_sample(shapes[k[0]], batch, runners[k].input_dtype, split)),
                          meta[k]["device"]) for k in keys]
            res = run_interleaved(cases, warmup=warmup, iters=iters, min_time=min_time, rounds=rounds,
                                  desc=f"bench batch={batch}")
            medians = res.round_medians
            bi = keys.index(base_key)
            for i, k in enumerate(keys):
                m = meta[k]
                total, int8, _src = macs.get(k[0], (None, None, ""))
                row = {"model": k[0], "backend": k[1], "batch": batch, "baseline": k == base_key,
                       "precision": m["precision"], "device": m["device"], "threads": m["threads"],
                       "artifact": m["artifact"], "rounds": len(medians[i]), **summarize(res.all_times(i), batch),
                       "size_bytes": m["size_bytes"], "mem_delta_mb": m["mem_delta_mb"],
                       "macs": total, "int8_macs": int8}
                row["gops"] = 2.0 * total * batch / (row["p50_ms"] / 1e3) / 1e9 if total else None
                pk = _peak_for(m, peak_cpu, peak_gpu)
                row["peak_gops"] = pk
                row["efficiency"] = row["gops"] / pk if row["gops"] and pk else None
                row["accuracy"] = accuracy.get(k)
                row.update(ratio_summary(paired_ratios(medians[bi], medians[i])))
                rows.append(row)
        timing_s = time.time() - t0
    finally:
        for r in runners.values():
            try:
                r.close()
            except Exception:
                pass

    result = BenchResult(
        rows=rows, skipped=skipped, environment=env,
        peak={"cpu": peak_cpu.to_dict() if peak_cpu else None, "gpu": peak_gpu},
        config={"backends": backend_list, "batches": batch_list, "threads": threads, "warmup": warmup,
                "iters": iters, "min_time": min_time, "rounds": rounds, "input_shapes": {k: list(v) for k, v in shapes.items()},
                "data": None if split is None else {"n": int(len(split.x)), "source": getattr(split, "source", None)},
                "timing_s": round(timing_s, 1), "peak_rss_mb": round(_peak_rss_mb(), 1)},
        baseline={"model": base_key[0], "backend": base_key[1]},
    )
    if out_dir is not None:
        result.write(out_dir, plots=plots)
    return result


def _peak_for(meta: dict, peak_cpu, peak_gpu) -> Optional[float]:
    prec = meta["precision"]
    if meta["device"] == "cpu":
        return peak_cpu.for_precision(prec) if peak_cpu else None
    if not peak_gpu:
        return None
    return peak_gpu.get({"int8": "int8_gops", "fp16": "fp16_gops", "bf16": "fp16_gops"}.get(prec, "fp32_gops"))


__all__ = ["ModelSpec", "benchmark", "SCHEMA"]
