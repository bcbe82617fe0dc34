"""The task interface: token datasets, padding, splits and the on-disk cache.

Every task turns its source (a generator, a local file, a Hugging Face dataset)
into integer token sequences, so any model of :mod:`wersa.models` can consume any
task. Conventions, shared by every task:

* token id ``0`` is padding in every task (``TaskInfo.pad_id``); real tokens are
  ``1 .. vocab_size - 1``;
* an example is a dict ``{"input_ids": (N,) int64, "labels": ...}``;
* sequence classification: ``labels`` is a scalar int64 class index;
* token-level tasks (language modelling, associative recall): ``labels`` is
  ``(N,)`` int64 *aligned with* ``input_ids`` (Hugging Face convention: the causal
  model shifts, so position ``t`` is trained to predict ``labels[t + 1]``);
  ``-100`` marks a position that is not scored;
* a batch (from :func:`pad_collate`) is ``{"input_ids": (B, N), "attention_mask":
  (B, N) int64 with 1 = real token, "labels": (B,) or (B, N)}``, right-padded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterable, Literal, Sequence, TypeVar

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

IGNORE_INDEX = -100  # label value the loss skips (PyTorch and Hugging Face default)
PAD_ID = 0
SPLITS = ("train", "validation", "test")
CACHE_FORMAT = 1  # bump when the cached layout changes, so stale files are not read

TaskKind = Literal["classification", "language_modeling"]
CACHE_ENV = "WERSA_CACHE_DIR"
T = TypeVar("T")


def default_cache_dir() -> Path:
    """Where generated tasks cache their splits when no ``cache_dir`` is given:
    ``$WERSA_CACHE_DIR``, else ``~/.cache/wersa/tasks``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "wersa" / "tasks")


def progress(items: Iterable[T], total: int, desc: str) -> Iterable[T]:
    """``items`` with a progress bar on stderr (shown on a terminal only, so logs stay clean)."""
    from tqdm.auto import tqdm

    return tqdm(items, total=total, desc=desc, disable=None, leave=False, mininterval=0.5, dynamic_ncols=True)


@dataclass(frozen=True)
class TaskInfo:
    """What a task produces. The models and the benchmark harness size themselves from it.

    Attributes:
        name: registry name.
        kind: ``"classification"`` (one label per sequence) or ``"language_modeling"``
            (labels per token).
        vocab_size: number of token ids, padding (id 0) included.
        max_length: longest sequence the task yields.
        num_classes: classes of a classification task (``None`` for language modelling).
        source: where the data comes from, worded for result tables
            (e.g. ``"generated, LRA ListOps recipe"``); generated or substitute data is
            never labelled as the official benchmark.
        class_names: optional names of the classes.
        pad_id: the padding token id (always ``0``).
        bytes_per_token: bytes of source text per token for byte-level text tasks (``1.0``:
            one token per UTF-8 byte), so a language-modelling loss in bits per token is
            bits per byte (``bpb = bits_per_token / bytes_per_token``); ``None`` where tokens
            are not text (images, generated symbols), where bits per byte means nothing.
    """

    name: str
    kind: TaskKind
    vocab_size: int
    max_length: int
    num_classes: int | None = None
    source: str = ""
    class_names: tuple[str, ...] | None = None
    pad_id: int = PAD_ID
    bytes_per_token: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class TokenDataset(Dataset):
    """Variable-length token sequences stored flat: ``tokens`` ``(T,)`` + ``offsets`` ``(n + 1,)``.

    Sequence ``i`` is ``tokens[offsets[i]:offsets[i + 1]]``. One flat tensor instead of
    ``n`` small ones keeps memory and cache files compact for 100k-sample splits.

    Args:
        tokens: ``(T,)`` integer tensor of all sequences concatenated.
        offsets: ``(n + 1,)`` int64, non-decreasing, ``offsets[0] = 0``, ``offsets[-1] = T``.
        labels: ``(n,)`` int64 class per sequence (classification), or ``None``.
        targets: ``(T,)`` int64 per-token labels aligned with ``tokens`` (``-100`` = not
            scored), or ``None``. With both ``labels`` and ``targets`` ``None`` the
            sequence is its own target (language modelling).
    """

    def __init__(self, tokens: Tensor, offsets: Tensor, labels: Tensor | None = None,
                 targets: Tensor | None = None):
        if tokens.dim() != 1 or offsets.dim() != 1 or offsets.numel() < 1:
            raise ValueError("TokenDataset: tokens must be (T,) and offsets (n + 1,)")
        if int(offsets[0]) != 0 or int(offsets[-1]) != tokens.numel():
            raise ValueError(
                f"TokenDataset: offsets must start at 0 and end at len(tokens)={tokens.numel()}, "
                f"got {int(offsets[0])}..{int(offsets[-1])}"
            )
        if offsets.numel() > 1 and bool((offsets[1:] < offsets[:-1]).any()):
            raise ValueError("TokenDataset: offsets must be non-decreasing")
        n = offsets.numel() - 1
        if labels is not None and tuple(labels.shape) != (n,):
            raise ValueError(f"TokenDataset: labels must have shape ({n},), got {tuple(labels.shape)}")
        if labels is not None and targets is not None:
            raise ValueError("TokenDataset: pass labels (per sequence) or targets (per token), not both")
        if targets is not None and tuple(targets.shape) != tuple(tokens.shape):
            raise ValueError(
                f"TokenDataset: targets must align with tokens {tuple(tokens.shape)}, got {tuple(targets.shape)}"
            )
        self.tokens = tokens
        self.offsets = offsets.to(torch.int64)
        self.labels = None if labels is None else labels.to(torch.int64)
        self.targets = None if targets is None else targets.to(torch.int64)

    @classmethod
    def from_sequences(cls, sequences: Sequence[Sequence[int]] | Sequence[Tensor],
                       labels: Sequence[int] | None = None,
                       targets: Sequence[Sequence[int]] | None = None,
                       dtype: torch.dtype = torch.int32) -> "TokenDataset":
        """Build from a list of sequences (lists, arrays or 1-D tensors)."""
        parts = [torch.as_tensor(s, dtype=dtype).reshape(-1) for s in sequences]
        lengths = torch.tensor([p.numel() for p in parts], dtype=torch.int64)
        offsets = torch.zeros(len(parts) + 1, dtype=torch.int64)
        offsets[1:] = torch.cumsum(lengths, 0)
        tokens = torch.cat(parts) if parts else torch.zeros(0, dtype=dtype)
        lab = None if labels is None else torch.as_tensor(list(labels), dtype=torch.int64)
        tgt = None
        if targets is not None:
            tparts = [torch.as_tensor(t, dtype=torch.int64).reshape(-1) for t in targets]
            tgt = torch.cat(tparts) if tparts else torch.zeros(0, dtype=torch.int64)
        return cls(tokens, offsets, lab, tgt)

    @property
    def is_classification(self) -> bool:
        return self.labels is not None

    def lengths(self) -> Tensor:
        """``(n,)`` int64 length of every sequence."""
        return self.offsets[1:] - self.offsets[:-1]

    def __len__(self) -> int:
        return self.offsets.numel() - 1

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for a dataset of {n} sequences")
        index %= n
        a, b = int(self.offsets[index]), int(self.offsets[index + 1])
        ids = self.tokens[a:b].to(torch.int64)
        if self.labels is not None:
            label = self.labels[index]
        elif self.targets is not None:
            label = self.targets[a:b]
        else:
            label = ids.clone()
        return {"input_ids": ids, "labels": label}

    def state(self) -> dict[str, Tensor | None]:
        return {"tokens": self.tokens, "offsets": self.offsets, "labels": self.labels, "targets": self.targets}


def pad_collate(batch: Sequence[dict[str, Tensor]], pad_id: int = PAD_ID, pad_to: int | None = None,
                pad_to_multiple_of: int | None = None) -> dict[str, Tensor]:
    """Right-pad a list of examples into a batch.

    Args:
        batch: examples from a :class:`TokenDataset`.
        pad_id: token id used for padding.
        pad_to: pad every batch to exactly this length (fixed-shape benchmarks); a longer
            example is an error, not a silent truncation.
        pad_to_multiple_of: round the batch length up to a multiple of this (e.g. ``2**L``
            for wavelet mixers).

    Returns:
        ``input_ids`` ``(B, N)`` int64, ``attention_mask`` ``(B, N)`` int64 (1 = real token),
        ``labels`` ``(B,)`` for classification or ``(B, N)`` with ``-100`` at padding.
    """
    if len(batch) == 0:
        raise ValueError("pad_collate: the batch is empty")
    longest = max(int(ex["input_ids"].numel()) for ex in batch)
    length = longest
    if pad_to is not None:
        if pad_to < longest:
            raise ValueError(
                f"pad_collate: an example has {longest} tokens, more than pad_to={pad_to}; "
                f"raise pad_to or truncate the task with max_length"
            )
        length = pad_to
    if pad_to_multiple_of is not None:
        if pad_to_multiple_of <= 0:
            raise ValueError(f"pad_collate: pad_to_multiple_of must be positive, got {pad_to_multiple_of}")
        length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
    bsz = len(batch)
    input_ids = torch.full((bsz, length), pad_id, dtype=torch.int64)
    attention_mask = torch.zeros((bsz, length), dtype=torch.int64)
    per_token = batch[0]["labels"].dim() == 1
    labels = (torch.full((bsz, length), IGNORE_INDEX, dtype=torch.int64) if per_token
              else torch.empty(bsz, dtype=torch.int64))
    for i, ex in enumerate(batch):
        n = ex["input_ids"].numel()
        input_ids[i, :n] = ex["input_ids"]
        attention_mask[i, :n] = 1
        if per_token:
            labels[i, :n] = ex["labels"]
        else:
            labels[i] = ex["labels"]
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def _stable_key(payload: dict[str, Any]) -> str:
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Task:
    """Base class of every task: named splits of token sequences plus a :class:`TaskInfo`.

    Subclasses set ``name``, build ``self.info`` in ``__init__`` and implement
    :meth:`_build_split`. The base class keeps built splits in memory and, when
    ``cache_dir`` is given, on disk under a key made of the task's name and its
    full configuration (:meth:`config`), so a changed option never reads a stale file.

    Generated tasks (``cache_by_default = True``: ListOps, MQAR, Pathfinder), whose
    generation takes minutes at full size, cache even without ``cache_dir``, under
    :func:`default_cache_dir`; ``cache_dir=False`` turns caching off. Their
    ``generator_version`` is part of the key: bump it when a generator's output changes.
    """

    name: ClassVar[str]
    splits: tuple[str, ...] = SPLITS
    info: TaskInfo
    cache_by_default: ClassVar[bool] = False
    generator_version: ClassVar[int] = 1

    def __init__(self, cache_dir: str | os.PathLike | bool | None = None):
        if cache_dir is None and self.cache_by_default:
            cache_dir = default_cache_dir()
        self.cache_dir = None if cache_dir in (None, False) else Path(cache_dir)
        self._built: dict[str, TokenDataset] = {}

    def config(self) -> dict[str, Any]:
        """Every option that changes the data (the cache key). Subclasses extend it."""
        return {}

    def _build_split(self, split: str) -> TokenDataset:  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def guess_baseline(cls, **options: Any) -> tuple[str, float] | None:
        """A score reachable without the skill the task tests, for the task built with ``options``.

        ``(name, accuracy)`` beside the majority-class baseline, or ``None`` (the default): a
        result not above it shows nothing of that skill (MQAR: answering one of the context's
        values at random). Reports compare each score with the larger of the two baselines.
        """
        return None

    def split_documents(self, split: str) -> list[str] | None:
        """Keys of the source documents that make up ``split`` (sorted, unique), or ``None``.

        Tasks whose examples come from documents (files, plays, rows) return them so
        :func:`wersa.tasks.describe` can check that no document is in two splits;
        generated tasks and image sets return ``None``.
        """
        return None

    def cache_path(self, split: str) -> Path | None:
        if self.cache_dir is None:
            return None
        payload = {"task": self.name, "split": split, "format": CACHE_FORMAT, **self.config()}
        if self.cache_by_default:
            payload["generator_version"] = self.generator_version
        key = _stable_key(payload)
        return self.cache_dir / f"{self.name}-{split}-{key}.pt"

    def split(self, split: str) -> TokenDataset:
        """The dataset of one split (``"train"``, ``"validation"`` or ``"test"``)."""
        if split not in self.splits:
            raise ValueError(f"{self.name}: unknown split {split!r}; available: {', '.join(self.splits)}")
        if split in self._built:
            return self._built[split]
        path = self.cache_path(split)
        if path is not None and path.exists():
            ds = TokenDataset(**torch.load(path, weights_only=True))
        else:
            ds = self._build_split(split)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(f".tmp{os.getpid()}")
                torch.save(ds.state(), tmp)
                os.replace(tmp, path)  # atomic: parallel benchmark cells never read half a file
        self._built[split] = ds
        return ds

    def collate(self, batch: Sequence[dict[str, Tensor]], pad_to: int | None = None,
                pad_to_multiple_of: int | None = None) -> dict[str, Tensor]:
        return pad_collate(batch, self.info.pad_id, pad_to, pad_to_multiple_of)

    def loader(self, split: str, batch_size: int, shuffle: bool | None = None, seed: int = 0,
               drop_last: bool = False, pad_to: int | None = None,
               pad_to_multiple_of: int | None = None, num_workers: int = 0) -> DataLoader:
        """A :class:`DataLoader` over ``split`` yielding padded batches (see :func:`pad_collate`).

        ``shuffle`` defaults to ``True`` for the train split only; shuffling is seeded.
        """
        if not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"{self.name}: batch_size must be a positive integer, got {batch_size!r}")
        ds = self.split(split)
        shuffle = (split == "train") if shuffle is None else shuffle
        generator = torch.Generator().manual_seed(seed)

        def collate(batch):
            return self.collate(batch, pad_to=pad_to, pad_to_multiple_of=pad_to_multiple_of)

        return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
                          collate_fn=collate, generator=generator, num_workers=num_workers)

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({opts})"


def check_positive_int(task: str, name: str, value: Any, minimum: int = 1) -> int:
    """Validate an integer option, naming the task and the option in the error."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{task}: {name} must be an integer >= {minimum}, got {value!r}")
    return value


def require_examples(task: str, split: str, ds: TokenDataset, where: str, hint: str) -> TokenDataset:
    """Return ``ds``, or raise a ``ValueError`` naming the source when the split came out empty.

    A file-backed split with no example is always a mistake (a wrong folder, an empty
    file, split fractions too small for the corpus); training on it would fail later
    with a far less helpful error.
    """
    if len(ds) == 0:
        raise ValueError(f"{task}: the {split} split is empty ({where}); {hint}")
    return ds


def split_seed(seed: int, split: str, index: int) -> str:
    """A per-example seed string: example ``i`` of a split is the same whatever the split size.

    ``random.Random`` hashes a string seed with SHA-512, so this is stable across runs
    and platforms, and examples can be generated in any order or in parallel.
    """
    return f"{seed}/{split}/{index}"

