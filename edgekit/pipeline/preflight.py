"""The checks `edgekit run` makes before any run directory exists — and exactly what `recipe validate` runs.

Every problem is collected and reported together (one line each): files that are missing or of the wrong kind,
unknown or unavailable-but-required backends, stage inputs no earlier stage produces, duplicate variant names,
``benchmark.variants`` naming a variant the recipe never produces, an ONNX reference sent through PyTorch stages;
then, when those pass, the cheap data-dependent checks (the model fits the data, calibration files fit the
model's input and the training data's value range), and a distill stage's transformer transfer against its
student and (when it is the reference model) its teacher.

Example:
    >>> preflight(load_recipe("recipes/digits_resnet.yaml"), splits)
"""
from __future__ import annotations

from typing import Any, Callable, List, Optional

from edgekit._io import check_npz_file, require_file
from edgekit.errors import ConfigError, EdgekitError
from edgekit.pipeline.preflight_distill import distill_problems
from edgekit.pipeline.preflight_lm import data_problems, static_problems
from edgekit.pipeline.stages import STAGES


def preflight(recipe: Any, splits: Callable[[], Any]) -> None:
    """Raise one EdgekitError listing every problem :mod:`this module <edgekit.pipeline.preflight>` finds."""
    from edgekit.pipeline.model_source import import_plugins

    import_plugins(recipe.model.imports)
    problems: List[str] = []
    _collect(problems, check_input_files, recipe)
    _collect(problems, _check_backends, recipe)
    problems += _check_variant_names(recipe)
    problems += static_problems(recipe)
    if not problems:
        problems += data_problems(recipe, splits)
    if not problems:
        _collect(problems, _check_model_fits, recipe, splits)
    if not problems:
        _collect(problems, _check_calibration_files, recipe, splits)
    if not problems:
        problems += distill_problems(recipe, splits)
    if len(problems) == 1:
        raise ConfigError(problems[0])
    if problems:
        raise ConfigError(f"{len(problems)} problems:\n  " + "\n  ".join(problems))


def imported_modules(recipe: Any) -> List[str]:
    """The plugin modules running this recipe imports (their code runs): ``model.imports``."""
    return list(recipe.model.imports)


def _collect(problems: List[str], check: Callable[..., Any], *args: Any) -> None:
    try:
        check(*args)
    except EdgekitError as e:
        problems.append(str(e))


def check_input_files(recipe: Any) -> None:
    """The files a recipe names exist and are of the right kind (model checkpoint/ONNX, npz data, calibration)."""
    for key in ("checkpoint", "onnx"):
        p = getattr(recipe.model, key)
        if p:
            require_file(p, f"model.{key}")
    if recipe.data.name == "npz":
        if not recipe.data.path:
            raise ConfigError("data.path: required for npz data (an .npz with arrays x and y)")
        check_npz_file(recipe.data.path, "data.path")
    for i, st in enumerate(recipe.stages):
        calib = getattr(st, "calibration", None)
        if isinstance(calib, str):
            check_npz_file(calib, f"stages[{i}].calibration")


def _check_backends(recipe: Any) -> None:
    from edgekit.backends import backend_spec
    from edgekit.pipeline.report import check_required_targets

    for t in recipe.targets:
        backend_spec(t.backend)
    check_required_targets(recipe)
    torch_stages = sorted(n for n, st in STAGES.items() if st.needs_torch)
    if recipe.model.onnx and any(s.type in torch_stages for s in recipe.stages):
        raise ConfigError(f"model.onnx: an ONNX reference cannot go through PyTorch stages ({'/'.join(torch_stages)}); "
                          "start from model.name or model.checkpoint instead")


def _default_name(st: Any, latest: Optional[str]) -> str:
    """The variant name a stage produces; ``<type>`` where only the stage itself can decide it."""
    if st.name:
        return st.name
    if st.type == "train":
        return "reference" if latest is None else f"{st.input or latest}-ft"
    return f"<{st.type}>"


def _check_variant_names(recipe: Any) -> List[str]:
    """Stage inputs, duplicate variant names and ``benchmark.variants`` against the names the stages produce."""
    problems: List[str] = []
    names: List[str] = ["reference"] if (recipe.model.checkpoint or recipe.model.onnx) else []
    if recipe.stages and recipe.stages[0].type == "train":
        names = []
    for i, st in enumerate(recipe.stages):
        known = not any(n.startswith("<") for n in names)  # default names are decided by the stages themselves
        if st.input is not None and known and st.input not in names and st.input != "reference":
            problems.append(f"stages[{i}].input: no earlier stage produces a variant named '{st.input}'; "
                            f"earlier variants: {', '.join(names) or 'none'}")
        name = _default_name(st, names[-1] if names else None)
        if not name.startswith("<") and name in names:
            problems.append(f"stages[{i}].name: a variant named '{name}' is already produced by an earlier stage; "
                            "give each stage a distinct name (the second would replace the first)")
        names.append(name)
    wanted = recipe.benchmark.variants or []
    if wanted and not any(n.startswith("<") for n in names):
        unknown = [w for w in wanted if w not in names]
        if unknown:
            problems.append(f"benchmark.variants: unknown variant {', '.join(repr(u) for u in unknown)}; "
                            f"this recipe produces: {', '.join(names) or 'none'}")
    return problems


def check_benchmark_variants(recipe: Any, produced: List[str]) -> None:
    """After the stages ran: every ``benchmark.variants`` name must be a variant of the run."""
    unknown = [w for w in (recipe.benchmark.variants or []) if w not in produced]
    if unknown:
        raise ConfigError(f"benchmark.variants: unknown variant {', '.join(repr(u) for u in unknown)}; "
                          f"this run produced: {', '.join(produced) or 'none'}")


def _check_model_fits(recipe: Any, splits: Callable[[], Any]) -> None:
    from edgekit.pipeline.model_source import build_module, onnx_input_fits

    if recipe.model.onnx:
        onnx_input_fits(recipe.model.onnx, splits())
    elif recipe.model.checkpoint:
        build_module(recipe.model, splits())


def _check_calibration_files(recipe: Any, splits: Callable[[], Any]) -> None:
    """Every stage's calibration npz against the data's sample shape and value range, before any training."""
    from edgekit.data import load_calibration

    for i, st in enumerate(recipe.stages):
        calib = getattr(st, "calibration", None)
        if isinstance(calib, str):
            s = splits()
            try:
                load_calibration(calib, s.input_shape, reference=s.train.x)
            except EdgekitError as e:
                raise ConfigError(f"stages[{i}].calibration: {e}") from None
