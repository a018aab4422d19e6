"""A batch of scattered entries read from one file, fast: the gather of a contiguous store.

Each entry of a batch is one positioned read (pread). On the 2-core machine this was measured on, a read costs
about 0.8 us of kernel time whatever its size up to 4 KiB, and most of it is the page-cache lookup, not the system
call: submitting all of a batch's reads in one io_submit (Linux AIO) measured the same. So a batch costs what its
reads cost, and two things keep it near that floor:
- the loop over entries is compiled (numba, which FFCV already brings) and releases the GIL: no Python per entry;
- a few helper threads take chunks of the batch beside the caller. The caller takes chunks too, so a helper that
  is not scheduled (cores busy with FFCV's loader threads) has claimed nothing and costs the batch nothing; one that
  is preempted mid-chunk delays it by that chunk (64 reads).
Without numba the same loop runs in Python (os.preadv into the output, no copy).
"""
from __future__ import annotations

import itertools
import os
import threading
import time

import numpy as np

CHUNK = 64  # entries per claim: small enough that a late helper delays little, large enough to amortise a claim
MAX_HELPERS = 3  # beyond ~4 readers the page-cache lookups stop scaling; cores are for training


def _python_kernel(fd: int, starts: np.ndarray, lo: int, hi: int, size: int, out: np.ndarray) -> int:
    view = memoryview(out)
    failed = 0
    for k in range(lo, hi):
        entry, got = view[k * size:(k + 1) * size], 0
        while got < size:
            n = os.preadv(fd, [entry[got:]], int(starts[k]) + got)
            if n <= 0:
                break
            got += n
        failed += got != size
    return failed


def _compiled_kernel():
    """The same loop compiled, calling libc's pread directly; None where numba or libc is not there."""
    try:
        import ctypes

        import numba
        pread = ctypes.CDLL(None, use_errno=True).pread
    except (ImportError, OSError, AttributeError):
        return None
    pread.restype = ctypes.c_ssize_t
    pread.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int64]

    @numba.njit(nogil=True)
    def read_chunk(fd, starts, lo, hi, size, out):
        base, failed = out.ctypes.data, 0
        for k in range(lo, hi):
            got = 0
            while got < size:  # a short read (network filesystems) continues where it stopped
                n = pread(fd, base + k * size + got, size - got, starts[k] + got)
                if n <= 0:  # end of file (a truncated store) or an I/O error
                    break
                got += n
            if got != size:
                failed += 1
        return failed

    return read_chunk


_kernel = None


def prepare() -> None:
    """Compile the read loop now (~0.3 s, once per process) rather than inside the first batch's gather."""
    global _kernel
    if _kernel is None:
        kernel = _compiled_kernel()
        if kernel is not None:
            kernel(0, np.zeros(0, dtype=np.int64), 0, 0, 1, np.zeros(0, dtype=np.uint8))  # no reads: compiles
        _kernel = kernel or _python_kernel


def _read_chunk(fd: int, starts: np.ndarray, lo: int, hi: int, size: int, out: np.ndarray) -> int:
    if _kernel is None:
        prepare()
    return _kernel(fd, starts, lo, hi, size, out)


class _Batch:
    """One batch's reads (one or more runs of equal-size entries), claimed chunk by chunk by whichever thread asks
    next."""

    def __init__(self, fd: int, runs: list[tuple[np.ndarray, int, np.ndarray]]):
        self.fd, self.runs = fd, runs
        self.plan = [(r, lo, min(lo + CHUNK, starts.size)) for r, (starts, _, _) in enumerate(runs)
                     for lo in range(0, starts.size, CHUNK)]
        self._claims = itertools.count()  # next() on a count is atomic under the GIL
        self.failed: list[int] = []  # one count per finished chunk; list.append is atomic too
        self.finished = threading.Event()
        if not self.plan:
            self.finished.set()

    def work(self) -> None:
        while (chunk := next(self._claims)) < len(self.plan):
            run, lo, hi = self.plan[chunk]
            starts, size, out = self.runs[run]
            self.failed.append(_read_chunk(self.fd, starts, lo, hi, size, out))
            if len(self.failed) == len(self.plan):
                self.finished.set()

    def wait(self) -> int:
        """The number of entries not read whole, once every chunk is done."""
        while not self.finished.is_set():  # at most a helper's last chunk (~50 us): yield rather than sleep
            time.sleep(0)
        return sum(self.failed)


class _Helpers:
    """Threads that wait for a batch and help read it; one batch at a time (a second caller reads alone)."""

    def __init__(self, count: int):
        self.busy = threading.Lock()
        self._wake = threading.Condition()
        self._batch: _Batch | None = None
        self._generation = 0
        for _ in range(count):
            threading.Thread(target=self._serve, name="labelopt-store-reads", daemon=True).start()

    def _serve(self) -> None:
        seen = 0
        while True:
            with self._wake:
                while self._generation == seen:
                    self._wake.wait()
                seen, batch = self._generation, self._batch
            batch.work()

    def offer(self, batch: _Batch) -> None:
        with self._wake:
            self._batch, self._generation = batch, self._generation + 1
            self._wake.notify_all()


_helpers: _Helpers | None = None
_helpers_made = threading.Lock()


def _forget_helpers() -> None:
    # A forked child has none of its parent's threads (and maybe a lock one of them held): it starts its own.
    global _helpers, _helpers_made
    _helpers, _helpers_made = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_helpers)


def helper_count() -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(MAX_HELPERS, cores - 1))


def read_entries(fd: int, requests: list[tuple[np.ndarray, int]]) -> tuple[list[np.ndarray], int]:
    """For each request (int64 file offsets, entry size in bytes): the entries' bytes one after another in a new
    uint8 array; and how many entries in all could not be read whole (past the end of the file, an I/O error).
    All requests are one batch, so the helpers are woken once."""
    global _helpers
    runs = []
    for starts, size in requests:
        starts = np.ascontiguousarray(starts, dtype=np.int64).reshape(-1)
        runs.append((starts, size, np.empty(starts.size * size, dtype=np.uint8)))
    batch = _Batch(fd, runs)
    outputs = [out for _, _, out in runs]
    if len(batch.plan) > 1 and helper_count() > 0:
        with _helpers_made:
            if _helpers is None:
                _helpers = _Helpers(helper_count())
        if _helpers.busy.acquire(blocking=False):
            try:
                _helpers.offer(batch)
                batch.work()
                return outputs, batch.wait()
            finally:
                _helpers.busy.release()
    batch.work()
    return outputs, batch.wait()
