"""Transformer distillation: hidden-state and attention-distribution transfer through a layer map.

TinyBERT / MiniLM style, for Hugging Face encoders (BERT, RoBERTa, DistilBERT, ViT): student block ``s`` learns
from teacher block ``t`` for every ``(s, t)`` of the layer map (default uniform: ``t = (s+1)·k − 1``):

- hidden states: MSE between the blocks' outputs (and the embeddings), through a learned Linear projection
  (:class:`HintAdapter`, trained with the student) when the widths differ;
- attention maps, ``kind: probs``: KL(teacher ‖ student) of the attention distributions softmax(QKᵀ/√d) per head;
  ``kind: relation``: MiniLM-v2 relations softmax(QQᵀ/√d), softmax(KKᵀ/√d), softmax(VVᵀ/√d) over
  ``relation_heads`` (any head counts and widths).

Everything is read with forward hooks (block outputs, the input of block 0, the query/key/value projections), so
the attention distributions are those before attention dropout and no model call changes.

Example:
    >>> tr = TransformerTransfer(student, teacher, HiddenTransferConfig(weight=1.0), AttentionMapsConfig(), None)
    >>> tr.build(sample, seed=0)             # dry run: shapes, projections
    >>> _ = teacher(**x); _ = student(**x); losses = tr.losses(x["attention_mask"])
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from edgekit.errors import ConfigError
from edgekit.techniques.distill._features import arch_name
from edgekit.techniques.distill._losses import HintAdapter, as_feature
from edgekit.techniques.distill.config import AttentionMapsConfig, HiddenTransferConfig

__all__ = ["TransformerTransfer", "attention_kl", "hidden_mse", "relation_log_probs", "resolve_layer_map",
           "transformer_blocks", "uniform_layer_map"]

#: names of the query / key / value projections inside a block (BERT, RoBERTa; DistilBERT; ViT)
PROJECTIONS = {"q": ("query", "q_lin", "q_proj"), "k": ("key", "k_lin", "k_proj"), "v": ("value", "v_lin", "v_proj")}
EMBEDDINGS = -1  # the "block" index of the embeddings (the input of block 0)


@dataclass(frozen=True)
class Geometry:
    """What the transfer needs to know about one transformer."""

    blocks: List[str]
    heads: int
    hidden: int


def transformer_blocks(model: nn.Module, role: str, field: str) -> Geometry:
    """The block names, head count and width of a Hugging Face transformer, or a ConfigError saying what works."""
    from edgekit.models.hf import encoder_layers

    cfg = getattr(model, "config", None)
    blocks = encoder_layers(model)
    heads = getattr(cfg, "num_attention_heads", None) if cfg is not None else None
    width = getattr(cfg, "hidden_size", None) if cfg is not None else None
    if not blocks or not heads or not width:
        raise ConfigError(f"{field}: {role} '{arch_name(model)}' is not a transformer edgekit can tap (no Hugging "
                          "Face config with a list of blocks); hidden/attention-map transfer needs Hugging Face "
                          "encoders (model name 'hf': BERT, RoBERTa, DistilBERT, ViT); for other models use "
                          "logit KD, 'hints' or 'attention'")
    return Geometry(blocks, int(heads), int(width))


def uniform_layer_map(student_depth: int, teacher_depth: int) -> List[Tuple[int, int]]:
    """Student block ``i`` ↔ teacher block ``(i+1)·k − 1`` with ``k = teacher_depth / student_depth`` (rounded).

    Example:
        >>> uniform_layer_map(2, 4)
        [(0, 1), (1, 3)]
    """
    return [(i, max(0, round((i + 1) * teacher_depth / student_depth) - 1)) for i in range(student_depth)]


def resolve_layer_map(layer_map: Optional[Sequence[Sequence[int]]], student: Geometry,
                      teacher: Geometry) -> List[Tuple[int, int]]:
    """The configured layer map checked against both depths, or the uniform one when ``layer_map`` is None."""
    ls, lt = len(student.blocks), len(teacher.blocks)
    if layer_map is None:
        return uniform_layer_map(ls, lt)
    if not layer_map:
        raise ConfigError("layer_map: the list is empty; give [[student_block, teacher_block], ...] or leave it "
                          "out for the uniform map")
    if len(layer_map) > ls:
        raise ConfigError(f"layer_map: {len(layer_map)} pairs but the student has only {ls} blocks "
                          f"({student.blocks[0]} .. {student.blocks[-1]}); give at most one pair per student block")
    out, seen = [], set()
    for pair in layer_map:
        s, t = (int(v) for v in pair)
        for role, index, geo in (("student", s, student), ("teacher", t, teacher)):
            if not 0 <= index < len(geo.blocks):
                raise ConfigError(f"layer_map: pair {[s, t]} names {role} block {index}, but the {role} has blocks "
                                  f"0..{len(geo.blocks) - 1} ({geo.blocks[0]} .. {geo.blocks[-1]})")
        if s in seen:
            raise ConfigError(f"layer_map: student block {s} appears twice; give one pair per student block")
        seen.add(s)
        out.append((s, t))
    return out


def _projection(model: nn.Module, block: str, kind: str, role: str) -> str:
    """The name of the query/key/value Linear inside ``block``."""
    names = [n for n, m in model.named_modules() if n.startswith(block + ".") and isinstance(m, nn.Linear)]
    for n in names:
        if n.rsplit(".", 1)[-1] in PROJECTIONS[kind]:
            return n
    raise ConfigError(f"attention_maps: {role} block '{block}' has no separate {'/'.join(PROJECTIONS[kind])} "
                      f"projection (its Linear layers: {', '.join(n[len(block) + 1:] for n in names) or 'none'}); "
                      "attention-map transfer supports BERT, RoBERTa, DistilBERT and ViT-style attention")


class _Taps:
    """Forward hooks recording block outputs, the embeddings (input of block 0) and q/k/v projections."""

    def __init__(self, model: nn.Module, geo: Geometry, blocks: Sequence[int], projections: Dict[str, str]):
        self.out: Dict[Tuple[str, int], torch.Tensor] = {}
        self._handles = []
        modules = dict(model.named_modules())
        for b in blocks:
            if b == EMBEDDINGS:
                self._handles.append(modules[geo.blocks[0]].register_forward_pre_hook(
                    self._pre_hook(("h", EMBEDDINGS)), with_kwargs=True))
            else:
                self._handles.append(modules[geo.blocks[b]].register_forward_hook(self._hook(("h", b))))
        for key, name in projections.items():
            kind, b = key.split(":")
            self._handles.append(modules[name].register_forward_hook(self._hook((kind, int(b)))))

    def _hook(self, key):
        def hook(_module, _inputs, output):
            self.out[key] = as_feature(output)
        return hook

    def _pre_hook(self, key):
        def hook(_module, args, kwargs):
            self.out[key] = as_feature(args[0] if args else kwargs["hidden_states"])
        return hook

    def pop(self) -> Dict[Tuple[str, int], torch.Tensor]:
        out, self.out = self.out, {}
        return out

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles, self.out = [], {}


def _masked_mean(values: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Mean of ``values`` [B, N] over the positions where ``mask`` [B, N] is non-zero (all when None)."""
    if mask is None or mask.shape != values.shape:
        return values.mean()
    m = mask.to(values.dtype)
    return (values * m).sum() / m.sum().clamp_min(1.0)


def hidden_mse(student: torch.Tensor, teacher: torch.Tensor, mask: Optional[torch.Tensor] = None,
               projection: Optional[nn.Module] = None) -> torch.Tensor:
    """Mean squared error of ``projection(student)`` [B, N, D] against the teacher's [B, N, D] over real tokens."""
    s = projection(student) if projection is not None else student
    return _masked_mean((s - teacher.detach()).pow(2).mean(-1), mask)


def relation_log_probs(a: torch.Tensor, b: torch.Tensor, heads: int,
                       key_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """log softmax(a_h b_hᵀ / √d) per head: [B, N, D] × [B, N, D] → [B, heads, N, N]; padded keys get ~0."""
    bsz, n, width = a.shape
    d = width // heads
    ah = a.reshape(bsz, n, heads, d).transpose(1, 2)
    bh = b.reshape(bsz, n, heads, d).transpose(1, 2)
    scores = ah @ bh.transpose(-1, -2) / math.sqrt(d)
    if key_mask is not None and key_mask.shape == (bsz, n):
        scores = scores.masked_fill(key_mask[:, None, None, :] == 0, -1e9)
    return F.log_softmax(scores.float(), dim=-1)


def attention_kl(student_logp: torch.Tensor, teacher_logp: torch.Tensor,
                 query_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """KL(teacher ‖ student) of each query row [B, H, N, N], averaged over heads and real query tokens."""
    t = teacher_logp.detach()
    kl = (t.exp() * (t - student_logp)).sum(-1).mean(1)  # [B, N]
    return _masked_mean(kl, query_mask)


class TransformerTransfer:
    """Hidden-state and attention-map losses between a student and a teacher transformer (see the module doc)."""

    def __init__(self, student: nn.Module, teacher: nn.Module, hidden: HiddenTransferConfig,
                 maps: AttentionMapsConfig, layer_map: Optional[Sequence[Sequence[int]]]):
        field = "hidden" if hidden.enabled else "attention_maps"
        self.student_geo = transformer_blocks(student, "student", field)
        self.teacher_geo = transformer_blocks(teacher, "teacher", field)
        self.hidden, self.maps = hidden, maps
        self.layer_map = resolve_layer_map(layer_map, self.student_geo, self.teacher_geo)
        self.hidden_pairs = (([(EMBEDDINGS, EMBEDDINGS)] if hidden.embeddings else []) + self.layer_map
                             if hidden.enabled else [])
        self.map_pairs = list(self.layer_map) if maps.enabled else []
        self.relation_heads = self._check_heads()
        self.projections = nn.ModuleDict()
        self.student_tap = self._taps(student, self.student_geo, 0, "student")
        self.teacher_tap = self._taps(teacher, self.teacher_geo, 1, "teacher")

    def _check_heads(self) -> int:
        hs, ht = self.student_geo.heads, self.teacher_geo.heads
        if not self.maps.enabled:
            return hs
        if self.maps.kind == "probs":
            if hs != ht:
                raise ConfigError(f"attention_maps: the student has {hs} attention heads and the teacher {ht}; "
                                  "kind 'probs' compares distributions head by head and needs equal counts; use "
                                  "attention_maps: {kind: relation} (MiniLM relations, any head count)")
            return hs
        r = self.maps.relation_heads or hs
        for role, geo in (("student", self.student_geo), ("teacher", self.teacher_geo)):
            if geo.hidden % r:
                raise ConfigError(f"attention_maps.relation_heads: {r} does not divide the {role}'s width "
                                  f"{geo.hidden}; pick a common divisor of {self.student_geo.hidden} and "
                                  f"{self.teacher_geo.hidden}")
        return r

    def _taps(self, model: nn.Module, geo: Geometry, side: int, role: str) -> _Taps:
        blocks = [p[side] for p in self.hidden_pairs]
        task = getattr(getattr(model, "edgekit_signature", None), "task", None)
        if self.map_pairs and (task == "causal-lm" or getattr(getattr(model, "config", None), "is_decoder", False)):
            raise ConfigError(f"attention_maps: {role} '{arch_name(model)}' is a causal decoder (masked, often rotary "
                              "attention) that attention-map transfer does not model; it supports encoders (BERT, "
                              "RoBERTa, DistilBERT, ViT); use hidden transfer for decoders")
        kinds = ("q", "k") if self.maps.kind == "probs" else ("q", "k", "v")
        projections = {f"{k}:{p[side]}": _projection(model, geo.blocks[p[side]], k, role)
                       for p in self.map_pairs for k in kinds}
        return _Taps(model, geo, blocks, projections)

    @property
    def terms(self) -> List[str]:
        """``hidden`` and/or ``attention_maps``."""
        return (["hidden"] if self.hidden_pairs else []) + (["attention_maps"] if self.map_pairs else [])

    def build(self, seed: int) -> None:
        """After a dry run of both models: create the projections (seeded) for the recorded widths."""
        s, t = self.student_tap.pop(), self.teacher_tap.pop()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for a, b in self.hidden_pairs:
                ws, wt = int(s[("h", a)].shape[-1]), int(t[("h", b)].shape[-1])
                self.projections[f"hidden_{a}_{b}".replace("-", "m")] = HintAdapter(ws, wt, tokens=True)

    def losses(self, mask: Optional[torch.Tensor]) -> Dict[str, torch.Tensor]:
        """The losses of the last forward pass of both models (means over the mapped pairs)."""
        s, t = self.student_tap.pop(), self.teacher_tap.pop()
        out = {}
        if self.hidden_pairs:
            out["hidden"] = sum(hidden_mse(s[("h", a)], t[("h", b)], mask,
                                           self.projections[f"hidden_{a}_{b}".replace("-", "m")])
                                for a, b in self.hidden_pairs) / len(self.hidden_pairs)
        if self.map_pairs:
            pairs = (("q", "k"),) if self.maps.kind == "probs" else (("q", "q"), ("k", "k"), ("v", "v"))
            terms = [attention_kl(relation_log_probs(s[(x, a)], s[(y, a)], self.relation_heads, mask),
                                  relation_log_probs(t[(x, b)], t[(y, b)], self.relation_heads, mask), mask)
                     for a, b in self.map_pairs for x, y in pairs]
            out["attention_maps"] = sum(terms) / len(terms)
        return out

    def remove(self) -> None:
        """Remove every hook."""
        self.student_tap.remove()
        self.teacher_tap.remove()
