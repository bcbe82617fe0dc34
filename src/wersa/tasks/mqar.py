"""Multi-query associative recall (MQAR), generated: recall the value bound to a key.

After Arora et al. 2023 (Zoology). A sequence starts with ``num_kv_pairs`` pairs
``k_1 v_1 ... k_K v_K`` (distinct keys from the first half of the vocabulary, values
from the second half); the rest holds random filler tokens in which ``num_queries``
context keys reappear, each followed by its value. Only those values are scored:
``labels`` equals ``input_ids`` there and ``-100`` elsewhere (Hugging Face convention:
the causal model, at the query key, predicts the next token, the value). Query slots
are drawn uniformly among the even offsets after the context (Zoology draws them from
a power law that favours short distances).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from .base import IGNORE_INDEX, Task, TaskInfo, TokenDataset, check_positive_int, progress, split_seed
from .registry import register_task


def make_mqar_example(rng: np.random.Generator, seq_len: int, num_kv_pairs: int, num_queries: int,
                      vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """One example: ``(input_ids (seq_len,), labels (seq_len,))`` int64."""
    half = (vocab_size - 1) // 2  # keys: 1..half, values: half+1..2*half
    keys = rng.choice(np.arange(1, half + 1), size=num_kv_pairs, replace=False)
    values = rng.integers(half + 1, 2 * half + 1, size=num_kv_pairs)
    ids = rng.integers(1, vocab_size, size=seq_len)  # filler
    labels = np.full(seq_len, IGNORE_INDEX, dtype=np.int64)
    ids[0:2 * num_kv_pairs:2], ids[1:2 * num_kv_pairs:2] = keys, values
    start = 2 * num_kv_pairs
    slots = start + 2 * np.sort(rng.choice((seq_len - start) // 2, size=num_queries, replace=False))
    which = rng.choice(num_kv_pairs, size=num_queries, replace=num_queries > num_kv_pairs)
    ids[slots], ids[slots + 1] = keys[which], values[which]
    labels[slots + 1] = values[which]
    return ids.astype(np.int64), labels


@register_task
class MQARTask(Task):
    """Multi-query associative recall for causal language models (generated).

    Args:
        seq_len: tokens per example.
        num_kv_pairs: key-value pairs in the context.
        num_queries: scored recalls per example (default ``num_kv_pairs``).
        vocab_size: token ids, padding included (keys and values each take half).
        num_train, num_validation, num_test: split sizes.
        seed: base seed; example ``i`` of a split is drawn from its own generator.
    """

    name = "mqar"
    cache_by_default = True

    def __init__(self, seq_len: int = 256, num_kv_pairs: int = 16, num_queries: int | None = None,
                 vocab_size: int = 8192, num_train: int = 20_000, num_validation: int = 1_000,
                 num_test: int = 1_000, seed: int = 0, cache_dir: str | os.PathLike | None = None):
        super().__init__(cache_dir)
        num_queries = num_kv_pairs if num_queries is None else num_queries
        for opt, val, lo in (("seq_len", seq_len, 4), ("num_kv_pairs", num_kv_pairs, 1),
                             ("num_queries", num_queries, 1), ("vocab_size", vocab_size, 5),
                             ("num_train", num_train, 0), ("num_validation", num_validation, 0),
                             ("num_test", num_test, 0)):
            check_positive_int(self.name, opt, val, lo)
        if num_kv_pairs > (vocab_size - 1) // 2:
            raise ValueError(f"mqar: num_kv_pairs={num_kv_pairs} needs vocab_size >= {2 * num_kv_pairs + 1} "
                             f"(distinct keys), got {vocab_size}")
        if num_queries > (seq_len - 2 * num_kv_pairs) // 2:
            raise ValueError(f"mqar: {num_queries} queries and {num_kv_pairs} pairs do not fit in seq_len={seq_len}; "
                             f"need seq_len >= {2 * num_kv_pairs + 2 * num_queries}")
        self.seq_len, self.num_kv_pairs, self.num_queries = seq_len, num_kv_pairs, num_queries
        self.vocab_size, self.seed = vocab_size, seed
        self.sizes = {"train": num_train, "validation": num_validation, "test": num_test}
        self.info = TaskInfo(name=self.name, kind="language_modeling", vocab_size=vocab_size, max_length=seq_len,
                             source=f"generated, MQAR ({num_kv_pairs} pairs, {num_queries} queries)")

    @classmethod
    def guess_baseline(cls, num_kv_pairs: int, vocab_size: int, **_: Any) -> tuple[str, float]:
        """``("in-context guess", p)``: the expected recall accuracy of answering one of the
        context's ``K`` value slots at random, what a model scores once it copies values from the
        context but before it binds them to their keys: ``1/K``, plus the chance that another of
        the ``K - 1`` pairs drew the same value (values are drawn with replacement from
        ``(vocab_size - 1) // 2``)."""
        half = (vocab_size - 1) // 2
        k = num_kv_pairs
        return "in-context guess", 1 / k + (k - 1) / (k * half)

    def config(self) -> dict[str, Any]:
        return {"seq_len": self.seq_len, "num_kv_pairs": self.num_kv_pairs, "num_queries": self.num_queries,
                "vocab_size": self.vocab_size, "sizes": self.sizes, "seed": self.seed}

    def _build_split(self, split: str) -> TokenDataset:
        n = self.sizes[split]
        ids = np.empty((n, self.seq_len), dtype=np.int64)
        labels = np.empty((n, self.seq_len), dtype=np.int64)
        for i in progress(range(n), n, f"generate mqar {split}"):
            rng = np.random.default_rng(list(split_seed(self.seed, split, i).encode()))
            ids[i], labels[i] = make_mqar_example(rng, self.seq_len, self.num_kv_pairs, self.num_queries,
                                                  self.vocab_size)
        offsets = torch.arange(n + 1, dtype=torch.int64) * self.seq_len
        return TokenDataset(torch.from_numpy(ids.reshape(-1)).to(torch.int32), offsets,
                            targets=torch.from_numpy(labels.reshape(-1)))
