"""The contiguous layout (read in place) against the compressed one (loaded): same schema, same bytes, same
gathers; bounded memory; damage refused; `labels repack` between the two."""
import json
import os
import tracemalloc

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from labelopt.cli import main
from labelopt.store import LabelStore, StoreError, StoreLayout, contiguous, reader, verify
from labelopt.store.layout import CONTIGUOUS_FROM_BYTES, compression_for
from labelopt.store.repack import repack
from labelopt.tests.store_fakes import as_schema_v2, build, forge, make_data, make_layout

SHAPES = {
    "dense, shared params": dict(logits=True, features={"pool": 5}),
    "top-k, per-sample params": dict(topk=3, features={"pool": 4}, per_sample_params=True, param_size=2),
}


def attrs_of(path) -> dict:
    with h5py.File(path, "r") as f:
        return {k: f.attrs[k] for k in f.attrs if k not in ("created_utc", "digest")}


@pytest.fixture(params=list(SHAPES), ids=list(SHAPES))
def pair(request, tmp_path):
    """The same content written compressed and mapped."""
    layout = make_layout(**SHAPES[request.param])
    data = make_data(layout)
    packed, _ = build(tmp_path / "gzip.h5", layout, data)
    inplace, _ = build(tmp_path / "contiguous.h5", layout, data, compression="none")
    return LabelStore.open(packed), LabelStore.open(inplace)


def test_both_layouts_hold_the_same_schema_bytes_and_gathers(pair):
    packed, inplace = pair
    assert (packed.layout, inplace.layout) == ("compressed", "contiguous")
    assert attrs_of(packed.path) == attrs_of(inplace.path)  # same checksums, schema version, records
    rng = np.random.default_rng(1)
    idx = torch.from_numpy(rng.integers(0, packed.num_samples, 64))
    views = torch.from_numpy(rng.integers(0, packed.num_views, 64))
    signals = ["targets", *[f"features:{t}" for t in packed.feature_taps]] + ["logits"] * packed.has_logits
    for signal in signals:
        assert torch.equal(packed.gather(idx, views, signal), inplace.gather(idx, views, signal)), signal
    assert np.array_equal(packed.view_params(), inplace.view_params())
    assert np.array_equal(packed.view_params([3, 1]), inplace.view_params([3, 1]))
    if packed.is_topk:
        for a, b in zip(packed.topk_entries(idx, views), inplace.topk_entries(idx, views)):
            assert np.array_equal(a, b)
    assert verify(inplace.path)["ok"]


def test_a_inplace_is_plain_hdf5_at_page_aligned_offsets(pair):
    _, inplace = pair
    with h5py.File(inplace.path, "r") as f:
        for name in ("labels", "views/params", *(["topk/entries"] if inplace.is_topk else ["targets"])):
            dset = f[name]
            assert dset.chunks is None and dset.compression is None and not dset.fletcher32
            assert dset.id.get_offset() % contiguous.ALIGNMENT == 0
        # Any HDF5 reader sees the same numbers the in-place reader gathers.
        whole = f["topk/entries"][()]["value"] if inplace.is_topk else f["targets"][()]
        inplace.load()
        got = inplace._mem["targets"].values  # DenseInPlace or TopkInPlace (store/signal_rows.py): rows in place
        rows, views = np.arange(inplace.num_samples), np.arange(inplace.num_samples) % inplace.num_views
        assert np.array_equal(whole[rows, views], got[rows, views])
        if not inplace.is_topk:  # a field is read one entry per (row, view) pair
            assert np.array_equal(whole[[4, 2]], got[[4, 2]])
        assert isinstance(got, contiguous.DatasetRows)  # read from the file per entry, not loaded


def test_memory_bounds_a_compressed_load_but_not_a_contiguous_one(pair, monkeypatch):
    packed, inplace = pair
    monkeypatch.setattr(reader, "available_memory_bytes", lambda: 100)  # less than twice either store's targets
    with pytest.raises(StoreError, match="labels repack .* --layout contiguous"):
        packed.load()
    inplace.load()  # read in place: nothing to fit
    assert inplace.gather(torch.tensor([0]), torch.tensor([0])).shape == (1, inplace.num_classes)


def flip_byte(path, dataset: str, at: int = 10) -> None:
    with h5py.File(path, "r") as f:
        offset = f[dataset].id.get_offset()
    with open(path, "r+b") as fh:
        fh.seek(offset + at)
        byte = fh.read(1)
        fh.seek(offset + at)
        fh.write(bytes([byte[0] ^ 0xFF]))


@pytest.mark.parametrize("dataset", ["targets", "logits", "labels"])
def test_an_edited_byte_in_a_contiguous_dataset_is_refused_before_any_gather(tmp_path, dataset):
    path, _ = build(tmp_path / "m.h5", make_layout(logits=True), compression="none")
    flip_byte(path, dataset)
    store = LabelStore.open(path)
    with pytest.raises(StoreError, match=f"/{dataset} has sha256"):
        store.labels() if dataset == "labels" else store.load(dataset)
    assert not verify(path)["ok"]


def test_a_truncated_inplace_is_refused_not_a_crash(tmp_path):
    path, _ = build(tmp_path / "m.h5", make_layout(), compression="none")
    with h5py.File(path, "r") as f:
        end = f["targets"].id.get_offset() + f["targets"].id.get_storage_size()
    os.truncate(path, end - 100)
    with pytest.raises(StoreError):
        LabelStore.open(path).load()


@pytest.mark.slow
def test_a_pass_over_a_contiguous_store_keeps_memory_flat_where_a_compressed_one_loads_it(tmp_path):
    layout = StoreLayout(num_samples=4096, num_views=4, num_classes=1000, block_rows=1024)  # 32 MiB of targets
    data = make_data(layout)
    order = torch.from_numpy(np.random.default_rng(0).permutation(4096))
    # The read loops compile (numba) at a process's first in-place gather: done here, on a small store, so the
    # peak below is the reader's own whichever test ran first.
    small = StoreLayout(num_samples=64, num_views=4, num_classes=1000, block_rows=64)
    LabelStore.open(build(tmp_path / "warm.h5", small, make_data(small), compression="none")[0]).gather(
        torch.arange(8), torch.arange(8) % 4)
    peak = {}
    for compression in ("none", "gzip"):
        path, _ = build(tmp_path / f"{compression}.h5", layout, data, compression=compression)
        store = LabelStore.open(path)
        tracemalloc.start()  # numpy's and Python's allocations: what the reader itself holds
        for batch in order.split(256):
            got = store.gather(batch, batch % 4)
        peak[compression] = tracemalloc.get_traced_memory()[1] / 2 ** 20
        tracemalloc.stop()
        want = data["targets"][order[-256:], order[-256:] % 4].astype(np.float16).astype(np.float32)
        assert torch.equal(got, torch.from_numpy(want))
    # 4 MiB to check the sha256, 256 rows of 1000 classes: 0.5 MiB read, 1 MiB as float32; loading: all 32 MiB.
    assert peak["none"] < 8 and peak["gzip"] > 30, peak


def test_auto_layout_is_contiguous_from_one_gib():
    small = StoreLayout(num_samples=1000, num_views=1, num_classes=10)
    big = StoreLayout(num_samples=CONTIGUOUS_FROM_BYTES // 2000 + 1, num_views=1, num_classes=1000)
    assert (compression_for("auto", small), compression_for("auto", big)) == ("gzip", "none")
    assert (compression_for("contiguous", small), compression_for("compressed", big)) == ("none", "gzip")
    with pytest.raises(ValueError, match="layout"):
        compression_for("zip", small)


# -- labels repack ---------------------------------------------------------------------------------------------

def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_repack_round_trip_keeps_every_attribute_and_byte(tmp_path):
    layout = make_layout(topk=3, per_sample_params=True, param_size=2)
    source, _ = build(tmp_path / "a.h5", layout)
    assert run("labels", "repack", source, "--layout", "contiguous", "--out", tmp_path / "b.h5").exit_code == 0
    assert run("labels", "repack", tmp_path / "b.h5", "--layout", "compressed", "--out", tmp_path / "c.h5").exit_code == 0
    stores = [LabelStore.open(tmp_path / name) for name in ("a.h5", "b.h5", "c.h5")]
    assert [s.layout for s in stores] == ["compressed", "contiguous", "compressed"]
    with h5py.File(source, "r") as f:
        want = {k: f.attrs[k] for k in f.attrs}  # digest and created_utc included: nothing is rewritten
    for store in stores[1:]:
        with h5py.File(store.path, "r") as f:
            assert {k: f.attrs[k] for k in f.attrs} == want
        assert verify(store.path)["ok"]
        assert torch.equal(store.gather(torch.arange(10), torch.arange(10) % 3), stores[0].gather(
            torch.arange(10), torch.arange(10) % 3))
    report = json.loads(run("labels", "inspect", tmp_path / "b.h5", "--json").output)
    assert report["layout"] == "contiguous"


def test_repack_refuses_a_damaged_source_and_leaves_nothing(tmp_path):
    source, _ = build(tmp_path / "a.h5", make_layout(), compression="none")
    flip_byte(source, "targets")
    result = run("labels", "repack", source, "--layout", "compressed", "--out", tmp_path / "b.h5")
    assert result.exit_code != 0 and "/targets has sha256" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.h5"]


def test_repack_refuses_its_own_path_an_existing_out_and_an_unknown_layout(tmp_path):
    source, _ = build(tmp_path / "a.h5", make_layout())
    other, _ = build(tmp_path / "b.h5", make_layout())
    for args, says in (([source, "--layout", "contiguous", "--out", source], "already exists"),
                       ([source, "--layout", "contiguous", "--out", other], "already exists"),
                       ([source, "--layout", "zip", "--out", tmp_path / "c.h5"], "zip")):
        result = run("labels", "repack", *args)
        assert result.exit_code != 0 and says in result.output, result.output
    assert run("labels", "repack", source, "--layout", "contiguous", "--out", source, "--overwrite").exit_code != 0


def test_rows_handed_out_stay_valid_after_their_store_object_is_gone(tmp_path):
    import gc

    layout = make_layout(per_sample_params=True, param_size=2)
    path, data = build(tmp_path / "m.h5", layout, compression="none")
    store = LabelStore.open(path)
    table = store.view_param_table()
    del store
    gc.collect()
    (tmp_path / "decoy").write_bytes(bytes(path.stat().st_size))
    other = open(tmp_path / "decoy", "rb")  # takes a freed descriptor's number: zeros if the table read through it
    try:
        assert np.array_equal(table[[3, 1]], data["view_params"][[3, 1]])
    finally:
        other.close()


# -- schema 2 top-k stores (class ids and values in two datasets) are still read ---------------------------------

@pytest.mark.parametrize("compression", ["gzip", "none"])
def test_a_schema_2_topk_store_is_read_verified_and_repacked_as_the_v3_one(tmp_path, compression):
    new, _ = build(tmp_path / "v3.h5", make_layout(topk=3, per_sample_params=True, param_size=2),
                   compression=compression)
    old = as_schema_v2(new, tmp_path / "v2.h5")
    v3, v2 = LabelStore.open(new), LabelStore.open(old)
    assert (v3.topk_packed, v2.topk_packed) == (True, False) and v3.layout == v2.layout
    rng = np.random.default_rng(2)
    idx, views = torch.from_numpy(rng.integers(0, v3.num_samples, 64)), torch.from_numpy(rng.integers(0, 3, 64))
    assert torch.equal(v3.gather(idx, views), v2.gather(idx, views))
    assert np.array_equal(v3.rows("targets", 2, 7), v2.rows("targets", 2, 7))
    for a, b in zip(v3.topk_entries(idx, views), v2.topk_entries(idx, views)):
        assert np.array_equal(a, b)
    assert verify(old)["ok"] and verify(new)["ok"]
    other = "compressed" if compression == "none" else "contiguous"
    moved = LabelStore.open(repack(old, tmp_path / "moved.h5", other))
    assert moved.layout == other and not moved.topk_packed
    assert torch.equal(moved.gather(idx, views), v3.gather(idx, views))


def test_topk_datasets_of_the_other_schema_or_an_odd_entry_type_are_refused(tmp_path):
    path, _ = build(tmp_path / "k.h5", make_layout(topk=3), compression="none")
    old = as_schema_v2(path, tmp_path / "v2.h5")
    forge(old, lambda f: f.attrs.__setitem__("schema_version", np.int64(3)))  # v3 must keep /topk/entries
    with pytest.raises(StoreError, match=r"/topk/indices that is not part of a label store \(schema 3\)"):
        LabelStore.open(old)

    def wider_ids(f):
        entries = f["topk/entries"][()]
        del f["topk/entries"]
        wide = np.dtype([("index", "<i8", (3,)), ("value", "<f2", (3,))])
        f.create_dataset("topk/entries", data=np.array(entries.tolist(), dtype=wide))
    forge(path, wider_ids)
    with pytest.raises(StoreError, match="/topk/entries has non-numeric dtype"):
        LabelStore.open(path)
