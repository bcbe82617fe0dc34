"""Byte-level text: document classification and language modelling.

Text is UTF-8 encoded and every byte ``b`` becomes token ``b + 1`` (id 0 is padding),
so the vocabulary has 257 ids and nothing needs a trained tokenizer. Splits are
made *by document*, from a hash of a document key (its path or row number), so no
document is in two splits and a split does not change when documents are added.

Tasks:

* ``stdlib_families``: long-document classification on Python's standard library
  sources (present on every machine); label = the top-level package a file belongs to.
  ``stdlib_families_long`` keeps only files of at least 16 kB, so its 16,384-byte
  documents are real text, not padding.
* ``hf_text``: any Hugging Face text-classification dataset (``text``/``label``
  columns), or local json/parquet/csv files in that schema; presets ``arxiv``
  (``ccdv/arxiv-classification``, 11 classes; ``max_length=131072`` gives
  "ArXiv-128k") and ``imdb`` (LRA "Text" is IMDB at 4k bytes).
* ``bytes_lm``: byte-level language modelling on local text files (default: the
  standard library sources) or a Hugging Face text dataset (WikiText, enwik8),
  cut into windows of ``seq_len`` bytes.
"""

from __future__ import annotations

import hashlib
import os
import sysconfig
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from .base import Task, TaskInfo, TokenDataset, check_positive_int, require_examples
from .registry import register_task

BYTE_VOCAB_SIZE = 257  # 256 byte values + padding
BYTES_PER_TOKEN = 1.0  # one token per UTF-8 byte: bits per token = bits per byte


def encode_bytes(text: str | bytes) -> np.ndarray:
    """UTF-8 bytes of ``text`` as token ids ``byte + 1``: ``(n,)`` int16."""
    data = text.encode("utf-8", errors="replace") if isinstance(text, str) else bytes(text)
    return np.frombuffer(data, dtype=np.uint8).astype(np.int16) + 1


def decode_bytes(ids: Iterable[int]) -> str:
    """Inverse of :func:`encode_bytes`; padding (0) is dropped."""
    return bytes(int(i) - 1 for i in ids if int(i) != 0).decode("utf-8", errors="replace")


def document_split(key: str, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> str:
    """The split of a document, from a hash of its key: ``"train"``, ``"validation"`` or ``"test"``."""
    u = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2 ** 64
    if u < fractions[0]:
        return "train"
    return "validation" if u < fractions[0] + fractions[1] else "test"


def _check_fractions(task: str, fractions: Any) -> tuple[float, float, float]:
    if (not isinstance(fractions, (tuple, list)) or len(fractions) != 3
            or any(not isinstance(f, (int, float)) or f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-9):
        raise ValueError(f"{task}: split_fractions must be three non-negative numbers summing to 1, got {fractions!r}")
    return tuple(float(f) for f in fractions)  # type: ignore[return-value]


def stdlib_files(root: str | os.PathLike | None = None) -> list[Path]:
    """Every ``.py`` file of the standard library (``site-packages`` excluded), sorted."""
    root = Path(root or sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder; pass root= a folder of .py files "
                                f"(default: this interpreter's standard library)")
    return sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts and p.is_file())


@register_task
class StdlibFamiliesTask(Task):
    """Classify a Python source file by the standard-library package it belongs to.

    Documents are the ``.py`` files under the standard library's sub-packages (``email``,
    ``asyncio``, ``test``, ...); packages with fewer than ``min_documents`` files are
    left out; each file is truncated to ``max_length`` bytes (the loader right-pads
    shorter ones). With ``min_bytes`` only files at least that long are documents, so
    long-document settings (16k tokens) hold real text rather than padding.

    Args:
        max_length: bytes kept per document (the sequence length).
        min_documents: smallest package kept as a class (counted after ``min_bytes``).
        split_fractions: train/validation/test shares (by file).
        root: the library folder (default: this interpreter's standard library).
        min_bytes: shortest file kept (``0``: every file).
    """

    name = "stdlib_families"

    def __init__(self, max_length: int = 4096, min_documents: int = 20,
                 split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
                 root: str | os.PathLike | None = None, min_bytes: int = 0,
                 cache_dir: str | os.PathLike | None = None):
        super().__init__(cache_dir)
        check_positive_int(self.name, "max_length", max_length)
        check_positive_int(self.name, "min_documents", min_documents)
        check_positive_int(self.name, "min_bytes", min_bytes, 0)
        self.max_length, self.min_documents, self.min_bytes = max_length, min_documents, min_bytes
        self.fractions = _check_fractions(self.name, split_fractions)
        self.root = Path(root or sysconfig.get_paths()["stdlib"])
        by_family: dict[str, list[Path]] = {}
        for path in stdlib_files(self.root):
            rel = path.relative_to(self.root)
            # Top-level modules belong to no package; empty files (bare __init__.py) are
            # identical across packages and carry no label, so they are left out; short
            # files are left out on request.
            if len(rel.parts) > 1 and path.stat().st_size >= max(1, min_bytes):
                by_family.setdefault(rel.parts[0], []).append(path)
        self.families = tuple(sorted(f for f, files in by_family.items() if len(files) >= min_documents))
        if len(self.families) < 2:
            raise ValueError(f"{self.name}: fewer than 2 packages with >= {min_documents} files of >= {min_bytes} "
                             f"bytes under {self.root}; lower min_documents or min_bytes")
        self.documents = [(p, i) for i, f in enumerate(self.families) for p in by_family[f]]
        self.info = TaskInfo(name=self.name, kind="classification", vocab_size=BYTE_VOCAB_SIZE,
                             max_length=max_length, num_classes=len(self.families), class_names=self.families,
                             source="Python standard library sources, byte-level, split by file"
                             + (f", files >= {min_bytes} bytes" if min_bytes else ""),
                             bytes_per_token=BYTES_PER_TOKEN)

    def config(self) -> dict[str, Any]:
        cfg = {"max_length": self.max_length, "min_documents": self.min_documents,
               "fractions": self.fractions, "root": str(self.root), "skip_empty": True}
        if self.min_bytes:  # only when set, so existing cache keys stay valid
            cfg["min_bytes"] = self.min_bytes
        return cfg

    def _split_files(self, split: str) -> list[tuple[Path, int]]:
        return [(path, label) for path, label in self.documents
                if document_split(str(path.relative_to(self.root)), self.fractions) == split]

    def split_documents(self, split: str) -> list[str]:
        return sorted(str(path.relative_to(self.root)) for path, _ in self._split_files(split))

    def _build_split(self, split: str) -> TokenDataset:
        seqs, labels = [], []
        for path, label in self._split_files(split):
            seqs.append(encode_bytes(path.read_bytes())[: self.max_length])
            labels.append(label)
        ds = TokenDataset.from_sequences(seqs, labels, dtype=torch.int16)
        return require_examples(self.name, split, ds, f"{len(self.documents)} files under {self.root}",
                                "raise that split's share in split_fractions or lower min_documents/min_bytes")


@register_task
class StdlibFamiliesLongTask(StdlibFamiliesTask):
    """``stdlib_families`` for long documents: only files of at least 16 kB, 16,384 bytes each.

    With Python 3.12's library this leaves about 350 files in 9 packages (``test``
    dominates: about 240 files), so report macro scores next to accuracy.
    """

    name = "stdlib_families_long"

    def __init__(self, max_length: int = 16384, min_documents: int = 8,
                 split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
                 root: str | os.PathLike | None = None, min_bytes: int = 16384,
                 cache_dir: str | os.PathLike | None = None):
        super().__init__(max_length, min_documents, split_fractions, root, min_bytes, cache_dir)


def _local_files(data_files: Any) -> list[str]:
    """The file names inside a ``data_files`` argument (a string, a list or a split -> files dict)."""
    if data_files is None:
        return []
    if isinstance(data_files, (str, os.PathLike)):
        return [str(data_files)]
    if isinstance(data_files, dict):
        return [f for v in data_files.values() for f in _local_files(v)]
    return [str(f) for f in data_files]


def _check_local_files(task: str, data_files: Any) -> None:
    for f in _local_files(data_files):
        if "://" not in f and not any(c in f for c in "*?[") and not Path(f).exists():
            raise FileNotFoundError(f"{task}: data file {f} does not exist; fix the path in data_files=")


def _load_hf(path: str, name: str | None, data_files: Any, split: str, task: str = "hf_text"):
    """``datasets.load_dataset``, with read failures turned into errors that name the files."""
    import datasets

    _check_local_files(task, data_files)
    try:
        return datasets.load_dataset(path, name, data_files=data_files, split=split)
    except FileNotFoundError:
        raise
    except Exception as exc:  # datasets wraps parser errors in its own exception types
        files = data_files.get(split, data_files) if isinstance(data_files, dict) else data_files
        where = ", ".join(_local_files(files)) or repr(path)
        if "corresponds to no data" in str(exc):
            raise ValueError(f"{task}: the {split} split is empty (no rows in {where}); fill the file or "
                             f"leave the split out of data_files") from exc
        raise ValueError(
            f"{task}: could not read the {split!r} split of {where} with datasets.load_dataset({path!r}): "
            f"{type(exc).__name__}: {exc}. Check that the file is valid {path} (one JSON object per line "
            f"for json) and not truncated, or for a hub dataset that it is in the local cache "
            f"(HF_DATASETS_OFFLINE=1 reads only the cache)"
        ) from exc


def _available_splits(path: str, name: str | None, data_files: Any) -> list[str]:
    if isinstance(data_files, dict):
        return list(data_files)
    if data_files is not None:
        return ["train"]
    import datasets

    try:
        return list(datasets.get_dataset_split_names(path, name))
    except Exception as exc:
        raise ValueError(f"could not list the splits of the Hugging Face dataset {path!r} ({type(exc).__name__}: "
                         f"{exc}); download it once with network access, or pass data_files= local files") from exc


@register_task
class HFTextClassificationTask(Task):
    """Byte-level classification of a Hugging Face text dataset (or local files in that schema).

    Splits named ``train`` / ``validation`` / ``test`` are used as they are; a missing
    validation split is carved out of train by a hash of the row number.

    Args:
        path, name, data_files: passed to ``datasets.load_dataset``; local files work offline,
            e.g. ``path="json", data_files={"train": "train.jsonl", "test": "test.jsonl"}``.
        text_field, label_field: column names.
        num_classes: classes (read from a ``ClassLabel`` column when ``None``).
        max_length: bytes kept per document.
        validation_fraction: share of train used for validation when there is no validation split.
    """

    name = "hf_text"
    default_path = "imdb"

    def __init__(self, path: str | None = None, name: str | None = None, data_files: Any = None,
                 text_field: str = "text", label_field: str = "label", num_classes: int | None = None,
                 max_length: int = 4096, validation_fraction: float = 0.1,
                 cache_dir: str | os.PathLike | None = None):
        super().__init__(cache_dir)
        check_positive_int(self.name, "max_length", max_length)
        if not 0 <= validation_fraction < 1:
            raise ValueError(f"{self.name}: validation_fraction must be in [0, 1), got {validation_fraction!r}")
        self.path = path or self.default_path
        self.hf_name, self.data_files = name, data_files
        self.text_field, self.label_field = text_field, label_field
        self.max_length, self.validation_fraction = max_length, float(validation_fraction)
        _check_local_files(self.name, data_files)  # a wrong path fails here, not at the first batch
        self.source_splits = _available_splits(self.path, name, data_files)
        if "train" not in self.source_splits:
            raise ValueError(f"{self.name}: {self.path!r} has no train split (found {self.source_splits})")
        if num_classes is None:
            feature = _load_hf(self.path, name, data_files, "train", self.name).features.get(label_field)
            names = getattr(feature, "names", None)
            if names is None:
                raise ValueError(f"{self.name}: the label column {label_field!r} of {self.path!r} is not a "
                                 f"ClassLabel; pass num_classes=")
            class_names: tuple[str, ...] | None = tuple(names)
            num_classes = len(names)
        else:
            check_positive_int(self.name, "num_classes", num_classes, 2)
            class_names = None
        self.info = TaskInfo(name=self.name, kind="classification", vocab_size=BYTE_VOCAB_SIZE,
                             max_length=max_length, num_classes=num_classes, class_names=class_names,
                             source=f"{self.path} (Hugging Face datasets), byte-level, first {max_length} bytes",
                             bytes_per_token=BYTES_PER_TOKEN)

    def config(self) -> dict[str, Any]:
        return {"path": self.path, "name": self.hf_name, "data_files": self.data_files,
                "text_field": self.text_field, "label_field": self.label_field,
                "max_length": self.max_length, "validation_fraction": self.validation_fraction}

    def _build_split(self, split: str) -> TokenDataset:
        carve = split in ("train", "validation") and "validation" not in self.source_splits
        if split not in self.source_splits and not carve:
            raise ValueError(f"{self.name}: {self.path!r} has no {split!r} split (found {self.source_splits})")
        source_split = "train" if carve else split
        ds = _load_hf(self.path, self.hf_name, self.data_files, source_split, self.name)
        where = (", ".join(_local_files(self.data_files[source_split])) if isinstance(self.data_files, dict)
                 else ", ".join(_local_files(self.data_files)) or self.path)
        for col in (self.text_field, self.label_field):
            if col not in ds.column_names:
                raise ValueError(f"{self.name}: {self.path!r} has no column {col!r}; columns: {ds.column_names}")
        fractions = (1 - self.validation_fraction, self.validation_fraction, 0.0)
        seqs, labels = [], []
        for i, (text, label) in enumerate(zip(ds[self.text_field], ds[self.label_field])):
            if carve and document_split(f"row{i}", fractions) != split:
                continue
            if label is None or not 0 <= int(label) < self.info.num_classes:
                raise ValueError(f"{self.name}: row {i} of {where} has label {label}, outside "
                                 f"0..{self.info.num_classes - 1}; fix the file or pass num_classes=")
            if not isinstance(text, str):
                raise ValueError(f"{self.name}: row {i} of {where} has {self.text_field}={text!r}, not a string")
            seqs.append(encode_bytes(text)[: self.max_length])
            labels.append(int(label))
        ds_out = TokenDataset.from_sequences(seqs, labels, dtype=torch.int16)
        return require_examples(self.name, split, ds_out, f"no rows in {where}",
                                "check the file, or lower/raise validation_fraction")


@register_task
class ArxivTask(HFTextClassificationTask):
    """ArXiv long-document classification (``ccdv/arxiv-classification``: 11 classes).

    ``max_length=131072`` gives the "ArXiv-128k" setting.
    """

    name = "arxiv"
    default_path = "ccdv/arxiv-classification"

    def __init__(self, path: str | None = None, name: str | None = None, data_files: Any = None,
                 text_field: str = "text", label_field: str = "label", num_classes: int | None = 11,
                 max_length: int = 16384, validation_fraction: float = 0.1,
                 cache_dir: str | os.PathLike | None = None):
        super().__init__(path, name, data_files, text_field, label_field, num_classes, max_length,
                         validation_fraction, cache_dir)


@register_task
class ImdbTask(HFTextClassificationTask):
    """IMDB sentiment at the byte level (LRA "Text": 4,096 bytes, 2 classes)."""

    name = "imdb"
    default_path = "imdb"

    def __init__(self, path: str | None = None, name: str | None = None, data_files: Any = None,
                 text_field: str = "text", label_field: str = "label", num_classes: int | None = 2,
                 max_length: int = 4096, validation_fraction: float = 0.1,
                 cache_dir: str | os.PathLike | None = None):
        super().__init__(path, name, data_files, text_field, label_field, num_classes, max_length,
                         validation_fraction, cache_dir)


@register_task
class ByteLMTask(Task):
    """Byte-level language modelling in non-overlapping windows of ``seq_len`` bytes.

    Documents are assigned to splits by a hash of their key (file path or row number);
    each split's documents are concatenated (a newline between documents) and cut
    into windows; a last partial window is dropped so every example has ``seq_len`` tokens.

    Args:
        seq_len: tokens per example.
        paths: text files or folders (searched for ``glob``); default: the standard library.
        glob: file pattern inside folders.
        hf_path, hf_name, data_files, text_field: a Hugging Face text dataset instead of files
            (its train split is re-split by row; e.g. ``hf_path="wikitext",
            hf_name="wikitext-103-raw-v1"``).
        max_bytes: stop reading after this many bytes in total (``None``: everything).
        split_fractions: train/validation/test shares (by document).
    """

    name = "bytes_lm"

    def __init__(self, seq_len: int = 1024, paths: list[str | os.PathLike] | str | None = None, glob: str = "*.py",
                 hf_path: str | None = None, hf_name: str | None = None, data_files: Any = None,
                 text_field: str = "text", max_bytes: int | None = None,
                 split_fractions: tuple[float, float, float] = (0.9, 0.05, 0.05),
                 cache_dir: str | os.PathLike | None = None):
        super().__init__(cache_dir)
        check_positive_int(self.name, "seq_len", seq_len)
        if max_bytes is not None:
            check_positive_int(self.name, "max_bytes", max_bytes)
        if hf_path is not None and paths is not None:
            raise ValueError("bytes_lm: pass either paths (local files) or hf_path (a Hugging Face dataset), not both")
        if hf_path is None and (hf_name is not None or data_files is not None):
            raise ValueError("bytes_lm: hf_name and data_files need hf_path")
        self.seq_len, self.glob, self.max_bytes = seq_len, glob, max_bytes
        self.hf = None if hf_path is None else {"path": hf_path, "name": hf_name, "data_files": data_files,
                                                "text_field": text_field}
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        self.paths = None if paths is None else [Path(p) for p in paths]
        self.fractions = _check_fractions(self.name, split_fractions)
        if self.hf is not None:
            source = f"{hf_path} (Hugging Face datasets), byte-level"
        elif self.paths is None:
            source = "Python standard library sources, byte-level, split by file"
        else:
            source = "local text files, byte-level, split by file"
        self.info = TaskInfo(name=self.name, kind="language_modeling", vocab_size=BYTE_VOCAB_SIZE,
                             max_length=seq_len, source=source, bytes_per_token=BYTES_PER_TOKEN)

    def config(self) -> dict[str, Any]:
        return {"seq_len": self.seq_len, "glob": self.glob, "max_bytes": self.max_bytes, "hf": self.hf,
                "paths": None if self.paths is None else [str(p.resolve()) for p in self.paths],
                "fractions": self.fractions}

    def _files(self) -> list[Path]:
        if self.paths is None:
            return stdlib_files()
        files: list[Path] = []
        for p in self.paths:
            if p.is_dir():
                files += sorted(q for q in p.rglob(self.glob) if q.is_file())
            elif p.is_file():
                files.append(p)
            else:
                raise FileNotFoundError(f"bytes_lm: {p} is neither a file nor a folder")
        if not files:
            raise ValueError(f"bytes_lm: no files matching {self.glob!r} in {[str(p) for p in self.paths]}")
        return files

    def documents(self) -> Iterable[tuple[str, bytes]]:
        """``(key, bytes)`` for every document of the corpus, in a fixed order."""
        if self.hf is not None:
            ds = _load_hf(self.hf["path"], self.hf["name"], self.hf["data_files"], "train", self.name)
            field = self.hf["text_field"]
            if field not in ds.column_names:
                raise ValueError(f"bytes_lm: {self.hf['path']!r} has no column {field!r}; columns: {ds.column_names}")
            for i, text in enumerate(ds[field]):
                yield f"row{i}", text.encode("utf-8", errors="replace")
        else:
            roots = [p for p in self.paths if p.is_dir()] if self.paths else []
            stdlib = Path(sysconfig.get_paths()["stdlib"])
            for path in self._files():
                yield self._relative_key(path, roots or [stdlib]), path.read_bytes()

    @staticmethod
    def _relative_key(path: Path, roots: list[Path]) -> str:
        """A file's key relative to the folder it was found in, so the same corpus splits
        the same way wherever it lies on disk."""
        for root in roots:
            try:
                return str(path.relative_to(root))
            except ValueError:
                continue
        return path.name

    def document_key(self, key: str) -> str:
        """The key that decides a document's split (subclasses group editions of one work)."""
        return key

    def _split_documents(self, split: str) -> Iterable[tuple[str, bytes]]:
        total = 0
        for key, data in self.documents():
            if self.max_bytes is not None and total >= self.max_bytes:
                break
            total += len(data)
            if document_split(self.document_key(key), self.fractions) == split:
                yield key, data

    def split_documents(self, split: str) -> list[str]:
        return sorted({self.document_key(key) for key, _ in self._split_documents(split)})

    def _build_split(self, split: str) -> TokenDataset:
        # A newline between documents, as a reader would see them; every byte of the
        # split's documents is a token, so the loss per token is the loss per byte.
        parts = [encode_bytes(data + b"\n") for _, data in self._split_documents(split)]
        stream = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int16)
        n = len(stream) // self.seq_len
        tokens = torch.from_numpy(stream[: n * self.seq_len].copy())
        offsets = torch.arange(n + 1, dtype=torch.int64) * self.seq_len
        return require_examples(self.name, split, TokenDataset(tokens, offsets),
                                f"{len(parts)} documents, {len(stream)} bytes, windows of {self.seq_len}",
                                "add text, lower seq_len or raise that split's share in split_fractions")



def line_signatures(documents: list[bytes], common_fraction: float = 0.05) -> list[set[bytes]]:
    """Each document's set of distinct stripped non-empty lines, without lines common to more than
    ``common_fraction`` of the documents (``else:``, ``pass``, licence headers: shared by unrelated files)."""
    sets = [{ln.strip() for ln in doc.splitlines() if ln.strip()} for doc in documents]
    counts: dict[bytes, int] = {}
    for s in sets:
        for ln in s:
            counts[ln] = counts.get(ln, 0) + 1
    limit = max(1.0, common_fraction * len(documents))
    return [{ln for ln in s if counts[ln] <= limit} for s in sets]


def drop_near_duplicates(signatures: list[set[bytes]], threshold: float = 0.5) -> list[int]:
    """Indices kept by a greedy pass in the given order: a document is dropped when it shares at least
    ``threshold`` of its lines with a kept one, or a kept one shares that much of its lines with it.

    Put the train documents first: a validation or test document that overlaps a train one is
    then the one dropped, and a template family (files generated from one template) keeps one member.
    A document with no distinctive line is dropped too (nothing tells it apart).
    """
    postings: dict[bytes, list[int]] = {}
    kept: list[int] = []
    for i, sig in enumerate(signatures):
        if not sig:
            continue
        shared: dict[int, int] = {}
        for ln in sig:
            for j in postings.get(ln, ()):
                shared[j] = shared.get(j, 0) + 1
        if any(n >= threshold * len(sig) or n >= threshold * len(signatures[j]) for j, n in shared.items()):
            continue
        kept.append(i)
        for ln in sig:
            postings.setdefault(ln, []).append(i)
    return kept


@register_task
class StdlibTextTask(Task):
    """Balanced byte-level classification of standard-library code: which package is a window from?

    The study's text task (LRA "Text"-like lengths, 2k-4k bytes, on data every machine has).
    Documents are the ``.py`` files of at least ``max_length`` bytes under the
    ``num_classes`` largest packages; they are assigned to splits by a hash of their path;
    near-duplicates are removed (:func:`drop_near_duplicates`, train documents first, so
    no validation or test document shares half its lines with a train document and each
    template family keeps one file); each file gives up to ``windows_per_document``
    disjoint windows of ``max_length`` bytes; every class is then cut to the size of the
    smallest one in each split (a seeded draw), so classes are balanced and chance is
    ``1 / num_classes``. The packages depend on the interpreter's version (recorded in
    ``source``).

    Args:
        max_length: bytes per example (2048-4096 for the study).
        num_classes: how many of the largest packages are classes.
        windows_per_document: windows taken from each file (from its start).
        split_fractions: train/validation/test shares (by file).
        dedupe: remove near-duplicate files (``False`` only to measure what it removes).
        threshold: shared-line fraction that makes two files near-duplicates.
        root: the library folder (default: this interpreter's standard library).
        seed: the balancing draw.
    """

    name = "stdlib_text"

    def __init__(self, max_length: int = 2048, num_classes: int = 4, windows_per_document: int = 8,
                 split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2), dedupe: bool = True,
                 threshold: float = 0.5, root: str | os.PathLike | None = None, seed: int = 0,
                 cache_dir: str | os.PathLike | None = None):
        super().__init__(cache_dir)
        check_positive_int(self.name, "max_length", max_length)
        check_positive_int(self.name, "num_classes", num_classes, 2)
        check_positive_int(self.name, "windows_per_document", windows_per_document)
        if not 0 < threshold <= 1:
            raise ValueError(f"{self.name}: threshold must be in (0, 1], got {threshold!r}")
        self.max_length, self.windows_per_document = max_length, windows_per_document
        self.fractions = _check_fractions(self.name, split_fractions)
        self.dedupe, self.threshold, self.seed = bool(dedupe), float(threshold), seed
        self.root = Path(root or sysconfig.get_paths()["stdlib"])
        files = []
        for path in stdlib_files(self.root):
            rel = path.relative_to(self.root)
            if len(rel.parts) > 1 and path.stat().st_size >= max_length:
                files.append((str(rel), rel.parts[0], document_split(str(rel), self.fractions)))
        order = {"train": 0, "validation": 1, "test": 2}
        files.sort(key=lambda f: (order[f[2]], f[0]))  # train first: overlapping held-out files are dropped
        self.dropped: list[str] = []
        if self.dedupe:
            keep = set(drop_near_duplicates(line_signatures([(self.root / f[0]).read_bytes() for f in files]),
                                            self.threshold))
            self.dropped = [f[0] for i, f in enumerate(files) if i not in keep]
            files = [f for i, f in enumerate(files) if i in keep]
        sizes: dict[str, int] = {}
        for _, family, _ in files:
            sizes[family] = sizes.get(family, 0) + 1
        self.families = tuple(sorted(sorted(sizes, key=lambda f: (-sizes[f], f))[:num_classes]))
        if len(self.families) < num_classes:
            raise ValueError(f"{self.name}: only {len(self.families)} packages have files of >= {max_length} bytes "
                             f"under {self.root}; lower num_classes or max_length")
        self.documents = [(rel, self.families.index(fam), split) for rel, fam, split in files
                          if fam in self.families]
        import sys

        self.info = TaskInfo(
            name=self.name, kind="classification", vocab_size=BYTE_VOCAB_SIZE, max_length=max_length,
            num_classes=num_classes, class_names=self.families, bytes_per_token=BYTES_PER_TOKEN,
            source=f"Python {sys.version_info.major}.{sys.version_info.minor} standard library sources, byte-level "
                   f"{max_length}-byte windows, split by file, near-duplicates removed, classes balanced")

    def config(self) -> dict[str, Any]:
        return {"max_length": self.max_length, "classes": self.families, "windows": self.windows_per_document,
                "fractions": self.fractions, "dedupe": self.dedupe, "threshold": self.threshold,
                "root": str(self.root), "seed": self.seed}

    def split_documents(self, split: str) -> list[str]:
        return sorted(rel for rel, _, s in self.documents if s == split)

    def _build_split(self, split: str) -> TokenDataset:
        per_class: list[list[np.ndarray]] = [[] for _ in self.families]
        for rel, label, s in self.documents:
            if s != split:
                continue
            data = (self.root / rel).read_bytes()
            for w in range(min(self.windows_per_document, len(data) // self.max_length)):
                per_class[label].append(encode_bytes(data[w * self.max_length:(w + 1) * self.max_length]))
        n = min(len(c) for c in per_class)
        rng = np.random.default_rng([self.seed, ("train", "validation", "test").index(split)])
        seqs, labels = [], []
        for label, windows in enumerate(per_class):
            for i in sorted(rng.permutation(len(windows))[:n]):
                seqs.append(windows[i])
                labels.append(label)
        ds = TokenDataset.from_sequences(seqs, labels, dtype=torch.int16)
        return require_examples(self.name, split, ds, f"{len(self.documents)} files under {self.root}",
                                "raise that split's share in split_fractions or lower max_length")
