"""The embedded default: scikit-learn's 8x8 digits, upscaled to 32x32 RGB with a fixed split."""
from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np

from .base import DatasetSource, SplitSource, pixel_fingerprint, reject_unlabeled

SIDE = 32
NUM_CLASSES = 10
TEST_FRACTION = 0.2
SPLIT_SEED = 0  # fixed: every run and every machine must see the same split


def _upscale(images: np.ndarray) -> np.ndarray:
    """[N, 8, 8] values 0..16 -> uint8 [N, 32, 32, 3]."""
    import torch  # heavy; only this dataset needs it at load time
    import torch.nn.functional as F

    scaled = torch.from_numpy(images.astype(np.float64) * (255.0 / 16.0)).unsqueeze(1)
    big = F.interpolate(scaled, size=(SIDE, SIDE), mode="bilinear", align_corners=False)
    gray = big.round().clamp(0, 255).to(torch.uint8).squeeze(1).numpy()
    return np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=-1))


def _split_indices(labels: np.ndarray) -> dict[str, np.ndarray]:
    from sklearn.model_selection import train_test_split

    train, test = train_test_split(np.arange(len(labels)), test_size=TEST_FRACTION, stratify=labels,
                                   random_state=SPLIT_SEED)
    # Ascending within each split so the order never depends on the shuffle.
    return {"train": np.sort(train), "test": np.sort(test)}


def _copy_row(images: np.ndarray, i: int) -> np.ndarray:
    return images[i].copy()  # a copy, so a caller cannot scribble on the shared array


def _make_split(images: np.ndarray, labels: np.ndarray, index: np.ndarray) -> SplitSource:
    subset = np.ascontiguousarray(images[index])
    read_image = partial(_copy_row, subset)
    return SplitSource(num_samples=len(index), labels=labels[index].astype(np.int64), image_shape=(SIDE, SIDE, 3),
                       read_image=read_image, read_fingerprint_bytes=pixel_fingerprint(read_image))


def load_digits_source(root: Path | str | None = None, *, include_unlabeled: bool = False) -> DatasetSource:
    """`root` is ignored: the data ships inside scikit-learn."""
    from sklearn.datasets import load_digits

    reject_unlabeled("digits", include_unlabeled)
    bunch = load_digits()
    labels = np.asarray(bunch.target, dtype=np.int64)
    images = _upscale(np.asarray(bunch.images))
    splits = {name: _make_split(images, labels, index) for name, index in _split_indices(labels).items()}
    return DatasetSource(name="digits", num_classes=NUM_CLASSES, class_names=[str(d) for d in range(NUM_CLASSES)],
                         storage="raw", splits=splits)
