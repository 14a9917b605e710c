"""Where the attention heads and the feed-forward (FFN) neurons of a transformer block live.

One table, :data:`ATTENTION_LAYOUTS`, says for each supported attention module how its heads are laid out (the
query/key/value Linears or one fused qkv Linear, the output projection, the attribute holding the per-head width
and the attributes that count heads); :data:`FFN_LAYOUTS` names each block's up (gate) / down projections. Encoders
(BERT family, ViT, DistilBERT, zoo ViT) and decoders (GPT-2 with its packed ``c_attn`` Conv1D, Llama-style
q/k/v/o_proj with grouped KV heads; both arches of the zoo ``gpt_lm``) are covered. A projection is an
``nn.Linear`` or a ``transformers`` ``Conv1D`` (weight stored ``[in, out]``). Head/FFN pruning
(:mod:`edgekit.techniques.prune._transformer`) reads them, and checkpoints call :func:`refresh_heads` after
resizing layers so the head counts of a reloaded model agree with its weights.

Example:
    >>> blocks = transformer_blocks(model)        # one entry per encoder layer
    >>> blocks[0].heads, blocks[0].head_size, blocks[0].ffn
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch.nn as nn

from edgekit.models.registry import model_layout


@dataclass(frozen=True)
class AttentionLayout:
    """How one kind of multi-head attention module holds its heads."""

    name: str  # what users read in errors: the HF classes it covers
    qkv: Tuple[str, ...]  # three Linear attributes (query, key, value) or one fused [3 * heads * head_size] Linear
    out: str  # output projection, relative to the attention module ("../x" = relative to its parent)
    head_size: str  # attribute holding the width of one head (never changed by head pruning)
    counts: Tuple[str, ...] = ()  # attributes holding the number of heads
    totals: Tuple[str, ...] = ()  # attributes holding heads * head_size
    kv_groups: str = ""  # attribute holding query heads per KV head (grouped-query attention; k/v are narrower)

    @property
    def fused(self) -> bool:
        return len(self.qkv) == 1


ATTENTION_LAYOUTS: Tuple[AttentionLayout, ...] = (
    AttentionLayout("BertSelfAttention (BERT, RoBERTa, ELECTRA, CamemBERT, XLM-R)", ("query", "key", "value"),
                    "../output.dense", "attention_head_size", ("num_attention_heads",), ("all_head_size",)),
    AttentionLayout("ViTAttention (ViT, DeiT)", ("q_proj", "k_proj", "v_proj"), "o_proj", "head_dim",
                    ("num_attention_heads",)),
    AttentionLayout("DistilBertSelfAttention (DistilBERT)", ("q_lin", "k_lin", "v_lin"), "out_lin",
                    "attention_head_size", ("n_heads",)),
    AttentionLayout("edgekit zoo ViT Attention", ("qkv",), "proj", "head_dim", ("heads",)),
    AttentionLayout("GPT2Attention (GPT-2, zoo gpt_lm arch gpt2)", ("c_attn",), "c_proj", "head_dim", ("num_heads",),
                    ("split_size", "embed_dim")),
    AttentionLayout("LlamaAttention (Llama, Qwen2, Mistral; zoo gpt_lm arch llama; grouped KV heads pruned as whole "
                    "groups)", ("q_proj", "k_proj", "v_proj"), "o_proj", "head_dim", kv_groups="num_key_value_groups"),
)

#: FFN projections: (up, down) or (gate, up, down); every one but the last makes the intermediate neurons
FFN_LAYOUTS: Tuple[Tuple[str, ...], ...] = (("intermediate.dense", "output.dense"), ("mlp.fc1", "mlp.fc2"),
                                            ("ffn.lin1", "ffn.lin2"), ("mlp.0", "mlp.2"), ("mlp.c_fc", "mlp.c_proj"),
                                            ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"))


def supported_attention() -> str:
    """The attention modules head pruning supports, for error messages."""
    return "; ".join(a.name for a in ATTENTION_LAYOUTS)


@dataclass
class TransformerBlock:
    """One encoder / decoder layer: its attention (module names, heads) and its FFN (up [gate] / down names)."""

    name: str
    attention: Optional[str]  # the attention module's name
    layout: Optional[AttentionLayout]
    qkv: Tuple[str, ...]  # full module names
    out: Optional[str]
    heads: int
    head_size: int
    ffn: Optional[Tuple[str, ...]]  # (up, down) or (gate, up, down) full names
    intermediate: int = 0  # FFN width (the up projection's outputs)
    kv_heads: int = 0  # key/value heads (< heads with grouped-query attention; 0: same as heads)

    @property
    def grouped(self) -> bool:
        """Grouped-query attention: each key/value head serves heads // kv_heads query heads."""
        return 0 < self.kv_heads < self.heads


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def _resolve(base: str, rel: str) -> str:
    while rel.startswith("../"):
        base, rel = base.rpartition(".")[0], rel[3:]
    return _join(base, rel)


def is_projection(m: object) -> bool:
    """An ``nn.Linear`` or a ``transformers`` ``Conv1D`` (GPT-2's Linear with its weight stored ``[in, out]``)."""
    return isinstance(m, nn.Linear) or (type(m).__name__ == "Conv1D" and hasattr(m, "nf")
                                        and getattr(m, "weight", None) is not None)


def out_width(m: nn.Module) -> int:
    """Output features of a projection (Linear or Conv1D)."""
    return int(m.out_features if isinstance(m, nn.Linear) else m.weight.shape[1])


def in_width(m: nn.Module) -> int:
    """Input features of a projection (Linear or Conv1D)."""
    return int(m.in_features if isinstance(m, nn.Linear) else m.weight.shape[0])


def _linear(model: nn.Module, name: str) -> Optional[nn.Module]:
    try:
        m = model.get_submodule(name)
    except AttributeError:
        return None
    return m if is_projection(m) else None


def match_attention(model: nn.Module, name: str, module: nn.Module) -> Optional[AttentionLayout]:
    """The layout of ``module`` (named ``name`` in ``model``) when it is a supported attention module."""
    for lay in sorted(ATTENTION_LAYOUTS, key=lambda lay: not lay.kv_groups):  # Llama's q/k/v/o_proj before ViT's
        if not hasattr(module, lay.head_size) or not all(is_projection(getattr(module, a, None)) for a in lay.qkv):
            continue
        if lay.kv_groups and not hasattr(module, lay.kv_groups):
            continue
        if _linear(model, _resolve(name, lay.out)) is not None:
            return lay
    return None


def block_names(model: nn.Module) -> List[str]:
    """The encoder layers of ``model``: its architecture's declared feature stages (transformer blocks)."""
    return list(model_layout(model).feature_stages(model))


def transformer_blocks(model: nn.Module) -> List[TransformerBlock]:
    """Every encoder layer of ``model`` with its attention heads and FFN (None where it has none edgekit knows)."""
    blocks = []
    for bname in block_names(model):
        block = model.get_submodule(bname)
        att = next(((_join(bname, n), m, lay) for n, m in block.named_modules()
                    if (lay := match_attention(model, _join(bname, n), m)) is not None), None)
        ffn = next((tuple(_join(bname, p) for p in lay) for lay in FFN_LAYOUTS
                    if all(_linear(block, p) is not None for p in lay)), None)
        up = out_width(model.get_submodule(ffn[0])) if ffn else 0
        if att is None:
            blocks.append(TransformerBlock(bname, None, None, (), None, 0, 0, ffn, up))
            continue
        aname, mod, lay = att
        qkv = tuple(_join(aname, a) for a in lay.qkv)
        size = int(getattr(mod, lay.head_size))
        width = out_width(model.get_submodule(qkv[0])) // (3 if lay.fused else 1)
        kv = out_width(model.get_submodule(qkv[1])) // max(1, size) if len(qkv) == 3 else width // max(1, size)
        blocks.append(TransformerBlock(bname, aname, lay, qkv, _resolve(aname, lay.out), width // max(1, size),
                                       size, ffn, up, kv))
    return blocks


def set_head_count(module: nn.Module, layout: AttentionLayout, heads: int) -> None:
    """Write ``heads`` (and heads * head_size) into the attention module's bookkeeping attributes."""
    size = int(getattr(module, layout.head_size))
    for a in layout.counts:
        setattr(module, a, heads)
    for a in layout.totals:
        setattr(module, a, heads * size)


def refresh_heads(model: nn.Module) -> None:
    """Recompute the head counts of every attention module from its query (or packed qkv) width after a checkpoint
    resized it; modules with their own ``edgekit_refresh`` (zoo ViT) refresh themselves."""
    for name, m in model.named_modules():
        lay = match_attention(model, name, m)
        if lay is None or callable(getattr(m, "edgekit_refresh", None)):
            continue
        size = int(getattr(m, lay.head_size))
        width = out_width(getattr(m, lay.qkv[0])) // (3 if lay.fused else 1)
        if size > 0 and width % size == 0:
            set_head_count(m, lay, width // size)
