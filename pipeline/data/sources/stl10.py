"""STL-10 from the official binaries in stl10_binary/, memory-mapped."""
from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np

from ...errors import UserError
from .base import DatasetSource, SplitSource, locate_folder, pixel_fingerprint, require_root

FOLDER = "stl10_binary"
SIDE = 96
IMAGE_BYTES = 3 * SIDE * SIDE  # 27648
NUM_CLASSES = 10
CLASS_NAMES_FILE = "class_names.txt"
HINT = f"point --root at the official binary folder ({FOLDER}) or at its parent"

# split -> (images file, labels file or None for the unlabeled split)
LABELED_SPLITS = {"train": ("train_X.bin", "train_y.bin"), "test": ("test_X.bin", "test_y.bin")}
UNLABELED_SPLIT = {"unlabeled": ("unlabeled_X.bin", None)}


def _require_file(path: Path) -> Path:
    if not path.is_file():
        raise UserError(f"missing STL-10 file {path}: {HINT}")
    return path


def _map_images(path: Path) -> np.memmap:
    """The images file as a read-only [N, 27648] map: nothing is read until an image is asked for."""
    size = _require_file(path).stat().st_size
    if size == 0 or size % IMAGE_BYTES:
        raise UserError(f"{path} is {size} bytes, not a positive multiple of {IMAGE_BYTES} "
                        f"(one 3x{SIDE}x{SIDE} image); re-download/extract {FOLDER}")
    # A memmap survives fork: workers share the mapping instead of a file position.
    return np.memmap(path, dtype=np.uint8, mode="r", shape=(size // IMAGE_BYTES, IMAGE_BYTES))


def _read_labels(path: Path, images_path: Path, count: int) -> np.ndarray:
    raw = np.fromfile(_require_file(path), dtype=np.uint8)
    if raw.size != count:
        raise UserError(f"{path} holds {raw.size} labels but {images_path} holds {count} images; "
                        f"re-download/extract {FOLDER}")
    if raw.size and (raw.min() < 1 or raw.max() > NUM_CLASSES):
        raise UserError(f"{path} has labels outside 1..{NUM_CLASSES}; re-download/extract {FOLDER}")
    return raw.astype(np.int64) - 1  # the files count classes from 1


def _read_class_names(path: Path) -> list[str]:
    names = [line.strip() for line in _require_file(path).read_text().splitlines() if line.strip()]
    if len(names) != NUM_CLASSES:
        raise UserError(f"{path} lists {len(names)} class names, expected {NUM_CLASSES}; "
                        f"re-download/extract {FOLDER}")
    return names


def _column_major_to_hwc(images: np.memmap, i: int) -> np.ndarray:
    # Each channel is stored column by column, so the row-major view reads [channel, x, y].
    return np.array(images[i].reshape(3, SIDE, SIDE).transpose(2, 1, 0), order="C")


def _read_split(folder: Path, images_file: str, labels_file: str | None) -> SplitSource:
    images_path = folder / images_file
    images = _map_images(images_path)
    count = images.shape[0]
    if labels_file is None:
        labels = np.full(count, -1, dtype=np.int64)
    else:
        labels = _read_labels(folder / labels_file, images_path, count)
    read_image = partial(_column_major_to_hwc, images)
    return SplitSource(num_samples=count, labels=labels, image_shape=(SIDE, SIDE, 3),
                       read_image=read_image, read_fingerprint_bytes=pixel_fingerprint(read_image))


def load_stl10(root: Path | str | None, *, include_unlabeled: bool = False) -> DatasetSource:
    root = require_root(root, "stl10", HINT)
    layout = dict(LABELED_SPLITS, **(UNLABELED_SPLIT if include_unlabeled else {}))
    expected = tuple(f for pair in layout.values() for f in pair if f) + (CLASS_NAMES_FILE,)
    folder = locate_folder(root, FOLDER, expected, HINT)
    class_names = _read_class_names(folder / CLASS_NAMES_FILE)
    splits = {split: _read_split(folder, x, y) for split, (x, y) in layout.items()}
    return DatasetSource(name="stl10", num_classes=NUM_CLASSES, class_names=class_names,
                         storage="raw", splits=splits)
