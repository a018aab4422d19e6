"""store/entry_reads.py: a batch of scattered entries read by the caller and helper threads, compiled or not,
gives exactly the bytes at those offsets; a short file is counted, not crashed on; concurrent callers and forked
children read correctly."""
import os
import threading

import numpy as np
import pytest

from labelopt.store import entry_reads

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
    monkeypatch.setattr(entry_reads, "_kernel", None if request.param == "compiled" else entry_reads._python_kernel)
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
