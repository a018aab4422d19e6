"""Tiny datasets written in each dataset's real on-disk format, for tests anywhere in the project.

Each writer draws its pixels from `fake_*_content`, so a test can recompute the
exact HWC images and labels a writer put on disk and compare them with a reader.
The writers convert HWC to each file format themselves, independently of the readers.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from PIL import Image

CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
STL10_NAMES = ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck")
CIFAR100_NAMES = tuple(f"fine_{k:02d}" for k in range(100))
CIFAR100_COARSE_NAMES = tuple(f"coarse_{k:02d}" for k in range(20))


def _labels(rng: np.random.Generator, n: int, num_classes: int) -> np.ndarray:
    # Cycle through the classes so every class appears once n allows it, then shuffle.
    return rng.permutation(np.arange(n) % num_classes).astype(np.int64)


def _images(rng: np.random.Generator, n: int, side: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, side, side, 3), dtype=np.uint8)


def _content(side: int, num_classes: int, counts: dict[str, int], seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return {split: (_images(rng, n, side), _labels(rng, n, num_classes)) for split, n in counts.items()}


def fake_cifar_content(num_classes: int, n_train: int = 40, n_test: int = 20,
                       seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """split -> (uint8 HWC images [N, 32, 32, 3], int64 labels [N]) that the CIFAR writers store."""
    return _content(32, num_classes, {"train": n_train, "test": n_test}, seed)


def fake_stl10_content(n_train: int = 10, n_test: int = 8, n_unlabeled: int = 6,
                       seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """split -> (uint8 HWC images [N, 96, 96, 3], int64 labels [N], -1 for unlabeled)."""
    content = _content(96, 10, {"train": n_train, "test": n_test, "unlabeled": n_unlabeled}, seed)
    images, labels = content["unlabeled"]
    content["unlabeled"] = (images, np.full_like(labels, -1))
    return content


def _cifar_rows(images: np.ndarray) -> np.ndarray:
    # HWC -> the official planar row: all of R (row-major), then G, then B.
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), -1))


def _dump(path: Path, obj) -> None:
    # Protocol 2 with bytes keys: what the official Python 2 files look like to Python 3.
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def _cifar_batch(title: bytes, images: np.ndarray, label_fields: dict[bytes, np.ndarray]) -> dict:
    batch = {b"batch_label": title, b"data": _cifar_rows(images),
             b"filenames": [b"fake_%05d.png" % k for k in range(len(images))]}
    batch.update({key: [int(v) for v in values] for key, values in label_fields.items()})
    return batch


def write_fake_cifar10(root: Path, n_train: int = 40, n_test: int = 20, seed: int = 0) -> Path:
    """root/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}; returns that folder."""
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    content = fake_cifar_content(10, n_train, n_test, seed)
    images, labels = content["train"]
    for k, part in enumerate(np.array_split(np.arange(n_train), 5), start=1):
        _dump(folder / f"data_batch_{k}",
              _cifar_batch(b"training batch %d of 5" % k, images[part], {b"labels": labels[part]}))
    images, labels = content["test"]
    _dump(folder / "test_batch", _cifar_batch(b"testing batch 1 of 1", images, {b"labels": labels}))
    _dump(folder / "batches.meta", {b"num_cases_per_batch": max(1, n_train // 5), b"num_vis": 3072,
                                    b"label_names": [n.encode() for n in CIFAR10_NAMES]})
    return folder


def write_fake_cifar100(root: Path, n_train: int = 40, n_test: int = 20, seed: int = 0) -> Path:
    """root/cifar-100-python/{train, test, meta}; returns that folder."""
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for split, (images, fine) in fake_cifar_content(100, n_train, n_test, seed).items():
        fields = {b"fine_labels": fine, b"coarse_labels": fine // 5}
        _dump(folder / split, _cifar_batch(split.encode(), images, fields))
    _dump(folder / "meta", {b"fine_label_names": [n.encode() for n in CIFAR100_NAMES],
                            b"coarse_label_names": [n.encode() for n in CIFAR100_COARSE_NAMES]})
    return folder


def stl10_image_bytes(images: np.ndarray) -> bytes:
    """HWC images -> the official layout: per image, per channel, column by column."""
    return np.ascontiguousarray(images.transpose(0, 3, 2, 1)).tobytes()


def write_fake_stl10(root: Path, n_train: int = 10, n_test: int = 8, n_unlabeled: int = 6, seed: int = 0) -> Path:
    """root/stl10_binary/{train,test}_{X,y}.bin, unlabeled_X.bin, class_names.txt; returns that folder."""
    folder = Path(root) / "stl10_binary"
    folder.mkdir(parents=True, exist_ok=True)
    for split, (images, labels) in fake_stl10_content(n_train, n_test, n_unlabeled, seed).items():
        (folder / f"{split}_X.bin").write_bytes(stl10_image_bytes(images))
        if split != "unlabeled":
            (folder / f"{split}_y.bin").write_bytes((labels + 1).astype(np.uint8).tobytes())  # files count from 1
    (folder / "class_names.txt").write_text("\n".join(STL10_NAMES) + "\n")
    return folder


def write_fake_imagefolder(root: Path, classes=("cat", "dog", "eel"), per_class_train: int = 4,
                           per_class_val: int = 2, size=(40, 48), seed: int = 0) -> Path:
    """root/{train,val}/<class>/*.jpg|*.JPEG, JPEGs of varied sizes around `size` (H, W); returns root."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, per_class in (("train", per_class_train), ("val", per_class_val)):
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(per_class):
                h, w = (max(1, int(s + rng.integers(-8, 9))) for s in size)
                pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
                suffix = ".JPEG" if k % 2 else ".jpg"  # both spellings occur in the wild
                Image.fromarray(pixels).save(folder / f"{name}_{k:04d}{suffix}", format="JPEG", quality=90)
    return root


class Crash(Exception):
    """A run stopped from its epoch hook, as a crash would stop it (resume tests)."""


def crash_after_first_epoch(epoch: int) -> None:
    if epoch == 0:
        raise Crash()
