"""ListOps: evaluate a nested list expression (generated, Long Range Arena recipe).

An expression such as ``[MAX 2 9 [MIN 4 7 ] 0 ]`` is built from the operators MAX,
MIN, MED (median, rounded down) and SM (sum modulo 10) over digits 0-9; the label
is its value (10 classes). Following the LRA generator (Nangia and Bowman 2018,
``lra_benchmarks/data/listops.py``): a node below ``max_depth`` is an operator with
probability 0.25, else a digit; an operator takes 2..``max_args`` arguments; trees
are drawn until their token count lies in ``[min_length, max_length]``. The LRA
standard setting is lengths 500-2000, depth 10, 10 arguments, 96k/2k/2k examples.

Example ``i`` of a split is drawn from its own seeded generator, so a split of
1,000 examples is the prefix of one of 10,000, and generation order does not matter.
"""

from __future__ import annotations

import os
import random
import statistics

import torch

from .base import Task, TaskInfo, TokenDataset, check_positive_int, progress, split_seed
from .registry import register_task

OPERATORS = ("[MIN", "[MAX", "[MED", "[SM")
END = "]"
DIGITS = tuple(str(d) for d in range(10))
#: token string -> id; 0 is padding.
VOCAB: dict[str, int] = {tok: i + 1 for i, tok in enumerate(DIGITS + OPERATORS + (END,))}
ID_TO_TOKEN: dict[int, str] = {i: t for t, i in VOCAB.items()}
OPERATOR_PROBABILITY = 0.25  # LRA's VALUE_P: a node is a digit with probability 0.75


def apply_operator(op: str, values: list[int]) -> int:
    """Value of one operator over its argument values."""
    if op == "[MIN":
        return min(values)
    if op == "[MAX":
        return max(values)
    if op == "[MED":
        return int(statistics.median(values))  # LRA: int(np.median(...)), rounds 4.5 down to 4
    if op == "[SM":
        return sum(values) % 10
    raise ValueError(f"listops: unknown operator {op!r}; expected one of {', '.join(OPERATORS)}")


def generate_expression(rng: random.Random, max_depth: int, max_args: int,
                        depth: int = 1) -> tuple[list[str], int]:
    """Draw one expression tree. Returns ``(tokens, value)``; the value is computed on the way."""
    if depth < max_depth and rng.random() <= OPERATOR_PROBABILITY:
        op = rng.choice(OPERATORS)
        tokens = [op]
        values = []
        for _ in range(rng.randint(2, max_args)):
            sub_tokens, sub_value = generate_expression(rng, max_depth, max_args, depth + 1)
            tokens += sub_tokens
            values.append(sub_value)
        tokens.append(END)
        return tokens, apply_operator(op, values)
    digit = rng.randrange(10)
    return [DIGITS[digit]], digit


def evaluate(tokens: list[str]) -> int:
    """Evaluate a token list independently of the generator (a stack machine).

    Raises ``ValueError`` on a malformed expression.
    """
    stack: list[tuple[str, list[int]]] = []
    result: int | None = None
    for pos, tok in enumerate(tokens):
        if result is not None:
            raise ValueError(f"listops: tokens after the end of the expression at position {pos}")
        if tok in OPERATORS:
            stack.append((tok, []))
        elif tok == END:
            if not stack:
                raise ValueError(f"listops: unmatched ']' at position {pos}")
            op, args = stack.pop()
            if not args:
                raise ValueError(f"listops: operator {op} at depth {len(stack)} has no arguments")
            value = apply_operator(op, args)
            if stack:
                stack[-1][1].append(value)
            else:
                result = value
        elif tok in DIGITS:
            if stack:
                stack[-1][1].append(int(tok))
            else:
                result = int(tok)
        else:
            raise ValueError(f"listops: unknown token {tok!r} at position {pos}")
    if stack or result is None:
        raise ValueError("listops: incomplete expression (unclosed operator or empty input)")
    return result


def encode(tokens: list[str]) -> list[int]:
    return [VOCAB[t] for t in tokens]


def decode(ids) -> list[str]:
    return [ID_TO_TOKEN[int(i)] for i in ids if int(i) != 0]


def sample_example(seed: str, min_length: int, max_length: int, max_depth: int,
                   max_args: int, max_tries: int = 1_000_000) -> tuple[list[str], int]:
    """Rejection-sample one expression whose token count lies in ``[min_length, max_length]``."""
    rng = random.Random(seed)
    for _ in range(max_tries):
        tokens, value = generate_expression(rng, max_depth, max_args)
        if min_length <= len(tokens) <= max_length:
            return tokens, value
    raise RuntimeError(
        f"listops: no expression of {min_length}..{max_length} tokens in {max_tries} draws with "
        f"max_depth={max_depth}, max_args={max_args}; raise max_depth/max_args or lower min_length"
    )


@register_task
class ListOpsTask(Task):
    """ListOps classification (generated, LRA recipe). 10 classes; vocabulary of 16 ids.

    Args:
        num_train, num_validation, num_test: split sizes (LRA: 96000 / 2000 / 2000).
        min_length, max_length: token-count range of the expressions (LRA: 500 / 2000).
        max_depth, max_args: tree depth and arguments per operator (LRA: 10 / 10).
        seed: base seed; splits use disjoint per-example seeds.
        cache_dir: where generated splits are cached (``None``: in memory only).
    """

    name = "listops"
    cache_by_default = True

    def __init__(self, num_train: int = 96_000, num_validation: int = 2_000, num_test: int = 2_000,
                 min_length: int = 500, max_length: int = 2_000, max_depth: int = 10, max_args: int = 10,
                 seed: int = 0, cache_dir: str | os.PathLike | None = None):
        super().__init__(cache_dir)
        for opt, val, lo in (("num_train", num_train, 0), ("num_validation", num_validation, 0),
                             ("num_test", num_test, 0), ("min_length", min_length, 1),
                             ("max_length", max_length, 1), ("max_depth", max_depth, 1),
                             ("max_args", max_args, 2)):
            check_positive_int(self.name, opt, val, lo)
        if min_length > max_length:
            raise ValueError(f"listops: min_length={min_length} exceeds max_length={max_length}")
        if not isinstance(seed, int):
            raise ValueError(f"listops: seed must be an integer, got {seed!r}")
        self.sizes = {"train": num_train, "validation": num_validation, "test": num_test}
        self.min_length, self.max_length = min_length, max_length
        self.max_depth, self.max_args, self.seed = max_depth, max_args, seed
        self.info = TaskInfo(
            name=self.name, kind="classification", vocab_size=len(VOCAB) + 1, max_length=max_length,
            num_classes=10, class_names=DIGITS,
            source=f"generated, LRA ListOps recipe (lengths {min_length}-{max_length}, depth {max_depth})",
        )

    def config(self) -> dict:
        return {"sizes": self.sizes, "min_length": self.min_length, "max_length": self.max_length,
                "max_depth": self.max_depth, "max_args": self.max_args, "seed": self.seed}

    def _build_split(self, split: str) -> TokenDataset:
        seqs, labels = [], []
        n = self.sizes[split]
        for i in progress(range(n), n, f"generate listops {split}"):
            tokens, value = sample_example(split_seed(self.seed, split, i), self.min_length,
                                           self.max_length, self.max_depth, self.max_args)
            seqs.append(encode(tokens))
            labels.append(value)
        return TokenDataset.from_sequences(seqs, labels, dtype=torch.int8)
