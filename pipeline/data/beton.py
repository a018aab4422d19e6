"""Writing one split of a dataset source into an FFCV .beton with fields image, label, index (FFCV is imported
when a split is written: a process that only reads raw images does without it, see beton_table.py)."""
from __future__ import annotations

import os
from pathlib import Path


class _IndexedRows:
    """What FFCV's writer iterates: (image HWC uint8, label, index) per row."""

    def __init__(self, split):
        self.split = split

    def __len__(self):
        return len(self.split)

    def __getitem__(self, i):
        return self.split.read_image(i), int(self.split.labels[i]), int(i)


def worker_count() -> int:
    return max(1, len(os.sched_getaffinity(0)))


def write_beton(split, path: Path, storage: str, max_side: int | None, jpeg_quality: int) -> None:
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    if storage == "jpg":
        image_field = RGBImageField(write_mode="jpg", max_resolution=max_side, jpeg_quality=jpeg_quality)
    else:
        image_field = RGBImageField(write_mode="raw")
    fields = {"image": image_field, "label": IntField(), "index": IntField()}
    # FFCV's writer forks workers; they read the split through the inherited object.
    writer = DatasetWriter(str(path), fields, num_workers=min(worker_count(), 8))
    writer.from_indexed_dataset(_IndexedRows(split), chunksize=max(1, min(256, len(split) // 16 or 1)))
