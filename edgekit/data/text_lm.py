"""Offline language-model corpora: CPython's bundled documentation (``pydoc_data.topics``) or a user UTF-8 text
file, split by document, tokenised with a byte-level BPE trained on the training split only.

Documents are split (not tokens), so no held-out text leaks into the tokenizer or the training windows. Every
split is one stream of token ids (documents joined by the end-of-text token); training reads random windows,
perplexity reads non-overlapping windows of ``block_size`` (see :meth:`LMCorpus.blocks`).

Example:
    >>> corpus = load_lm_corpus({"block_size": 128}, seed=0)
    >>> corpus.vocab_size, corpus.ids["train"].dtype
    (5615, dtype('int64'))
    >>> corpus.blocks("val").shape[1]      # [N, block_size + 1]: inputs are [:, :-1], targets [:, 1:]
    129

The BPE here (``train_bpe``) is a shared tokeniser helper that another text dataset can reuse.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edgekit.data.datasets import DATASETS, DataConfig
from edgekit.data.splits import Split, Splits, split_indices
from edgekit.data.text import load_tokenizer, pydoc_documents
from edgekit.errors import ConfigError, InputFileError, validated_config

logger = logging.getLogger(__name__)

EOS = "<|endoftext|>"


class LMDataConfig(BaseModel):
    """Which text, how it is tokenised and cut into windows."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Optional[str] = Field(None, description="UTF-8 text file (documents separated by blank lines); "
                                                  "None = CPython's pydoc_data.topics")
    block_size: int = Field(128, ge=2, description="tokens per window (the model's context)")
    vocab_size: int = Field(8000, ge=258, description="BPE vocabulary requested (the corpus may give fewer)")
    min_frequency: int = Field(2, ge=1, description="BPE merges seen fewer times are not learnt")
    split: Tuple[float, float, float] = Field((0.8, 0.1, 0.1), description="train/val/test fractions of documents")


@dataclass
class LMCorpus:
    """Token streams of the three splits plus their tokenizer.

    Attributes:
        tokenizer: the ``tokenizers.Tokenizer`` trained on the training split.
        ids: ``{"train"|"val"|"test": int64 [T]}`` token streams (documents joined by ``eos_id``).
        n_bytes: UTF-8 bytes of each split's text (for bits per byte).
        documents: document names of each split.
        block_size: the window length.
    """

    tokenizer: object
    ids: Dict[str, np.ndarray]
    n_bytes: Dict[str, int]
    documents: Dict[str, List[str]]
    block_size: int
    name: str = "pydoc"
    meta: dict = field(default_factory=dict)

    @property
    def vocab_size(self) -> int:
        return int(self.tokenizer.get_vocab_size())

    @property
    def eos_id(self) -> int:
        return int(self.tokenizer.token_to_id(EOS))

    def blocks(self, split: str, block_size: Optional[int] = None) -> np.ndarray:
        """Non-overlapping windows ``[N, block_size + 1]`` of ``split`` (a window's last token is the next one's
        first): inputs ``[:, :-1]``, next-token targets ``[:, 1:]``; the ragged tail is dropped."""
        ids = self._ids(split)
        b = int(block_size or self.block_size)
        n = (len(ids) - 1) // b
        if n < 1:
            raise ConfigError(f"{self.name}/{split}: {len(ids)} tokens is less than one window of {b + 1}")
        idx = np.arange(n)[:, None] * b + np.arange(b + 1)[None, :]
        return ids[idx]

    def random_windows(self, n: int, rng: np.random.Generator, split: str = "train") -> np.ndarray:
        """``n`` random training windows ``[n, block_size + 1]`` drawn with ``rng``."""
        ids = self._ids(split)
        start = rng.integers(0, len(ids) - self.block_size - 1, n)
        return ids[start[:, None] + np.arange(self.block_size + 1)[None, :]]

    def save_tokenizer(self, path: str) -> Path:
        """Write ``tokenizer.json`` atomically (it is saved with the run)."""
        from edgekit._io import atomic_path

        with atomic_path(path, suffix=".json") as tmp:
            self.tokenizer.save(str(tmp))
        return Path(path)

    def _ids(self, split: str) -> np.ndarray:
        if split not in self.ids:
            raise ConfigError(f"unknown split '{split}'; valid: {', '.join(self.ids)}")
        return self.ids[split]


def read_text_documents(path: str | Path) -> Dict[str, str]:
    """A UTF-8 text file as documents (paragraphs separated by blank lines), ``{"doc00000": text, ...}``."""
    p = Path(path)
    if not p.is_file():
        raise InputFileError(f"data.path: text file not found: {p}")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputFileError(f"{p}: not UTF-8 text (byte {e.start}: {e.reason}); convert it to UTF-8") from None
    if "\x00" in text:
        raise InputFileError(f"{p}: contains NUL bytes: a binary file, not text")
    docs = [d.strip() for d in text.split("\n\n") if d.strip()]
    if len(docs) < 3:
        raise InputFileError(f"{p}: {len(docs)} document(s) (blank-line separated); at least 3 are needed for "
                             "train/val/test")
    return {f"doc{i:05d}": d for i, d in enumerate(docs)}


def train_bpe(texts: List[str], vocab_size: int = 8000, min_frequency: int = 2):
    """A byte-level BPE ``tokenizers.Tokenizer`` trained on ``texts`` with the end-of-text token ``<|endoftext|>``.

    Byte-level BPE decodes back to the exact text and has no unknown token. Deterministic for the same texts.

    Example:
        >>> tok = train_bpe(["a first document", "a second one"], vocab_size=300)
        >>> tok.decode(tok.encode("a second").ids)
        'a second'
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return tok


def load_lm_corpus(config: LMDataConfig | dict | None = None, seed: int = 0, tokenizer=None) -> LMCorpus:
    """Read, split (by document, from ``seed``), tokenise and join the corpus described by ``config``.

    Args:
        config: :class:`LMDataConfig` or a dict of its fields.
        seed: drives the document split.
        tokenizer: use this tokenizer instead of training one (e.g. the one saved with a model); it must
            contain ``<|endoftext|>``.

    Example:
        >>> c = load_lm_corpus({"block_size": 64}, seed=0)
        >>> c.blocks("test").shape[1]
        65
    """
    cfg = validated_config(LMDataConfig, config, "data")
    docs = read_text_documents(cfg.path) if cfg.path else pydoc_documents()
    names = sorted(docs)
    parts = split_indices(len(names), tuple(cfg.split), seed)
    documents = {s: [names[i] for i in idx] for s, idx in zip(("train", "val", "test"), parts)}
    if tokenizer is None:
        tokenizer = train_bpe([docs[n] for n in documents["train"]], cfg.vocab_size, cfg.min_frequency)
    eos = tokenizer.token_to_id(EOS)
    if eos is None:
        raise ConfigError(f"the tokenizer has no '{EOS}' token; train it with train_bpe or add the token")
    ids, n_bytes = {}, {}
    for split, ns in documents.items():
        encoded = tokenizer.encode_batch([docs[n] for n in ns])
        stream: List[int] = []
        for e in encoded:
            stream += e.ids + [eos]
        ids[split] = np.asarray(stream, np.int64)
        n_bytes[split] = sum(len(docs[n].encode("utf-8")) + 1 for n in ns)
        if len(stream) < cfg.block_size + 2:
            raise ConfigError(f"data: the {split} split has {len(stream)} tokens, fewer than one window of "
                              f"block_size {cfg.block_size} + 2; lower block_size or give more text")
    name = Path(cfg.path).stem if cfg.path else "pydoc"
    logger.info(f"{name}: vocab {tokenizer.get_vocab_size()}, tokens " +
                ", ".join(f"{s} {len(v)}" for s, v in ids.items()))
    return LMCorpus(tokenizer, ids, n_bytes, documents, cfg.block_size, name, {"seed": seed, **cfg.model_dump()})


def _as_splits(corpus: LMCorpus) -> Splits:
    """Windows as :class:`Splits` of task ``causal-lm``: x int64 ``[N, block_size]`` token ids, y their next tokens
    ``[N, block_size]`` (the window shifted by one), num_classes = vocab; the split's bytes and tokens (for bits per
    byte) in ``preprocessing``."""
    sp = {}
    for s in ("train", "val", "test"):
        w = corpus.blocks(s)
        sp[s] = Split(np.ascontiguousarray(w[:, :-1]), np.ascontiguousarray(w[:, 1:]))
    prep = {"tokenizer": "byte-level BPE trained on the training split", "block_size": corpus.block_size,
            "n_bytes": dict(corpus.n_bytes), "n_tokens": {s: int(len(v)) for s, v in corpus.ids.items()},
            "eos_id": corpus.eos_id, "documents": {s: len(d) for s, d in corpus.documents.items()}}
    return Splits(sp["train"], sp["val"], sp["test"], (corpus.block_size,), corpus.vocab_size, f"{corpus.name}_lm",
                  vocab_size=corpus.vocab_size, tokenizer=corpus.tokenizer, preprocessing=prep, task="causal-lm")


def _lm_splits(config: DataConfig, seed: int, path: Optional[str]) -> Splits:
    block = 128  # data.normalize never applies: load_data scales float inputs only, token ids stay integers
    if config.shape:
        if len(config.shape) != 1 or config.shape[0] < 2:
            raise ConfigError(f"data.shape for '{config.name}' is [block_size] (>= 2), got {config.shape}")
        block = int(config.shape[0])
    tokenizer = load_tokenizer(config.tokenizer) if config.tokenizer else None
    return _as_splits(load_lm_corpus({"path": path, "block_size": block, "split": tuple(config.split),
                                      "vocab_size": config.vocab_size}, seed, tokenizer=tokenizer))


@DATASETS.register("pydoc_lm")
def _pydoc_lm(config: DataConfig, seed: int) -> Splits:
    """CPython's pydoc topics as next-token windows (``shape: [block_size]``; ``vocab_size``: the BPE's)."""
    return _lm_splits(config, seed, None)


@DATASETS.register("text_lm")
def _text_lm(config: DataConfig, seed: int) -> Splits:
    """A user UTF-8 text file (``path``; documents separated by blank lines) as next-token windows."""
    if not config.path:
        raise ConfigError("data.path (a UTF-8 text file) is required for data name 'text_lm'")
    return _lm_splits(config, seed, config.path)


__all__ = ["EOS", "LMCorpus", "LMDataConfig", "load_lm_corpus", "load_tokenizer", "pydoc_documents",
           "read_text_documents", "train_bpe"]
