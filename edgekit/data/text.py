"""Text classification data: the built-in documentation-topics set and user JSONL/CSV files, tokenised.

Splits of text data hold named int64 arrays — ``input_ids``, ``attention_mask``, ``token_type_ids``, each
``[N, max_length]`` — padded and truncated to ``data.max_length``. The tokenizer is either loaded from
``data.tokenizer`` (a ``tokenizer.json`` file or a directory holding one, e.g. a local Hugging Face model) or a
BPE tokenizer trained on the **training split only** (``data.vocab_size``; the vocabulary it reaches on
small corpora can be smaller). It travels with the splits (``splits.tokenizer``) so it can be saved with the
model it feeds.

``doc_topics``: the paragraphs of CPython's bundled documentation (``pydoc_data.topics``, offline in every
Python). Its 79 fine topics are too many for a model trained from scratch in minutes (~20 % accuracy), so the
labels are five coarse groups of topics (:data:`DOC_TOPIC_GROUPS`): statements, expressions, data-model,
builtin-types, execution. A paragraph whose text appears under topics of two groups is dropped (it has no
single label); paragraphs shorter than 40 characters are dropped; topics a Python version adds that are in no
group are ignored.

Example:
    >>> splits = load_data({"name": "doc_topics", "max_length": 64}, seed=0)
    >>> splits.train.x["input_ids"].dtype, splits.num_classes, splits.vocab_size
    (dtype('int64'), 5, 3100)
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from edgekit.core.signature import InputSpec, Signature
from edgekit.core.tensors import NamedInputs
from edgekit.data.datasets import DATASETS, DataConfig
from edgekit.data.splits import Split, Splits, split_indices
from edgekit.errors import ConfigError, InputFileError, ShapeError, first_line

TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

#: coarse label → the pydoc topics it covers (names as in ``pydoc_data.topics.topics``)
DOC_TOPIC_GROUPS: Dict[str, Tuple[str, ...]] = {
    "statements": ("assert", "assignment", "async", "augassign", "break", "class", "compound", "context-managers",
                   "continue", "del", "else", "for", "function", "global", "if", "nonlocal", "pass", "raise",
                   "return", "try", "while", "with", "yield"),
    "expressions": ("atom-identifiers", "atom-literals", "attribute-references", "await", "binary", "bitwise",
                    "booleans", "calls", "comparisons", "conversions", "dict", "exprlists", "floating", "identifiers",
                    "imaginary", "in", "integers", "lambda", "lists", "numbers", "operator-summary", "power",
                    "shifting", "slicings", "strings", "subscriptions", "unary"),
    "data-model": ("attribute-access", "callable-types", "customization", "id-classes", "numeric-types", "objects",
                   "sequence-types", "specialattrs", "specialnames", "types"),
    "builtin-types": ("bltin-code-objects", "bltin-ellipsis-object", "bltin-null-object", "bltin-type-objects",
                      "formatstrings", "string-methods", "truth", "typesfunctions", "typesmapping", "typesmethods",
                      "typesmodules", "typesseq", "typesseq-mutable"),
    "execution": ("debugger", "dynamic-features", "exceptions", "execmodel", "import", "naming"),
}


def pydoc_documents() -> Dict[str, str]:
    """CPython's documentation topics (``pydoc_data.topics``, ~465 KB of English), ``{topic: text}``."""
    try:
        import pydoc_data.topics as topics
    except ImportError:  # some distributions strip it
        raise InputFileError("this Python has no pydoc_data.topics module; give data.path to a text file") from None
    return dict(topics.topics)


def doc_topic_paragraphs(min_chars: int = 40) -> Tuple[List[str], np.ndarray, List[str]]:
    """``(paragraphs, labels, group names)`` of the documentation-topics set (see module docstring)."""
    group_of = {t: g for g, ts in DOC_TOPIC_GROUPS.items() for t in ts}
    names = list(DOC_TOPIC_GROUPS)
    seen: Dict[str, set] = {}
    order: List[str] = []
    for topic, text in pydoc_documents().items():
        group = group_of.get(topic)
        if group is None:
            continue
        for para in text.split("\n\n"):
            para = " ".join(para.split())
            if len(para) >= min_chars:
                if para not in seen:
                    order.append(para)
                seen.setdefault(para, set()).add(group)
    texts = [p for p in order if len(seen[p]) == 1]
    labels = np.array([names.index(next(iter(seen[p]))) for p in texts], np.int64)
    return texts, labels, names


def read_text_file(path: Optional[str], text_column: str = "text",
                   label_column: str = "label") -> Tuple[List[str], np.ndarray, List[str]]:
    """``(texts, labels, class names)`` from a JSONL or CSV file with a text and a label column.

    Labels are integers ``>= 0`` (class names ``"0".."K-1"``) or strings (classes sorted by name).

    Raises:
        InputFileError: missing/unreadable file, a row without the columns, an empty file.
        ShapeError: a negative integer label, or integer and string labels mixed.
    """
    if not path:
        raise ConfigError("data.path is required for text data (a .jsonl or .csv file)")
    p = Path(path)
    if not p.is_file():
        raise InputFileError(f"data.path: text file not found: {p}")
    rows = _read_rows(p)
    if not rows:
        raise InputFileError(f"{p}: no rows (expected one record per line with '{text_column}' and '{label_column}')")
    texts, raw = [], []
    for line, row in rows:
        for col in (text_column, label_column):
            if col not in row or row[col] is None or row[col] == "":
                raise InputFileError(f"{p}, line {line}: no '{col}' column (found: {', '.join(map(str, row))}); set "
                                     f"data.{'text' if col == text_column else 'label'}_column to the column to use")
        texts.append(str(row[text_column]))
        raw.append(row[label_column])
    labels, classes = _labels(raw, [ln for ln, _ in rows], p)
    return texts, labels, classes


def _read_rows(p: Path) -> List[Tuple[int, dict]]:
    try:
        if p.suffix.lower() == ".csv":
            with open(p, newline="", encoding="utf-8") as f:
                return [(i + 2, row) for i, row in enumerate(csv.DictReader(f))]
        rows = []
        with open(p, encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                if line.strip():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise InputFileError(f"{p}, line {i}: not valid JSON ({e.msg}); JSONL needs one object per "
                                             "line, CSV files must end in .csv") from None
                    if not isinstance(row, dict):
                        raise InputFileError(f"{p}, line {i}: expected a JSON object per line, got "
                                             f"{type(row).__name__}")
                    rows.append((i, row))
        return rows
    except (UnicodeDecodeError, csv.Error, OSError) as e:
        raise InputFileError(f"{p}: not a readable UTF-8 text file ({first_line(e, 200)})") from None


def _labels(raw: Sequence[Any], lines: Sequence[int], p: Path) -> Tuple[np.ndarray, List[str]]:
    def as_int(v):
        if isinstance(v, bool):
            return None
        if isinstance(v, int):
            return v
        return int(v) if isinstance(v, str) and v.strip().lstrip("-").isdigit() else None

    ints = [as_int(v) for v in raw]
    if all(i is not None for i in ints):
        bad = next((k for k, i in enumerate(ints) if i < 0), None)
        if bad is not None:
            raise ShapeError(f"{p}, line {lines[bad]}: label {ints[bad]} is out of range; integer labels must be "
                             "0, 1, ..., classes-1")
        k = max(ints) + 1
        return np.array(ints, np.int64), [str(i) for i in range(k)]
    if any(i is not None for i in ints) and any(isinstance(v, (int, float)) for v in raw):
        first = next(k for k, i in enumerate(ints) if i is None)
        raise ShapeError(f"{p}, line {lines[first]}: label {raw[first]!r} mixes with integer labels; use integers "
                         "0..classes-1 or class names throughout")
    classes = sorted({str(v) for v in raw})
    return np.array([classes.index(str(v)) for v in raw], np.int64), classes


def train_tokenizer(texts: Sequence[str], vocab_size: int = 4000, min_frequency: int = 2) -> Any:
    """A lower-casing BPE ``tokenizers.Tokenizer`` with BERT's normaliser/pre-tokeniser trained on ``texts``,
    framing each text as ``[CLS] text [SEP]``.

    BPE, not WordPiece: the ``tokenizers`` WordPiece trainer breaks frequency ties in hash order, so two runs on the
    same texts give different vocabularies; the BPE trainer gives the same one, so a recipe's tokenizer is the
    same in every run and matches a model directory created by an earlier run.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(list(texts), trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS, show_progress=False))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                       special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return tok


def load_tokenizer(path: str, what: str = "data.tokenizer") -> Any:
    """A ``tokenizers.Tokenizer`` from a ``tokenizer.json`` file or a local directory holding one; errors name
    ``what`` (the field or argument the path came from)."""
    from tokenizers import Tokenizer

    p = Path(path)
    f = p / "tokenizer.json" if p.is_dir() else p
    if not f.is_file():
        raise InputFileError(f"{what}: no tokenizer.json at {p} (give a tokenizer.json file or a local "
                             "directory with one, e.g. a model saved with save_pretrained and its tokenizer)")
    try:
        return Tokenizer.from_file(str(f))
    except Exception as e:  # the tokenizers library raises a bare Exception for malformed files
        raise InputFileError(f"{what}: {f} is not a tokenizers file ({first_line(e, 200)})") from None


def encode(tokenizer: Any, texts: Sequence[str], max_length: int) -> NamedInputs:
    """int64 ``input_ids`` / ``attention_mask`` / ``token_type_ids`` [N, max_length] (padded, truncated)."""
    pad = tokenizer.token_to_id("[PAD]")
    pad = 0 if pad is None else pad
    tokenizer.enable_truncation(max_length)
    tokenizer.enable_padding(length=max_length, pad_id=pad, pad_token=tokenizer.id_to_token(pad) or "[PAD]")
    enc = tokenizer.encode_batch(list(texts))
    return NamedInputs(input_ids=np.array([e.ids for e in enc], np.int64).reshape(len(enc), max_length),
                       attention_mask=np.array([e.attention_mask for e in enc], np.int64).reshape(len(enc), max_length),
                       token_type_ids=np.array([e.type_ids for e in enc], np.int64).reshape(len(enc), max_length))


def text_splits(texts: Sequence[str], labels: np.ndarray, classes: List[str], config: DataConfig, seed: int,
                name: str) -> Splits:
    """Split texts (stratified), get the tokenizer (loaded, or trained on the training texts only), encode."""
    if config.max_length < 2:
        raise ConfigError(f"data.max_length must be at least 2 ([CLS] and [SEP]), got {config.max_length}")
    parts = split_indices(len(texts), tuple(config.split), seed, labels)
    if config.tokenizer:
        tok, how = load_tokenizer(config.tokenizer), f"loaded from {config.tokenizer}"
    else:
        tok = train_tokenizer([texts[i] for i in parts[0]], config.vocab_size)
        how = "BPE trained on the training split"
    vocab = tok.get_vocab_size()
    splits = [Split(encode(tok, [texts[i] for i in idx], config.max_length), labels[idx]) for idx in parts]
    sig = Signature(tuple(InputSpec(n, "int64", ("batch", "sequence")) for n in TEXT_INPUTS), output="logits",
                    vocab_size=vocab, token_inputs=("input_ids",))
    full = np.concatenate([s.x["attention_mask"][:, -1] for s in splits])
    prep = {"tokenizer": how, "vocab_size": vocab, "max_length": config.max_length, "classes": classes,
            "filled_to_max_length": round(float(full.mean()), 3)}  # these may have been truncated
    return Splits(*splits, (config.max_length,), len(classes), name, signature=sig, vocab_size=vocab, tokenizer=tok,
                  preprocessing=prep)


@DATASETS.register("doc_topics")
def _doc_topics(config: DataConfig, seed: int) -> Splits:
    """CPython's documentation paragraphs (pydoc_data.topics) in 5 coarse topic groups, tokenised."""
    texts, labels, classes = doc_topic_paragraphs()
    return text_splits(texts, labels, classes, config, seed, "doc_topics")


@DATASETS.register("text")
def _text_file(config: DataConfig, seed: int) -> Splits:
    """A user JSONL/CSV file (``data.text_column``, ``data.label_column``), tokenised."""
    texts, labels, classes = read_text_file(config.path, config.text_column, config.label_column)
    return text_splits(texts, labels, classes, config, seed, Path(config.path).stem)
