"""Model signatures and input helpers: named, typed inputs are checked before any work, never silently cast."""
from __future__ import annotations

import numpy as np
import pytest

from edgekit.core.signature import InputSpec, Signature, dtype_name
from edgekit.core.tensors import concat, num_samples, prediction, take
from edgekit.errors import ConfigError, ShapeError

BERT = Signature((InputSpec("input_ids", "int64", ("batch", "sequence")),
                  InputSpec("attention_mask", "int64", ("batch", "sequence")),
                  InputSpec("token_type_ids", "int64", ("batch", "sequence"))),
                 output="logits", vocab_size=100, max_positions=64, token_inputs=("input_ids",))


def _bert_inputs(n=4, t=16):
    return {"input_ids": np.random.default_rng(0).integers(0, 100, (n, t)), "attention_mask": np.ones((n, t), np.int64),
            "token_type_ids": np.zeros((n, t), np.int64)}


def test_valid_named_inputs_pass_and_round_trip():
    BERT.check(_bert_inputs())
    assert Signature.from_dict(BERT.to_dict()) == BERT
    assert "input_ids: int64[batch, sequence]" in BERT.describe()


@pytest.mark.parametrize("mutate, match", [
    (lambda d: d.pop("attention_mask"), "missing attention_mask"),
    (lambda d: d.update(position_ids=d["input_ids"]), "unexpected position_ids"),
    (lambda d: d.update(input_ids=d["input_ids"].astype(np.float32)), "'input_ids' is int64 .* data is float32"),
    (lambda d: d.update(input_ids=d["input_ids"] + 100), r"token id 1\d\d, outside the model's vocabulary"),
    (lambda d: d.update({k: np.ones((4, 65), np.int64) for k in list(d)}), "sequence length 65, longer than .* 64"),
    (lambda d: d.update(attention_mask=np.ones((3, 16), np.int64)), "has 3 samples but the others have 4"),
])
def test_bad_named_inputs_are_refused_with_name_and_rule(mutate, match):
    d = _bert_inputs()
    mutate(d)
    with pytest.raises(ShapeError, match=match):
        BERT.check(d, where="data.path")


def test_single_float_input_checks_shape_and_dtype():
    sig = Signature.for_array((3, 8, 8))
    sig.check(np.zeros((2, 3, 8, 8), np.float32))
    with pytest.raises(ShapeError, match=r"shape \[2, 3, 9, 9\] but the model expects \[batch, 3, 8, 8\]"):
        sig.check(np.zeros((2, 3, 9, 9), np.float32))
    with pytest.raises(ShapeError, match="float32 but the data is int64"):
        sig.check(np.zeros((2, 3, 8, 8), np.int64))
    with pytest.raises(ShapeError, match="NaN or infinite"):
        sig.check(np.full((1, 3, 8, 8), np.inf, np.float32))
    with pytest.raises(ShapeError, match="takes 3 named inputs"):
        BERT.check(np.zeros((2, 16), np.int64))


def test_bad_declarations_are_config_errors():
    with pytest.raises(ConfigError, match="dtype 'int46'.*did you mean 'int64'"):
        InputSpec("ids", "int46")
    with pytest.raises(ConfigError, match="repeated: x"):
        Signature((InputSpec("x"), InputSpec("x")))
    assert dtype_name("tensor(int64)") == "int64" and dtype_name("torch.float32") == "float32"


def test_synthetic_inputs_match_the_signature():
    x = BERT.synthetic(batch=3, sequence=32)
    BERT.check(x)
    assert x["attention_mask"].min() == 1 and x["input_ids"].max() < 100
    img = Signature.for_array((3, 8, 8)).synthetic(2)
    assert img.shape == (2, 3, 8, 8) and img.dtype == np.float32


def test_inputs_helpers_and_prediction_extraction():
    import torch

    x = _bert_inputs(6)
    assert num_samples(x) == 6 and take(x, slice(2, 4))["input_ids"].shape == (2, 16)
    assert num_samples(concat([take(x, [0]), take(x, [1, 2])])) == 3
    t = torch.ones(2, 3)
    assert prediction(t) is t and prediction((t, 1)) is t and prediction({"hidden": 0, "logits": t}) is t
    with pytest.raises(ShapeError, match="no field 'scores'.*returns: logits"):
        prediction({"logits": t}, output="scores")
