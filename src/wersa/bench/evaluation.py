"""Scoring a trained model: which examples are scored, what is measured, and the baselines.

Which examples: the whole split, or a *fixed* subset of ``limit`` examples drawn by
:func:`eval_indices`: stratified by class (each class keeps its share of the split,
largest remainders rounded up), drawn with a seed that does not depend on the
training seed, then shuffled. Every mixer and every seed is scored on the same
examples. The first ``limit`` examples of a split are never used as a sample: splits
are often stored in label order, so a prefix can hold one class only.

What is measured (:func:`evaluate`):

* classification: ``accuracy``, ``balanced_accuracy`` (mean per-class recall),
  ``auc`` (macro one-vs-rest ROC AUC), ``eval_loss``; baselines on the same examples:
  ``majority_accuracy`` (always answer the train split's most frequent class) and
  ``chance_accuracy`` (``1 / num_classes``; also the balanced accuracy of any
  constant answer). A macro AUC of 0.5 is chance.
* language modelling: ``eval_loss`` and ``bits_per_token`` over the scored tokens,
  ``bpb`` for byte-level text, ``token_accuracy`` (argmax next token at scored
  positions; MQAR's recall accuracy); baselines ``majority_token_accuracy`` (always
  the train split's most frequent scored token) and, for byte-level text,
  ``unigram_bpb`` (the train split's byte frequencies, add-one smoothed).

:func:`selection_score` turns a validation record into one number, higher is better,
used to pick the checkpoint and the learning rate.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

from . import adapters

EVAL_SUBSET_SEED = 1234  # fixed: the scored examples do not depend on the training seed


def macro_auc(labels: np.ndarray, probs: np.ndarray) -> float | None:
    """Macro one-vs-rest ROC AUC (``sklearn.metrics.roc_auc_score``, ``multi_class="ovr"``).

    ``labels``: ``(n,)`` class indices; ``probs``: ``(n, C)``. Classes absent from
    ``labels`` (or present in every row) have no AUC and are left out of the mean,
    so a small evaluation split still gets a value; ``None`` if no class has one.
    """
    from sklearn.metrics import roc_auc_score

    n_classes = probs.shape[1]
    if n_classes == 2:
        if len(np.unique(labels)) < 2:
            return None
        return float(roc_auc_score(labels, probs[:, 1]))
    aucs = []
    for c in range(n_classes):
        y = labels == c
        if y.all() or not y.any():
            continue
        aucs.append(roc_auc_score(y, probs[:, c]))
    return float(np.mean(aucs)) if aucs else None


def balanced_accuracy(labels: np.ndarray, preds: np.ndarray) -> float:
    """Mean over the classes present in ``labels`` of the recall of that class."""
    classes = np.unique(labels)
    return float(np.mean([(preds[labels == c] == c).mean() for c in classes]))


def eval_indices(n: int, limit: int | None, labels: np.ndarray | None = None,
                 seed: int = EVAL_SUBSET_SEED) -> np.ndarray | None:
    """The examples of a split of ``n`` to score: ``None`` for all of them, else a fixed index array.

    With ``labels`` (``(n,)`` class per example) the subset is stratified: class ``c``
    gets ``limit * n_c / n`` examples, rounded by largest remainder so the total is
    exactly ``limit``. The draw depends only on ``(n, limit, labels, seed)``; the result
    is shuffled (a batch holds a mix of classes).
    """
    if limit is None or limit >= n:
        return None
    if limit <= 0:
        raise ValueError(f"eval_samples must be positive or None (the whole split), got {limit}")
    rng = np.random.default_rng(seed)
    if labels is None:
        return rng.permutation(n)[:limit]
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    exact = limit * counts / n
    take = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - take), kind="stable")[: limit - int(take.sum())]:
        take[i] += 1
    picked = [np.flatnonzero(labels == c)[rng.permutation(int(cnt))[:k]]
              for c, cnt, k in zip(classes, counts, take)]
    out = np.concatenate(picked)
    return out[rng.permutation(len(out))]


def _subset_loader(task, split: str, batch_size: int, limit: int | None, pad_to: int | None):
    ds = task.split(split)
    if len(ds) == 0:
        raise ValueError(f"task {task.info.name!r}: the {split} split is empty; nothing to evaluate")
    labels = None if ds.labels is None else ds.labels.numpy()
    idx = eval_indices(len(ds), limit, labels)
    data = ds if idx is None else Subset(ds, idx.tolist())

    def collate(batch):
        return task.collate(batch, pad_to=pad_to)

    return DataLoader(data, batch_size=batch_size, shuffle=False, collate_fn=collate), len(data), len(ds)


def _train_scored_tokens(task) -> np.ndarray:
    """The scored next-token targets of the train split (what a language model is asked to predict)."""
    ds = task.split("train")
    src = ds.targets if ds.targets is not None else ds.tokens.to(torch.int64)
    offsets = ds.offsets
    keep = torch.ones(src.numel(), dtype=torch.bool)
    keep[offsets[:-1][offsets[:-1] < src.numel()]] = False  # the first token of an example is never predicted
    vals = src[keep]
    return vals[vals != -100].numpy()


@torch.no_grad()
def evaluate(model: torch.nn.Module, task, split: str, batch_size: int, limit: int | None,
             pad_to: int | None, device: torch.device) -> dict[str, Any]:
    """Score ``split`` (or its fixed subset of ``limit`` examples); see the module docstring for the fields."""
    was_training = model.training
    model.eval()
    info = task.info
    loader, n_scored, n_split = _subset_loader(task, split, batch_size, limit, pad_to)
    out: dict[str, Any] = {"eval_split": split, "eval_samples": n_scored, "eval_split_size": n_split,
                           "eval_subset": "whole split" if n_scored == n_split
                           else f"stratified fixed subset, seed {EVAL_SUBSET_SEED}"}
    if info.kind == "language_modeling":
        total_nll, total_tok, correct = 0.0, 0, 0
        eval_counts = np.zeros(info.vocab_size, dtype=np.int64)
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            logits = adapters.model_output(model(**{k: v for k, v in batch.items() if k != "labels"}), "logits")
            # Position t predicts token t + 1 (labels are aligned with input_ids).
            pred, tgt = logits[:, :-1].float(), batch["labels"][:, 1:]
            total_nll += float(F.cross_entropy(pred.reshape(-1, pred.shape[-1]), tgt.reshape(-1),
                                               ignore_index=-100, reduction="sum"))
            scored = tgt != -100
            total_tok += int(scored.sum())
            correct += int(((pred.argmax(-1) == tgt) & scored).sum())
            eval_counts += np.bincount(tgt[scored].cpu().numpy(), minlength=info.vocab_size)
        loss = total_nll / max(1, total_tok)
        out.update(eval_loss=loss, bits_per_token=loss / math.log(2), eval_tokens=total_tok,
                   token_accuracy=correct / max(1, total_tok))
        train_counts = np.bincount(_train_scored_tokens(task), minlength=info.vocab_size)
        out["majority_token_accuracy"] = float(eval_counts[int(train_counts.argmax())] / max(1, total_tok))
        bpt = getattr(info, "bytes_per_token", None)
        if bpt:  # byte-level text: bits per token / bytes per token = bits per byte
            out["bpb"] = out["bits_per_token"] / bpt
            p = (train_counts + 1) / (train_counts.sum() + len(train_counts))
            out["unigram_bpb"] = float(-(eval_counts * np.log2(p)).sum() / max(1, total_tok) / bpt)
    else:
        all_logits, all_labels = [], []
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            logits = adapters.model_output(model(**{k: v for k, v in batch.items() if k != "labels"}), "logits")
            all_logits.append(logits.float().cpu())
            all_labels.append(batch["labels"].cpu())
        logits, labels_t = torch.cat(all_logits), torch.cat(all_labels)
        probs = torch.softmax(logits, -1).numpy()
        labels = labels_t.numpy()
        preds = probs.argmax(1)
        train_labels = task.split("train").labels.numpy()
        majority = int(np.bincount(train_labels, minlength=probs.shape[1]).argmax())
        out.update(accuracy=float((preds == labels).mean()), balanced_accuracy=balanced_accuracy(labels, preds),
                   auc=macro_auc(labels, probs), eval_loss=float(F.cross_entropy(logits, labels_t)),
                   majority_accuracy=float((labels == majority).mean()), majority_class=majority,
                   chance_accuracy=1.0 / probs.shape[1])
    if was_training:
        model.train()
    return out


def selection_score(metrics: dict[str, Any]) -> tuple[str, float]:
    """``(name, value)`` of the number that picks a checkpoint or a learning rate; higher is better.

    Classification: accuracy. Byte-level language modelling: minus bits per byte.
    Other token tasks (MQAR): token accuracy, the recall rate.
    """
    if metrics.get("accuracy") is not None:
        return "accuracy", float(metrics["accuracy"])
    if metrics.get("bpb") is not None:
        return "-bpb", -float(metrics["bpb"])
    return "token_accuracy", float(metrics["token_accuracy"])
