import random

import pytest
import torch

from wersa.tasks import build_task
from wersa.tasks.listops import VOCAB, decode, evaluate, generate_expression


@pytest.mark.parametrize("text, value", [
    ("7", 7),
    ("[MAX 2 9 [MIN 4 7 ] 0 ]", 9),
    ("[MED 1 2 ]", 1),            # median 1.5 rounds down, as LRA's int(np.median)
    ("[MED 3 9 1 ]", 3),
    ("[SM 5 6 7 ]", 8),           # 18 mod 10
    ("[MIN [SM 9 9 ] [MAX 1 3 ] ]", 3),
])
def test_evaluate_hand_written(text, value):
    assert evaluate(text.split()) == value


@pytest.mark.parametrize("text", ["[MAX 1", "1 2", "]", "[MAX ]", "[FOO 1 ]"])
def test_evaluate_rejects_malformed(text):
    with pytest.raises(ValueError, match="listops"):
        evaluate(text.split())


def test_generator_value_matches_independent_evaluator():
    rng = random.Random(0)
    for _ in range(300):
        tokens, value = generate_expression(rng, max_depth=6, max_args=5)
        assert evaluate(tokens) == value


def test_task_lengths_labels_vocab_and_prefix_property():
    opts = dict(num_validation=3, num_test=0, min_length=30, max_length=120, seed=5)
    small = build_task("listops", num_train=10, **opts)
    big = build_task("listops", num_train=20, **opts)
    ds = small.split("train")
    lengths = ds.lengths()
    assert bool(((lengths >= 30) & (lengths <= 120)).all())
    assert int(ds.tokens.max()) < small.info.vocab_size == len(VOCAB) + 1
    for i in range(len(ds)):
        ex = ds[i]
        assert evaluate(decode(ex["input_ids"])) == int(ex["labels"])
        assert torch.equal(ex["input_ids"], big.split("train")[i]["input_ids"])
    assert not torch.equal(small.split("validation")[0]["input_ids"][:10], ds[0]["input_ids"][:10])


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="min_length=50 exceeds max_length=10"):
        build_task("listops", min_length=50, max_length=10)
    with pytest.raises(ValueError, match="max_args"):
        build_task("listops", max_args=1)
