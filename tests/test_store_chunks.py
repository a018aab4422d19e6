"""A gzip store's chunks, compressed by labelopt in threads, hold exactly the bytes HDF5's own filters would write."""
import h5py
import numpy as np
import pytest

from labelopt.store import verify
from labelopt.store import schema as S
from labelopt.store.chunks import fletcher32, gzip_chunk
from labelopt.store.repack import repack
from store_fakes import build, make_layout


def hdf5_fletcher32(data: np.ndarray) -> bytes:
    """The checksum HDF5 appends to a chunk of `data` (uint8) with only its fletcher32 filter."""
    with h5py.File("mem.h5", "w", driver="core", backing_store=False) as f:
        dset = f.create_dataset("x", data=data, chunks=(len(data),), fletcher32=True)
        return dset.id.read_direct_chunk((0,))[1][-4:]


@pytest.mark.parametrize("length", [1, 2, 3, 719, 720, 721, 1441, 100_001])
def test_fletcher32_is_hdf5s_for_any_length(length):
    data = np.random.default_rng(length).integers(0, 256, length, dtype=np.uint8)
    assert fletcher32(data.tobytes()).to_bytes(4, "little") == hdf5_fletcher32(data)


@pytest.mark.parametrize("length", [720, 721, 2_000_001])
def test_fletcher32_wraps_as_hdf5s_uint32_sums_do(length):
    """All-0xff words push the second sum past 2**32 inside a 360-word block, where HDF5's C arithmetic wraps."""
    data = np.full(length, 255, dtype=np.uint8)
    assert fletcher32(data.tobytes()).to_bytes(4, "little") == hdf5_fletcher32(data)


def topk_entries(rng, rows, views, k):
    entries = np.zeros((rows, views), dtype=S.topk_entry_dtype(k))
    entries[S.TOPK_FIELDS[0]] = rng.integers(0, 100, (rows, views, k))
    entries[S.TOPK_FIELDS[1]] = rng.random((rows, views, k))
    return entries


@pytest.mark.parametrize("kind", ["float16 targets", "top-k entries", "int64 labels"])
def test_gzip_chunk_is_the_chunk_hdf5_writes_including_the_last_short_one(kind):
    rng = np.random.default_rng(0)
    rows = {"float16 targets": rng.random((300, 5, 7)).astype(np.float16),
            "top-k entries": topk_entries(rng, 300, 5, 3),
            "int64 labels": rng.integers(0, 100, 300)}[kind]
    chunk_rows = 256
    with h5py.File("mem.h5", "w", driver="core", backing_store=False) as f:
        dset = f.create_dataset("x", shape=rows.shape, dtype=rows.dtype, chunks=(chunk_rows, *rows.shape[1:]),
                                compression="gzip", compression_opts=S.GZIP_LEVEL, fletcher32=True,
                                shuffle=rows.dtype.fields is not None)
        dset[:] = rows
        for start in (0, chunk_rows):  # a whole chunk, then one the dataset ends inside
            offset = (start,) + (0,) * (rows.ndim - 1)
            assert dset.id.read_direct_chunk(offset) == (0, gzip_chunk(rows[start:start + chunk_rows], chunk_rows))


def assert_chunks_as_hdf5_writes(path):
    """Every chunk of every chunked dataset in `path` equals what h5py writes for the same rows and filters."""
    with h5py.File(path, "r") as f, h5py.File("ref.h5", "w", driver="core", backing_store=False) as ref:
        datasets = []
        f.visititems(lambda name, obj: datasets.append(name) if isinstance(obj, h5py.Dataset) else None)
        assert datasets
        for name in datasets:
            dset = f[name]
            plist = dset.id.get_create_plist()
            filters = [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]
            again = ref.create_dataset(name, data=dset[()], chunks=dset.chunks, compression="gzip",
                                       compression_opts=S.GZIP_LEVEL, fletcher32=True,
                                       shuffle=h5py.h5z.FILTER_SHUFFLE in filters)
            for start in range(0, dset.shape[0], dset.chunks[0]):
                offset = (start,) + (0,) * (dset.ndim - 1)
                assert dset.id.read_direct_chunk(offset) == again.id.read_direct_chunk(offset), (name, start)


@pytest.mark.parametrize("signals", [dict(logits=True, features={"layer3": 4}, per_sample_params=True),
                                     dict(topk=3)])
def test_a_finished_gzip_store_holds_hdf5s_own_chunks(tmp_path, signals):
    layout = make_layout(num_samples=11, block_rows=4, **signals)  # 3 blocks, the last one short
    path, data = build(tmp_path / "s.h5", layout, compression="gzip")
    assert verify(path)["ok"]
    assert_chunks_as_hdf5_writes(path)
    with h5py.File(path, "r") as f:  # and the rows read back are the rows written
        assert np.array_equal(f[S.LABELS][()], data["labels"])
        if "topk" not in signals:
            assert np.array_equal(f[S.TARGETS][()], data["targets"].astype(S.DTYPES[S.TARGETS]))


def test_repack_to_compressed_writes_hdf5s_own_chunks(tmp_path):
    layout = make_layout(num_samples=11, block_rows=4, logits=True)
    path, _ = build(tmp_path / "s.h5", layout, compression="none")
    packed = repack(path, tmp_path / "packed.h5", "compressed")
    assert verify(packed)["ok"]
    assert_chunks_as_hdf5_writes(packed)


def test_made_ahead_gives_items_in_their_order_holding_few_at_once():
    """Later items may finish first; they still come out in order, and no more than workers + 1 are taken ahead."""
    import threading
    import time

    from labelopt.store.chunks import made_ahead

    taken, held = [], []

    def items():
        for i in range(12):
            taken.append(i)
            held.append(len(taken) - len(done))
            yield i

    def slow_first(i):
        time.sleep(0.02 if i % 3 == 0 else 0.0)
        return i * i, threading.current_thread().name

    done = []
    for item, (square, thread) in made_ahead(items(), slow_first, workers=3):
        assert square == item * item and thread.startswith("labelopt-chunks")
        done.append(item)
    assert done == list(range(12)) and max(held) <= 4
