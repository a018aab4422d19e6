"""A batch of scattered entries read from one file, fast: the gather of a contiguous store.

Each entry of a batch is one positioned read (pread). On the 2-core VM this was measured on, a read costs about
1 us of kernel time whatever its size up to 4 KiB, and most of it is the page-cache lookup, not the system call
(0.24 us): submitting all of a batch's reads in one io_submit (Linux AIO) or one io_uring_enter measured the same.
So a batch costs what its reads cost, and three things keep it near that floor:
- the loop over entries is compiled (store/read_kernels.py, numba, which FFCV already brings) and runs without
  the GIL;
- a few helper threads read beside the caller. Caller and helpers claim chunks of the batch with an atomic
  counter inside the compiled loop, so no thread waits for the GIL between chunks, and a helper that is not
  scheduled (cores busy with FFCV's loader threads) has claimed nothing and costs the batch nothing; one that is
  preempted mid-chunk delays it by that chunk's remaining reads;
- float16 rows are widened, and top-k rows densified, by the thread that read them, so that work is split too.
Without numba the same reads run in Python on the caller's thread (os.preadv into the output, no copy), and
store/values.py widens and densifies: the same numbers, bit for bit.
"""
from __future__ import annotations

import contextlib
import functools
import os
import threading

import numpy as np

from .values import as_float32, densify_topk

CHUNK = 16  # units per claim: a claim costs nanoseconds, and a late helper leaves at most this much to wait for
MAX_HELPERS = 3  # beyond ~4 readers the page-cache lookups stop scaling; cores are for training

_kernels = None  # the module store/read_kernels.py, or False where it cannot be loaded (no numba, no libc pread)


def prepare() -> None:
    """Compile the loops and start the helpers now (~1 s, once per process) rather than inside the first gather."""
    global _kernels
    if _kernels is None:
        try:
            from . import read_kernels
        except (ImportError, OSError, AttributeError):
            _kernels = False
        else:
            read_kernels.compile_all(CHUNK)
            _kernels = read_kernels
    if _kernels and helper_count() > 0:
        _start_helpers()


def _loops():
    """The compiled loops' module, compiled on first use; False where they cannot be had."""
    if _kernels is None:
        prepare()
    return _kernels


@contextlib.contextmanager
def reads_in_python():
    """Read on the caller's thread in Python for a while, as where numba is missing: for side-by-side figures."""
    global _kernels
    saved, _kernels = _loops(), False
    try:
        yield
    finally:
        _kernels = saved


@functools.lru_cache(maxsize=1)  # asked on every batch; a process's cores and its node's process count stay put
def helper_count() -> int:
    """Up to MAX_HELPERS, leaving each of the node's processes (torchrun's LOCAL_WORLD_SIZE) a core of its own."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        processes = 1
    return max(0, min(MAX_HELPERS, cores // processes - 1))


class _Helpers:
    """Threads that wait for a batch and help read it. A newer batch replaces an older one; every caller reads
    what is left of its own batch, so a batch never depends on a helper coming."""

    def __init__(self, count: int):
        self._wake = threading.Condition()
        self._batch: tuple | None = None
        self._generation = 0
        for _ in range(count):
            threading.Thread(target=self._serve, name="labelopt-store-reads", daemon=True).start()

    def _serve(self) -> None:
        seen = 0
        while True:
            with self._wake:
                while self._generation == seen:
                    self._wake.wait()
                seen, (loop, args) = self._generation, self._batch
            loop(*args)

    def offer(self, batch: tuple) -> None:
        with self._wake:
            self._batch, self._generation = batch, self._generation + 1
            self._wake.notify_all()


_helpers: _Helpers | None = None
_helpers_made = threading.Lock()


def _start_helpers() -> _Helpers:
    global _helpers
    with _helpers_made:
        if _helpers is None:
            _helpers = _Helpers(helper_count())
        return _helpers


def _forget_helpers() -> None:
    # A forked child has none of its parent's threads (and maybe a lock one of them held): it starts its own.
    global _helpers, _helpers_made
    _helpers, _helpers_made = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_helpers)


def _run(name: str, units: int, *args, after: tuple = ()) -> np.ndarray:
    """One compiled loop over `units` units, shared with the helpers: loop(*args, counters, CHUNK, *after); the
    batch's counters once every unit is done."""
    state = np.zeros(_kernels.COUNTERS, dtype=np.int64)
    loop, args = getattr(_kernels, name), args + (state, CHUNK) + after
    if units > CHUNK and helper_count() > 0:
        _start_helpers().offer((loop, args))
    loop(*args)
    _kernels.wait_finished(state, units)
    return state


def _python_read(fd: int, starts: np.ndarray, size: int, out: memoryview) -> int:
    """The entries' bytes into `out`, one after another; how many could not be read whole."""
    failed = 0
    for k, start in enumerate(starts.tolist()):
        entry, got = out[k * size:(k + 1) * size], 0
        while got < size:
            n = os.preadv(fd, [entry[got:]], start + got)
            if n <= 0:
                break
            got += n
        failed += got != size
    return failed


def _starts(offsets) -> np.ndarray:
    return np.ascontiguousarray(offsets, dtype=np.int64).reshape(-1)


def read_entries(fd: int, requests: list[tuple[np.ndarray, int]]) -> tuple[list[np.ndarray], int]:
    """For each request (file offsets, entry size in bytes): the entries' bytes one after another in a new uint8
    array; and how many entries in all could not be read whole (past the end of the file, an I/O error). All
    requests are one batch, so the helpers are woken once."""
    starts, sizes, places, outputs, end = [], [], [], [], 0
    for offsets, size in requests:
        offsets = _starts(offsets)
        starts.append(offsets)
        sizes.append(np.full(offsets.size, size, dtype=np.int64))
        places.append(end + np.arange(offsets.size, dtype=np.int64) * size)  # where each entry goes in `out`
        outputs.append((end, offsets.size * size))
        end += -(-offsets.size * size // 64) * 64  # each request's bytes start aligned, whatever the dtype
    out = np.empty(end, dtype=np.uint8)
    if _loops():
        starts = np.concatenate(starts)
        state = _run("read_bytes", starts.size, fd, starts, np.concatenate(sizes), np.concatenate(places), out)
        failed = int(state[_kernels.FAILED])
    else:
        failed = sum(_python_read(fd, s, size, memoryview(out)[at:]) for s, (at, _), (_, size)
                     in zip(starts, outputs, requests))
    return [out[at:at + length] for at, length in outputs], failed


def read_float16_rows(fd: int, offsets, width: int) -> tuple[np.ndarray, int]:
    """float32 [len(offsets), width]: the `width` float16 numbers at each offset, widened exactly; and how many
    rows could not be read whole."""
    starts = _starts(offsets)
    if not _loops():
        (raw,), failed = read_entries(fd, [(starts, 2 * width)])
        return as_float32(raw.view("<f2").reshape(starts.size, width)), failed
    out = np.empty((starts.size, width), dtype=np.float32)
    return out, int(_run("read_half_rows", starts.size, fd, starts, out)[_kernels.FAILED])


def read_topk_rows(fd: int, index_offsets, value_offsets, k: int, num_classes: int) -> tuple[np.ndarray, int, int]:
    """float32 [n, num_classes]: top-k entries (k int32 class ids at each index offset, k float16 values at the
    value offset) densified as values.densify_topk does; a count that is non-zero when some row could not be read
    whole; how many class ids were out of range (a store whose sha256 checks out has none)."""
    index_starts, value_starts = _starts(index_offsets), _starts(value_offsets)
    if not _loops():
        (ids, values), failed = read_entries(fd, [(index_starts, 4 * k), (value_starts, 2 * k)])
        ids = ids.view("<i4").reshape(-1, k)
        bad = int(((ids < 0) | (ids >= num_classes)).sum())
        if failed or bad:
            return np.empty((index_starts.size, num_classes), dtype=np.float32), failed, bad
        return densify_topk(ids, values.view("<f2").reshape(-1, k), num_classes), failed, bad
    out = np.empty((index_starts.size, num_classes), dtype=np.float32)
    state = _run("read_topk_rows", index_starts.size, fd, index_starts, value_starts, out, after=(k,))
    return out, int(state[_kernels.FAILED]), int(state[_kernels.BAD_INDEX])
