"""Benchmark step 1, the plan: which models run on which backends, with open runners and checked inputs.

Everything that can fail on a user's input fails here, before any timing: unknown or unavailable backends,
artifacts no backend takes, input shapes the model refuses.

Example:
    >>> p = make_plan(["a.onnx", "b.onnx"], [default_backend()], threads=2, data=None, input_shape=None, max_batch=8)
    >>> p.keys      # [(model, backend), ...]: [("a", ...), ("b", ...)]
    >>> p.close()
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from edgekit.bench.data import as_split, is_dataset_name
from edgekit.bench.specs import ModelSpec, as_specs, model_macs, pick_artifact, size_bytes
from edgekit.errors import BackendUnavailableError, ConfigError, EdgekitError, ShapeError, first_line

DEFAULT_SEQUENCE = 128  # sequence length of a text model's synthetic inputs without --seq/--input

logger = logging.getLogger(__name__)

Key = Tuple[str, str]  # (model name, backend name)


@dataclass
class BenchPlan:
    """Open runners per (model, backend), what each runs, the per-sample input shapes and the held-out split."""

    specs: List[ModelSpec]
    threads: int
    data: Any = None
    split: Any = None
    runners: Dict[Key, Any] = field(default_factory=dict)
    meta: Dict[Key, dict] = field(default_factory=dict)
    shapes: Dict[str, Any] = field(default_factory=dict)  # per model: per-sample shape, or {input: shape}
    skipped: List[dict] = field(default_factory=list)
    inputs: Optional[Dict[str, Tuple[str, Tuple[int, ...]]]] = None  # --input: {name: (dtype, per-sample shape)}
    sequence: Optional[int] = None  # the sequence length dynamic axes take (--seq)
    input_shape: Optional[Sequence[int]] = None
    correct: Dict[Key, np.ndarray] = field(default_factory=dict)  # per-sample top-1 hits, set by accuracy()

    @property
    def keys(self) -> List[Key]:
        """(model, backend) pairs in benchmark order."""
        return list(self.runners)

    def sample(self, key: Key, batch: int) -> Any:
        """A batch for ``key``'s runner: held-out samples when there are some, else seeded synthetic inputs."""
        runner = self.runners[key]
        return sample_batch(self.shapes[key[0]], batch, runner.input_dtype, self.split,
                            signature=getattr(runner, "signature", None))

    def set_sequence(self, sequence: int) -> None:
        """Re-resolve every model's input shapes for another sequence length (the ``--seq`` sweep)."""
        self.sequence = sequence
        for spec in self.specs:
            key = next((k for k in self.runners if k[0] == spec.name), None)
            if key is not None:
                self.shapes[spec.name] = resolve_shape(spec, self.runners[key], self)

    def macs(self) -> Dict[str, Tuple[Optional[int], Optional[int], str]]:
        """(total, int8, source) MACs per sample of every model that got a runner."""
        out = {}
        for spec in self.specs:
            if spec.name in self.shapes:
                owned = {b: r for (m, b), r in self.runners.items() if m == spec.name}
                out[spec.name] = model_macs(spec, owned, self.shapes[spec.name])
        return out

    def accuracy(self) -> Dict[Key, float]:
        """Top-1 accuracy (%) through every runner when the held-out split has labels, else {}; the per-sample
        correctness is kept in ``self.correct`` for paired accuracy differences."""
        if self.split is None or self.split.y is None:
            return {}
        from edgekit.core.train import predict

        self.correct = {k: predict(r, self.split.x, batch_size=128).argmax(1) == self.split.y
                        for k, r in self.runners.items()}
        return {k: float(100.0 * c.mean()) for k, c in self.correct.items()}

    def close(self) -> None:
        """Close every runner (errors while closing are ignored: the result matters more)."""
        for runner in self.runners.values():
            try:
                runner.close()
            except Exception:
                pass


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def sample_batch(shape: Any, batch: int, dtype, data, seed: int = 0, signature: Any = None) -> Any:
    """``batch`` samples of ``data.x`` (cycled; named arrays keep their dtypes), else synthetic inputs: standard-
    normal noise of ``shape`` for one input, or per input of ``signature`` when ``shape`` is ``{input: shape}``."""
    from edgekit.bench.data import synthetic_inputs
    from edgekit.core.tensors import is_named, num_samples, take

    if data is not None:
        idx = np.arange(batch) % num_samples(data.x)
        if is_named(data.x):
            return {k: np.ascontiguousarray(v) for k, v in take(data.x, idx).items()}
        return np.ascontiguousarray(data.x[idx]).astype(dtype, copy=False)
    if isinstance(shape, dict):
        return synthetic_inputs(signature, shape, batch, seed)
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch, *shape), dtype=np.float32).astype(dtype, copy=False)


def _named_shapes(sig: Any, plan: BenchPlan, data: Any) -> Dict[str, Tuple[int, ...]]:
    """Per-sample shapes of every input of a several/integer-input model: the data's, else ``--input`` specs (dtypes
    checked) with the other inputs' dynamic axes bound by name (``sequence`` of input_ids → attention_mask), else
    ``--seq`` (default: 128, at most the position table's rows)."""
    from edgekit.core.tensors import sample_shapes

    if data is not None:
        got = sample_shapes(data.x)
        return got if isinstance(got, dict) else {sig.names[0]: got}
    given = dict(plan.inputs or {})
    unknown = sorted(set(given) - set(sig.names))
    if unknown:
        raise ConfigError(f"--input names {unknown}, which the model does not take; it takes {sig.describe()}")
    for name, (dtype, _shape) in given.items():
        if dtype != sig[name].dtype:
            raise ConfigError(f"--input {name}: dtype {dtype}, but the model's input '{name}' is {sig[name].dtype}")
    bound = {d: v for name, (_, shape) in given.items() for d, v in zip(sig[name].sample_shape, shape)
             if isinstance(d, str)}
    seq = plan.sequence or bound.get("sequence") or (next(iter(bound.values())) if bound else None)
    seq = seq or _default_sequence(plan)
    # a --seq sweep sets the symbolic (sequence) axes of --input shapes too: `--input ...:1x128 --seq 32,128`
    out = {name: tuple(plan.sequence if plan.sequence and isinstance(d, str) else v
                       for d, v in zip(sig[name].sample_shape, shape)) for name, (_, shape) in given.items()}
    for spec in sig.inputs:
        if spec.name not in out:
            out[spec.name] = tuple(d if isinstance(d, int) else bound.get(d, seq) for d in spec.sample_shape)
    return {name: out[name] for name in sig.names}


def _default_sequence(plan: BenchPlan) -> int:
    from edgekit.core.onnx_graph import position_rows

    art = next((a for s in plan.specs for a in s.artifacts.values() if isinstance(a, (str, os.PathLike))
                and str(a).endswith(".onnx")), None)
    rows = position_rows(art) if art is not None else None
    return min(DEFAULT_SEQUENCE, rows or DEFAULT_SEQUENCE)


def resolve_shape(spec: ModelSpec, runner: Any, plan: BenchPlan, data: Any = "plan") -> Any:
    """The per-sample input shape of ``spec`` (a tuple), or ``{input: shape}`` for a model with several or
    integer inputs."""
    data = plan.split if data == "plan" else data
    sig = getattr(runner, "signature", None)
    if sig is not None and not sig.single:
        return _named_shapes(sig, plan, data)
    if plan.inputs:
        name = runner.input_name
        if set(plan.inputs) != {name}:
            raise ConfigError(f"model '{spec.name}' takes one input '{name}'; --input gave {sorted(plan.inputs)}")
        return plan.inputs[name][1]
    return _resolve_shape(spec, runner, plan.input_shape, data)


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
                     "pass input_shape (per sample, e.g. (3, 224, 224)), --input name:dtype:shape or --data")


def backend_specs(names: Sequence[str]) -> list:
    """The registered specs of ``names``; unknown names are a ConfigError with a did-you-mean."""
    from edgekit.backends import BACKENDS, backend_spec

    if not names:
        raise ConfigError("no backend given; valid: " + ", ".join(BACKENDS.names()))
    return [backend_spec(b) for b in names]


def usable_backends(specs: Sequence[Any]) -> Tuple[list, List[dict]]:
    """The specs whose backend is available here, and a skipped entry for each one that is not."""
    usable, skipped = [], []
    for bspec in specs:
        ok, reason = bspec.probe()
        if ok:
            usable.append(bspec)
        else:
            skipped.append({"model": "*", "backend": bspec.name, "reason": f"backend unavailable: {reason}"})
    if not usable:
        raise BackendUnavailableError("; ".join(f"backend '{s['backend']}' {s['reason']}" for s in skipped))
    return usable, skipped


def _open_case(plan: BenchPlan, spec: ModelSpec, bspec: Any, input_shape, max_batch: int) -> None:
    """Open ``spec`` on ``bspec`` (or record why not), fix its input shape and run one checked batch."""
    from edgekit.backends import open_runner, target_warning

    picked = pick_artifact(spec, bspec.artifact_kinds)
    if picked is None:
        plan.skipped.append({"model": spec.name, "backend": bspec.name,
                             "reason": f"no {' or '.join(bspec.artifact_kinds)} artifact "
                                       f"(has: {', '.join(spec.artifacts) or 'none'})"})
        return
    kind, art = picked
    rss0 = _rss_mb()
    runner = open_runner(art, backend=bspec.name, threads=plan.threads)
    plan.runners[(spec.name, bspec.name)] = runner
    if plan.split is None and plan.data is not None:  # a dataset name is loaded to fit the model's input
        try:
            like = resolve_shape(spec, runner, plan, None)
        except (ShapeError, ConfigError):
            like = None
        plan.split = as_split(plan.data, like_shape=like if isinstance(like, tuple) else None)
    shape = resolve_shape(spec, runner, plan)
    plan.shapes.setdefault(spec.name, shape)
    x = sample_batch(plan.shapes[spec.name], max_batch, runner.input_dtype, plan.split,
                     signature=getattr(runner, "signature", None))
    try:  # validates the input shape (runner() checks it first) before any timing
        runner(x)
    except EdgekitError:
        raise
    except Exception as e:
        from edgekit.core.tensors import sample_shapes

        raise ShapeError(f"model '{spec.name}' on {bspec.name} cannot run inputs of per-sample shape "
                         f"{sample_shapes(x)}: {first_line(e, 240)}") from None
    warning = target_warning(art, bspec.name) if isinstance(art, (str, os.PathLike)) else None
    plan.meta[(spec.name, bspec.name)] = {
        "kind": kind, "artifact": "<nn.Module>" if kind == "module" else os.fspath(art),
        "size_bytes": size_bytes(art, kind), "mem_delta_mb": round(_rss_mb() - rss0, 1),
        "device": bspec.device, "precision": runner.info.get("precision", "fp32"),
        "threads": runner.info.get("threads", plan.threads), "warning": warning}
    if warning:
        logger.info(f"bench: warning: {warning}")


def make_plan(models: Any, backends: Sequence[str], threads: int, data: Any, input_shape: Optional[Sequence[int]],
              max_batch: int, inputs: Optional[dict] = None, sequence: Optional[int] = None) -> BenchPlan:
    """Open every model on every available backend that runs one of its artifacts; checked, not yet timed.

    Raises:
        ConfigError: unknown backend, nothing runnable. BackendUnavailableError: no named backend is available.
        ShapeError: a model refuses its input. InputFileError: a missing or unreadable artifact.
    """
    named = backend_specs(backends)
    specs = as_specs(models)
    split = None if is_dataset_name(data) else as_split(data)  # a dataset name is loaded to fit the model
    usable, skipped = usable_backends(named)
    plan = BenchPlan(specs, threads, data, split, skipped=skipped, inputs=inputs, sequence=sequence,
                     input_shape=input_shape)
    try:
        for spec in specs:
            for bspec in usable:
                _open_case(plan, spec, bspec, input_shape, max_batch)
        if not plan.runners:
            raise ConfigError("nothing to benchmark: " + "; ".join(f"{s['model']} on {s['backend']}: {s['reason']}"
                                                                   for s in plan.skipped))
    except BaseException:
        plan.close()
        raise
    return plan


__all__ = ["BenchPlan", "Key", "backend_specs", "make_plan", "sample_batch", "usable_backends"]
