import json

import pytest
import torch

from wersa.tasks import build_task
from wersa.tasks.text import decode_bytes, document_split, encode_bytes


def test_byte_round_trip():
    text = "def f(x):\n    return 'héllo' \u2603"
    ids = encode_bytes(text)
    assert ids.min() >= 1 and ids.max() <= 256
    assert decode_bytes(list(ids) + [0, 0]) == text


def test_document_split_is_stable_and_roughly_proportional():
    assert document_split("a/b.py") == document_split("a/b.py")
    counts = {"train": 0, "validation": 0, "test": 0}
    for i in range(2000):
        counts[document_split(f"doc{i}")] += 1
    assert 1500 < counts["train"] < 1700 and 120 < counts["test"] < 280


def test_stdlib_families_splits_by_file(tmp_path):
    for pkg, n in (("alpha", 5), ("beta", 6), ("tiny", 1)):
        (tmp_path / pkg).mkdir()
        for i in range(n):
            (tmp_path / pkg / f"m{i}.py").write_text(f"# {pkg} {i}\n" + "x = 1\n" * (50 * i))
    (tmp_path / "top.py").write_text("pass\n")
    task = build_task("stdlib_families", root=tmp_path, min_documents=3, max_length=100,
                      split_fractions=(0.5, 0.25, 0.25))
    assert task.info.class_names == ("alpha", "beta")
    seen = []
    for split in ("train", "validation", "test"):
        ds = task.split(split)
        assert all(int(n) <= 100 for n in ds.lengths())
        seen += [decode_bytes(ds[i]["input_ids"]).splitlines()[0] for i in range(len(ds))]
    assert sorted(seen) == sorted(f"# {p} {i}" for p, n in (("alpha", 5), ("beta", 6)) for i in range(n))


def test_stdlib_families_on_the_real_standard_library():
    task = build_task("stdlib_families", max_length=256)
    assert task.info.num_classes >= 5
    assert len(task.split("test")) > 20


def _write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return str(path)


def test_hf_text_local_json_with_carved_validation(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    train = [{"text": f"document {i} " * (i + 1), "label": i % 3} for i in range(40)]
    test = [{"text": "é" * 50, "label": 2}]
    files = {"train": _write_jsonl(tmp_path / "train.jsonl", train),
             "test": _write_jsonl(tmp_path / "test.jsonl", test)}
    task = build_task("hf_text", path="json", data_files=files, num_classes=3, max_length=64)
    tr, va, te = (task.split(s) for s in ("train", "validation", "test"))
    assert len(tr) + len(va) == 40 and len(va) > 0 and len(te) == 1
    assert int(te.lengths()[0]) == 64 and decode_bytes(te[0]["input_ids"]) == "é" * 32
    with pytest.raises(ValueError, match="no column 'body'"):
        build_task("hf_text", path="json", data_files=files, num_classes=3, text_field="body").split("test")
    bad = {"train": _write_jsonl(tmp_path / "bad.jsonl", [{"text": "x", "label": 7}])}
    with pytest.raises(ValueError, match="label 7"):
        build_task("hf_text", path="json", data_files=bad, num_classes=3).split("train")


def test_arxiv_preset_reads_its_schema_from_local_files(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    rows = [{"text": "We prove a theorem. " * 40, "label": i % 11} for i in range(22)]
    files = {s: _write_jsonl(tmp_path / f"{s}.jsonl", rows) for s in ("train", "validation", "test")}
    task = build_task("arxiv", path="json", data_files=files, max_length=512)
    assert task.info.num_classes == 11 and len(task.split("validation")) == 22
    assert task.split("test").lengths().max() == 512


def test_bytes_lm_windows_split_by_file(tmp_path):
    for i in range(30):
        (tmp_path / f"f{i}.txt").write_text(f"file {i}\n" * 40)
    # 30 files: give each held-out split a share large enough to hold some of them
    task = build_task("bytes_lm", paths=[tmp_path], glob="*.txt", seq_len=32, split_fractions=(0.6, 0.2, 0.2))
    total = 0
    for split in ("train", "validation", "test"):
        ds = task.split(split)
        total += ds.tokens.numel()
        if len(ds):
            ex = ds[0]
            assert ex["input_ids"].numel() == 32 and torch.equal(ex["labels"], ex["input_ids"])
    assert total > 0.8 * 30 * 320
    with pytest.raises(ValueError, match="not both"):
        build_task("bytes_lm", paths=[tmp_path], hf_path="wikitext")
    with pytest.raises(FileNotFoundError):
        build_task("bytes_lm", paths=[tmp_path / "nope"]).split("train")


def test_bytes_lm_from_a_local_text_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    (tmp_path / "wiki.txt").write_text("\n".join(f"line number {i} of the corpus" for i in range(400)))
    task = build_task("bytes_lm", hf_path="text", data_files={"train": str(tmp_path / "wiki.txt")}, seq_len=64)
    assert len(task.split("train")) > 100


def test_stdlib_families_long_keeps_only_long_files(tmp_path):
    for pkg in ("alpha", "beta"):
        (tmp_path / pkg).mkdir()
        for i in range(6):
            size = 3000 if i % 2 else 100  # half the files are long
            (tmp_path / pkg / f"m{i}.py").write_text(f"# {pkg} {i}\n" + "x" * size)
    task = build_task("stdlib_families_long", root=tmp_path, min_bytes=2000, max_length=2048, min_documents=3,
                      split_fractions=(0.34, 0.33, 0.33))
    lengths = [int(n) for s in ("train", "validation", "test") for n in task.split(s).lengths()]
    assert len(lengths) == 6 and all(n == 2048 for n in lengths)  # only the 3000-byte files, truncated
    docs = [set(task.split_documents(s)) for s in ("train", "validation", "test")]
    assert not (docs[0] & docs[1]) and not (docs[0] & docs[2]) and len(set.union(*docs)) == 6


def test_stdlib_families_long_on_the_real_standard_library():
    task = build_task("stdlib_families_long")
    assert task.info.max_length == 16384 and task.info.num_classes >= 5
    assert all(p.stat().st_size >= 16384 for p, _ in task.documents)


def test_byte_level_tasks_expose_bytes_per_token_for_bits_per_byte(tmp_path):
    """Bits per byte = LM loss / ln 2 / bytes_per_token: every byte-level task says 1 byte per token."""
    (tmp_path / "a.txt").write_text("héllo wörld\n" * 50)
    lm = build_task("bytes_lm", paths=[tmp_path], glob="*.txt", seq_len=16, split_fractions=(1.0, 0.0, 0.0))
    assert lm.info.bytes_per_token == 1.0 and lm.info.vocab_size == 257
    ds = lm.split("train")
    # every byte of the text is one token, so the token count is the UTF-8 byte count (+ a newline per file)
    assert ds.tokens.numel() == (len(("héllo wörld\n" * 50).encode()) + 1) // 16 * 16
    assert decode_bytes(ds.tokens.tolist()).startswith("héllo wörld")
    assert build_task("listops", num_train=1).info.bytes_per_token is None
    assert build_task("mqar", num_train=1, num_validation=1, num_test=1).info.bytes_per_token is None
