"""A compressed store's chunks made on every core: the bytes HDF5's own filter pipeline would store, written as they
are with `write_direct_chunk`.

HDF5 runs a dataset's filters in the thread that writes, one chunk after another: assembling a 53 MiB gzip store
of 2,000 CIFAR images x 162 views took 2.4 s on one core, longer than a GPU takes to label it. zlib releases the
GIL, so the chunks of the next blocks are compressed in threads while the file takes the finished ones in order.

The pipeline is the one `writer.storage_options` asks h5py for, in HDF5's order: byte shuffle (compound entries
only), deflate at S.GZIP_LEVEL (a zlib stream, as HDF5's deflate filter writes it), then a Fletcher-32 checksum
of the compressed bytes appended little-endian. Tests compare every chunk with the one h5py writes, byte for byte.
"""
from __future__ import annotations

import os
import zlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable, Iterator

import numpy as np

from . import schema as S

FLETCHER_WORDS = 360  # 16-bit words HDF5 sums before folding its two sums
_WEIGHTS = np.arange(FLETCHER_WORDS, 0, -1, dtype=np.int64)  # word j of a block enters the second sum (360 - j) times
_UINT32 = 0xFFFFFFFF


def _fold(value: int) -> int:
    return (value & 0xFFFF) + (value >> 16)


def fletcher32(data: bytes) -> int:
    """HDF5's Fletcher-32 of `data` (H5_checksum_fletcher32): big-endian 16-bit words, sums kept in uint32 and
    folded every 360 words. Each block's two sums are taken at once (numpy); only the folds run one by one."""
    words = np.frombuffer(data, dtype=">u2", count=len(data) // 2).astype(np.int64)
    sum1 = sum2 = 0
    whole = len(words) // FLETCHER_WORDS * FLETCHER_WORDS
    blocks = words[:whole].reshape(-1, FLETCHER_WORDS)
    sizes = [FLETCHER_WORDS] * len(blocks)
    totals, weighted = blocks.sum(1).tolist(), (blocks @ _WEIGHTS).tolist()
    rest = words[whole:]
    if len(rest):
        sizes.append(len(rest))
        totals.append(int(rest.sum()))
        weighted.append(int(rest @ _WEIGHTS[FLETCHER_WORDS - len(rest):]))
    for size, total, weight in zip(sizes, totals, weighted):
        # The block's words added one by one, in uint32 as HDF5's C does: sum2 gains sum1 after every word.
        sum2 = _fold((sum2 + size * sum1 + weight) & _UINT32)
        sum1 = _fold((sum1 + total) & _UINT32)
    if len(data) % 2:  # an odd last byte is the high half of a word
        sum1 += data[-1] << 8
        sum2 = _fold((sum2 + sum1) & _UINT32)
        sum1 = _fold(sum1 & _UINT32)
    return (_fold(sum2) << 16) | _fold(sum1)


def byte_shuffle(rows: np.ndarray) -> bytes:
    """HDF5's shuffle filter: the first byte of every element, then every second byte, and so on."""
    size = rows.dtype.itemsize
    return np.ascontiguousarray(rows).view(np.uint8).reshape(-1, size).T.tobytes()


def gzip_chunk(rows: np.ndarray, chunk_rows: int) -> bytes:
    """What a gzip store (writer.storage_options) holds for the chunk of `rows`: padded with zeros (HDF5's fill
    value) to `chunk_rows` rows where the dataset ends inside the chunk, shuffled when its elements are compound
    (top-k entries), deflated, then checksummed."""
    if len(rows) < chunk_rows:
        padded = np.zeros((chunk_rows, *rows.shape[1:]), dtype=rows.dtype)
        padded[:len(rows)] = rows
        rows = padded
    shuffle = rows.dtype.fields is not None
    raw = byte_shuffle(rows) if shuffle else np.ascontiguousarray(rows).tobytes()
    packed = zlib.compress(raw, S.GZIP_LEVEL)
    return packed + fletcher32(packed).to_bytes(4, "little")


MAX_WORKERS = 16  # each holds a block's rows and its chunks (about 15 MB for 256 images x 162 views x 100 classes)


def chunk_workers() -> int:
    """Threads for compressing: the cores this process may run on, at most MAX_WORKERS."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_WORKERS))


def made_ahead(items: Iterable, make: Callable, workers: int) -> Iterator[tuple]:
    """(item, make(item)) in the order of `items`, each made in one of `workers` threads while the caller takes
    the earlier ones; at most workers + 1 items are held at once."""
    with ThreadPoolExecutor(workers, thread_name_prefix="labelopt-chunks") as pool:
        waiting: deque[tuple[object, Future]] = deque()
        for item in items:
            waiting.append((item, pool.submit(make, item)))
            if len(waiting) > workers:
                first, future = waiting.popleft()
                yield first, future.result()
        while waiting:
            first, future = waiting.popleft()
            yield first, future.result()


def write_rows(dset, start: int, rows: np.ndarray, chunk_rows: int, compression: str,
               pool: ThreadPoolExecutor) -> None:
    """`rows` into `dset` from row `start` (a chunk boundary): a gzip dataset's chunks compressed in `pool`'s
    threads and written as they are; any other storage written by HDF5 itself."""
    if compression != "gzip":
        dset[start:start + len(rows)] = rows
        return
    starts = range(0, len(rows), chunk_rows)
    chunks = pool.map(lambda first: gzip_chunk(rows[first:first + chunk_rows], chunk_rows), starts)
    for first, chunk in zip(starts, chunks):
        write_chunk(dset, start + first, chunk)


def write_chunk(dset, first_row: int, chunk: bytes) -> None:
    """A chunk made by gzip_chunk stored as it is, at the chunk that starts at row `first_row`."""
    dset.id.write_direct_chunk((first_row,) + (0,) * (dset.ndim - 1), chunk)
