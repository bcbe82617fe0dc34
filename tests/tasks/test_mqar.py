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
