"""What every dataset source is: a split with per-sample access, a dataset of splits, and the checks of --root
the loaders share."""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np

from ...errors import UserError


@dataclass
class SplitSource:
    """One split: labels in memory, images read one at a time by index."""

    num_samples: int
    labels: np.ndarray  # int64 [N]; -1 where the split has no labels
    image_shape: tuple[int, int, int] | None  # (H, W, 3) when shared by every image
    read_image: Callable[[int], np.ndarray]  # i -> uint8 [H, W, 3] C-contiguous RGB
    read_fingerprint_bytes: Callable[[int], bytes]  # what the dataset fingerprint hashes for sample i

    def __post_init__(self):
        # A mismatch here is a bug in a loader, not bad user input.
        if len(self.labels) != self.num_samples:
            raise ValueError(f"split has {self.num_samples} samples but {len(self.labels)} labels")

    def __len__(self) -> int:
        return self.num_samples


@dataclass
class DatasetSource:
    name: str
    num_classes: int
    class_names: list[str]
    storage: str  # "raw" (store pixels) or "jpg" (store JPEG)
    splits: dict[str, SplitSource]


def _pixel_bytes(read_image: Callable[[int], np.ndarray], i: int) -> bytes:
    return read_image(i).tobytes()


def pixel_fingerprint(read_image: Callable[[int], np.ndarray]) -> Callable[[int], bytes]:
    """For array datasets the fingerprint hashes the decoded HWC uint8 pixels."""
    # partial of a module-level function, not a lambda, so the reader stays picklable.
    return partial(_pixel_bytes, read_image)


def require_root(root: Path | str | None, dataset: str, hint: str) -> Path:
    """The --root a file-backed dataset needs, checked to be an existing folder."""
    if root is None:
        raise UserError(f"dataset {dataset} needs --root: {hint}")
    root = Path(root).expanduser()
    if not root.exists():
        raise UserError(f"--root {root} does not exist: {hint}")
    if not root.is_dir():
        raise UserError(f"--root {root} is not a folder: {hint}")
    return root


def locate_folder(root: Path, folder: str, expected_files: tuple[str, ...], hint: str) -> Path:
    """Accept --root pointing at the dataset's own folder or at its parent."""
    if (root / folder).is_dir():
        return root / folder
    if root.name == folder or any((root / name).exists() for name in expected_files):
        return root
    raise UserError(f"no {folder} folder under {root}: {hint}")


def reject_unlabeled(dataset: str, include_unlabeled: bool) -> None:
    if include_unlabeled:
        raise UserError(f"dataset {dataset} has no unlabeled split: drop --unlabeled (only stl10 has one)")
