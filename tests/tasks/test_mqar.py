import pytest

from wersa.tasks import IGNORE_INDEX, build_task


def test_every_scored_value_is_recallable_from_the_context():
    task = build_task("mqar", seq_len=64, num_kv_pairs=6, num_queries=4, vocab_size=40,
                      num_train=20, num_validation=0, num_test=0)
    ds = task.split("train")
    assert task.info.kind == "language_modeling" and len(ds) == 20
    for i in range(len(ds)):
        ex = ds[i]
        ids, labels = ex["input_ids"].tolist(), ex["labels"].tolist()
        context = dict(zip(ids[0:12:2], ids[1:12:2]))
        assert len(context) == 6 and all(1 <= k <= 19 < v for k, v in context.items())
        scored = [t for t, y in enumerate(labels) if y != IGNORE_INDEX]
        assert len(scored) == 4 and min(scored) > 12
        for t in scored:
            assert labels[t] == ids[t] == context[ids[t - 1]]


def test_options_that_cannot_fit_are_rejected():
    with pytest.raises(ValueError, match="do not fit"):
        build_task("mqar", seq_len=16, num_kv_pairs=6, num_queries=4)
    with pytest.raises(ValueError, match="vocab_size"):
        build_task("mqar", num_kv_pairs=30, vocab_size=21)


def test_guess_baseline_is_answering_a_context_value_at_random():
    """``MQARTask.guess_baseline``: the expected recall of picking one of the K value slots of the
    context at random, value collisions included (a small vocabulary makes them frequent)."""
    import numpy as np

    from wersa.tasks.mqar import MQARTask, make_mqar_example

    k, vocab = 4, 11  # values drawn from 5 tokens: collisions are common
    rng = np.random.default_rng(0)
    hits = []
    for _ in range(4000):
        ids, labels = make_mqar_example(rng, 32, k, k, vocab)
        values = ids[1:2 * k:2]
        hits += [(values == v).mean() for v in labels[labels >= 0]]
    name, p = MQARTask.guess_baseline(num_kv_pairs=k, vocab_size=vocab)
    assert name == "in-context guess" and p == pytest.approx(0.25 + 3 / 20)
    assert np.mean(hits) == pytest.approx(p, abs=0.01)
