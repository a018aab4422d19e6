"""The validation split (--val-fraction): images of the training split held out of training, on which a run
chooses its best epoch, so that no choice is ever made on the test split.

The split is stratified (each class gives the same share, at least one image) and drawn with a fixed seed, so it
is a function of the data and the fraction alone: every run of a dataset at one fraction holds out the same
images, a resumed run the same as the run it continues. config.json records the fraction, the seed, the counts and
a short sha256 of the held-out indices (the list itself can be long). Sample indices are .beton rows: prepare
writes the rows in index order.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from ..errors import UserError
from .datasets import PreparedDataset

HOLDOUT_SEED = 20_240_601  # fixed, never an option: a dataset's validation split is the same in every run
DIGEST_CHARS = 16  # config.json's short sha256 of the held-out indices


@dataclass(frozen=True)
class HoldOut:
    fraction: float
    held: np.ndarray  # uint64 sample indices held out of training, sorted
    kept: np.ndarray  # uint64 sample indices training draws from, sorted

    def record(self) -> dict:
        """config.json's "validation": enough to tell two runs' splits apart, without the list."""
        return {"fraction": self.fraction, "seed": HOLDOUT_SEED, "count": int(self.held.size),
                "train_count": int(self.kept.size), "sha256": indices_digest(self.held)}


def indices_digest(indices: np.ndarray) -> str:
    """A short sha256 of sorted sample indices (as little-endian int64, whatever their dtype)."""
    ordered = np.sort(np.asarray(indices, dtype=np.int64)).astype("<i8")
    return hashlib.sha256(ordered.tobytes()).hexdigest()[:DIGEST_CHARS]


def class_share(size: int, fraction: float) -> int:
    """How many of a class's `size` images are held out: the fraction rounded half up, at least one, and never
    the class's last image (a class of one stays whole in training)."""
    if size < 2 or fraction <= 0:
        return 0
    return min(size - 1, max(1, int(fraction * size + 0.5)))


def stratified_holdout(labels: np.ndarray, fraction: float, seed: int = HOLDOUT_SEED) -> np.ndarray:
    """Sorted int64 sample indices held out: of each class (labels >= 0, by index), `class_share` of its images,
    drawn by one generator seeded with `seed`, class by class in ascending order."""
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    order = np.argsort(labels, kind="stable")  # the indices grouped by class, each group in index order
    classes, starts, sizes = np.unique(labels[order], return_index=True, return_counts=True)
    held = [rng.permutation(order[start:start + size])[:class_share(int(size), fraction)]
            for cls, start, size in zip(classes, starts, sizes) if cls >= 0]
    return np.sort(np.concatenate(held)) if held else np.empty(0, dtype=np.int64)


_HOLDOUTS: dict[tuple, HoldOut] = {}  # (the training split's fingerprint, fraction) -> its split, per process


def hold_out(data: PreparedDataset, fraction: float) -> HoldOut | None:
    """The training split's validation split at `fraction`, or None for 0 (no validation split)."""
    if not fraction:
        return None
    key = (data.fingerprint("train"), float(fraction))
    if key not in _HOLDOUTS:
        labels = data.labels("train")
        held = stratified_holdout(labels, float(fraction))
        if held.size == 0:
            raise UserError(f"--val-fraction {fraction:g} holds out no image: every class of {data.name}'s "
                            f"training split has fewer than 2 images; drop --val-fraction")
        kept = np.setdiff1d(np.arange(labels.size, dtype=np.int64), held, assume_unique=True)
        _HOLDOUTS[key] = HoldOut(float(fraction), held.astype(np.uint64), kept.astype(np.uint64))
    return _HOLDOUTS[key]


def training_indices(data: PreparedDataset, fraction: float) -> np.ndarray | None:
    """The sample indices training draws from: all but the validation split (None: the whole split)."""
    split = hold_out(data, fraction)
    return None if split is None else split.kept
