"""CIFAR-10 and CIFAR-100 from the official python-version pickles."""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from ...errors import UserError
from .base import DatasetSource, SplitSource, locate_folder, pixel_fingerprint, reject_unlabeled, require_root
from .safe_pickle import safe_load

SIDE = 32
ROW_BYTES = 3 * SIDE * SIDE  # one image: 1024 R, then 1024 G, then 1024 B, each row-major


@dataclass(frozen=True)
class CifarLayout:
    """Where one CIFAR variant keeps its files and which keys it uses."""

    name: str
    title: str
    folder: str
    split_files: dict[str, tuple[str, ...]]  # split -> files concatenated in this order
    meta_file: str
    labels_key: str
    names_key: str
    num_classes: int

    @property
    def hint(self) -> str:
        return (f"point --root at the folder holding the official python-version batches "
                f"({self.folder}) or at its parent")

    @property
    def all_files(self) -> tuple[str, ...]:
        return tuple(f for files in self.split_files.values() for f in files) + (self.meta_file,)


LAYOUTS = {
    "cifar10": CifarLayout(
        name="cifar10", title="CIFAR-10", folder="cifar-10-batches-py",
        split_files={"train": tuple(f"data_batch_{k}" for k in range(1, 6)), "test": ("test_batch",)},
        meta_file="batches.meta", labels_key="labels", names_key="label_names", num_classes=10),
    "cifar100": CifarLayout(
        name="cifar100", title="CIFAR-100", folder="cifar-100-python",
        split_files={"train": ("train",), "test": ("test",)},
        meta_file="meta", labels_key="fine_labels", names_key="fine_label_names", num_classes=100),
}


def _str_keys(obj, path: Path) -> dict:
    # Python 2 wrote str keys, which encoding="bytes" hands back as bytes; re-packs may use str.
    if not isinstance(obj, dict):
        raise UserError(f"{path} does not hold a CIFAR dict (found {type(obj).__name__}); re-download/extract it")
    return {(k.decode("latin-1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _field(batch: dict, key: str, path: Path):
    if key not in batch:
        raise UserError(f"{path} has no {key!r} entry: not an official CIFAR file; re-download/extract it")
    return batch[key]


def _read_batch(path: Path, layout: CifarLayout) -> tuple[np.ndarray, np.ndarray]:
    """(data uint8 [N, 3072] CHW-planar, labels int64 [N]) from one batch file, size-checked."""
    batch = _str_keys(safe_load(path), path)
    data = _field(batch, "data", path)
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == ROW_BYTES):
        shape = getattr(data, "shape", None)
        raise UserError(f"{path} has data of shape {shape}, expected uint8 [N, {ROW_BYTES}]; re-download/extract it")
    try:
        labels = np.asarray(_field(batch, layout.labels_key, path), dtype=np.int64)
    except (TypeError, ValueError):
        raise UserError(f"{path} has non-integer {layout.labels_key!r}; re-download/extract it") from None
    if labels.shape != (data.shape[0],):
        raise UserError(f"{path} has {data.shape[0]} images but {labels.size} labels; re-download/extract it")
    if labels.size and (labels.min() < 0 or labels.max() >= layout.num_classes):
        raise UserError(f"{path} has labels outside 0..{layout.num_classes - 1}; re-download/extract it")
    return data, labels


def _read_class_names(path: Path, layout: CifarLayout) -> list[str]:
    names = _field(_str_keys(safe_load(path), path), layout.names_key, path)
    if not isinstance(names, (list, tuple)) or len(names) != layout.num_classes:
        raise UserError(f"{path} must list {layout.num_classes} {layout.names_key!r}; re-download/extract it")
    return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]


def _chw_to_hwc(data: np.ndarray, i: int) -> np.ndarray:
    # Converted per read so the dataset stays in its one compact [N, 3072] array.
    return np.ascontiguousarray(data[i].reshape(3, SIDE, SIDE).transpose(1, 2, 0))


def _read_split(folder: Path, files: tuple[str, ...], layout: CifarLayout) -> SplitSource:
    parts = [_read_batch(folder / f, layout) for f in files]
    data = np.concatenate([d for d, _ in parts]) if len(parts) > 1 else parts[0][0]
    labels = np.concatenate([lab for _, lab in parts])
    read_image = partial(_chw_to_hwc, data)
    return SplitSource(num_samples=len(labels), labels=labels, image_shape=(SIDE, SIDE, 3),
                       read_image=read_image, read_fingerprint_bytes=pixel_fingerprint(read_image))


def load_cifar(layout: CifarLayout, root: Path | str | None, *, include_unlabeled: bool = False) -> DatasetSource:
    reject_unlabeled(layout.name, include_unlabeled)
    root = require_root(root, layout.name, layout.hint)
    folder = locate_folder(root, layout.folder, layout.all_files, layout.hint)
    # Check every file up front so a missing one is named before minutes of reading.
    for name in layout.all_files:
        if not (folder / name).is_file():
            raise UserError(f"missing {layout.title} file {folder / name}: {layout.hint}")
    class_names = _read_class_names(folder / layout.meta_file, layout)
    splits = {split: _read_split(folder, files, layout) for split, files in layout.split_files.items()}
    return DatasetSource(name=layout.name, num_classes=layout.num_classes, class_names=class_names,
                         storage="raw", splits=splits)


load_cifar10 = partial(load_cifar, LAYOUTS["cifar10"])
load_cifar100 = partial(load_cifar, LAYOUTS["cifar100"])
