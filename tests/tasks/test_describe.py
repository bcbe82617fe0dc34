"""describe(): per-split statistics, overlap checks and the Markdown table."""

import pytest
import torch

from wersa.tasks import TaskInfo, TokenDataset, build_task, describe, describe_task, format_description
from wersa.tasks.base import Task


def test_describe_listops_counts_and_balance():
    d = describe("listops", num_train=30, num_validation=10, num_test=10, min_length=20, max_length=60)
    assert d["data"] == "generated" and d["kind"] == "classification" and d["vocab_size"] == 16
    tr = d["splits"]["train"]
    assert tr["examples"] == 30 and sum(tr["class_counts"]) == 30 and 20 <= tr["min_length"] <= tr["max_length"] <= 60
    assert d["shared_documents"] is None and d["problems"] == []
    table = format_description(d)
    assert "| train | 30 |" in table and "data: generated" in table


def test_describe_lm_task_reports_scored_tokens_and_bytes_per_token(tmp_path):
    for i in range(20):
        (tmp_path / f"f{i}.txt").write_text(f"file {i}\n" * 30)
    d = describe("bytes_lm", paths=[str(tmp_path)], glob="*.txt", seq_len=16, split_fractions=(0.5, 0.25, 0.25))
    tr = d["splits"]["train"]
    assert tr["scored_tokens"] == tr["examples"] * 15  # position t predicts t + 1
    assert d["bytes_per_token"] == 1.0 and d["data"].startswith("real: ")
    assert d["shared_documents"] == {"train/validation": [], "train/test": [], "validation/test": []}
    mq = describe("mqar", seq_len=32, num_kv_pairs=4, num_train=5, num_validation=2, num_test=2, vocab_size=64)
    assert mq["splits"]["train"]["scored_tokens"] == 5 * 4 and mq["bytes_per_token"] is None


class _Leaky(Task):
    """A task that puts one document in two splits, an out-of-range label and an empty split."""

    name = "leaky"

    def __init__(self):
        super().__init__()
        self.info = TaskInfo(name=self.name, kind="classification", vocab_size=5, max_length=4, num_classes=2,
                             source="test data")

    def split_documents(self, split):
        return {"train": ["a", "b"], "validation": ["b"], "test": []}[split]

    def _build_split(self, split):
        if split == "test":
            return TokenDataset.from_sequences([], [])
        return TokenDataset.from_sequences([[1, 2, 3], [4, 4]], [0, 3 if split == "train" else 1])


def test_describe_reports_problems():
    d = describe(_Leaky())
    assert d["shared_documents"]["train/validation"] == ["b"]
    assert d["shared_examples"]["train/validation"] == 2  # the same two sequences in both
    text = " | ".join(d["problems"])
    assert "documents in both train and validation: b" in text and "labels outside 0..1" in text
    assert "test: empty split" in text
    assert "Problems:" in format_description(d)
    with pytest.raises(ValueError, match="only accepted with a task name"):
        describe(_Leaky(), max_length=3)


def test_describe_task_returns_markdown_for_the_command_line():
    text = describe_task("digits")
    assert text.splitlines()[0].startswith("**digits**") and "| test |" in text and "real: scikit-learn" in text
    d = describe(build_task("digits"), splits=("test",))
    assert list(d["splits"]) == ["test"] and sum(d["splits"]["test"]["class_counts"]) == 359  # round(0.2 * 1797)
