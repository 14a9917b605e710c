"""Hugging Face ``transformers`` models from local directories only, as edgekit models with a signature.

A model loaded from a directory (``load_hf``) or built from a config (``create_model("hf", config=..., task=...)``)
is stamped like every zoo model: ``edgekit_arch = {"name": "hf", "kwargs": {"config": <full config dict>, "task"}}``,
so an edgekit checkpoint rebuilds it from plain data with ``torch.load(weights_only=True)`` — no directory, no
download, no pickled code. Attention runs in ``eager`` mode (exports to ONNX; sdpa's mask shortcuts do not).

Example:
    >>> save_hf_model("models/bert4", {"model_type": "bert", "num_hidden_layers": 4, "hidden_size": 128,
    ...                                "num_attention_heads": 4, "intermediate_size": 512, "vocab_size": 4000},
    ...               task="sequence-classification", num_classes=5)
    >>> model = load_hf("models/bert4", "sequence-classification")   # local_files_only, never the network
    >>> model.edgekit_signature.describe()
    'input_ids: int64[batch, sequence], attention_mask: int64[batch, sequence], token_type_ids: int64[batch, sequence]'
"""
from __future__ import annotations

import inspect
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch.nn as nn

from edgekit.core.signature import InputSpec, Signature
from edgekit.errors import ConfigError, InputFileError, first_line
from edgekit.models.registry import register_model
from edgekit.registry import Registry


@dataclass(frozen=True)
class HFTask:
    """A ``transformers`` task: the Auto class that builds it and the inputs its models take."""

    auto_class: str  # attribute of the transformers package, e.g. AutoModelForSequenceClassification
    signature: Callable[[Any, nn.Module], Signature]  # (config, model) -> Signature
    description: str = ""


HF_TASKS: Registry[HFTask] = Registry("Hugging Face task")


def _text_signature(config: Any, model: nn.Module) -> Signature:
    takes = inspect.signature(model.forward).parameters
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if "token_type_ids" in takes
                                                and getattr(config, "type_vocab_size", 0) else [])
    return Signature(tuple(InputSpec(n, "int64", ("batch", "sequence")) for n in names), output="logits",
                     vocab_size=int(config.vocab_size), max_positions=getattr(config, "max_position_embeddings", None),
                     token_inputs=("input_ids",))


def _image_signature(config: Any, model: nn.Module) -> Signature:
    size = getattr(config, "image_size", None)
    size = size if isinstance(size, (list, tuple)) else (size, size)
    shape = ("batch", int(getattr(config, "num_channels", 3)), *[int(s) for s in size])
    return Signature((InputSpec("pixel_values", "float32", shape),), output="logits")


def _causal_lm_signature(config: Any, model: nn.Module) -> Signature:
    positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    return Signature((InputSpec("input_ids", "int64", ("batch", "sequence")),), output="logits", task="causal-lm",
                     vocab_size=int(config.vocab_size), max_positions=positions, token_inputs=("input_ids",))


HF_TASKS.register("causal-lm")(HFTask(
    "AutoModelForCausalLM", _causal_lm_signature, "decoder LM: token ids → next-token logits [batch, tokens, vocab]"))
HF_TASKS.register("sequence-classification")(HFTask(
    "AutoModelForSequenceClassification", _text_signature, "text classifier: token ids → logits [batch, classes]"))
HF_TASKS.register("image-classification")(HFTask(
    "AutoModelForImageClassification", _image_signature, "image classifier: pixel_values → logits [batch, classes]"))


def _transformers():
    try:
        import transformers
    except ImportError:
        raise ConfigError("Hugging Face models need the 'transformers' package: pip install 'edgekit[hf]'") from None
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return transformers


def _task(task: str) -> HFTask:
    if task not in HF_TASKS:
        raise ConfigError(f"model.task: {HF_TASKS.unknown_message(task)}")
    return HF_TASKS.get(task)


def config_dict(config: Any) -> Dict[str, Any]:
    """The full config of a ``PretrainedConfig`` as plain JSON data (what checkpoints store)."""
    return json.loads(config.to_json_string(use_diff=False))


def make_config(config: Dict[str, Any], num_classes: Optional[int] = None, **data: Any) -> Any:
    """A ``transformers`` config from a plain dict with ``model_type``; data-derived sizes fill what it leaves out.

    Args:
        config: ``{"model_type": "bert", "num_hidden_layers": 2, ...}`` (any ``PretrainedConfig`` field).
        num_classes: sets ``num_labels`` unless the dict gives it (or ``id2label``).
        data: other fields taken from the data when the dict leaves them out (``vocab_size``, ``image_size``,
            ``num_channels``); None values are ignored.
    """
    tf = _transformers()
    cfg = dict(config or {})
    model_type = cfg.pop("model_type", None)
    if not model_type:
        raise ConfigError(f"model.config needs a 'model_type' (e.g. bert, vit, distilbert), got keys {sorted(cfg)}")
    if num_classes and "num_labels" not in cfg and "id2label" not in cfg:
        cfg["num_labels"] = int(num_classes)
    for k, v in data.items():
        if v is not None:
            cfg.setdefault(k, v)
    for k in ("transformers_version", "architectures", "_name_or_path"):
        cfg.pop(k, None)
    try:
        return tf.AutoConfig.for_model(model_type, **cfg)
    except ValueError as e:
        raise ConfigError(f"model.config: {first_line(e, 200)}") from None


def _build(config: Any, task: str) -> nn.Module:
    tf = _transformers()
    auto = getattr(tf, _task(task).auto_class)
    try:
        return auto.from_config(config, attn_implementation="eager")
    except (ValueError, KeyError) as e:
        raise ConfigError(f"model: {type(config).__name__} cannot build a {task} model: {first_line(e, 200)}") from None


def _stamp(model: nn.Module, config: Any, task: str) -> nn.Module:
    model.edgekit_arch = {"name": "hf", "kwargs": {"config": config_dict(config), "task": task}}
    model.edgekit_signature = _task(task).signature(config, model)
    return model


def encoder_layers(model: nn.Module) -> List[str]:
    """Names of the transformer blocks (the first ``ModuleList`` of layers), shallow to deep."""
    for name, m in model.named_modules():
        if isinstance(m, nn.ModuleList) and len(m) and name.rsplit(".", 1)[-1] in ("layer", "layers", "h", "blocks"):
            return [f"{name}.{i}" for i in range(len(m))]
    return []


def _classifier(model: nn.Module) -> Optional[str]:
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    heads = [n for n in names if n.split(".")[0] in ("classifier", "score", "lm_head")]
    return heads[-1] if heads else (names[-1] if names else None)


@register_model("hf", features=encoder_layers, classifier=_classifier)
def hf(config: Dict[str, Any], task: str = "sequence-classification", num_classes: Optional[int] = None,
       vocab_size: Optional[int] = None, image_size: Optional[int] = None,
       in_channels: Optional[int] = None) -> nn.Module:
    """A Hugging Face transformers model built from a config dict (random weights); needs ``transformers``.

    ``config`` holds ``model_type`` plus any config field; the other arguments fill fields it leaves out
    (a recipe takes them from the data). Example student: ``{name: hf, config: {model_type: bert,
    num_hidden_layers: 2, hidden_size: 128, num_attention_heads: 4, intermediate_size: 512}}``.
    """
    if task == "causal-lm":
        num_classes = None  # the vocabulary is the output; num_labels would only bloat the config
    cfg = make_config(config, num_classes, vocab_size=vocab_size, image_size=image_size, num_channels=in_channels)
    return _stamp(_build(cfg, task), cfg, task)


#: ``gpt_lm`` arch name -> (model_type, {gpt_lm argument: config field})
_LM_CONFIGS = {"gpt2": ("gpt2", {"n_layer": "n_layer", "n_embd": "n_embd", "n_head": "n_head",
                                 "n_positions": "n_positions"}),
               "llama": ("llama", {"n_layer": "num_hidden_layers", "n_embd": "hidden_size",
                                   "n_head": "num_attention_heads", "n_positions": "max_position_embeddings"})}


@register_model("gpt_lm", features=encoder_layers, classifier=_classifier)
def gpt_lm(vocab_size: int = 8000, n_layer: int = 4, n_embd: int = 128, n_head: int = 4, n_positions: int = 128,
           arch: str = "gpt2", dropout: float = 0.0) -> nn.Module:
    """A GPT-style decoder LM (``task: causal-lm``) built locally: ``arch`` gpt2 (learned positions, pre-LayerNorm,
    tied head) or llama (RoPE, RMSNorm, SwiGLU, grouped KV heads, tied head); needs ``transformers``.

    A recipe fills ``vocab_size`` from the tokenizer and ``n_positions`` from the data's window.

    Example:
        >>> lm = create_model("gpt_lm", vocab_size=500, n_layer=2, n_embd=32, n_head=2, n_positions=64)
    """
    if arch not in _LM_CONFIGS:
        raise ConfigError(f"gpt_lm: unknown arch '{arch}'; allowed: {', '.join(_LM_CONFIGS)}")
    if n_embd % n_head:
        raise ConfigError(f"gpt_lm: n_embd {n_embd} must be a multiple of n_head {n_head}")
    model_type, names = _LM_CONFIGS[arch]
    values = {"n_layer": n_layer, "n_embd": n_embd, "n_head": n_head, "n_positions": n_positions}
    config: Dict[str, Any] = {"model_type": model_type, "vocab_size": vocab_size, "tie_word_embeddings": True,
                              "bos_token_id": 0, "eos_token_id": 0,  # edgekit's BPE: <|endoftext|> is token 0
                              **{names[k]: v for k, v in values.items()}}
    if arch == "gpt2":
        config.update(resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout)
    else:
        # SwiGLU width ~8/3 × n_embd, rounded up to a multiple of 32 so INT4 blocks of 16/32 divide it
        config.update(num_key_value_heads=max(1, n_head // 2), intermediate_size=int(n_embd * 8 / 3 + 31) // 32 * 32,
                      attention_dropout=dropout)
    return hf(config, task="causal-lm")


@register_model("bert_classifier", features=encoder_layers, classifier=_classifier)
def bert_classifier(num_classes: int = 2, vocab_size: int = 8000, n_layer: int = 4, hidden: int = 256, heads: int = 4,
                    intermediate: Optional[int] = None, max_positions: int = 512, dropout: float = 0.1) -> nn.Module:
    """A BERT-style text classifier (``BertForSequenceClassification``, post-LayerNorm, GELU FFN of
    ``intermediate`` = 4 × ``hidden`` by default) built locally with random weights; needs ``transformers``.

    A recipe fills ``num_classes`` and ``vocab_size`` from the data. Its inputs are the three int64 tensors of a
    Hugging Face BERT (input_ids, attention_mask, token_type_ids); ``max_positions`` is the position table (the
    longest sequence it takes), 512 as in BERT, so one model can be timed at sequence 32 to 512.

    Example:
        >>> bert = create_model("bert_classifier", num_classes=5, vocab_size=3000, n_layer=4, hidden=256, heads=4)
    """
    if hidden % heads:
        raise ConfigError(f"bert_classifier: hidden {hidden} must be a multiple of heads {heads}")
    config = {"model_type": "bert", "num_hidden_layers": n_layer, "hidden_size": hidden, "num_attention_heads": heads,
              "intermediate_size": intermediate or 4 * hidden, "max_position_embeddings": max_positions,
              "hidden_dropout_prob": dropout, "attention_probs_dropout_prob": dropout}
    return hf(config, num_classes=num_classes, vocab_size=vocab_size)


def _require_dir(path: str | Path) -> Path:
    p = Path(path)
    if not p.is_dir():
        raise InputFileError(f"model.hf: Hugging Face model directory not found: {p} (edgekit loads local "
                             "directories only; give model.config to create one)")
    if not (p / "config.json").is_file():
        raise InputFileError(f"model.hf: {p} has no config.json; expected a directory written by "
                             "save_pretrained (config.json + model.safetensors)")
    return p


def load_hf(path: str | Path, task: str = "sequence-classification") -> nn.Module:
    """Load a model saved with ``save_pretrained`` from a local directory (never the network).

    Raises:
        InputFileError: the directory or its config.json is missing, or its weights do not load.
        ConfigError: unknown task, or an architecture ``transformers`` does not know.
    """
    tf = _transformers()
    spec, p = _task(task), _require_dir(path)
    try:
        config = tf.AutoConfig.from_pretrained(str(p), local_files_only=True)
    except (ValueError, KeyError, OSError) as e:
        raise ConfigError(f"model.hf: {p}/config.json names an architecture transformers "
                          f"{tf.__version__} does not know: {first_line(e, 200)}") from None
    auto = getattr(tf, spec.auto_class)
    try:
        model = auto.from_pretrained(str(p), config=config, local_files_only=True, attn_implementation="eager")
    except ValueError as e:
        raise ConfigError(f"model.hf: {type(config).__name__} in {p} has no {task} model: "
                          f"{first_line(e, 200)}") from None
    except OSError as e:
        raise InputFileError(f"model.hf: cannot read the weights in {p}: {first_line(e, 200)}") from None
    return _stamp(model.eval(), model.config, task)


def save_hf_model(path: str | Path, config: Dict[str, Any], task: str = "sequence-classification", *,
                  num_classes: Optional[int] = None, tokenizer: Any = None, seed: Optional[int] = 0,
                  **data: Any) -> Path:
    """Build a randomly initialised model from ``config`` and ``save_pretrained`` it to ``path`` (atomically).

    Args:
        path: the directory to create (must not exist).
        config: ``{"model_type": ..., <config fields>}``; ``num_classes`` and ``data`` (vocab_size, image_size,
            num_channels) fill fields it leaves out.
        tokenizer: a ``tokenizers.Tokenizer`` saved next to the model (``tokenizer.json``), optional.
        seed: seeds the random initialisation (None: draw from torch's current random state, e.g. a recipe's
            seeded stream).

    Example:
        >>> save_hf_model("models/vit", {"model_type": "vit", "patch_size": 4, "hidden_size": 64},
        ...               "image-classification", num_classes=10, image_size=16, num_channels=1)
    """
    import torch

    dest = Path(path)
    if dest.exists():
        raise InputFileError(f"{dest} already exists; edgekit does not overwrite a model directory")
    cfg = make_config(config, num_classes, **data)
    if seed is None:
        model = _build(cfg, task)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = _build(cfg, task)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        model.save_pretrained(str(tmp))
        if tokenizer is not None:
            tokenizer.save(str(tmp / "tokenizer.json"))
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest
