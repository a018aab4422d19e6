"""Datasets read in place, for stores larger than memory and for ranks that should share one copy.

A store written with the contiguous layout (`StoreWriter(..., compression="none")`) keeps every dataset
unchunked and unfiltered, at a page-aligned offset in the file: the entry of (sample i, view v) is a fixed-size run
of little-endian bytes at a known position. A reader fetches exactly the entries a batch needs with positioned
reads (pread), so it holds nothing but the batch: its memory does not grow with the store, a store larger than
memory trains, and the processes of a node share the one copy in the kernel's page cache.

Why not a memory map: on recent kernels, touching one row of a mapped file maps the whole cached folio around it
(up to 2 MiB), so a reader's resident set grows towards the store's size within a few random batches, and
unmapping after each batch makes every later touch re-map a folio (slower than reading). pread costs one system
call per entry and keeps the process's memory flat (entry_reads.py makes a batch of them cheap);
benchmarks/store_scale.py measures both costs.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path

import h5py
import numpy as np

from .entry_reads import prepare as prepare_reads
from .entry_reads import read_entries, read_float16_rows, read_topk_rows
from .schema import StoreError

ALIGNMENT = 4096  # each dataset starts on a page


def dataset_region(dset: h5py.Dataset) -> tuple[int, int] | None:
    """(offset, nbytes) of a dataset's bytes in its file when they can be read in place; None otherwise."""
    plain = (dset.chunks is None and dset.compression is None and not dset.fletcher32 and not dset.shuffle
             and dset.scaleoffset is None and not dset.external)
    if not plain or np.dtype(dset.dtype).str[0] not in "<|":
        return None
    offset = dset.id.get_offset()
    if offset is None:  # never written: HDF5 allocates contiguous storage on the first write
        return None
    return int(offset), int(dset.size) * dset.dtype.itemsize


class ReadHandle:
    """A store file open for positioned reads; closed when the last holder is gone, so rows handed out (a view
    space's table) stay valid after the store object that made them is dropped, and never read a reused descriptor."""

    def __init__(self, path: Path):
        self.fd = os.open(path, os.O_RDONLY)
        prepare_reads()
        # Entries are read in random order: read-ahead would fetch neighbours that nobody asked for.
        os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_RANDOM)

    def __del__(self):
        os.close(self.fd)


class DatasetRows:
    """A contiguous [N, V, ...] (or [N, ...]) dataset whose entries are read on demand, indexed like numpy:
    `rows[i]` (whole samples) or `rows[i, v]` (one entry per pair) for integer arrays i, v. `field(name)` gives
    one field of a compound [N, V] dataset the same way (a top-k entry's class ids, or its values)."""

    def __init__(self, handle: ReadHandle, path: Path, name: str, region: tuple[int, int], shape: tuple, dtype):
        self.handle, self.path, self.name = handle, path, name
        self.offset, nbytes = region
        self.shape, self.dtype = tuple(shape), np.dtype(dtype).newbyteorder("<")
        self.sample_bytes = nbytes // max(1, self.shape[0])
        self.entry_bytes = self.sample_bytes // max(1, self.shape[1]) if len(self.shape) > 1 else self.sample_bytes
        self.read_bytes = self.entry_bytes  # of each entry, from its start (a field: its own bytes only)

    def field(self, name: str) -> "DatasetRows":
        """The rows of one field of this compound dataset's entries: same entries, fewer bytes of each."""
        base, at = self.dtype.fields[name][:2]
        rows = copy.copy(self)
        rows.offset, rows.read_bytes = self.offset + at, base.itemsize
        rows.shape, rows.dtype = self.shape + base.shape, base.base.newbyteorder("<")
        return rows

    def __getitem__(self, key) -> np.ndarray:
        return take_entries([(self, key)])[0]

    def request(self, key) -> tuple[np.ndarray, int, tuple]:
        """(file offsets, bytes to read at each, result shape) of `rows[key]`."""
        if isinstance(key, tuple):
            rows, cols = (np.asarray(k, dtype=np.int64) for k in key)
            starts = self.offset + rows * self.sample_bytes + cols * self.entry_bytes
            return starts, self.read_bytes, rows.shape + self.shape[2:]
        rows = np.asarray(key, dtype=np.int64)
        if self.read_bytes != self.entry_bytes:
            raise ValueError(f"/{self.name}: a field is read one entry per (row, view) pair")
        return self.offset + rows * self.sample_bytes, self.sample_bytes, rows.shape + self.shape[1:]


def truncated(path: Path, names) -> StoreError:
    listed = ", ".join(f"/{name}" for name in names)
    return StoreError(f"{path}: dataset {listed} ends past the end of the file; the file is truncated: re-fetch or "
                      f"regenerate it")


def take_entries(keyed: list[tuple[DatasetRows, object]]) -> list[np.ndarray]:
    """`rows[key]` for each (rows, key) pair of datasets in one file, read as one batch. The arrays are writable,
    like any array a reader hands out."""
    first = keyed[0][0]
    requests = [rows.request(key) for rows, key in keyed]
    data, failed = read_entries(first.handle.fd, [(starts, size) for starts, size, _ in requests])
    if failed:
        raise truncated(first.path, [rows.name for rows, _ in keyed])
    return [raw.view(rows.dtype).reshape(shape) for raw, (rows, _), (_, _, shape) in zip(data, keyed, requests)]


def float32_entries(rows: DatasetRows, key) -> np.ndarray:
    """`rows[key]` widened to float32 (the gather of targets, logits, features), widened as it is read."""
    starts, size, shape = rows.request(key)
    if rows.dtype != np.float16:
        return take_entries([(rows, key)])[0].astype(np.float32, copy=False)
    out, failed = read_float16_rows(rows.handle.fd, starts, size // 2)
    if failed:
        raise truncated(rows.path, [rows.name])
    return out.reshape(shape)


def dense_topk_entries(indices: DatasetRows, values: DatasetRows, key, num_classes: int) -> np.ndarray:
    """float32 [..., num_classes]: the top-k entries at `key` densified (values.densify_topk) as they are read."""
    index_starts, _, shape = indices.request(key)
    value_starts, _, _ = values.request(key)
    k = shape[-1]
    out, failed, bad = read_topk_rows(indices.handle.fd, index_starts, value_starts, k, num_classes)
    if failed:
        raise truncated(indices.path, [indices.name, values.name])
    if bad:
        raise StoreError(f"{indices.path}: /{indices.name} holds {bad} class ids outside 0..{num_classes - 1}; the "
                         f"store is damaged: run labelopt labels verify on it and regenerate it")
    return out.reshape(shape[:-1] + (num_classes,))
