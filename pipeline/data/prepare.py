"""`labelopt prepare`: a dataset's official files -> <out>/<name>/{split}.beton + meta.json."""
from __future__ import annotations

import datetime
import math
import shutil
from pathlib import Path

from ... import __version__
from ..atomic import atomic_directory, write_json_atomic
from .beton import write_beton
from .datasets import DATASET_FORMAT
from ..errors import UserError
from .fingerprint import channel_stats, file_record, split_fingerprint
from ..locks import output_lock
from ..progress import Progress
from .sources import load_source


def prepare(dataset: str, root: Path | None, out: Path, *, overwrite: bool = False,
            include_unlabeled: bool = False, max_side: int = 256, jpeg_quality: int = 90,
            log=print) -> Path:
    source = load_source(dataset, root, include_unlabeled=include_unlabeled)
    final = Path(out) / source.name
    with output_lock(final, "prepared dataset"):
        check_space(source, final.parent)
        return write_prepared(source, final, overwrite, max_side, jpeg_quality, log)


def check_space(source, folder: Path) -> None:
    """Raw-pixel datasets have a known size: refuse early, with the figure, where the disk cannot hold it."""
    if source.storage == "jpg" or not folder.exists():
        return  # JPEG sizes are known only once encoded
    need = sum(len(split) * math.prod(split.image_shape) for split in source.splits.values() if split.image_shape)
    free = shutil.disk_usage(folder).free
    if free < need * 1.05 + 2 ** 20:
        raise UserError(f"not enough space to prepare {source.name} in {folder}: needs about "
                        f"{need / 2**20:.1f} MiB, {free / 2**20:.1f} MiB free; free space or choose another --out")


def write_prepared(source, final: Path, overwrite: bool, max_side: int, jpeg_quality: int, log) -> Path:
    with atomic_directory(final, overwrite) as tmp:
        splits = {}
        for split_name, split in source.splits.items():
            log(f"prepare: {source.name}/{split_name}: {len(split)} images")
            write_beton(split, tmp / f"{split_name}.beton", source.storage, max_side, jpeg_quality)
            written = file_record(tmp / f"{split_name}.beton")  # every open checks the file against it
            with Progress(len(split), f"prepare: fingerprint of {split_name}") as bar:
                fingerprint = split_fingerprint(split, progress=bar.update)
            splits[split_name] = {
                "file": f"{split_name}.beton",
                "num_samples": len(split),
                "fingerprint": fingerprint,
                **written,
            }
        mean, std = channel_stats(source.splits["train"])
        meta = {
            "format": DATASET_FORMAT,
            "name": source.name,
            "labelopt_version": __version__,
            "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "num_classes": source.num_classes,
            "class_names": source.class_names,
            "image_shape": list(source.splits["train"].image_shape) if source.splits["train"].image_shape else None,
            "storage": source.storage,
            "storage_options": {"max_side": max_side, "jpeg_quality": jpeg_quality} if source.storage == "jpg" else {},
            "mean": mean,
            "std": std,
            "fingerprint_scheme": "sha256 over length-prefixed image bytes (pixels for raw storage, "
                                  "source file bytes for jpg storage) in index order, then int64 labels",
            "splits": splits,
        }
        write_json_atomic(tmp / "meta.json", meta)
    return final
