"""What to benchmark: named models with one artifact per kind, their size on disk and their MACs.

Example:
    >>> spec = ModelSpec("int8", {"onnx": "run/int8.onnx", "checkpoint": "run/int8.pt"})
    >>> as_specs(["a.onnx", spec])[0].name
    'a'
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from edgekit.errors import ConfigError, first_line

logger = logging.getLogger(__name__)

# Attributes of a pipeline variant that may hold an artifact path (each path is classified by its suffix).
VARIANT_FIELDS = ("checkpoint", "onnx", "engine")


@dataclass
class ModelSpec:
    """A named model with one artifact per kind (``module``, ``checkpoint``, ``onnx`` or any kind a registered
    backend declares, e.g. ``engine``).

    Each backend runs the artifact kind it accepts, so one spec can be timed on torch (checkpoint)
    and on ONNX Runtime (onnx) as the same variant.

    Example:
        >>> ModelSpec("int8", {"onnx": "run/int8.onnx"})
    """

    name: str
    artifacts: Dict[str, Any] = field(default_factory=dict)
    input_shape: Optional[Tuple[int, ...]] = None

    def __post_init__(self) -> None:
        from edgekit.backends import artifact_kinds

        kinds = artifact_kinds()
        bad = [k for k in self.artifacts if k not in kinds]
        if bad:
            raise ConfigError(f"model '{self.name}': unknown artifact kind(s) {bad}; allowed: {', '.join(kinds)}")


def as_specs(models: Any) -> List[ModelSpec]:
    """Normalise paths / modules / ModelSpecs / pipeline variants to a list of unique-named ModelSpecs."""
    import torch.nn as nn

    from edgekit.backends import artifact_kind

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
        elif hasattr(it, "name") and any(getattr(it, k, None) for k in VARIANT_FIELDS):
            arts = variant_artifacts(it)
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


def variant_artifacts(variant: Any) -> Dict[str, str]:
    """``{artifact kind: path}`` of a pipeline variant's artifact fields, each classified by its suffix.

    Example:
        >>> variant_artifacts(Variant("m", checkpoint="m.pt", onnx="m.onnx"))
        {'checkpoint': 'm.pt', 'onnx': 'm.onnx'}
    """
    from edgekit.backends import artifact_kind

    return {artifact_kind(p): p for p in (getattr(variant, k, None) for k in VARIANT_FIELDS) if p}


def size_bytes(artifact: Any, kind: str) -> int:
    """Bytes on disk (with the companion files its kind declares, e.g. weights, and ONNX external-data files);
    in-memory tensor bytes for a module."""
    if kind == "module":
        return int(sum(t.numel() * t.element_size() for t in artifact.state_dict().values()))
    from edgekit.backends import artifact_files

    path = Path(artifact)
    total = sum(p.stat().st_size for p in artifact_files(path))
    if kind == "onnx":
        try:
            import onnx

            m = onnx.load(str(path), load_external_data=False)
            files = {e.value for t in m.graph.initializer for e in t.external_data if e.key == "location"}
            total += sum((path.parent / f).stat().st_size for f in files if (path.parent / f).is_file())
        except Exception:
            pass
    return int(total)


def pick_artifact(spec: ModelSpec, backend_kinds: Sequence[str]) -> Optional[Tuple[str, Any]]:
    """``(kind, artifact)`` of the first kind in the backend's order of preference that the spec has, else None."""
    for kind in backend_kinds:
        if kind in spec.artifacts:
            return kind, spec.artifacts[kind]
    return None


def model_macs(spec: ModelSpec, runners: Dict[str, Any], shape) -> Tuple[Optional[int], Optional[int], str]:
    """(total, int8, source) MACs per sample from the spec's ONNX graph, else from an exported module."""
    from edgekit._io import read_sidecar
    from edgekit.core.measure.macs import count_macs_onnx

    onnx_path = spec.artifacts.get("onnx")
    for kind, art in spec.artifacts.items():  # a compiled artifact's sidecar names the ONNX it was built from
        if onnx_path is not None or kind in ("module", "checkpoint"):
            continue
        side = read_sidecar(art)
        cand = side.get("onnx") or side.get("source_onnx") or side.get("source")
        onnx_path = cand if cand and Path(cand).is_file() else None
    try:
        if onnx_path is not None:
            rep = (count_macs_onnx(onnx_path, inputs=shape) if isinstance(shape, dict)
                   else count_macs_onnx(onnx_path, shape))
            if rep.shape_inference == "incomplete":
                return None, None, "unavailable (shapes known only at run time: " + ", ".join(rep.unknown[:3]) + ")"
            return rep.total, rep.int8, "onnx"
        module = spec.artifacts.get("module") or next((getattr(r, "module", None) for r in runners.values()
                                                       if getattr(r, "module", None) is not None), None)
        if module is not None and not isinstance(shape, dict):
            return _macs_of_module(module, shape), 0, "onnx-export"
    except Exception as e:  # MACs are informative; never fail a benchmark on them
        logger.info(f"bench: could not count MACs of '{spec.name}': {first_line(e, 200)}")
    return None, None, "unavailable"


def _macs_of_module(module: Any, shape) -> int:
    import io
    import warnings

    import onnx
    import torch

    from edgekit.core.measure.macs import count_macs_onnx

    param = next(module.parameters(), None)
    x = torch.zeros((1, *shape), dtype=torch.float32, device=param.device if param is not None else "cpu")
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.float(), (x,), buf, dynamo=False, opset_version=17)
    return count_macs_onnx(onnx.load_from_string(buf.getvalue()), shape).total
