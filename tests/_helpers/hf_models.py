"""Tiny Hugging Face models and multi-input data shared by the HF / text / multi-input tests (no download)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from edgekit.core.tensors import NamedInputs
from edgekit.data.splits import Split

TINY_BERT = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
             "intermediate_size": 64, "max_position_embeddings": 64}
TINY_VIT = {"model_type": "vit", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
            "intermediate_size": 64, "patch_size": 4}


def tiny_bert_dir(path: Path, vocab_size: int = 50, num_classes: int = 3, **config) -> Path:
    """``save_pretrained`` of a random 2-layer BERT classifier (hidden 32) into ``path``."""
    from edgekit.models.hf import save_hf_model

    return save_hf_model(path, {**TINY_BERT, **config}, "sequence-classification", num_classes=num_classes,
                         vocab_size=vocab_size)


def token_split(n: int = 48, t: int = 12, vocab: int = 50, classes: int = 3, seed: int = 0) -> Split:
    """Learnable token data: the label is which third of the vocabulary the first token falls in."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, vocab, (n, t)).astype(np.int64)
    y = (ids[:, 0] - 5) * classes // (vocab - 5)
    mask = np.ones((n, t), np.int64)
    mask[: n // 2, t - 3:] = 0
    x = NamedInputs(input_ids=ids, attention_mask=mask, token_type_ids=np.zeros((n, t), np.int64))
    return Split(x, y.astype(np.int64))


class MixedInputs(nn.Module):
    """Classifier over named inputs of every dtype: token ids (int64/int32), a bool mask, float features."""

    def __init__(self, vocab: int = 20, feat: int = 4, classes: int = 3):
        super().__init__()
        self.emb = nn.Embedding(vocab, 8)
        self.feat = nn.Linear(feat, 8)
        self.head = nn.Linear(16, classes)

    def forward(self, ids, mask, feats):
        m = mask.to(torch.float32).unsqueeze(-1)
        tokens = (self.emb(ids) * m).sum(1) / m.sum(1).clamp(min=1.0)
        return {"logits": self.head(torch.cat([tokens, torch.relu(self.feat(feats.to(torch.float32)))], 1))}


def mixed_split(id_dtype: str = "int64", feat_dtype: str = "float32", n: int = 32, seed: int = 0) -> Split:
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 20, (n, 6)).astype(id_dtype)
    mask = rng.random((n, 6)) > 0.2
    mask[:, 0] = True
    feats = rng.standard_normal((n, 4)).astype(feat_dtype)
    return Split(NamedInputs(ids=ids, mask=mask, feats=feats), feats[:, :3].argmax(1).astype(np.int64))
