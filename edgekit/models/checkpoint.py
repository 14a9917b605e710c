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
    """Constructor attributes of every Conv/Linear/Norm/LSTM/GRU layer (and transformers' GPT-2 ``Conv1D``), keyed
    by module name."""
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
        elif type(m).__name__ == "Conv1D" and type(m).__module__.startswith("transformers"):
            out[name] = {"type": "Conv1D", "nf": int(m.weight.shape[1]), "nx": int(m.weight.shape[0])}
        elif type(m) in (nn.LSTM, nn.GRU):
            out[name] = _rnn_structure(m)
        elif isinstance(m, nn.LayerNorm):
            out[name] = {"type": "LayerNorm", "normalized_shape": list(m.normalized_shape), "eps": m.eps,
                         "elementwise_affine": m.elementwise_affine}
    return out


_RNN_FIELDS = ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout", "bidirectional")


def _rnn_structure(m: nn.RNNBase) -> dict:
    """LSTM/GRU sizes (hidden units pruned by edgekit's unit pruning) and flags; ``proj_size`` for LSTM."""
    spec = {"type": type(m).__name__, **{k: getattr(m, k) for k in _RNN_FIELDS}}
    if isinstance(m, nn.LSTM):
        spec["proj_size"] = m.proj_size
    return spec


def _build_layer(spec: dict) -> nn.Module:
    t = spec["type"]
    if t in ("LSTM", "GRU"):
        extra = {"proj_size": spec.get("proj_size", 0)} if t == "LSTM" else {}
        return getattr(nn, t)(**{k: spec[k] for k in _RNN_FIELDS}, **extra)
    if t == "Conv2d":
        return nn.Conv2d(spec["in_channels"], spec["out_channels"], tuple(spec["kernel_size"]), tuple(spec["stride"]),
                         spec["padding"] if isinstance(spec["padding"], str) else tuple(spec["padding"]),
                         tuple(spec["dilation"]), spec["groups"], spec["bias"])
    if t == "Linear":
        return nn.Linear(spec["in_features"], spec["out_features"], spec["bias"])
    if t == "Conv1D":  # transformers' GPT-2 projection (weight [nx, nf]); only in checkpoints of HF models
        from transformers.pytorch_utils import Conv1D

        return Conv1D(spec["nf"], spec["nx"])
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
    """Let architectures recompute cached sizes (e.g. attention head dims) after resizing; head counts of
    Hugging Face attention modules follow their (possibly head-pruned) query width."""
    from edgekit.models.heads import refresh_heads

    for m in model.modules():
        hook = getattr(m, "edgekit_refresh", None)
        if callable(hook):
            hook()
    refresh_heads(model)


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
    check_payload(payload, str(p))
    arch = payload["arch"]
    _check_sizes_on_meta(payload, str(p))
    model = create_model(arch["name"], **arch.get("kwargs", {}))
    apply_structure(model, payload.get("structure", {}))
    load_weights(model, payload["state_dict"], source=str(p))
    return model.eval(), dict(payload.get("meta", {}))


_PLAIN = (str, int, float, bool, type(None))
_STRUCTURE_TYPES = ("Conv2d", "Linear", "Conv1D", "BatchNorm1d", "BatchNorm2d", "LayerNorm", "LSTM", "GRU")
_RNN_GATES = {"LSTM": 4, "GRU": 3}


_MAX_DEPTH = 8  # a Hugging Face config is a mapping of mappings (e.g. id2label); deeper is not a config


def _is_plain_data(v, depth: int = 0) -> bool:
    """Numbers, strings, None, and lists/mappings (string keys) of them, nested at most ``_MAX_DEPTH`` deep."""
    if isinstance(v, _PLAIN):
        return True
    if depth >= _MAX_DEPTH:
        return False
    if isinstance(v, (list, tuple)):
        return all(_is_plain_data(i, depth + 1) for i in v)
    if isinstance(v, dict):
        return all(isinstance(k, (str, int)) and _is_plain_data(i, depth + 1) for k, i in v.items())
    return False


def check_payload(payload: dict, source: str) -> None:
    """Check an edgekit checkpoint's payload schema before any tensor or module is built: ``arch`` names a
    model with plain keyword arguments, ``state_dict`` maps names to tensors, ``meta`` is a mapping, and every
    ``structure`` entry is a known layer type whose sizes match the tensors stored for it (so a crafted entry
    cannot allocate more than the file holds)."""
    arch = payload.get("arch")
    if not isinstance(arch, dict) or not isinstance(arch.get("name"), str):
        raise InputFileError(f"{source}: checkpoint 'arch' must be a mapping with a model 'name' (got "
                             f"{type(arch).__name__})")
    kwargs = arch.get("kwargs", {})
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise InputFileError(f"{source}: checkpoint arch.kwargs must be a mapping of argument names to values "
                             f"(got {type(kwargs).__name__})")
    for k, v in kwargs.items():
        if not _is_plain_data(v):
            raise InputFileError(f"{source}: checkpoint arch.kwargs.{k} must be plain data (numbers, strings, "
                                 f"lists and mappings of them, nested at most {_MAX_DEPTH} deep), got "
                                 f"{type(v).__name__}")
    state = payload.get("state_dict")
    if not isinstance(state, dict):
        raise InputFileError(f"{source}: checkpoint 'state_dict' must be a mapping of tensors (got "
                             f"{type(state).__name__})")
    for k, v in state.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            raise InputFileError(f"{source}: checkpoint state_dict[{str(k)[:80]!r}] must be a tensor, got "
                                 f"{type(v).__name__}")
    if not isinstance(payload.get("meta", {}), dict):
        raise InputFileError(f"{source}: checkpoint 'meta' must be a mapping (got {type(payload['meta']).__name__})")
    structure = payload.get("structure", {})
    if not isinstance(structure, dict):
        raise InputFileError(f"{source}: checkpoint 'structure' must be a mapping of layer names to layer settings")
    for name, spec in structure.items():
        _check_structure_entry(str(name), spec, state, source)


def _check_structure_entry(name: str, spec: Any, state: Dict[str, Any], source: str) -> None:
    where = f"{source}: checkpoint structure['{name[:80]}']"
    if not isinstance(spec, dict) or spec.get("type") not in _STRUCTURE_TYPES:
        got = spec.get("type") if isinstance(spec, dict) else type(spec).__name__
        raise InputFileError(f"{where}: layer type {got!r} is not one of {', '.join(_STRUCTURE_TYPES)}")
    try:
        t = spec["type"]
        if t == "Conv2d":
            k = [int(i) for i in spec["kernel_size"]]
            per_group = int(spec["in_channels"]) // max(1, int(spec["groups"]))
            key, want = "weight", [int(spec["out_channels"]), per_group, *k]
        elif t == "Linear":
            key, want = "weight", [int(spec["out_features"]), int(spec["in_features"])]
        elif t == "Conv1D":
            key, want = "weight", [int(spec["nx"]), int(spec["nf"])]
        elif t.startswith("BatchNorm"):
            key, want = "running_mean", [int(spec["num_features"])]
        elif t in _RNN_GATES:
            key, want = "weight_ih_l0", [_RNN_GATES[t] * int(spec["hidden_size"]), int(spec["input_size"])]
        else:
            key, want = "weight", [int(i) for i in spec["normalized_shape"]]
            if not spec["elementwise_affine"]:
                key = None
    except (KeyError, TypeError, ValueError) as e:
        raise InputFileError(f"{where}: malformed {spec.get('type')} settings ({first_line(e, 80)})") from None
    if key is None:
        if any(d < 1 or d > 1 << 20 for d in want):
            raise InputFileError(f"{where}: normalized_shape {want} is out of range")
        return
    tensor = state.get(f"{name}.{key}")
    if tensor is None or list(tensor.shape) != want:
        have = "no tensor" if tensor is None else f"tensor shape {list(tensor.shape)}"
        raise InputFileError(f"{where}: settings imply {name}.{key} of shape {want}, but the state dict has {have}")


SIZE_FACTOR, SIZE_FLOOR = 64, 50_000_000  # an architecture before its recorded pruning vs the values stored


def _check_sizes_on_meta(payload: dict, source: str) -> None:
    """Build the architecture on PyTorch's ``meta`` device (no memory): architecture arguments that would
    allocate far more than the file holds, or tensor shapes that differ from the state dict, are refused before
    the real build."""
    from edgekit.models.registry import create_model

    arch = payload["arch"]
    stored = sum(t.numel() for t in payload["state_dict"].values())
    try:
        with torch.device("meta"):
            model = create_model(arch["name"], **arch.get("kwargs", {}))
            built = sum(t.numel() for t in model.state_dict().values())
            if built > max(SIZE_FACTOR * stored, SIZE_FLOOR):
                raise InputFileError(f"{source}: weights do not fit architecture '{arch['name']}': its arguments "
                                     f"{arch.get('kwargs', {})} build {built:,} values but the checkpoint holds "
                                     f"{stored:,}")
            apply_structure(model, payload.get("structure", {}))
    except (ConfigError, InputFileError):
        raise
    except Exception:  # an architecture that cannot be built on 'meta' is checked after the real build
        return
    load_weights_shapes(model, payload["state_dict"], source)


def load_weights_shapes(model: nn.Module, state_dict: Dict[str, torch.Tensor], source: str) -> None:
    """Raise the same error as :func:`load_weights` when tensor names or shapes differ; copies nothing."""
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if own.keys() == state_dict.keys() and all(own[k] == tuple(state_dict[k].shape) for k in own):
        return
    stand_in = _ShapeOnly(own)
    stand_in.edgekit_arch = getattr(model, "edgekit_arch", {"name": type(model).__name__})
    load_weights(stand_in, state_dict, source)


class _ShapeOnly(nn.Module):
    """Stands in for a model in :func:`load_weights`'s mismatch message (its state dict of empty tensors)."""

    def __init__(self, shapes: Dict[str, tuple]):
        super().__init__()
        self._shapes = shapes

    def state_dict(self, *args: Any, **kwargs: Any) -> Dict[str, torch.Tensor]:  # type: ignore[override]
        return {k: torch.empty(s, device="meta") for k, s in self._shapes.items()}


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
