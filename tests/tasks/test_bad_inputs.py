"""The catalogue of bad inputs: each gives a clear error naming the file or option and what to do."""

import gzip
import json
import struct

import numpy as np
import pytest

from wersa.tasks import build_task
from wersa.tasks.images import read_idx


def _write_idx(path, array, compress=True):
    data = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + \
        array.astype(np.uint8).tobytes()
    if compress:
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def _fashion(tmp_path, labels=None):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 12), ("t10k", 4)):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        lab = rng.integers(0, 10, (n,)) if labels is None else np.asarray(labels[prefix])
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", lab)
    return tmp_path


# ---------------------------------------------------------------- missing data paths
def test_missing_paths(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match=r"t10k-images-idx3-ubyte.*apt-get install -y dataset-fashion-mnist"):
        build_task("fashion_mnist", data_dir=tmp_path / "nope").split("test")
    monkeypatch.setenv("WERSA_FASHION_MNIST_DIR", str(tmp_path / "env-dir"))
    with pytest.raises(FileNotFoundError, match="env-dir"):
        build_task("fashion_mnist").split("test")
    with pytest.raises(FileNotFoundError, match=r"nope: no such folder.*root="):
        build_task("stdlib_families", root=tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=r"missing.jsonl does not exist"):
        build_task("hf_text", path="json", data_files={"train": str(tmp_path / "missing.jsonl")}, num_classes=2)
    with pytest.raises(FileNotFoundError, match="neither a file nor a folder"):
        build_task("bytes_lm", paths=[tmp_path / "nope"]).split("train")
    with pytest.raises(FileNotFoundError, match="WERSA_SHAKESPEARE_DIR"):
        build_task("shakespeare_genre", data_dir=tmp_path / "nope")


# ---------------------------------------------------------------- corrupt files
def test_corrupt_idx_files(tmp_path):
    good = _write_idx(tmp_path / "a.gz", np.zeros((5, 28, 28)))
    (tmp_path / "truncated.gz").write_bytes(good.read_bytes()[:-20])
    with pytest.raises(ValueError, match=r"truncated.gz: corrupt or truncated gzip.*reinstall"):
        read_idx(tmp_path / "truncated.gz")
    (tmp_path / "notgzip.gz").write_bytes(b"plain bytes, not gzip")
    with pytest.raises(ValueError, match=r"notgzip.gz: corrupt"):
        read_idx(tmp_path / "notgzip.gz")
    (tmp_path / "header").write_bytes(bytes([0, 0, 8, 3, 0, 0]))
    with pytest.raises(ValueError, match="header: truncated IDX header"):
        read_idx(tmp_path / "header")
    raw = _write_idx(tmp_path / "raw", np.zeros((5, 28, 28)), compress=False)
    (tmp_path / "short").write_bytes(raw.read_bytes()[:-10])
    with pytest.raises(ValueError, match=r"short: header says shape \(5, 28, 28\).*truncated"):
        read_idx(tmp_path / "short")
    with pytest.raises(FileNotFoundError, match="no such IDX file"):
        read_idx(tmp_path / "absent.gz")


def test_corrupt_json_line_and_parquet(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "fine", "label": 0}) + "\n{\"text\": \"cut off\n")
    with pytest.raises(ValueError, match=r"bad.jsonl.*not truncated"):
        build_task("hf_text", path="json", data_files={"train": str(bad)}, num_classes=2).split("train")
    parquet = tmp_path / "bad.parquet"
    parquet.write_bytes(b"PAR1 this is not a parquet file")
    with pytest.raises(ValueError, match=r"bad.parquet"):
        build_task("hf_text", path="parquet", data_files={"train": str(parquet)}, num_classes=2).split("train")


# ---------------------------------------------------------------- labels out of range
def test_labels_out_of_range(tmp_path, monkeypatch):
    _fashion(tmp_path, {"train": [0] * 12, "t10k": [1, 2, 12, 3]})
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte.gz gives image 2 the label 12"):
        build_task("fashion_mnist", data_dir=tmp_path).split("test")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    f = tmp_path / "labels.jsonl"
    f.write_text("\n".join(json.dumps({"text": "t", "label": lab}) for lab in (0, 1, 5)))
    with pytest.raises(ValueError, match=r"row 2 of .*labels.jsonl has label 5, outside 0..1"):
        build_task("hf_text", path="json", data_files={"test": str(f), "train": str(f)},
                   num_classes=2).split("test")


# ---------------------------------------------------------------- empty splits
def test_empty_splits(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    rows = tmp_path / "train.jsonl"
    rows.write_text("\n".join(json.dumps({"text": f"doc {i}", "label": i % 2}) for i in range(10)))
    empty = tmp_path / "test.jsonl"
    empty.write_text("")
    task = build_task("hf_text", path="json", data_files={"train": str(rows), "test": str(empty)}, num_classes=2)
    with pytest.raises(ValueError, match=r"test split is empty.*test.jsonl"):
        task.split("test")
    for pkg in ("alpha", "beta"):
        (tmp_path / "lib" / pkg).mkdir(parents=True)
        for i in range(3):
            (tmp_path / "lib" / pkg / f"m{i}.py").write_text("x = 1\n")
    with pytest.raises(ValueError, match=r"validation split is empty.*split_fractions"):
        build_task("stdlib_families", root=tmp_path / "lib", min_documents=2,
                   split_fractions=(1.0, 0.0, 0.0)).split("validation")
    (tmp_path / "one.txt").write_text("short")
    with pytest.raises(ValueError, match=r"train split is empty.*lower seq_len"):
        build_task("bytes_lm", paths=[tmp_path / "one.txt"], seq_len=1024, split_fractions=(1.0, 0.0, 0.0)).split("train")
