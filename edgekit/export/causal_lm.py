"""Causal language models (GPT-2 / Llama-style Hugging Face models) and their ONNX export with the KV cache.

One ONNX graph serves prefill (past length 0) and decode (past length P), with optimum-style names:

- inputs: ``input_ids [b, s]``, ``attention_mask [b, P + s]``, ``position_ids [b, s]``,
  ``past_key_values.{i}.key / .value [b, kv_heads, P, head_dim]``
- outputs: ``logits [b, s, vocab]``, ``present.{i}.key / .value [b, kv_heads, P + s, head_dim]``

transformers 5.x has no tuple caches: the export wrapper builds a ``DynamicCache`` from the flat past tensors.
GPT-2's ``Conv1D`` exports as ``Gemm``, which no weight-only or dynamic quantiser touches, so it is replaced by an
equal ``nn.Linear`` first (:func:`conv1d_to_linear`). Attention is switched to ``eager`` for export (sdpa's mask
shortcuts are data-dependent).

Example:
    >>> model = build_causal_lm("gpt2", vocab_size=500, n_layer=2, n_embd=32, n_head=2, n_positions=64)
    >>> info = export_causal_lm(model, "lm.onnx")
    >>> check_kv_parity(model, "lm.onnx", steps=4)["max_abs_diff"] < 1e-4
    True
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch

from edgekit._io import atomic_path
from edgekit.errors import ConfigError, ExportError, InputFileError, ShapeError, first_line
from edgekit.registry import Registry

logger = logging.getLogger(__name__)

#: architecture name -> builder(vocab_size, n_layer, n_embd, n_head, n_positions, **extra) -> HF causal LM
CAUSAL_LM_ARCHS: Registry[Callable[..., Any]] = Registry("causal LM architecture")

_HEAD_SUFFIXES = ("ForCausalLM", "LMHeadModel")
#: ONNX metadata key holding the model's context (position count); written by export_causal_lm
MAX_POSITIONS_KEY = "edgekit.max_positions"


@CAUSAL_LM_ARCHS.register("gpt2")
def _gpt2(vocab_size: int, n_layer: int, n_embd: int, n_head: int, n_positions: int, eos_id: int = 0, **extra):
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=vocab_size, n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_positions=n_positions,
                     bos_token_id=eos_id, eos_token_id=eos_id, **extra)
    return GPT2LMHeadModel(cfg)


@CAUSAL_LM_ARCHS.register("llama")
def _llama(vocab_size: int, n_layer: int, n_embd: int, n_head: int, n_positions: int, eos_id: int = 0, **extra):
    from transformers import LlamaConfig, LlamaForCausalLM

    extra.setdefault("num_key_value_heads", max(1, n_head // 2))
    extra.setdefault("intermediate_size", int(n_embd * 8 / 3 + 7) // 8 * 8)
    cfg = LlamaConfig(vocab_size=vocab_size, num_hidden_layers=n_layer, hidden_size=n_embd, num_attention_heads=n_head,
                      max_position_embeddings=n_positions, bos_token_id=eos_id, eos_token_id=eos_id,
                      tie_word_embeddings=True, **extra)
    return LlamaForCausalLM(cfg)


def build_causal_lm(arch: str, *, vocab_size: int, n_layer: int, n_embd: int, n_head: int, n_positions: int,
                    eos_id: int = 0, seed: int = 0, **extra):
    """A randomly initialised causal LM of a registered architecture (``gpt2`` | ``llama``), built from a config.

    Example:
        >>> m = build_causal_lm("llama", vocab_size=500, n_layer=2, n_embd=32, n_head=2, n_positions=64)
    """
    builder = CAUSAL_LM_ARCHS.get(arch)
    if n_embd % n_head:
        raise ConfigError(f"n_embd {n_embd} must be a multiple of n_head {n_head}")
    torch.manual_seed(seed)
    return builder(vocab_size, n_layer, n_embd, n_head, n_positions, eos_id=eos_id, **extra).eval()


def load_causal_lm(path: str | Path):
    """A Hugging Face causal LM from a local directory (``config.json`` + weights); nothing is downloaded.

    Raises:
        InputFileError: the directory or its ``config.json`` is missing, or the weights do not load.
        ConfigError: the saved model has no causal-LM head (e.g. ``GPT2Model`` instead of ``GPT2LMHeadModel``).

    Example:
        >>> teacher = load_causal_lm("models/gpt2-small-local")
    """
    p = Path(path)
    if not p.is_dir():
        raise InputFileError(f"Hugging Face model directory not found: {p} (give a local directory with config.json; "
                             "edgekit never downloads)")
    if not (p / "config.json").is_file():
        raise InputFileError(f"{p}: no config.json; not a saved Hugging Face model (save_pretrained writes one)")
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(p, local_files_only=True)
    except Exception as e:  # noqa: BLE001  (transformers raises many types for a bad config)
        raise InputFileError(f"{p}/config.json: not a readable Hugging Face config ({first_line(e)[:200]})") from None
    archs = list(getattr(config, "architectures", None) or [])
    if archs and not any(a.endswith(_HEAD_SUFFIXES) for a in archs):
        raise ConfigError(f"{p}: the saved model is {', '.join(archs)}, which has no causal-LM head; save a "
                          f"*ForCausalLM / *LMHeadModel (task causal-lm needs next-token logits)")
    try:
        model = AutoModelForCausalLM.from_pretrained(p, local_files_only=True)
    except ValueError as e:
        raise ConfigError(f"{p}: model type '{config.model_type}' has no causal-LM class ({first_line(e)[:160]})") \
            from None
    except OSError as e:
        raise InputFileError(f"{p}: weights could not be loaded ({first_line(e)[:200]})") from None
    return model.eval()


def check_causal_lm(model: Any) -> None:
    """Raise ConfigError unless ``model`` is a Hugging Face model with a causal-LM (next-token logits) head."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "get_output_embeddings"):
        raise ConfigError(f"{type(model).__name__} is not a Hugging Face causal LM (no config / output embeddings)")
    if model.get_output_embeddings() is None:
        raise ConfigError(f"{type(model).__name__} has no causal-LM head (output embeddings); use the "
                          f"*ForCausalLM / *LMHeadModel class of '{config.model_type}'")


def conv1d_to_linear(model: Any) -> Any:
    """Replace GPT-2's ``Conv1D`` modules by equal ``nn.Linear`` (in place; weights transposed) and return the model.

    ``Conv1D`` exports as ONNX ``Gemm``; ``MatMulNBits`` and dynamic INT8 quantise ``MatMul`` only.
    """
    from transformers.pytorch_utils import Conv1D

    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, Conv1D):
                lin = torch.nn.Linear(child.weight.shape[0], child.weight.shape[1])
                with torch.no_grad():
                    lin.weight.copy_(child.weight.t())
                    lin.bias.copy_(child.bias)
                setattr(module, name, lin)
    return model


@dataclass(frozen=True)
class KVLayout:
    """Names and cache shape of a KV-cache graph."""

    n_layers: int
    kv_heads: int
    head_dim: int
    vocab_size: int
    max_positions: int

    @property
    def past_names(self) -> List[str]:
        return [f"past_key_values.{i}.{kv}" for i in range(self.n_layers) for kv in ("key", "value")]

    @property
    def present_names(self) -> List[str]:
        return [f"present.{i}.{kv}" for i in range(self.n_layers) for kv in ("key", "value")]

    @property
    def input_names(self) -> List[str]:
        return ["input_ids", "attention_mask", "position_ids", *self.past_names]

    @property
    def output_names(self) -> List[str]:
        return ["logits", *self.present_names]

    def empty_past(self, batch: int = 1) -> Dict[str, np.ndarray]:
        """Zero-length past tensors (prefill)."""
        return {n: np.zeros((batch, self.kv_heads, 0, self.head_dim), np.float32) for n in self.past_names}


def kv_layout(config: Any, model: Any = None) -> KVLayout:
    """The cache layout of an HF causal-LM config (GPT-2 and Llama/Qwen names); with ``model``, the layer count and
    key/value heads are read off its attention modules (a head- or depth-pruned model's config keeps the original
    head counts, which its head width derives from).

    Raises:
        ExportError: the layers of ``model`` have different key/value head counts (one cache shape serves all).
    """
    n_layers = config.num_hidden_layers
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if model is not None:
        per_layer = _module_kv_heads(model)
        if len(set(per_layer.values())) > 1:
            raise ExportError(f"KV-cache export: the layers of {type(model).__name__} keep different key/value head "
                              f"counts {per_layer}; one cache shape serves every layer, so prune the same fraction "
                              "of heads in every layer (no excluded attention)")
        if per_layer:
            n_layers, kv = len(per_layer), next(iter(per_layer.values()))
            head_dim = int(getattr(next(m for m in model.modules() if _is_attention(m)), "head_dim", head_dim))
    return KVLayout(int(n_layers), int(kv), int(head_dim), int(config.vocab_size), int(positions))


def _is_attention(m: Any) -> bool:
    return hasattr(m, "head_dim") and (hasattr(m, "k_proj") or hasattr(m, "c_attn"))


def _module_kv_heads(model: Any) -> Dict[str, int]:
    """``{attention module: key/value heads}`` from the widths of its k projection (or GPT-2's ``split_size``)."""
    out: Dict[str, int] = {}
    for name, m in model.named_modules():
        if not _is_attention(m) or not m.head_dim:
            continue
        k = getattr(m, "k_proj", None)
        width = k.weight.shape[0] if isinstance(k, torch.nn.Linear) else getattr(m, "split_size", 0)
        out[name] = int(width) // int(m.head_dim)
    return out


class _KVWrapper(torch.nn.Module):
    """Flat tensors in and out; a DynamicCache inside (transformers 5.x has no tuple caches)."""

    def __init__(self, model: Any):
        super().__init__()
        self.m = model
        self.n_layers = model.config.num_hidden_layers

    def forward(self, input_ids, attention_mask, position_ids, *past):
        from transformers import DynamicCache

        cache = DynamicCache(config=self.m.config)
        for i in range(self.n_layers):
            cache.update(past[2 * i], past[2 * i + 1], i)
        out = self.m(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                     past_key_values=cache, use_cache=True)
        return (out.logits, *[t for layer in out.past_key_values.layers for t in (layer.keys, layer.values)])


def prepare_for_export(model: Any) -> Any:
    """Eval mode, eager attention and Conv1D→Linear (in place); returns the model."""
    check_causal_lm(model)
    model.eval()
    model.config._attn_implementation = "eager"
    return conv1d_to_linear(model)


def export_causal_lm(model: Any, out_path: str | Path, opset: int = 17) -> KVLayout:
    """Export ``model`` to one ONNX graph with past key/values inputs and present outputs (dynamic past length).

    The model is prepared in place (:func:`prepare_for_export`). Written atomically.

    Example:
        >>> layout = export_causal_lm(model, "teacher.onnx")
        >>> layout.input_names[:3]
        ['input_ids', 'attention_mask', 'position_ids']
    """
    model = prepare_for_export(model)
    layout = kv_layout(model.config, model)
    g = torch.Generator().manual_seed(0)
    b, s, past = 1, 4, 3
    args = (torch.randint(0, layout.vocab_size, (b, s), generator=g), torch.ones(b, past + s, dtype=torch.long),
            torch.arange(past, past + s).unsqueeze(0),
            *[torch.randn(b, layout.kv_heads, past, layout.head_dim, generator=g) for _ in layout.past_names])
    dyn = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "total_sequence"},
           "position_ids": {0: "batch", 1: "sequence"}, "logits": {0: "batch", 1: "sequence"}}
    dyn.update({n: {0: "batch", 2: "past_sequence"} for n in layout.past_names})
    dyn.update({n: {0: "batch", 2: "total_sequence"} for n in layout.present_names})
    with atomic_path(out_path, suffix=".onnx") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
        try:
            torch.onnx.export(_KVWrapper(model).eval(), args, str(tmp), dynamo=False, input_names=layout.input_names,
                              output_names=layout.output_names, dynamic_axes=dyn, opset_version=opset)
        except Exception as e:  # noqa: BLE001
            raise ExportError(f"KV-cache ONNX export of {type(model).__name__} failed: {first_line(e)[:240]}") \
                from None
        _record_context(tmp, layout.max_positions)
    logger.info(f"exported {type(model).__name__} with KV cache ({layout.n_layers} layers) -> {out_path}")
    return layout


def _record_context(path: Path, max_positions: int) -> None:
    """Write the model's context into the ONNX metadata (``edgekit.max_positions``; quantisers keep it)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    onnx.helper.set_model_props(model, {**{m.key: m.value for m in model.metadata_props},
                                        MAX_POSITIONS_KEY: str(int(max_positions))})
    onnx.save(model, str(path))


class CausalLMSession:
    """A KV-cache graph on a backend with a ``causal_lm`` hook (ONNX Runtime CPU by default, OpenVINO, ...):
    ``step(ids, past) -> (logits, present)``. The graph's layout is read off the file before the backend opens it.

    Example:
        >>> lm = CausalLMSession("lm.onnx", threads=2)                 # backend=: any of causal_lm_backends()
        >>> logits, past = lm.step(np.array([[5, 7, 9]]), lm.layout.empty_past())

    Raises:
        InputFileError: the file is missing or the backend cannot load it.
        ShapeError: the file is not a KV-cache LM graph.
        ConfigError: the backend cannot decode causal LMs (the message lists those that can).
    """

    def __init__(self, path: str | Path, layout: Optional[KVLayout] = None, threads: Optional[int] = 2,
                 backend: Optional[str] = None):
        from edgekit.backends import open_causal_lm_session

        p = Path(path)
        if not p.is_file():
            raise InputFileError(f"ONNX file not found: {p}")
        layout = layout or read_kv_layout(p)
        self.session = open_causal_lm_session(p, backend, threads)
        names = list(self.session.input_names)
        missing = [n for n in layout.input_names if n not in names and n != "position_ids"]
        if missing:
            raise ShapeError(f"{p}: not a KV-cache LM graph; missing inputs {missing[:3]} (have {names[:5]})")
        self.layout, self.path, self.backend = layout, p, self.session.info["backend"]
        self._positions = "position_ids" in names

    def feed(self, ids: np.ndarray, past: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """The graph's inputs for ``ids [b, s]`` after ``past``: ids, attention mask, positions (when the graph
        takes them) and the past key/values."""
        ids = np.asarray(ids, np.int64)
        b, s = ids.shape
        p = next(iter(past.values())).shape[2] if past else 0
        feed = {"input_ids": ids, "attention_mask": np.ones((b, p + s), np.int64), **past}
        if self._positions:
            feed["position_ids"] = np.broadcast_to(np.arange(p, p + s, dtype=np.int64), (b, s)).copy()
        return feed

    def step(self, ids: np.ndarray, past: Dict[str, np.ndarray]):
        """Run ``ids [b, s]`` after ``past`` (names of :attr:`KVLayout.past_names`); returns logits, new past."""
        out = self.session.run(self.feed(ids, past))
        return out[0], dict(zip(self.layout.past_names, out[1:]))


def token_nll(logits: np.ndarray, targets: np.ndarray) -> float:
    """Summed negative log-likelihood (nats) of ``targets [..., s]`` under ``logits [..., s, vocab]`` (a
    numerically stable log-softmax in float64): perplexity = exp(sum / number of targets)."""
    logits = np.asarray(logits, np.float64)
    m = logits.max(-1, keepdims=True)
    logp = logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))
    return -float(np.take_along_axis(logp, np.asarray(targets, np.int64)[..., None], -1).sum())


#: the KV-cache session on the default causal-LM backend (ONNX Runtime CPU); kept for its callers
OrtCausalLM = CausalLMSession


def layout_from_onnx(session: Any) -> KVLayout:
    """Read the cache layout off a KV-cache graph's input shapes (an ONNX Runtime session)."""
    inputs = {i.name: i for i in session.get_inputs()}
    keys = sorted(n for n in inputs if n.startswith("past_key_values.") and n.endswith(".key"))
    if not keys:
        raise ShapeError(f"not a KV-cache LM graph: no past_key_values.*.key input (inputs: {list(inputs)[:5]})")
    shape = inputs[keys[0]].shape
    logits = next(o for o in session.get_outputs() if o.name == "logits")
    vocab = logits.shape[-1] if isinstance(logits.shape[-1], int) else 0
    return KVLayout(len(keys), int(shape[1]), int(shape[3]), int(vocab), 0)


def read_kv_layout(path: str | Path) -> KVLayout:
    """The cache layout of a KV-cache ONNX file, read off its graph (no runtime): layers, key/value heads, head
    size, vocabulary (the ``logits`` width) and the context (``edgekit.max_positions`` in the model's metadata,
    which :func:`export_causal_lm` writes, else the export sidecar's ``kv_cache.max_positions``, of this file or of
    the file its sidecar names as ``source`` (quantised files), else 0 = unknown).

    Raises:
        InputFileError: not a readable ONNX file.
        ShapeError: not a KV-cache causal-LM graph (no ``input_ids`` / ``attention_mask`` / ``past_key_values.*``
            inputs or no ``logits`` output with a fixed vocabulary).

    Example:
        >>> read_kv_layout("runs/text_gpt/r/stages/04-int4/pruned-int4.onnx").vocab_size
        2000
    """
    import onnx

    p = Path(path)
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as e:  # noqa: BLE001  (protobuf raises DecodeError and others)
        raise InputFileError(f"{p}: not a readable ONNX file ({first_line(e)[:160]})") from None
    dims = {v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
            for v in [*model.graph.input, *model.graph.output]}
    keys = [n for n in dims if n.startswith("past_key_values.") and n.endswith(".key")]
    lacking = [n for n in ("input_ids", "attention_mask", "logits") if n not in dims]
    lacking += [] if keys else ["past_key_values.*.key"]
    shape, vocab = (dims[keys[0]] if keys else []), (dims.get("logits") or [None])[-1]
    if lacking or len(shape) != 4 or None in (shape[1], shape[3], vocab):
        why = (f"no {', '.join(lacking)}" if lacking
               else "its past key/value heads, head size or vocabulary are not fixed")
        raise ShapeError(f"{p}: not a KV-cache causal-LM graph ({why}; inputs: "
                         f"{[i.name for i in model.graph.input][:5]}); export one with export_causal_lm")
    meta = {m.key: m.value for m in model.metadata_props}
    positions = meta.get(MAX_POSITIONS_KEY) or _recorded_context(p)
    return KVLayout(len(keys), int(shape[1]), int(shape[3]), int(vocab), int(positions))


def _recorded_context(path: Path, hops: int = 4) -> int:
    """The context an export sidecar records (``kv_cache.max_positions``), following a quantised file's sidecar
    ``source`` back to the graph it was made from; 0 when none is found."""
    from edgekit._io import read_sidecar

    for _ in range(hops):
        side = read_sidecar(path)
        if (side.get("kv_cache") or {}).get("max_positions"):
            return int(side["kv_cache"]["max_positions"])
        if not side.get("source") or not Path(side["source"]).is_file():
            return 0
        path = Path(side["source"])
    return 0


def check_kv_parity(model: Any, onnx_path: str | Path, *, prompt_len: int = 8, steps: int = 4, seed: int = 0,
                    threads: Optional[int] = 2) -> dict:
    """Compare the graph with the PyTorch model: prefill ``prompt_len`` tokens, then ``steps`` one-token decode steps
    with the cache, each step's logits vs the PyTorch full-sequence forward; also the greedy continuation.

    Returns:
        ``{"max_abs_diff", "greedy_match", "steps"}``.

    Example:
        >>> check_kv_parity(model, "lm.onnx")["max_abs_diff"]
    """
    layout = kv_layout(model.config, model)
    if prompt_len + steps > layout.max_positions:
        raise ConfigError(f"prompt_len {prompt_len} + steps {steps} exceeds the model's {layout.max_positions} "
                          "positions")
    lm = OrtCausalLM(onnx_path, layout, threads)
    rng = np.random.default_rng(seed)
    seq = rng.integers(0, layout.vocab_size, (1, prompt_len)).astype(np.int64)
    logits, past = lm.step(seq, layout.empty_past())
    diffs, matches = [], 0
    for _ in range(steps):
        with torch.no_grad():
            ref = model(input_ids=torch.from_numpy(seq)).logits[0, -1].numpy()
        diffs.append(float(np.abs(ref - logits[0, -1]).max()))
        nxt = int(logits[0, -1].argmax())
        matches += int(nxt == int(ref.argmax()))
        seq = np.concatenate([seq, [[nxt]]], axis=1)
        logits, past = lm.step(np.array([[nxt]]), past)
    return {"max_abs_diff": max(diffs), "greedy_match": matches / steps, "steps": steps}


__all__ = ["CAUSAL_LM_ARCHS", "CausalLMSession", "KVLayout", "MAX_POSITIONS_KEY", "OrtCausalLM", "build_causal_lm",
           "check_causal_lm", "check_kv_parity", "conv1d_to_linear", "export_causal_lm", "kv_layout",
           "layout_from_onnx", "load_causal_lm", "prepare_for_export", "read_kv_layout", "token_nll"]
