import gzip
from pathlib import Path
import struct

import numpy as np
import pytest
import torch

from wersa.tasks import build_task
from wersa.tasks.images import FASHION_MNIST_DIR as FASHION_MNIST_DIR_REAL, read_idx


def _write_idx(path, array):
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture()
def fashion_dir(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 24), ("t10k", 6)):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, (n,)))
    return tmp_path


def test_read_idx_round_trip_and_errors(tmp_path):
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "a.gz", a)
    assert np.array_equal(read_idx(tmp_path / "a.gz"), a)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="magic"):
        read_idx(tmp_path / "bad")


def test_fashion_mnist_from_idx_files(fashion_dir):
    task = build_task("fashion_mnist", data_dir=fashion_dir, validation_fraction=0.25)
    train, val, test = (task.split(s) for s in ("train", "validation", "test"))
    assert (len(train), len(val), len(test)) == (18, 6, 6)
    assert task.info.max_length == 784 and task.info.num_classes == 10
    images = read_idx(fashion_dir / "t10k-images-idx3-ubyte.gz")
    assert torch.equal(test[2]["input_ids"], torch.from_numpy(images[2].reshape(-1).astype(np.int64)) + 1)
    up = build_task("fashion_mnist", data_dir=fashion_dir, upsample=2)
    assert up.info.max_length == 3136
    grid = up.split("test")[2]["input_ids"].reshape(56, 56)
    assert torch.equal(grid[::2, ::2], test[2]["input_ids"].reshape(28, 28))
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        build_task("fashion_mnist", data_dir=fashion_dir / "missing").split("test")


def test_digits_splits_are_disjoint_and_cover_the_set():
    task = build_task("digits")
    sizes = [len(task.split(s)) for s in ("train", "validation", "test")]
    assert sum(sizes) == 1797 and task.info.max_length == 64
    rows = {tuple(task.split(s)[i]["input_ids"].tolist()) + (s,) for s in ("train", "test")
            for i in range(len(task.split(s)))}
    assert len(rows) == sizes[0] + sizes[2]
    assert 1 <= int(task.split("test").tokens.min()) and int(task.split("test").tokens.max()) <= 256


def test_hf_images_from_local_parquet(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    rng = np.random.default_rng(1)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b", "c"])})
    files = {}
    for split, n in (("train", 10), ("test", 4)):
        pixels = rng.integers(0, 256, (n, 6, 6), dtype=np.uint8)
        ds = datasets.Dataset.from_dict({"image": [Image.fromarray(p) for p in pixels],
                                         "label": rng.integers(0, 3, n).tolist()}, features=features)
        files[split] = str(tmp_path / f"{split}.parquet")
        ds.to_parquet(files[split])
        if split == "test":
            expected = pixels
    task = build_task("hf_images", path="parquet", data_files=files, validation_fraction=0.2)
    assert task.info.num_classes == 3 and task.info.class_names == ("a", "b", "c")
    assert task.info.max_length == 36
    assert len(task.split("train")) == 8 and len(task.split("validation")) == 2
    assert torch.equal(task.split("test")[1]["input_ids"], torch.from_numpy(expected[1].reshape(-1).astype(np.int64)) + 1)


def test_fashion_mnist_default_folder_is_the_debian_package():
    from wersa.tasks.images import FASHION_MNIST_DIR

    assert build_task("fashion_mnist").data_dir == Path(FASHION_MNIST_DIR)


@pytest.mark.skipif(not Path(FASHION_MNIST_DIR_REAL, "t10k-labels-idx1-ubyte.gz").exists(),
                    reason="Fashion-MNIST not installed (apt-get install -y dataset-fashion-mnist)")
def test_fashion_mnist_real_files_end_to_end():
    task = build_task("fashion_mnist")  # default folder: /usr/share/datasets/fashion-mnist
    test = task.split("test")
    assert len(test) == 10_000 and task.info.max_length == 784
    assert test.labels.bincount().tolist() == [1000] * 10  # the test set is balanced
    batch = next(iter(task.loader("test", batch_size=4)))
    assert batch["input_ids"].shape == (4, 784) and int(batch["input_ids"].min()) >= 1


@pytest.mark.slow
def test_fashion_mnist_real_train_split():
    task = build_task("fashion_mnist")
    assert len(task.split("train")) + len(task.split("validation")) == 60_000
