"""Evaluation: a fixed, stratified, shuffled subset (never a prefix), the metrics and the baselines,
periodic validation keeping the best model."""

import numpy as np
import pytest
import torch
from torch import nn

import bench_standins  # noqa: F401 - registers the stand-in mixers
from wersa.bench.evaluation import balanced_accuracy, eval_indices, evaluate
from wersa.bench.train import TrainConfig, run_training
from wersa.tasks.base import Task, TaskInfo, TokenDataset


class SortedTask(Task):
    """Test split stored sorted by label: 60 of class 0, 30 of class 1, 10 of class 2 (as files sorted by folder)."""

    name = "eval_sorted"

    def __init__(self, cache_dir=None):
        super().__init__(cache_dir)
        self.info = TaskInfo(name=self.name, kind="classification", vocab_size=8, max_length=4, num_classes=3)

    def _build_split(self, split):
        labels = [0] * 60 + [1] * 30 + [2] * 10
        return TokenDataset.from_sequences([[y + 1, 5, 6, 7] for y in labels], labels)


class AlwaysZero(nn.Module):
    """Predicts class 0 whatever the input (one trainable bias so an optimiser has something to do)."""

    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.tensor([5.0, 0.0, 0.0]))

    def forward(self, input_ids, attention_mask=None, labels=None):
        logits = self.bias.expand(input_ids.shape[0], 3)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits, labels) * 0.0 + self.bias.sum() * 0.0
        return out


def make_sorted_task(**options):
    return SortedTask(**options)


def make_always_zero(info, mixer, mixer_options, length, model_options):
    return AlwaysZero()


def test_eval_indices_stratified_deterministic_shuffled():
    labels = np.array([0] * 600 + [1] * 300 + [2] * 100)
    idx = eval_indices(len(labels), 100, labels)
    assert len(idx) == len(set(idx.tolist())) == 100
    assert np.bincount(labels[idx]).tolist() == [60, 30, 10]  # each class keeps its share
    assert (idx == eval_indices(len(labels), 100, labels)).all()  # fixed: same examples every call
    assert not (np.diff(idx) > 0).all()  # shuffled, not a sorted prefix
    # Largest remainder: 7 of (600, 300, 100) -> 4.2, 2.1, 0.7 -> 4, 2, 1.
    assert np.bincount(labels[eval_indices(len(labels), 7, labels)], minlength=3).tolist() == [4, 2, 1]
    assert eval_indices(1000, None, labels) is None and eval_indices(1000, 1000, labels) is None  # whole split
    lm = eval_indices(50, 10)
    assert len(set(lm.tolist())) == 10 and (lm == eval_indices(50, 10)).all()
    with pytest.raises(ValueError, match="eval_samples"):
        eval_indices(10, 0)


def test_balanced_accuracy():
    labels = np.array([0, 0, 0, 1])
    assert balanced_accuracy(labels, np.zeros(4, dtype=int)) == 0.5
    assert balanced_accuracy(labels, labels) == 1.0


def test_a_capped_evaluation_of_a_label_sorted_split_is_not_its_first_items():
    """A constant 'class 0' model scores the class-0 share, not 100 % on a class-0 prefix."""
    cfg = TrainConfig(mixer="bench_mean", task="eval_sorted", length=4, batch_size=4, max_steps=2, warmup_steps=0,
                      eval_samples=20, threads=1, count_flops=False, task_factory="test_evaluation:make_sorted_task",
                      model_factory="test_evaluation:make_always_zero")
    rec = run_training(cfg, progress=False)
    assert rec["eval_samples"] == 20
    assert rec["accuracy"] == pytest.approx(0.6)  # 12 of the 20 stratified items are class 0
    assert rec["balanced_accuracy"] == pytest.approx(1 / 3)
    assert rec["majority_accuracy"] == pytest.approx(0.6) and rec["chance_accuracy"] == pytest.approx(1 / 3)
    assert rec["auc"] == pytest.approx(0.5)
    whole = run_training(TrainConfig(**{**cfg.to_dict(), "eval_samples": None}), progress=False)
    assert whole["eval_samples"] == 100 and whole["accuracy"] == pytest.approx(0.6)
    assert whole["eval_subset"] == "whole split"


def test_language_model_metrics_and_baselines():
    from wersa.tasks import build_task

    task = build_task("mqar", seq_len=32, num_kv_pairs=4, vocab_size=17, num_train=32, num_validation=8,
                      num_test=8)

    class Oracle(nn.Module):
        """Predicts every next token exactly: loss ~ 0, token accuracy 1."""

        def forward(self, input_ids, attention_mask=None, labels=None):
            nxt = torch.roll(input_ids, -1, dims=1)
            return {"logits": 50.0 * nn.functional.one_hot(nxt, 17).float()}

    out = evaluate(Oracle(), task, "test", 4, None, 32, torch.device("cpu"))
    assert out["token_accuracy"] == 1.0 and out["eval_loss"] < 1e-6
    assert out["eval_tokens"] == 8 * 4 and "bpb" not in out  # MQAR: 4 scored recalls per example, not text
    assert 0.0 <= out["majority_token_accuracy"] < 0.5


def test_periodic_validation_keeps_the_best_model():
    """eval_every validates during training; the test split scores the weights of the best validation step."""
    cfg = TrainConfig(mixer="bench_mean", task="bench_first_token", length=16, batch_size=8, max_steps=12,
                      warmup_steps=0, lr=3e-2, eval_every=4, select_samples=None, eval_samples=None, threads=1,
                      count_flops=False, task_options={"length": 16, "num_train": 64, "num_test": 32},
                      model={"hidden_size": 16, "num_attention_heads": 2},
                      task_factory="bench_standins:make_task", model_factory="bench_standins:make_model")
    rec = run_training(cfg, progress=False)
    steps = [s for s, _ in rec["val_history"]]
    assert steps == [4, 8, 12]
    scores = [v for _, v in rec["val_history"]]
    assert rec["select_metric"] == "accuracy" and rec["select_score"] == max(scores)
    assert rec["best_step"] == steps[scores.index(max(scores))]  # first step reaching the best score
