"""Dataset fingerprints: what stage one and stage two check before they join anything; and the record of each
.beton file (its size, time and sha256 when prepared) that proves a split's file is still the one its fingerprint
was computed with."""
from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path

import numpy as np

from ..atomic import write_json_atomic
from ..errors import UserError
from .beton_table import HEADER  # a .beton's header, read without FFCV

FINGERPRINT_VERSION = b"labelopt-fingerprint-v1"


def split_fingerprint(split, progress=None) -> str:
    """sha256 over every sample's image bytes and the labels, in index order.

    Each image's bytes are length-prefixed so no two different splits can hash alike
    by shifting bytes between samples. `progress`, if given, is called with a count.
    """
    digest = hashlib.sha256(FINGERPRINT_VERSION)
    digest.update(np.int64(len(split)).tobytes())
    for i in range(len(split)):
        data = split.read_fingerprint_bytes(i)
        digest.update(np.int64(len(data)).tobytes())
        digest.update(data)
        if progress is not None:
            progress(1)
    digest.update(np.asarray(split.labels, dtype="<i8").tobytes())
    return digest.hexdigest()


def channel_stats(split, max_samples: int = 20000, seed: int = 0) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of pixels / 255, over at most `max_samples` images (seeded subsample)."""
    n = len(split)
    order = np.arange(n)
    if n > max_samples:
        order = np.sort(np.random.default_rng(seed).choice(n, max_samples, replace=False))
    total = np.zeros(3, dtype=np.float64)
    total_sq = np.zeros(3, dtype=np.float64)
    count = 0
    for i in order:
        pixels = split.read_image(int(i)).reshape(-1, 3).astype(np.float64) / 255.0
        total += pixels.sum(0)
        total_sq += (pixels * pixels).sum(0)
        count += pixels.shape[0]
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean * mean, 0.0))
    return [round(float(m), 6) for m in mean], [round(float(s), 6) for s in std]


# -- the .beton file a split's fingerprint belongs to ---------------------------------------------

_VERIFIED: dict[tuple, str] = {}  # (path, size, mtime_ns) -> the sha256 found there by this process


def beton_samples(path: Path) -> int | None:
    """The sample count a .beton's header declares, or None when it has no readable header."""
    with contextlib.suppress(OSError, ValueError):
        header = np.fromfile(path, dtype=HEADER, count=1)
        if len(header) == 1:
            return int(header["num_samples"][0])
    return None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(8 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_record(path: Path) -> dict:
    """What prepare records of a .beton it wrote (meta.json, beside the split's fingerprint)."""
    stat = path.stat()
    return {"file_size": stat.st_size, "file_mtime_ns": stat.st_mtime_ns, "file_sha256": file_sha256(path)}


def checked_path(path: Path) -> Path:
    """Where a .beton's last successful check is kept: a copied dataset (new times) is hashed once, not per run."""
    return path.with_name(f".{path.name}.checked")


def beton_problem(path: Path, record: dict) -> str | None:
    """Why the .beton at `path` is not the file its split's meta.json entry (`record`) describes, else None.

    Every open compares the header's sample count, and the size prepare recorded; a file whose time differs from
    the recorded one (copied, touched, or swapped) is hashed and compared with the recorded sha256, once: a match
    is remembered by size and time beside the file. A dataset prepared before files were recorded is checked by
    its count alone."""
    count, want = beton_samples(path), record.get("num_samples")
    if count is None:
        return "has no readable FFCV header"
    if count != want:
        return f"holds {count} samples but meta.json says {want}"
    if not isinstance(record.get("file_size"), int) or not isinstance(record.get("file_sha256"), str):
        return None
    stat = path.stat()
    if stat.st_size != record["file_size"]:
        return f"is {stat.st_size} bytes but was {record['file_size']} when prepared"
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if stat.st_mtime_ns == record.get("file_mtime_ns") or _checked_before(path, key) == record["file_sha256"]:
        return None
    digest = file_sha256(path)
    if digest != record["file_sha256"]:
        return f"has sha256 {digest[:16]}... but had {record['file_sha256'][:16]}... when prepared"
    _VERIFIED[key] = digest
    with contextlib.suppress(OSError, UserError):  # a read-only or full folder: the next process checks again
        write_json_atomic(checked_path(path), {"file_size": stat.st_size, "file_mtime_ns": stat.st_mtime_ns,
                                               "file_sha256": digest})
    return None


def _checked_before(path: Path, key: tuple) -> str | None:
    if key in _VERIFIED:
        return _VERIFIED[key]
    try:
        seen = json.loads(checked_path(path).read_text())
    except (OSError, ValueError):
        return None
    if isinstance(seen, dict) and (seen.get("file_size"), seen.get("file_mtime_ns")) == key[1:]:
        return seen.get("file_sha256")
    return None
