"""Recipe stages generated from the technique registry: one stage per registered technique.

A technique's stage config is :class:`StageConfig` (``type``, ``input``, ``name``) + every field of the
technique's config + ``teacher`` when the technique takes one + the few stage-only fields its
:class:`StageHooks` add. One runner does what every such stage does: resolve the input variant, refuse an
existing variant name, rebuild the technique config from the stage config, resolve the teacher, call
``apply``, save/export the output, measure it, return the new variants. :class:`StageHooks` (registered in
:data:`STAGE_HOOKS`, built-ins in :mod:`edgekit.pipeline.stage_hooks`) cover the few ways a stage differs.
"""
from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Literal, Mapping, Optional, Tuple

from pydantic import BaseModel, Field, create_model, field_validator

from edgekit.errors import ConfigError
from edgekit.pipeline.lm import agreement, is_lm, perplexities
from edgekit.pipeline.stages import STAGES, Stage, StageConfig, StageContext, StageOutput, Variant
from edgekit.registry import Registry
from edgekit.techniques.base import DATA_KEYWORDS, TECHNIQUES, Result, Technique, load_techniques

TEACHER = ("KD teacher: null = none, parent = the input variant, reference = the run's first model, or a "
           "variant name")


@dataclass
class Job:
    """One output variant a stage makes: its name, its technique config and where it comes from."""

    name: str
    config: BaseModel
    parent: Variant  # recorded as the new variant's parent
    teacher: Optional[Variant] = None


@dataclass(frozen=True)
class StageHooks:
    """How one technique's stage differs from the generic one (every part optional).

    Attributes:
        fields: stage-only fields ``{name: (annotation, FieldInfo)}`` (e.g. quantize's ``targets``).
        validators: pydantic validators for them (``{name: field_validator(...)(fn)}``).
        jobs: ``(ctx, cfg, technique config, input variant, teacher variant) -> [Job]`` (default: one job).
        model: ``(ctx, cfg, job) -> model_or_artifact`` handed to ``apply`` (default: the input variant's).
        data: ``(ctx, cfg, job) -> {keyword: value}`` extra keyword data for ``apply``.
        call: ``(ctx, cfg, job, apply) -> Result`` wraps the call of ``apply()`` (e.g. to escalate on failure).
    """

    fields: Mapping[str, Tuple[Any, Any]] = field(default_factory=dict)
    validators: Mapping[str, Any] = field(default_factory=dict)
    jobs: Optional[Callable[..., List[Job]]] = None
    model: Optional[Callable[[StageContext, Any, Job], Any]] = None
    data: Optional[Callable[[StageContext, Any, Job], Dict[str, Any]]] = None
    call: Optional[Callable[[StageContext, Any, Job, Callable[[], Result]], Result]] = None


STAGE_HOOKS: Registry[StageHooks] = Registry("stage hooks")
_GENERATED: Dict[str, Technique] = {}  # stage name -> the technique it was generated from


def _check_teacher(required: bool) -> Callable[[Any, Any], Any]:
    def check(cls: Any, v: Any) -> Any:
        if v == "original":
            raise ValueError("'original' was renamed to 'parent' (the input variant)")
        if v == "none":
            raise ValueError("'none' is now null (no teacher)")
        if v is None and required:
            raise ValueError("this stage needs a teacher: parent, reference or a variant name")
        return v

    return check


def stage_config(t: Technique, hooks: StageHooks) -> type:
    """The recipe stage config class of technique ``t``: StageConfig + its config's fields (+ teacher, hooks)."""
    fields: Dict[str, Any] = {"type": (Literal[t.name], t.name)}  # type: ignore[valid-type]
    validators = dict(hooks.validators)
    if t.teacher != "none":
        fields["teacher"] = (Optional[str], Field("parent", description=TEACHER))
        validators["check_teacher"] = field_validator("teacher", mode="before")(_check_teacher(t.teacher == "required"))
    fields.update(hooks.fields)
    name = "".join(p.capitalize() for p in re.split(r"[^A-Za-z0-9]+", t.name)) + "Stage"
    cls = create_model(name, __base__=(t.config, StageConfig), __validators__=validators, **fields)
    cls.__doc__ = f"Recipe stage of technique '{t.name}': {t.description}."
    return cls


def technique_config(t: Technique, cfg: Any) -> BaseModel:
    """The technique's own config, rebuilt from a stage config (its fields are a subset of the stage's)."""
    return t.config.model_validate({k: getattr(cfg, k) for k in t.config.model_fields})


def sync_technique_stages() -> None:
    """Register a stage for every registered technique that wants one (and drop stages of techniques gone)."""
    import edgekit.pipeline.stage_hooks  # noqa: F401  (registers the built-in techniques' hooks)

    load_techniques()
    for name, t in list(_GENERATED.items()):
        if name not in TECHNIQUES or TECHNIQUES.get(name) is not t:
            STAGES.unregister(name)
            del _GENERATED[name]
    for name, t in TECHNIQUES.items():
        if not t.stage or name in _GENERATED:
            continue
        hooks = STAGE_HOOKS.get(name) if name in STAGE_HOOKS else StageHooks()
        run = _runner(t)
        STAGES.register(name)(Stage(stage_config(t, hooks), run, t.needs_torch, t.description))
        _GENERATED[name] = t


def _runner(t: Technique) -> Callable[[StageContext, Any], StageOutput]:
    def run(ctx: StageContext, cfg: Any) -> StageOutput:
        return run_technique(ctx, cfg, t)

    run.__doc__ = t.description
    return run


def run_technique(ctx: StageContext, cfg: Any, t: Technique) -> StageOutput:
    """Run technique ``t`` as a recipe stage with config ``cfg``; returns the new variants and their metrics."""
    hooks = STAGE_HOOKS.get(t.name) if t.name in STAGE_HOOKS else StageHooks()
    parent = ctx.variant(cfg.input)
    if t.needs_labels and not ctx.splits.labelled:
        raise ConfigError(f"stage {t.name}: needs labelled data (this dataset has no labels)")
    tcfg = technique_config(t, cfg)
    teacher = None
    if t.teacher != "none" and t.uses_teacher(tcfg):
        teacher = ctx.teacher_variant(cfg.teacher, parent)
    if hooks.jobs is not None:
        jobs = hooks.jobs(ctx, cfg, tcfg, parent, teacher)
    else:
        jobs = [Job(cfg.name or f"{parent.name}-{t.variant_suffix(tcfg)}", tcfg, parent, teacher)]
    names = [j.name for j in jobs]
    for n in names:
        if n in ctx.variants or names.count(n) > 1:
            raise ConfigError(f"stage {t.name}: a variant named '{n}' already exists; set 'name' to a new one")
    modules = _Modules(ctx)
    variants = [_run_job(ctx, cfg, t, hooks, job, parent, modules) for job in jobs]
    metrics = variants[0].metrics if len(variants) == 1 else {v.name: v.metrics for v in variants}
    return StageOutput(variants, metrics)


class _Modules:
    """Each variant's module loaded once per stage (the techniques copy what they change)."""

    def __init__(self, ctx: StageContext):
        self.ctx, self.loaded = ctx, {}

    def __call__(self, v: Variant) -> Any:
        if v.name not in self.loaded:
            self.loaded[v.name] = self.ctx.load_module(v)
        return self.loaded[v.name]


def _input(ctx: StageContext, t: Technique, parent: Variant, modules: _Modules) -> Any:
    if t.consumes == "module":
        return modules(parent)
    if not parent.onnx:
        raise ConfigError(f"stage {t.name}: variant '{parent.name}' has no ONNX file (add an 'export' stage first)")
    return parent.onnx


def _run_job(ctx: StageContext, cfg: Any, t: Technique, hooks: StageHooks, job: Job, parent: Variant,
             modules: _Modules) -> Variant:
    model = hooks.model(ctx, cfg, job) if hooks.model else _input(ctx, t, parent, modules)
    splits = ctx.splits
    teacher = modules(job.teacher) if job.teacher is not None else None
    data: Dict[str, Any] = {"train": splits.train, "val": splits.val if splits.labelled else None, "teacher": teacher,
                            "seed": ctx.seed, "threads": ctx.threads, "example_input": splits.val.x[:8]}
    if t.produces == "onnx":
        data["out_path"] = ctx.stage_dir / f"{job.name}.onnx"
    if hooks.data:
        data.update(hooks.data(ctx, cfg, job))
    params = inspect.signature(t.apply).parameters
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs = {k: v for k, v in data.items() if k in DATA_KEYWORDS and (takes_all or k in params)}

    def apply() -> Result:
        return t.apply(model, job.config, **kwargs)

    result = hooks.call(ctx, cfg, job, apply) if hooks.call else apply()
    meta = dict(result.sidecar)
    if t.teacher != "none":
        meta["teacher"] = job.teacher.name if job.teacher is not None else None
    metrics = {k: v for k, v in result.metrics.items() if v is not None}
    if t.produces == "module":
        return _module_variant(ctx, t, job, result, meta, metrics,
                               parent_module=model if hooks.model is None else None, teacher=teacher)
    metrics.update(_measure_artifact(ctx, result.artifact, metrics))
    if is_lm(splits) and job.parent.onnx:  # a quantised KV-cache graph against its float parent
        metrics.update(agreement(job.parent.onnx, result.artifact, splits, ctx.threads))
    return Variant(job.name, job.parent.name, None, str(result.artifact), meta=meta, metrics=metrics)


def _module_variant(ctx: StageContext, t: Technique, job: Job, result: Result, meta: dict, metrics: dict, *,
                    parent_module: Any, teacher: Any) -> Variant:
    """Checkpoint and export the technique's output module; measure it (and its parent / teacher) in torch."""
    from edgekit.core.train import evaluate
    from edgekit.models import count_params

    out = result.model
    ckpt_meta = {k: v for k, v in meta.items() if k != "history"}
    ckpt = ctx.save_module(out, job.name, meta={t.name: {**ckpt_meta, "parent": job.parent.name}})
    onnx_path = ctx.export(out, job.name)
    metrics["params"] = count_params(out)
    splits = ctx.splits
    if splits.labelled:  # synthetic latency-only data has no labels
        accuracy = {}

        def test_accuracy(m: Any) -> float:
            if id(m) not in accuracy:
                accuracy[id(m)] = evaluate(m, splits.test)
            return accuracy[id(m)]

        metrics.setdefault("val_accuracy", evaluate(out, splits.val))
        metrics["test_accuracy_torch"] = test_accuracy(out)
        if parent_module is not None:
            metrics["parent_test_accuracy_torch"] = test_accuracy(parent_module)
        if teacher is not None:
            metrics["teacher_test_accuracy_torch"] = test_accuracy(teacher)
    if teacher is not None:
        metrics["teacher_params"] = count_params(teacher)
    if is_lm(splits):
        metrics.update(perplexities(out, splits, ctx.threads, suffix="_torch"))
        if teacher is not None:
            metrics.update(perplexities(teacher, splits, ctx.threads, ("val",), suffix="_teacher_torch"))
    return Variant(job.name, job.parent.name, str(ckpt), str(onnx_path), meta=meta, metrics=metrics)


def _measure_artifact(ctx: StageContext, path: Any, metrics: dict) -> dict:
    """Validation and test accuracy of an ONNX artifact through the default CPU runtime (labelled data only)."""
    from edgekit.backends import default_backend, open_runner
    from edgekit.core.train import evaluate

    splits = ctx.splits
    if is_lm(splits):  # a KV-cache graph: perplexity through ONNX Runtime with the cache
        return perplexities(str(path), splits, ctx.threads)
    if not splits.labelled:
        return {}
    runner = open_runner(path, default_backend("onnx", "cpu"), threads=ctx.threads)
    out = {"test_accuracy": evaluate(runner, splits.test)}
    if "val_accuracy" not in metrics:
        out["val_accuracy"] = evaluate(runner, splits.val)
    return out
