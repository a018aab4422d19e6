"""ImageNet-style ImageFolder trees: root/{train,val}/<class>/<image file>."""
from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from ...errors import UserError
from .base import DatasetSource, SplitSource, reject_unlabeled, require_root

SPLITS = ("train", "val")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}  # compared lower-cased, so .JPEG counts
HINT = "point --root at an ImageFolder tree with train/<class>/<image> and val/<class>/<image>"


def _visible_entries(folder: str):
    return sorted((e for e in os.scandir(folder) if not e.name.startswith(".")), key=lambda e: e.name)


def _class_folders(split_dir: Path) -> list[str]:
    if not split_dir.is_dir():
        raise UserError(f"no {split_dir.name}/ folder under {split_dir.parent}: {HINT}")
    return [e.name for e in _visible_entries(str(split_dir)) if e.is_dir()]


def _image_files(class_dir: str) -> list[str]:
    return [e.name for e in _visible_entries(class_dir)
            if e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES]


def _decode(split_dir: str, relative: np.ndarray, i: int) -> np.ndarray:
    path = os.path.join(split_dir, os.fsdecode(relative[i]))
    try:
        with Image.open(path) as im:
            return np.ascontiguousarray(np.asarray(im.convert("RGB"), dtype=np.uint8))
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise UserError(f"cannot decode image {path} ({e}): remove or replace the file") from None


def _file_bytes(split_dir: str, relative: np.ndarray, i: int) -> bytes:
    with open(os.path.join(split_dir, os.fsdecode(relative[i])), "rb") as f:
        return f.read()


def _read_split(split_dir: Path, class_names: list[str]) -> SplitSource:
    relative, labels = [], []
    for label, name in enumerate(class_names):
        files = _image_files(str(split_dir / name))
        relative.extend(os.fsencode(os.path.join(name, f)) for f in files)
        labels.extend([label] * len(files))
    if not relative:
        raise UserError(f"no images under {split_dir}: expected {split_dir}/<class>/<image>.jpg; {HINT}")
    # One fixed-width bytes array instead of a list of str: a million Python objects
    # would be copied page by page into every forked worker as refcounts change.
    paths = np.array(relative, dtype=np.bytes_)
    where = str(split_dir)
    return SplitSource(num_samples=len(paths), labels=np.asarray(labels, dtype=np.int64), image_shape=None,
                       read_image=partial(_decode, where, paths),
                       read_fingerprint_bytes=partial(_file_bytes, where, paths))


def load_imagenet(root: Path | str | None, *, include_unlabeled: bool = False) -> DatasetSource:
    reject_unlabeled("imagenet", include_unlabeled)
    root = require_root(root, "imagenet", HINT)
    class_names = _class_folders(root / "train")
    if not class_names:
        raise UserError(f"no class folders under {root / 'train'}: {HINT}")
    val_classes = _class_folders(root / "val")
    if val_classes != class_names:
        missing = sorted(set(class_names) - set(val_classes))[:5]
        extra = sorted(set(val_classes) - set(class_names))[:5]
        raise UserError(f"{root / 'val'} must have the same class folders as {root / 'train'} "
                        f"(missing {missing}, extra {extra}): fix the val tree")
    splits = {split: _read_split(root / split, class_names) for split in SPLITS}
    return DatasetSource(name="imagenet", num_classes=len(class_names), class_names=class_names,
                         storage="jpg", splits=splits)
