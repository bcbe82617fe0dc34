"""``describe``: what a task yields, split by split, and a check that splits do not overlap.

::

    from wersa.tasks import describe, format_description
    d = describe("shakespeare_genre", max_length=65536)
    print(format_description(d))        # a Markdown table

Per split it reports the number of examples, the class balance (classification) or the
scored tokens (language modelling), the min / mean / max length, and the source
documents; across splits it checks that no document is in two splits (for tasks
built from documents: files, plays) and counts examples that are identical across
splits (every task). ``wersa data describe TASK`` prints the same table.
"""

from __future__ import annotations

import hashlib
from itertools import combinations
from typing import Any

from .base import IGNORE_INDEX, Task, TokenDataset
from .registry import build_task


def data_label(source: str) -> str:
    """``"generated"`` for generated data, else ``"real: <source>"``, as result tables should say."""
    if source.lower().startswith("generated"):
        return "generated"
    return f"real: {source}" if source else "real"


def _example_hashes(ds: TokenDataset) -> set[bytes]:
    tokens = ds.tokens.numpy()
    offsets = ds.offsets.tolist()
    return {hashlib.blake2b(tokens[a:b].tobytes(), digest_size=16).digest() for a, b in zip(offsets, offsets[1:])}


def _split_stats(task: Task, ds: TokenDataset) -> dict[str, Any]:
    info = task.info
    lengths = ds.lengths()
    n = len(ds)
    out: dict[str, Any] = {
        "examples": n,
        "tokens": int(lengths.sum()),
        "min_length": int(lengths.min()) if n else 0,
        "mean_length": round(float(lengths.double().mean()), 1) if n else 0.0,
        "max_length": int(lengths.max()) if n else 0,
    }
    problems = []
    if ds.tokens.numel():
        lo, hi = int(ds.tokens.min()), int(ds.tokens.max())
        if lo < 1 or hi >= info.vocab_size:
            problems.append(f"token ids {lo}..{hi} outside 1..{info.vocab_size - 1}")
    if n and out["max_length"] > info.max_length:
        problems.append(f"an example has {out['max_length']} tokens, more than max_length={info.max_length}")
    if ds.labels is not None:
        k = info.num_classes or 0
        counts = [int((ds.labels == c).sum()) for c in range(k)]
        out["class_counts"] = counts
        outside = n - sum(counts)
        if outside:
            problems.append(f"{outside} labels outside 0..{k - 1}")
    else:
        # What the loss counts: a causal LM predicts label t + 1 from position t, so the
        # first position of an example is never scored.
        if ds.targets is not None:
            firsts = ds.targets[ds.offsets[:-1][lengths > 0]]
            scored = int((ds.targets != IGNORE_INDEX).sum()) - int((firsts != IGNORE_INDEX).sum())
        else:
            scored = int(lengths.clamp(min=1).sub(1).sum())
        out["scored_tokens"] = scored
    out["problems"] = problems
    return out


def describe(task_or_name: Task | str, splits: tuple[str, ...] | None = None, **options: Any) -> dict[str, Any]:
    """Describe a task: per-split statistics and overlap checks.

    Args:
        task_or_name: a built :class:`Task`, or a registered name built with ``options``.
        splits: which splits (default: all of the task's splits).
        **options: task options, when ``task_or_name`` is a name.

    Returns:
        A dict with ``task``, ``kind``, ``data`` (``"generated"`` or ``"real: ..."``),
        ``source``, ``vocab_size``, ``max_length``, ``num_classes``, ``class_names``,
        ``bytes_per_token``, ``options``, ``splits`` (split -> ``examples``, ``tokens``,
        ``min_length``, ``mean_length``, ``max_length``, ``class_counts`` or
        ``scored_tokens``, ``documents`` (count or ``None``), ``problems``),
        ``shared_documents`` (``"train/test"`` -> documents in both; ``None`` where the task
        has no documents), ``shared_examples`` (pair -> identical examples) and
        ``problems`` (every problem found; empty when all checks pass).
    """
    if isinstance(task_or_name, Task):
        if options:
            raise ValueError("describe: options are only accepted with a task name, not a built task")
        task = task_or_name
    else:
        task = build_task(task_or_name, **options)
    info = task.info
    splits = tuple(splits or task.splits)
    out: dict[str, Any] = {
        "task": info.name, "kind": info.kind, "data": data_label(info.source), "source": info.source,
        "vocab_size": info.vocab_size, "max_length": info.max_length, "num_classes": info.num_classes,
        "class_names": list(info.class_names) if info.class_names else None,
        "bytes_per_token": info.bytes_per_token, "options": task.config(), "splits": {},
    }
    docs: dict[str, list[str] | None] = {}
    hashes: dict[str, set[bytes]] = {}
    problems: list[str] = []
    for split in splits:
        ds = task.split(split)
        stats = _split_stats(task, ds)
        docs[split] = task.split_documents(split)
        stats["documents"] = None if docs[split] is None else len(docs[split])
        if len(ds) == 0:
            stats["problems"].append("empty split")
        out["splits"][split] = stats
        problems += [f"{split}: {p}" for p in stats["problems"]]
        hashes[split] = _example_hashes(ds)
    has_docs = all(d is not None for d in docs.values())
    out["shared_documents"] = None
    if has_docs:
        out["shared_documents"] = {}
        for a, b in combinations(splits, 2):
            shared = sorted(set(docs[a]) & set(docs[b]))  # type: ignore[arg-type]
            out["shared_documents"][f"{a}/{b}"] = shared
            if shared:
                problems.append(f"{len(shared)} documents in both {a} and {b}: {', '.join(shared[:5])}")
    out["shared_examples"] = {f"{a}/{b}": len(hashes[a] & hashes[b]) for a, b in combinations(splits, 2)}
    out["problems"] = problems
    return out


def _balance(counts: list[int], names: list[str] | None) -> str:
    total = sum(counts) or 1
    if len(counts) <= 4 and names:
        return ", ".join(f"{nm} {c} ({100 * c / total:.0f}%)" for nm, c in zip(names, counts))
    if len(counts) <= 12:
        return " / ".join(str(c) for c in counts)
    return f"{len(counts)} classes, {min(counts)}..{max(counts)} per class"


def format_description(desc: dict[str, Any]) -> str:
    """A Markdown rendering of :func:`describe`'s dict: a header and one table row per split."""
    lines = [f"**{desc['task']}** ({desc['kind']}; data: {desc['data']})", ""]
    facts = [f"vocab {desc['vocab_size']}", f"max_length {desc['max_length']}"]
    if desc["num_classes"]:
        names = desc["class_names"]
        shown = ", ".join(names[:12]) + (", ..." if len(names or []) > 12 else "") if names else ""
        facts.append(f"{desc['num_classes']} classes" + (f" ({shown})" if shown else ""))
    if desc["bytes_per_token"]:
        facts.append(f"bytes/token {desc['bytes_per_token']:g} (bits/token = bpb)")
    lines += ["; ".join(facts), ""]
    is_clf = desc["kind"] == "classification"
    head = ["split", "examples", "class balance" if is_clf else "scored tokens", "length min / mean / max",
            "documents"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for split, s in desc["splits"].items():
        bal = _balance(s["class_counts"], desc["class_names"]) if is_clf else f"{s['scored_tokens']:,}"
        row = [split, f"{s['examples']:,}", bal, f"{s['min_length']:,} / {s['mean_length']:,} / {s['max_length']:,}",
               "-" if s["documents"] is None else f"{s['documents']:,}"]
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    if desc["shared_documents"] is None:
        lines.append("Documents: none (examples are generated or independent); ")
    else:
        n_shared = sum(len(v) for v in desc["shared_documents"].values())
        lines.append(f"Documents shared between splits: {n_shared}; ")
    lines[-1] += "identical examples across splits: " + ", ".join(
        f"{k} {v}" for k, v in desc["shared_examples"].items()) + "."
    if desc["problems"]:
        lines += ["", "Problems: " + "; ".join(desc["problems"])]
    return "\n".join(lines)


def describe_task(name: str, **options: Any) -> str:
    """:func:`describe` then :func:`format_description`: the text ``wersa data describe`` prints."""
    return format_description(describe(name, **options))
