"""Text data: the built-in documentation-topics set and user JSONL/CSV files, tokenised into named int64 inputs."""
from __future__ import annotations

import json

import numpy as np
import pytest

from edgekit.data import DOC_TOPIC_GROUPS, load_data, load_tokenizer
from edgekit.errors import ConfigError, InputFileError, ShapeError

ROWS = [("the cat sat on the mat", "animal"), ("a dog ran in the park", "animal"),
        ("stocks fell on monday", "finance"), ("the bank raised rates", "finance"),
        ("rain is expected today", "weather"), ("sunny skies all week", "weather")] * 4


def _jsonl(path, rows, text="text", label="label"):
    path.write_text("".join(json.dumps({text: t, label: y}) + "\n" for t, y in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def doc_topics():
    return load_data({"name": "doc_topics", "max_length": 32}, seed=0)


def test_doc_topics_are_named_int64_inputs_with_coarse_learnable_labels(doc_topics):
    s = doc_topics
    assert s.num_classes == len(DOC_TOPIC_GROUPS) == 5
    assert s.preprocessing["classes"] == list(DOC_TOPIC_GROUPS)
    assert s.preprocessing["tokenizer"] == "BPE trained on the training split"
    for part in (s.train, s.val, s.test):
        assert set(part.x) == {"input_ids", "attention_mask", "token_type_ids"}
        assert all(a.dtype == np.int64 and a.shape == (len(part), 32) for a in part.x.values())
        assert 0 <= part.x["input_ids"].min() and part.x["input_ids"].max() < s.vocab_size
        assert set(np.unique(part.x["attention_mask"])) <= {0, 1}
    assert len(s.train) + len(s.val) + len(s.test) > 1200
    assert np.bincount(s.train.y).min() > 50  # every coarse group is well populated
    s.signature.check(s.test.x, where="doc_topics")
    assert s.tokenizer.get_vocab_size() == s.vocab_size


def test_doc_topics_tokenizer_is_trained_on_train_only_and_deterministic(doc_topics):
    again = load_data({"name": "doc_topics", "max_length": 32}, seed=0)
    assert np.array_equal(again.val.x["input_ids"], doc_topics.val.x["input_ids"])
    other_seed = load_data({"name": "doc_topics", "max_length": 32}, seed=1)
    assert other_seed.tokenizer.get_vocab() != doc_topics.tokenizer.get_vocab()  # other training split


def test_jsonl_and_csv_with_string_labels(tmp_path):
    s = load_data({"name": "text", "path": str(_jsonl(tmp_path / "d.jsonl", ROWS)), "max_length": 8,
                   "split": [0.5, 0.25, 0.25]}, seed=0)
    assert s.num_classes == 3 and s.preprocessing["classes"] == ["animal", "finance", "weather"]
    assert s.train.x["input_ids"].shape[1] == 8
    csv = tmp_path / "d.csv"
    csv.write_text("body,topic\n" + "".join(f'"{t}",{y}\n' for t, y in ROWS), encoding="utf-8")
    c = load_data({"name": "text", "path": str(csv), "text_column": "body", "label_column": "topic",
                   "max_length": 8, "split": [0.5, 0.25, 0.25]}, seed=0)
    assert c.num_classes == 3 and np.array_equal(c.test.y, s.test.y)


def test_integer_labels_and_a_saved_tokenizer_round_trip(tmp_path, doc_topics):
    rows = [(t, i % 2) for i, (t, _) in enumerate(ROWS)]
    doc_topics.tokenizer.save(str(tmp_path / "tokenizer.json"))
    s = load_data({"name": "text", "path": str(_jsonl(tmp_path / "d.jsonl", rows)), "tokenizer": str(tmp_path),
                   "max_length": 16, "split": [0.5, 0.25, 0.25]}, seed=0)
    assert s.num_classes == 2 and s.vocab_size == doc_topics.vocab_size
    assert s.preprocessing["tokenizer"].startswith("loaded from")
    assert load_tokenizer(str(tmp_path / "tokenizer.json")).get_vocab() == doc_topics.tokenizer.get_vocab()


@pytest.mark.parametrize("content, error, match", [
    ('{"text": "a b c", "label": 0}\n{"body": "x", "label": 1}\n', InputFileError, r"line 2: no 'text' column"),
    ('{"text": "a b c"}\n', InputFileError, r"line 1: no 'label' column .*data.label_column"),
    ('{"text": "a", "label": 0}\n{"text": "b", "label": -1}\n', ShapeError, r"line 2: label -1 is out of range"),
    ('{"text": "a", "label": 0}\n{"text": "b", "label": "x"}\n', ShapeError, r"line 2: label 'x' mixes"),
    ('{"text": "a", "label": 0}\nnot json\n', InputFileError, r"line 2: not valid JSON"),
    ('', InputFileError, "no rows"),
])
def test_bad_text_files_are_clear(tmp_path, content, error, match):
    f = tmp_path / "d.jsonl"
    f.write_text(content, encoding="utf-8")
    with pytest.raises(error, match=match):
        load_data({"name": "text", "path": str(f)}, seed=0)


def test_missing_text_file_and_tokenizer_are_clear(tmp_path):
    with pytest.raises(InputFileError, match="text file not found"):
        load_data({"name": "text", "path": str(tmp_path / "nope.jsonl")}, seed=0)
    with pytest.raises(ConfigError, match="data.path is required"):
        load_data({"name": "text"}, seed=0)
    f = _jsonl(tmp_path / "d.jsonl", ROWS)
    with pytest.raises(InputFileError, match="no tokenizer.json"):
        load_data({"name": "text", "path": str(f), "tokenizer": str(tmp_path)}, seed=0)


def test_label_beyond_the_models_classes_is_a_clear_error():
    import torch
    from _helpers.hf_models import token_split

    from edgekit.core.train import fit

    class Two(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.EmbeddingBag(50, 2)

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.emb(input_ids)

    with pytest.raises(ShapeError, match=r"label 2 is out of range: the model predicts 2 classes"):
        fit(Two(), token_split(), None, {"epochs": 1, "batch_size": 48})


def test_normalize_never_touches_token_ids(tmp_path):
    s = load_data({"name": "text", "path": str(_jsonl(tmp_path / "d.jsonl", ROWS)), "normalize": True,
                   "split": [0.5, 0.25, 0.25]}, seed=0)
    assert s.train.x["input_ids"].dtype == np.int64 and s.train.x["input_ids"].min() >= 0
