"""Sequential image classification: an image read pixel by pixel, row-major.

Grey levels 0..255 become tokens ``1..256`` (id 0 is padding), as in the Long Range
Arena "Image" task. Sources:

* ``digits``: scikit-learn's 8x8 digits (1,797 images, length 64), for smoke tests;
* ``fashion_mnist``: Fashion-MNIST IDX files (Debian ``dataset-fashion-mnist`` puts them
  in ``/usr/share/datasets/fashion-mnist``, the default; ``WERSA_FASHION_MNIST_DIR`` or
  ``data_dir=`` point elsewhere), length 784;
* ``hf_images``: any Hugging Face image-classification dataset (MNIST, CIFAR-10, ...)
  through ``datasets.load_dataset``, converted to grey levels.

``upsample=k`` repeats every pixel k x k times (nearest neighbour), making sequences
``k**2`` times longer with the same content: a length sweep on real images.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .base import Task, TaskInfo, TokenDataset, check_positive_int
from .registry import register_task

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"  # where the Debian package installs it
FASHION_MNIST_ENV = "WERSA_FASHION_MNIST_DIR"
_REINSTALL = ("re-download the file, or reinstall the Debian package "
              "(apt-get install --reinstall dataset-fashion-mnist)")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzip-compressed or not, into a uint8 array.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the file
    for a corrupt one (truncated gzip stream, bad header, body of the wrong size).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such IDX file")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise ValueError(f"{path}: corrupt or truncated gzip file ({exc}); {_REINSTALL}") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic number); {_REINSTALL}")
    if data[2] != 0x08:
        raise ValueError(f"{path}: IDX type 0x{data[2]:02x} is not unsigned bytes (0x08)")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise ValueError(f"{path}: truncated IDX header ({len(data)} bytes for {ndim} dimensions); {_REINSTALL}")
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says shape {shape} but the file holds {body.size} bytes "
                         f"(truncated?); {_REINSTALL}")
    return body.reshape(shape)


def images_to_dataset(images: np.ndarray, labels: np.ndarray, upsample: int = 1) -> TokenDataset:
    """``images`` ``(n, H, W)`` uint8, ``labels`` ``(n,)`` -> row-major pixel tokens ``value + 1``."""
    if images.ndim != 3:
        raise ValueError(f"images must have shape (n, H, W), got {images.shape}")
    if upsample > 1:
        images = images.repeat(upsample, axis=1).repeat(upsample, axis=2)
    n, h, w = images.shape
    tokens = torch.from_numpy(images.reshape(-1).astype(np.int16)) + 1
    offsets = torch.arange(n + 1, dtype=torch.int64) * (h * w)
    return TokenDataset(tokens, offsets, torch.as_tensor(np.asarray(labels), dtype=torch.int64))


def _holdout(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of ``range(n)`` into (kept, held-out) index arrays."""
    perm = np.random.default_rng(seed).permutation(n)
    k = int(round(n * fraction))
    return np.sort(perm[k:]), np.sort(perm[:k])


class _ImageTask(Task):
    """Shared code: validation carved from train with a seeded permutation, optional upsampling."""

    side: int
    class_names: tuple[str, ...]
    source_text: str

    def __init__(self, upsample: int, validation_fraction: float, seed: int, cache_dir):
        super().__init__(cache_dir)
        check_positive_int(self.name, "upsample", upsample)
        if not isinstance(validation_fraction, (int, float)) or not 0 <= validation_fraction < 1:
            raise ValueError(f"{self.name}: validation_fraction must be in [0, 1), got {validation_fraction!r}")
        self.upsample, self.validation_fraction, self.seed = upsample, float(validation_fraction), seed

    def _set_info(self, side: int, class_names: tuple[str, ...], source: str) -> None:
        length = (side * self.upsample) ** 2
        self.info = TaskInfo(name=self.name, kind="classification", vocab_size=257, max_length=length,
                             num_classes=len(class_names), class_names=class_names,
                             source=source + (f", upsampled x{self.upsample}" if self.upsample > 1 else ""))

    def config(self) -> dict[str, Any]:
        return {"upsample": self.upsample, "validation_fraction": self.validation_fraction, "seed": self.seed}

    def _load(self, train: bool) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _build_split(self, split: str) -> TokenDataset:
        if split == "test":
            images, labels = self._load(train=False)
        else:
            images, labels = self._load(train=True)
            keep, held = _holdout(len(labels), self.validation_fraction, self.seed)
            idx = keep if split == "train" else held
            images, labels = images[idx], labels[idx]
        return images_to_dataset(images, labels, self.upsample)


@register_task
class DigitsTask(_ImageTask):
    """scikit-learn 8x8 digits, 16 grey levels scaled to 0..255; 10 classes, length ``64 * upsample**2``.

    The 1,797 images are split 80/20 into train and test with a seeded permutation;
    validation is carved from train.
    """

    name = "digits"

    def __init__(self, upsample: int = 1, validation_fraction: float = 0.1, seed: int = 0,
                 cache_dir: str | os.PathLike | None = None):
        super().__init__(upsample, validation_fraction, seed, cache_dir)
        self._set_info(8, tuple(str(d) for d in range(10)), "scikit-learn digits (8x8), sequential")

    def _load(self, train: bool) -> tuple[np.ndarray, np.ndarray]:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
        keep, held = _holdout(len(bunch.target), 0.2, self.seed + 1)
        idx = keep if train else held
        return images[idx], bunch.target[idx]


@register_task
class FashionMnistTask(_ImageTask):
    """Fashion-MNIST read pixel by pixel: 10 classes, length ``784 * upsample**2``.

    Args:
        data_dir: folder with ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``
            (default: ``$WERSA_FASHION_MNIST_DIR``, else ``/usr/share/datasets/fashion-mnist``,
            where ``apt-get install dataset-fashion-mnist`` puts them).
    """

    name = "fashion_mnist"

    def __init__(self, data_dir: str | os.PathLike | None = None, upsample: int = 1,
                 validation_fraction: float = 1 / 12, seed: int = 0,
                 cache_dir: str | os.PathLike | None = None):
        super().__init__(upsample, validation_fraction, seed, cache_dir)
        self.data_dir = Path(data_dir or os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_DIR)
        self._set_info(28, FASHION_MNIST_CLASSES, "Fashion-MNIST, sequential (pixel by pixel)")

    def config(self) -> dict[str, Any]:
        return {**super().config(), "data_dir": str(self.data_dir.resolve())}

    def _file(self, stem: str) -> Path:
        for name in (f"{stem}.gz", stem):
            if (self.data_dir / name).exists():
                return self.data_dir / name
        raise FileNotFoundError(
            f"fashion_mnist: {stem}[.gz] not found in {self.data_dir}; install the Debian package "
            f"dataset-fashion-mnist (apt-get install -y dataset-fashion-mnist), or pass data_dir= "
            f"(or set {FASHION_MNIST_ENV}) to the folder holding the IDX files"
        )

    def _load(self, train: bool) -> tuple[np.ndarray, np.ndarray]:
        prefix = "train" if train else "t10k"
        images_path = self._file(f"{prefix}-images-idx3-ubyte")
        labels_path = self._file(f"{prefix}-labels-idx1-ubyte")
        images, labels = read_idx(images_path), read_idx(labels_path)
        if images.ndim != 3 or labels.ndim != 1:
            raise ValueError(f"fashion_mnist: {images_path} must hold (n, H, W) images and {labels_path} (n,) "
                             f"labels, got {images.shape} and {labels.shape}; the files may be swapped")
        if len(images) != len(labels):
            raise ValueError(f"fashion_mnist: {len(images)} images in {images_path} but {len(labels)} labels in "
                             f"{labels_path}; the files come from different releases")
        if len(labels) == 0:
            raise ValueError(f"fashion_mnist: {labels_path} holds no example; {_REINSTALL}")
        if int(labels.max()) >= len(FASHION_MNIST_CLASSES):
            bad = int(np.argmax(labels >= len(FASHION_MNIST_CLASSES)))
            raise ValueError(f"fashion_mnist: {labels_path} gives image {bad} the label {int(labels[bad])}, "
                             f"outside 0..{len(FASHION_MNIST_CLASSES) - 1}; the file is corrupt, {_REINSTALL}")
        return images, labels.astype(np.int64)


@register_task
class HFImageTask(_ImageTask):
    """Any Hugging Face image-classification dataset, as grey-level pixel sequences.

    Args:
        path, name, data_files: passed to ``datasets.load_dataset`` (e.g. ``path="mnist"``,
            ``"cifar10"``, or ``path="parquet", data_files={"train": ..., "test": ...}``
            for local files; set ``HF_DATASETS_OFFLINE=1`` to stay offline).
        image_field, label_field: column names (CIFAR-10 uses ``"img"``).
        num_classes: number of classes (read from the label feature when it is a ``ClassLabel``).
    """

    name = "hf_images"

    def __init__(self, path: str = "mnist", name: str | None = None, data_files: Any = None,
                 image_field: str = "image", label_field: str = "label", num_classes: int | None = None,
                 upsample: int = 1, validation_fraction: float = 0.1, seed: int = 0,
                 cache_dir: str | os.PathLike | None = None):
        super().__init__(upsample, validation_fraction, seed, cache_dir)
        self.path, self.hf_name, self.data_files = path, name, data_files
        self.image_field, self.label_field = image_field, label_field
        self._cache: dict[bool, tuple[np.ndarray, np.ndarray]] = {}
        test_images, test_labels = self._load(train=False)
        feature = self._features.get(label_field)
        names = getattr(feature, "names", None)
        if num_classes is None:
            if names is None:
                raise ValueError(
                    f"hf_images: the label column {label_field!r} of {path!r} is not a ClassLabel; "
                    f"pass num_classes="
                )
            num_classes = len(names)
        class_names = tuple(names) if names else tuple(str(i) for i in range(num_classes))
        self._set_info(test_images.shape[1], class_names, f"{path} (Hugging Face datasets), grey, sequential")

    def config(self) -> dict[str, Any]:
        return {**super().config(), "path": self.path, "name": self.hf_name, "data_files": self.data_files,
                "image_field": self.image_field, "label_field": self.label_field}

    def _load(self, train: bool) -> tuple[np.ndarray, np.ndarray]:
        if train in self._cache:
            return self._cache[train]
        import datasets

        split = "train" if train else "test"
        ds = datasets.load_dataset(self.path, self.hf_name, data_files=self.data_files, split=split)
        for col in (self.image_field, self.label_field):
            if col not in ds.column_names:
                raise ValueError(f"hf_images: {self.path!r} has no column {col!r}; columns: {ds.column_names}")
        self._features = ds.features
        images = np.stack([np.asarray(img.convert("L"), dtype=np.uint8) for img in ds[self.image_field]])
        labels = np.asarray(ds[self.label_field], dtype=np.int64)
        self._cache[train] = (images, labels)
        return images, labels
