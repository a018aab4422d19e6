"""The compiled loops behind store/entry_reads.py: positioned reads of a batch's entries, decoded where they land.

Every loop runs without the GIL and takes its work in chunks of units (an entry, or a row) from a shared atomic
counter, so the caller and entry_reads' helper threads split a batch between them; `wait_finished` spins until
every unit is done. Three loops:
- `read_bytes`: each entry's bytes, one after another (any dtype; the caller views them);
- `read_half_rows`: float16 entries (targets, logits, features) widened to float32 in their output row, exactly
  (every pattern: tests), by the CPU's own conversion where it has one (x86's F16C; 64-bit ARM, not tried):
  ~10x faster than integer operations, which other CPUs use; a NaN stays a NaN, quieted as torch quiets it;
- `read_topk_rows`: a top-k entry's indices and values read (one read where they lie side by side, as in a v3
  store; two in a v2 store) and densified in place, with the same float32 operations in the same order as
  values.densify_topk, so both give the same bits.
Widening and densifying where the entries land means they run on every reading thread, not after the reads on
one. entry_reads imports this module when a store is first read in place, so numba is loaded only then; where
numba or libc's pread is missing the import fails and entry_reads reads in Python.
"""
from __future__ import annotations

import ctypes
import platform

import llvmlite.binding
import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

# The batch's shared counters (an int64 array): the next chunk to claim, units finished, units not read whole
# (past the end of the file, an I/O error), top-k entries with a class index out of range.
NEXT, FINISHED, FAILED, BAD_INDEX = 0, 1, 2, 3
COUNTERS = 4

_libc = ctypes.CDLL(None, use_errno=True)
pread, sched_yield = _libc.pread, _libc.sched_yield
pread.restype, sched_yield.restype = ctypes.c_ssize_t, ctypes.c_int
pread.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int64]
sched_yield.argtypes = []


@intrinsic
def fetch_add(typingctx, counters, index, amount):
    """counters[index] += amount as one atomic instruction; the value before."""
    signature = types.int64(counters, types.intp, types.int64)

    def codegen(context, builder, sig, args):
        array_type = sig.args[0]
        array = context.make_array(array_type)(context, builder, args[0])
        pointer = cgutils.get_item_pointer(context, builder, array_type, array, [args[1]])
        return builder.atomic_rmw("add", pointer, args[2], "seq_cst")

    return signature, codegen


@numba.njit(nogil=True, inline="always")
def read_whole(fd, address, size, offset):
    """True when all `size` bytes at `offset` reached `address` (a short read continues where it stopped)."""
    got = 0
    while got < size:
        n = pread(fd, address + got, size - got, offset + got)
        if n <= 0:  # end of file (a truncated store) or an I/O error
            return False
        got += n
    return True


@intrinsic
def cpu_widened_bits(typingctx, half_bits):
    """A float16 bit pattern's float32 bit pattern, converted by the CPU (one instruction; LLVM vectorizes the loop)."""
    signature = types.uint32(types.uint16)

    def codegen(context, builder, sig, args):
        half = builder.bitcast(args[0], ir.HalfType())
        return builder.bitcast(builder.fpext(half, ir.FloatType()), ir.IntType(32))

    return signature, codegen


@numba.njit(nogil=True, inline="always")
def widen_by_cpu(half, out):
    """float16 bit patterns (uint16) -> float32 bit patterns (uint32) by the CPU: exact; NaNs come back quiet."""
    for j in range(half.size):
        out[j] = cpu_widened_bits(half[j])


@numba.njit(nogil=True, inline="always")
def widen_in_software(half, out):
    """float16 bit patterns (uint16) -> float32 bit patterns (uint32), as numpy's astype: exact, NaN payloads kept."""
    for j in range(half.size):
        h = np.int64(half[j])
        sign, exponent, mantissa = (h >> 15) << 31, (h >> 10) & 0x1F, h & 0x3FF
        if exponent == 0x1F:  # infinities and NaNs (payload kept)
            out[j] = sign | 0x7F800000 | (mantissa << 13)
        elif exponent != 0:
            out[j] = sign | ((exponent + 112) << 23) | (mantissa << 13)
        elif mantissa == 0:
            out[j] = sign
        else:  # subnormal half: a normal float32 once its leading bit is shifted up to the implicit one
            shifted, biased = mantissa, 113
            while (shifted & 0x400) == 0:
                shifted <<= 1
                biased -= 1
            out[j] = sign | (biased << 23) | ((shifted & 0x3FF) << 13)


def cpu_converts_half() -> bool:
    """Whether LLVM turns a float16 -> float32 conversion into an instruction here, not a library call."""
    if platform.machine().lower() in ("aarch64", "arm64"):
        return True
    try:
        return bool(llvmlite.binding.get_host_cpu_features().get("f16c"))
    except RuntimeError:  # LLVM cannot tell this CPU's features
        return False


widen = widen_by_cpu if cpu_converts_half() else widen_in_software


@numba.njit(nogil=True, inline="always")
def claim(state, chunk, n):
    """The units [lo, hi) of the next unclaimed chunk; lo == hi once none is left."""
    lo = min(fetch_add(state, NEXT, 1) * chunk, n)
    return lo, min(lo + chunk, n)


@numba.njit(nogil=True, inline="always")
def report(state, units, failed, bad):
    """A chunk done: its failures first, then its units, so a caller that sees every unit finished sees them."""
    if failed:
        fetch_add(state, FAILED, failed)
    if bad:
        fetch_add(state, BAD_INDEX, bad)
    fetch_add(state, FINISHED, units)


@numba.njit(nogil=True)
def read_bytes(fd, starts, sizes, places, out, state, chunk):
    n, base = starts.size, out.ctypes.data
    while True:
        lo, hi = claim(state, chunk, n)
        if lo == hi:
            return
        failed = 0
        for k in range(lo, hi):
            if not read_whole(fd, base + places[k], sizes[k], starts[k]):
                failed += 1
        report(state, hi - lo, failed, 0)


@numba.njit(nogil=True)
def read_half_rows(fd, starts, out, state, chunk):
    n, width = out.shape
    half = np.empty(width, dtype=np.uint16)
    bits = out.view(np.uint32)
    while True:
        lo, hi = claim(state, chunk, n)
        if lo == hi:
            return
        failed = 0
        for k in range(lo, hi):
            if read_whole(fd, half.ctypes.data, 2 * width, starts[k]):
                widen(half, bits[k])
            else:
                failed += 1
        report(state, hi - lo, failed, 0)


@numba.njit(nogil=True)
def read_topk_rows(fd, index_starts, value_starts, out, state, chunk, k):
    n, classes = out.shape
    entry = np.empty(6 * k, dtype=np.uint8)  # class ids, then values: one read where the file keeps them so (v3)
    indices, half = entry[:4 * k].view(np.int32), entry[4 * k:].view(np.uint16)
    widened = np.empty(k, dtype=np.uint32)
    values = widened.view(np.float32)
    share = np.float32(classes - k)
    while True:
        lo, hi = claim(state, chunk, n)
        if lo == hi:
            return
        failed, bad = 0, 0
        for r in range(lo, hi):
            if value_starts[r] == index_starts[r] + 4 * k:
                whole = read_whole(fd, entry.ctypes.data, 6 * k, index_starts[r])
            else:  # a v2 store: two datasets
                whole = (read_whole(fd, entry.ctypes.data, 4 * k, index_starts[r])
                         and read_whole(fd, entry.ctypes.data + 4 * k, 2 * k, value_starts[r]))
            if not whole:
                failed += 1
                continue
            widen(half, widened)
            row = out[r]
            if classes > k:
                kept = values[0]
                for j in range(1, k):  # left to right, as densify_topk adds its columns
                    kept += values[j]
                missing = np.float32(1.0) - kept
                if missing < np.float32(0.0):  # float16 rounding can keep a hair more than 1
                    missing = np.float32(0.0)
                row[:] = missing / share
            else:
                row[:] = np.float32(0.0)
            for j in range(k):
                c = indices[j]
                if c < 0 or c >= classes:
                    bad += 1
                else:
                    row[c] = values[j]
        report(state, hi - lo, failed, bad)


@numba.njit(nogil=True)
def wait_finished(state, n):
    while fetch_add(state, FINISHED, 0) < n:  # a helper's last chunk: microseconds
        sched_yield()


def compile_all(chunk: int) -> None:
    """Compile each loop for the argument types entry_reads passes, with batches of no units (nothing is read)."""
    state, none = np.zeros(COUNTERS, dtype=np.int64), np.zeros(0, dtype=np.int64)
    read_bytes(0, none, none, none, np.zeros(0, dtype=np.uint8), state, chunk)
    read_half_rows(0, none, np.zeros((0, 1), dtype=np.float32), state, chunk)
    read_topk_rows(0, none, none, np.zeros((0, 2), dtype=np.float32), state, chunk, 1)
    wait_finished(state, 0)
