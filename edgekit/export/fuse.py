"""Fused fp32 transformer graphs: ONNX Runtime's transformer optimizer on an exported encoder.

``onnxruntime.transformers.optimizer.optimize_model`` rewrites a BERT/ViT-style encoder into ONNX Runtime's
contrib ops (``com.microsoft``: EmbedLayerNormalization, Attention, SkipLayerNormalization, BiasGelu/FastGelu),
so the float baseline every INT8 variant is timed against is the fast one. The optimizer runs at ``opt_level``
0 (pattern fusions only, no hardware-specific layout), so the file stays portable.

Backends that cannot run the file's contrib ops (a backend declares the ``contrib_ops`` it runs in its
BackendSpec; TensorRT runs none, OpenVINO the fp32 ones) get the unfused sibling ``<stem>.unfused.onnx``
written beside the fused file; the sidecar's ``fusion`` entry
names it and says which file each backend runs (:func:`artifact_for_backend`).

Example:
    >>> info = fuse_onnx("bert.onnx", model_type="bert", num_heads=4, hidden_size=128)
    >>> info["counts"]        # {'Attention': 4, 'SkipLayerNormalization': 8, 'BiasGelu': 4, ...}
    >>> artifact_for_backend("bert.onnx", "tensorrt")    # bert.unfused.onnx
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Dict, Iterator, Mapping, Optional, Tuple, Union

import numpy as np

from edgekit._io import atomic_path
from edgekit.errors import ConfigError, ExportError, first_line

logger = logging.getLogger(__name__)

FuseMode = Union[bool, str]  # "auto" | True | False
CONTRIB_DOMAIN = "com.microsoft"
# ONNX Runtime optimizer model types edgekit maps Hugging Face model types onto (anything else: "bert")
_VISION_TYPES = {"vit", "deit", "beit", "dinov2", "swin"}
# graph ops that mark a transformer encoder (the optimizer has nothing to fuse elsewhere)
_ENCODER_MARKERS = {"Softmax", "LayerNormalization"}


def check_fuse_mode(fuse: Any) -> FuseMode:
    """``fuse`` as given when it is "auto", True or False; ConfigError otherwise."""
    if isinstance(fuse, bool) or fuse == "auto":
        return fuse
    raise ConfigError(f"export fuse must be 'auto', true or false, got {fuse!r}")


def fusion_settings(model: Any) -> Tuple[str, int, int]:
    """(optimizer model type, num_heads, hidden_size) from a model's Hugging Face config (0 = detect from the
    graph), e.g. ``("bert", 4, 128)``; a model without one (edgekit's zoo ViT) gets ``("bert", 0, 0)``.

    After head pruning the config no longer describes the attention: when every layer kept the same heads, their
    count and total width (``all_head_size``) are given instead (the optimizer only fuses Attention with the
    pruned geometry; trusting the config fused a wrong Attention that the parity check of :func:`fuse_onnx` had to
    throw away); layers pruned differently get ``(0, 0)``, detection from the graph."""
    config = getattr(model, "config", None)
    kind = "vit" if str(getattr(config, "model_type", "") or "") in _VISION_TYPES else "bert"
    heads = int(getattr(config, "num_attention_heads", 0) or 0)
    hidden = int(getattr(config, "hidden_size", 0) or 0) if heads else 0
    modules = model.modules() if hasattr(model, "modules") else ()
    geometry = {(int(m.num_attention_heads), int(m.all_head_size)) for m in modules
                if hasattr(m, "num_attention_heads") and hasattr(m, "all_head_size")}
    if geometry and geometry != {(heads, hidden)}:  # heads were pruned
        return (kind, *geometry.pop()) if len(geometry) == 1 else (kind, 0, 0)
    return kind, heads, hidden


def is_encoder_graph(path: str | os.PathLike) -> bool:
    """True when the ONNX graph holds the Softmax and LayerNormalization of a transformer block."""
    import onnx

    model = onnx.load(os.fspath(path), load_external_data=False)
    return _ENCODER_MARKERS <= {n.op_type for n in model.graph.node}


def unfused_path(path: str | os.PathLike) -> Path:
    """Where the unfused sibling of a fused ``model.onnx`` lives: ``model.unfused.onnx``."""
    p = Path(path)
    return p.with_name(f"{p.stem}.unfused{p.suffix}")


def optimize_file(src: Path, dst: Path, model_type: str, num_heads: int, hidden_size: int,
                  opt_level: int = 0) -> Dict[str, int]:
    """Run ONNX Runtime's transformer optimizer on ``src`` and save the result to ``dst``.

    Returns the counts of fused ops it made (zero counts dropped). Raises ExportError when the optimizer fails.
    """
    from onnxruntime.transformers.optimizer import optimize_model

    try:
        with _quiet():
            opt = optimize_model(str(src), model_type=model_type, num_heads=num_heads, hidden_size=hidden_size,
                                 opt_level=opt_level, use_gpu=False)
            counts = {k: int(v) for k, v in (opt.get_fused_operator_statistics() or {}).items() if v}
            opt.save_model_to_file(str(dst))
    except Exception as e:
        raise ExportError(f"{src}: ONNX Runtime's transformer optimizer ({model_type}, num_heads {num_heads}, "
                          f"hidden_size {hidden_size}) failed: {first_line(e, 240)}") from None
    return counts


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the optimizer: it logs pattern misses as warnings from modules imported outside any package."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def contrib_ops(path: str | os.PathLike) -> Dict[str, int]:
    """Counts of ``com.microsoft`` ops in an ONNX file (what a backend without contrib ops cannot run)."""
    import onnx

    model = onnx.load(os.fspath(path), load_external_data=False)
    out: Dict[str, int] = {}
    for n in model.graph.node:
        if n.domain == CONTRIB_DOMAIN:
            out[n.op_type] = out.get(n.op_type, 0) + 1
    return out


def _max_diff(a: Path, b: Path, feeds: Mapping[str, np.ndarray]) -> Tuple[float, float]:
    """(max |logits(a) - logits(b)|, top-1 agreement %) on ONNX Runtime CPU over ``feeds``."""
    import onnxruntime as ort

    outs = []
    for p in (a, b):
        s = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
        names = [i.name for i in s.get_inputs()]
        outs.append(np.asarray(s.run(None, {k: feeds[k] for k in names})[0]))
    diff = float(np.abs(outs[0] - outs[1]).max())
    agree = float(100.0 * (outs[0].argmax(-1) == outs[1].argmax(-1)).mean())
    return diff, agree


def fuse_onnx(path: str | os.PathLike, *, model_type: str = "bert", num_heads: int = 0, hidden_size: int = 0,
              feeds: Optional[Mapping[str, np.ndarray]] = None, atol: float = 1e-3,
              opt_level: int = 0) -> Dict[str, Any]:
    """Fuse the fp32 encoder at ``path`` in place; keep the unfused graph as ``<stem>.unfused.onnx``.

    Args:
        path: an exported fp32 ONNX encoder (rewritten with the fused graph when fusion applies).
        model_type: ONNX Runtime optimizer model type ("bert" for text encoders, "vit" for image ones).
        num_heads, hidden_size: attention geometry (0 = let the optimizer detect it; Attention fusion often
            needs them given).
        feeds: inputs {name: array} for the parity check fused vs unfused (ONNX Runtime CPU).
        atol: maximum |fused - unfused| logits allowed; beyond it the unfused graph is kept.
        opt_level: the optimizer's ONNX Runtime graph level (0 or 1; higher levels are hardware-specific).

    Returns:
        The sidecar ``fusion`` entry: ``applied``, ``counts`` (fused ops), ``unfused`` (sibling file name),
        ``parity`` and ``backends`` ({backend: "fused" | "unfused"}), or ``applied: False`` with a ``reason``.

    Raises:
        ConfigError: ``opt_level`` outside 0..1. ExportError: the optimizer itself failed.
    """
    if opt_level not in (0, 1):
        raise ConfigError(f"fusion opt_level must be 0 or 1 (portable graphs), got {opt_level}")
    src = Path(path)
    settings = {"model_type": model_type, "num_heads": num_heads, "hidden_size": hidden_size, "opt_level": opt_level}
    sibling = unfused_path(src)
    with tempfile.TemporaryDirectory(prefix=".edgekit-fuse-", dir=src.parent) as d:
        fused = Path(d) / src.name
        counts = optimize_file(src, fused, model_type, num_heads, hidden_size, opt_level)
        made = contrib_ops(fused)
        if not made:
            return {"applied": False, "reason": "the optimizer found no pattern to fuse", **settings}
        parity = None
        if feeds is not None:
            diff, agree = _max_diff(src, fused, feeds)
            parity = {"max_abs_diff": diff, "top1_agreement": agree}
            if not diff <= atol:
                logger.warning(f"{src.name}: fused graph differs from the unfused one by {diff:.2e} "
                               f"(allowed {atol:.0e}); keeping the unfused graph")
                return {"applied": False, "reason": f"parity {diff:.2e} > {atol:.0e}", "parity": parity,
                        **settings}
        # the unfused graph moves to the sibling name, the fused one takes the export's own name
        with atomic_path(sibling, suffix=".onnx") as tmp:
            shutil.copyfile(src, tmp)
        os.replace(fused, src)
    logger.info(f"fused {src.name}: {counts}; unfused sibling {sibling.name}")
    return {"applied": True, "counts": counts, "contrib_ops": made, "unfused": sibling.name, "parity": parity,
            "backends": backend_files(made), **settings}


def backend_files(ops: Mapping[str, int]) -> Dict[str, str]:
    """{backend name: "fused" | "unfused"} for every registered backend that runs ONNX files, given the fused
    file's contrib ops ``ops``."""
    from edgekit.backends import BACKENDS, load_backends

    load_backends()
    return {name: ("fused" if spec.runs_contrib_ops(ops) else "unfused") for name, spec in BACKENDS.items()
            if "onnx" in spec.artifact_kinds}


def artifact_for_backend(path: str | os.PathLike, backend: str) -> Path:
    """The file ``backend`` runs for ``path``: the unfused sibling when ``path`` is a fused graph and the backend
    cannot run ONNX Runtime contrib ops, else ``path`` itself (what ``open_runner`` does on its own)."""
    from edgekit.backends import backend_spec
    from edgekit.backends.base import unfused_sibling

    return Path(unfused_sibling(path, backend_spec(backend)))


def fuse_like(src: Path, dst: Path, settings: Mapping[str, Any], feeds: Optional[Mapping[str, np.ndarray]] = None,
              atol: float = 1e-4) -> Optional[Dict[str, int]]:
    """Fuse ``src`` into ``dst`` with an fp32 export's optimizer ``settings`` (its sidecar ``fusion`` entry).

    Used on a static INT8 graph quantised from a fused export's unfused sibling: LayerNorm, SkipLayerNorm and
    Gelu fuse around the float ops the transformer rules keep (attention stays unfused: its MatMuls carry Q/DQ).
    Returns the fused op counts, or None (``dst`` not written) when nothing fused or the outputs moved by more
    than ``atol`` on ``feeds``.
    """
    with tempfile.TemporaryDirectory(prefix=".edgekit-fuse-", dir=dst.parent) as d:
        tmp = Path(d) / dst.name
        try:
            counts = optimize_file(src, tmp, settings.get("model_type", "bert"), int(settings.get("num_heads", 0)),
                                   int(settings.get("hidden_size", 0)), int(settings.get("opt_level", 0)))
        except ExportError as e:
            logger.info(f"{src.name}: fusion skipped ({e})")
            return None
        if not contrib_ops(tmp):
            return None
        if feeds is not None and not _max_diff(src, tmp, feeds)[0] <= atol:
            return None
        os.replace(tmp, dst)
    return counts
