"""store/entry_reads.py and read_kernels.py: a batch of scattered entries read by the caller and helper threads,
compiled or not, gives exactly the bytes at those offsets, float16 rows widened as numpy widens them and top-k rows
densified as values.densify_topk does, bit for bit; a short file is counted, not crashed on; concurrent callers and
forked children read correctly."""
import os
import threading

import numpy as np
import pytest

from labelopt.store import entry_reads
from labelopt.store.values import densify_topk

ENTRY = 24


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("entries") / "data.bin"
    data = np.random.default_rng(0).integers(0, 256, 5000 * ENTRY, dtype=np.uint8)
    path.write_bytes(data.tobytes())
    fd = os.open(path, os.O_RDONLY)
    yield fd, data.reshape(5000, ENTRY)
    os.close(fd)


def expected(data, rows, size):
    flat = data.reshape(-1)
    return np.concatenate([flat[r * ENTRY:r * ENTRY + size] for r in rows]) if len(rows) else flat[:0]


@pytest.fixture(params=["compiled", "python"])
def kernel(request, monkeypatch):
    monkeypatch.setattr(entry_reads, "_kernels", None if request.param == "compiled" else False)
    return request.param


@pytest.mark.parametrize("helpers", [0, 1, 3])
def test_a_batch_reads_exactly_the_bytes_at_its_offsets(data_file, kernel, helpers, monkeypatch):
    fd, data = data_file
    monkeypatch.setattr(entry_reads, "helper_count", lambda: helpers)
    monkeypatch.setattr(entry_reads, "_helpers", None)
    rng = np.random.default_rng(helpers)
    # Runs of several sizes and lengths that are not multiples of a chunk, one empty.
    rows = [rng.integers(0, 5000, n) for n in (3 * entry_reads.CHUNK + 5, 1, 0, 200)]
    sizes = [ENTRY, 7, ENTRY, 16]
    out, failed = entry_reads.read_entries(fd, [(r * ENTRY, s) for r, s in zip(rows, sizes)])
    assert failed == 0
    for got, r, s in zip(out, rows, sizes):
        assert got.dtype == np.uint8 and got.flags.writeable
        assert np.array_equal(got, expected(data, r, s))



def test_reads_in_python_gives_the_same_bytes_and_then_compiled_reads_again(data_file):
    fd, data = data_file
    rows = np.random.default_rng(5).integers(0, 5000, 100)
    compiled = entry_reads._loops()
    with entry_reads.reads_in_python():
        assert entry_reads._loops() is False
        (inside,), failed = entry_reads.read_entries(fd, [(rows * ENTRY, ENTRY)])
    assert failed == 0 and np.array_equal(inside, expected(data, rows, ENTRY))
    assert entry_reads._loops() is compiled

def test_entries_past_the_end_are_counted_not_read(data_file, kernel):
    fd, data = data_file
    starts = np.array([0, 4999 * ENTRY + 10, 6000 * ENTRY] + [ENTRY] * 200, dtype=np.int64)
    _, failed = entry_reads.read_entries(fd, [(starts, ENTRY)])
    assert failed == 2  # one entry cut short by the end of the file, one wholly past it


def test_two_threads_reading_at_once_each_get_their_own_bytes(data_file):
    fd, data = data_file
    errors = []

    def reader(seed):
        rng = np.random.default_rng(seed)
        for _ in range(50):
            rows = rng.integers(0, 5000, 300)
            out, failed = entry_reads.read_entries(fd, [(rows * ENTRY, ENTRY)])
            if failed or not np.array_equal(out[0], expected(data, rows, ENTRY)):
                errors.append(seed)

    threads = [threading.Thread(target=reader, args=(s,)) for s in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_reads_with_its_own_helpers(data_file, monkeypatch):
    fd, data = data_file
    monkeypatch.setattr(entry_reads, "helper_count", lambda: 2)
    rows = np.arange(0, 5000, 7)
    entry_reads.read_entries(fd, [(rows * ENTRY, ENTRY)])  # the parent's helpers exist before the fork
    parents = entry_reads._helpers
    pid = os.fork()
    if pid == 0:
        ok = False
        try:
            # Not the parent's helpers (their threads are not in the child, and a lock one of them held stays held).
            fresh = entry_reads._helpers is None
            out, failed = entry_reads.read_entries(fd, [(rows * ENTRY, ENTRY)])
            ok = fresh and entry_reads._helpers is not parents and failed == 0 and np.array_equal(
                out[0], expected(data, rows, ENTRY))
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_float16_rows_widen_every_bit_pattern_as_numpy_does(tmp_path, kernel):
    every = np.arange(2 ** 16, dtype=np.uint16)  # normals, subnormals, zeros, infinities, NaN payloads
    path = tmp_path / "halves.bin"
    path.write_bytes(every.tobytes())
    fd = os.open(path, os.O_RDONLY)
    try:
        width = 256
        order = np.random.default_rng(0).permutation(2 ** 16 // width)
        out, failed = entry_reads.read_float16_rows(fd, order * width * 2, width)
    finally:
        os.close(fd)
    assert failed == 0 and out.dtype == np.float32 and out.shape == (order.size, width)
    want = every.view(np.float16).astype(np.float32).reshape(-1, width)[order]
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(out), nan)  # NaNs stay NaNs (torch, the fallback, may quiet their payload)
    assert np.array_equal(out.view(np.uint32)[~nan], want.view(np.uint32)[~nan])  # every other value, bit for bit



@pytest.mark.parametrize("widen", ["widen_by_cpu", "widen_in_software"])
def test_both_widening_loops_are_exact_for_every_bit_pattern(widen):
    """The compiled loops widen with the CPU's conversion where it has one, else with integer operations: each
    exact wherever it is used (the CPU's only where this machine has it)."""
    read_kernels = pytest.importorskip("labelopt.store.read_kernels")
    if widen == "widen_by_cpu" and not read_kernels.cpu_converts_half():
        pytest.skip("this CPU has no float16 conversion instruction")
    every = np.arange(2 ** 16, dtype=np.uint16)
    out = np.empty(every.size, dtype=np.uint32)
    getattr(read_kernels, widen)(every, out)
    want = every.view(np.float16).astype(np.float32)
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(out.view(np.float32)), nan)
    assert np.array_equal(out[~nan], want.view(np.uint32)[~nan])
    if widen == "widen_in_software":  # it keeps NaN payloads too, as numpy does
        assert np.array_equal(out, want.view(np.uint32))

def topk_file(tmp_path, ids, values, side_by_side):
    """A file of top-k entries as a v3 store keeps them (each row's ids, then its values) or as v2 did (all ids,
    then all values); and a function giving the (ids, values) offsets of rows."""
    path, k = tmp_path / "topk.bin", ids.shape[1]
    ids, values = ids.astype("<i4"), values.astype("<f2")
    if side_by_side:
        path.write_bytes(b"".join(i.tobytes() + v.tobytes() for i, v in zip(ids, values)))
        return path, lambda rows: (rows * 6 * k, rows * 6 * k + 4 * k)
    path.write_bytes(ids.tobytes() + values.tobytes())
    return path, lambda rows: (rows * 4 * k, ids.size * 4 + rows * 2 * k)


@pytest.mark.parametrize("side_by_side", [True, False], ids=["v3", "v2"])
@pytest.mark.parametrize("classes", [40, 7])  # k < C; k == C (nothing left to spread)
def test_topk_rows_densify_to_the_same_bits_as_densify_topk(tmp_path, kernel, classes, side_by_side):
    rng = np.random.default_rng(classes)
    rows, k = 300, 7
    ids = np.stack([rng.permutation(classes)[:k] for _ in range(rows)])
    values = (rng.dirichlet(np.ones(classes), rows)[:, :k] * rng.uniform(0.5, 1.6, (rows, 1))).astype(np.float16)
    values[:3] = [np.float16(0.3)] * k  # 2.1 kept: clamped to nothing missing
    values[3, 0] = np.float16(6e-8)  # a subnormal
    path, offsets = topk_file(tmp_path, ids, values, side_by_side)
    pick = rng.permutation(rows)
    fd = os.open(path, os.O_RDONLY)
    try:
        out, failed, bad = entry_reads.read_topk_rows(fd, *offsets(pick), k, classes)
    finally:
        os.close(fd)
    assert failed == 0 and bad == 0
    want = densify_topk(ids[pick], values[pick], classes)
    assert np.array_equal(out.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("side_by_side", [True, False], ids=["v3", "v2"])
def test_topk_rows_count_class_ids_out_of_range_and_short_reads(tmp_path, kernel, side_by_side):
    ids = np.array([[0, 1], [2, 9], [-1, 3]] * 10)
    values = np.full(ids.shape, 0.25, np.float16)
    path, offsets = topk_file(tmp_path, ids, values, side_by_side)
    fd = os.open(path, os.O_RDONLY)
    try:
        _, failed, bad = entry_reads.read_topk_rows(fd, *offsets(np.arange(30)), 2, 4)
        assert failed == 0 and bad == 20  # 9 and -1, ten times each: never written outside the row
        _, failed, _ = entry_reads.read_topk_rows(fd, *offsets(np.array([0, 29, 30, 10 ** 6])), 2, 4)
        assert failed > 0  # rows 30 and 10**6 lie past the end of the file
    finally:
        os.close(fd)
