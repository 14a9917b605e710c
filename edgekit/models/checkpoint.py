"""Checkpoints that rebuild their model with no other input, loaded with weights_only=True.

Format ``edgekit-checkpoint/1``: ``{"format", "arch": {"name", "kwargs"}, "structure", "state_dict", "meta"}``.
``structure`` records the constructor attributes of shape-bearing layers so a model whose
layers were resized (e.g. by structured pruning) is rebuilt at its new size.
"""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any, Dict, Tuple

import torch
import torch.nn as nn

from edgekit._io import atomic_path, require_file
from edgekit.errors import ConfigError, InputFileError, first_line

FORMAT = "edgekit-checkpoint/1"


def capture_structure(model: nn.Module) -> Dict[str, dict]:
    """Constructor attributes of every Conv/Linear/Norm layer, keyed by module name."""
    out: Dict[str, dict] = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            out[name] = {"type": "Conv2d", "in_channels": m.in_channels, "out_channels": m.out_channels,
                         "kernel_size": list(m.kernel_size), "stride": list(m.stride), "padding": list(m.padding)
                         if not isinstance(m.padding, str) else m.padding, "dilation": list(m.dilation),
                         "groups": m.groups, "bias": m.bias is not None}
        elif isinstance(m, nn.Linear):
            out[name] = {"type": "Linear", "in_features": m.in_features, "out_features": m.out_features,
                         "bias": m.bias is not None}
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            out[name] = {"type": type(m).__name__, "num_features": m.num_features, "eps": m.eps,
                         "momentum": m.momentum, "affine": m.affine}
        elif isinstance(m, nn.LayerNorm):
            out[name] = {"type": "LayerNorm", "normalized_shape": list(m.normalized_shape), "eps": m.eps,
                         "elementwise_affine": m.elementwise_affine}
    return out


def _build_layer(spec: dict) -> nn.Module:
    t = spec["type"]
    if t == "Conv2d":
        return nn.Conv2d(spec["in_channels"], spec["out_channels"], tuple(spec["kernel_size"]), tuple(spec["stride"]),
                         spec["padding"] if isinstance(spec["padding"], str) else tuple(spec["padding"]),
                         tuple(spec["dilation"]), spec["groups"], spec["bias"])
    if t == "Linear":
        return nn.Linear(spec["in_features"], spec["out_features"], spec["bias"])
    if t in ("BatchNorm1d", "BatchNorm2d"):
        return getattr(nn, t)(spec["num_features"], spec["eps"], spec["momentum"], spec["affine"])
    if t == "LayerNorm":
        return nn.LayerNorm(spec["normalized_shape"], spec["eps"], spec["elementwise_affine"])
    raise InputFileError(f"checkpoint structure has unsupported layer type '{t}'")


def apply_structure(model: nn.Module, structure: Dict[str, dict]) -> nn.Module:
    """Replace layers of ``model`` whose recorded structure differs from the current one."""
    current = capture_structure(model)
    for name, spec in structure.items():
        if name not in current:
            raise InputFileError(f"checkpoint structure names layer '{name}' which this architecture does not have")
        if current[name] == spec:
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, _build_layer(spec))
    _refresh_derived_attributes(model)
    return model


def _refresh_derived_attributes(model: nn.Module) -> None:
    """Let architectures recompute cached sizes (e.g. attention head dims) after resizing."""
    for m in model.modules():
        hook = getattr(m, "edgekit_refresh", None)
        if callable(hook):
            hook()


def save_checkpoint(model: nn.Module, path: str | Path, meta: Dict[str, Any] | None = None) -> Path:
    """Write ``model`` (weights + architecture + structure + meta) atomically to ``path``.

    Example:
        >>> save_checkpoint(model, "runs/x/model.pt", {"input_shape": [3, 32, 32], "num_classes": 10})
    """
    arch = getattr(model, "edgekit_arch", None)
    if arch is None:
        raise ConfigError(
            "this model was not built by edgekit.create_model, so its checkpoint could not rebuild it; "
            "build it with create_model(name, ...) or keep using the nn.Module directly"
        )
    payload = {"format": FORMAT, "arch": arch, "structure": capture_structure(model),
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
               "meta": {**_signature_meta(model), **dict(meta or {})}}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def _signature_meta(model: nn.Module) -> Dict[str, Any]:
    """``{"signature": ...}`` for a model that declares its inputs (e.g. a Hugging Face model), as plain data."""
    sig = getattr(model, "edgekit_signature", None)
    return {"signature": sig.to_dict()} if sig is not None else {}


def load_checkpoint(path: str | Path) -> Tuple[nn.Module, Dict[str, Any]]:
    """Rebuild the model stored at ``path``; returns ``(model, meta)``. Never executes pickled code."""
    from edgekit.models.registry import create_model

    p = require_file(path, "checkpoint")
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        if "Unsupported global" not in text and "GLOBAL" not in text:
            raise InputFileError(f"{p}: not a readable PyTorch checkpoint (corrupt or not a torch.save file)") from None
        first = next((ln.strip() for ln in text.splitlines() if "GLOBAL" in ln), "")[:200]
        raise InputFileError(
            f"{p}: refused to load: the checkpoint contains objects other than tensors and plain data, and "
            f"edgekit never executes pickled code ({first})"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        raise InputFileError(f"{p}: not a readable PyTorch checkpoint ({first_line(e, 200)})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise InputFileError(
            f"{p}: not an edgekit checkpoint (expected format '{FORMAT}'); plain state_dicts can be loaded "
            "into a model you build yourself with model.load_state_dict(torch.load(path, weights_only=True))"
        )
    arch = payload["arch"]
    model = create_model(arch["name"], **arch.get("kwargs", {}))
    apply_structure(model, payload.get("structure", {}))
    load_weights(model, payload["state_dict"], source=str(p))
    return model.eval(), dict(payload.get("meta", {}))


def load_weights(model: nn.Module, state_dict: Dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Load ``state_dict`` into ``model``; a mismatch names the first differing tensors."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    wrong = [f"{k} {list(state_dict[k].shape)} vs {list(own[k].shape)}" for k in own
             if k in state_dict and state_dict[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        arch = getattr(model, "edgekit_arch", {}).get("name", type(model).__name__)
        parts = []
        if wrong:
            parts.append(f"shape mismatch {', '.join(wrong[:3])}")
        if missing:
            parts.append(f"missing {', '.join(missing[:3])}")
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:3])}")
        raise InputFileError(f"{source}: weights do not fit architecture '{arch}': {'; '.join(parts)}")
    model.load_state_dict(state_dict)
