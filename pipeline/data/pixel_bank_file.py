"""A split's decoded pixels in one file beside its .beton, so the processes of a node map one copy.

<split>.pixels holds a fixed header, int64 labels [N] and uint8 images [N, 3, H, W], raw (never pickled). The
header names what the pixels were decoded from (the .beton's size and modification time, the dataset's
fingerprint, the decode format), so a file left from other data or an older decode is never used: it is rebuilt.
Processes map the file copy-on-write: its pages sit once in the page cache, however many processes read them.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

import numpy as np

from ...store.files import exclusive_lock, lock_path

MAGIC = b"labelopt-pixels\0"
DECODE_FORMAT = 1  # raise when the training decode changes: older files are then rebuilt
HEADER_BYTES = 128  # magic (16), six int64 fields (48), the sha256 of the fingerprint (32), zeros


def bank_path(beton: Path) -> Path:
    return beton.with_suffix(".pixels")


def identity(beton: Path, fingerprint: str, shape: tuple[int, int, int]) -> bytes:
    """The header a bank of these pixels carries: the magic; decode format, N, H, W, the .beton's size and
    modification time (ns) as int64; the sha256 of the dataset's fingerprint; zeros up to HEADER_BYTES."""
    stat = beton.stat()
    fields = np.array([DECODE_FORMAT, *shape, stat.st_size, stat.st_mtime_ns], dtype="<i8").tobytes()
    header = MAGIC + fields + hashlib.sha256(fingerprint.encode()).digest()
    return header.ljust(HEADER_BYTES, b"\0")


def file_bytes(shape: tuple[int, int, int]) -> int:
    n, h, w = shape
    return HEADER_BYTES + 8 * n + 3 * h * w * n


def new_buffer(header: bytes, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(the whole file's bytes, its labels, its images) in memory, to be filled and then written in one go."""
    n, h, w = shape
    buffer = np.zeros(file_bytes(shape), dtype=np.uint8)
    buffer[:HEADER_BYTES] = np.frombuffer(header, dtype=np.uint8)
    labels = buffer[HEADER_BYTES:HEADER_BYTES + 8 * n].view("<i8")
    images = buffer[HEADER_BYTES + 8 * n:].reshape(n, 3, h, w)
    return buffer, labels, images


def open_bank(path: Path, header: bytes, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray] | None:
    """(labels, images) mapped from `path` when it holds exactly these pixels; None when absent or stale."""
    try:
        with open(path, "rb") as fh:
            if fh.read(HEADER_BYTES) != header or os.fstat(fh.fileno()).st_size != file_bytes(shape):
                return None
    except OSError:
        return None
    n, h, w = shape
    # Copy-on-write: writable for torch, and nothing is ever written, so every page stays the shared one.
    labels = np.memmap(path, dtype="<i8", mode="c", offset=HEADER_BYTES, shape=(n,))
    images = np.memmap(path, dtype=np.uint8, mode="c", offset=HEADER_BYTES + 8 * n, shape=(n, 3, h, w))
    return labels, images


def can_write_beside(path: Path, need: int) -> bool:
    """Whether the folder takes a new file of `need` bytes (writable, with the space and 1 % to spare)."""
    try:
        disk = os.statvfs(path.parent)
    except OSError:
        return False
    return os.access(path.parent, os.W_OK) and disk.f_bavail * disk.f_frsize > need * 1.01


@contextlib.contextmanager
def bank_lock(path: Path):
    """One builder of the bank file `path` at a time (the node's other processes wait, then map what it wrote)."""
    with contextlib.ExitStack() as held:
        with contextlib.suppress(OSError):  # a filesystem without locks: two builders write the same bytes, and
            held.enter_context(exclusive_lock(lock_path(path)))  # each renames its own complete file into place
        yield
