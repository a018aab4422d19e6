"""Label store: round trips, crash-resume, multi-writer, refusals, verify and combine on tiny stores."""
import multiprocessing
import os
import signal

import h5py
import numpy as np
import pytest
import torch

from labelopt.store import LabelStore, StoreError, StoreWriter, combine, verify
from labelopt.store.writer import partial_dir, top_k

from labelopt.tests.store_fakes import C, N, V, build, make_data, make_header, make_layout, write_blocks


def h5_contents(path):
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
        attrs = {k: f.attrs[k] for k in f.attrs if k not in ("created_utc", "digest")}  # digest covers the time
    return out, attrs


def assert_same_store(a, b):
    da, aa = h5_contents(a)
    db, ab = h5_contents(b)
    assert sorted(da) == sorted(db)
    for name in da:
        assert da[name].dtype == db[name].dtype and np.array_equal(da[name], db[name]), name
    assert aa == ab


def one_line(exc_info):
    msg = str(exc_info.value)
    assert "\n" not in msg and msg
    return msg


# -- round trips ----------------------------------------------------------------------------

def test_dense_round_trip_with_logits_features_and_shared_params(tmp_path):
    layout = make_layout(logits=True, features={"stage3": 5, "pool.avg": 2}, param_size=2)
    shared = np.arange(V * 2).reshape(V, 2) * 10
    path, data = build(tmp_path / "s.h5", layout, shared_view_params=shared)
    assert not partial_dir(path).exists()

    store = LabelStore.open(path)
    assert (store.num_samples, store.num_views, store.num_classes) == (N, V, C)
    assert not store.is_topk and store.has_logits and not store.per_sample_params
    assert store.feature_taps == ["pool.avg", "stage3"]
    assert store.dataset["num_samples"] == N and store.views["num_views"] == V
    assert store.generator["teachers"][0]["arch"] == "resnet"
    with h5py.File(path, "r") as f:
        assert f.attrs["complete"] == 1 and f.attrs["schema_version"] == 3
        assert f["targets"].dtype == np.float16 and f["targets"].fletcher32
        assert f["targets"].chunks == (4, V, C)
        assert np.array_equal(f["targets"][()], data["targets"].astype(np.float16))
        assert np.array_equal(f["logits"][()], data["logits"].astype(np.float16))
        assert np.array_equal(f["features/stage3"][()], data["features"]["stage3"].astype(np.float16))
        assert np.array_equal(f["labels"][()], data["labels"])
    assert np.array_equal(store.view_params(), shared)

    store.load(("targets", "logits", "features:pool.avg"))
    idx, views = torch.tensor([0, 9, 3, 3]), torch.tensor([2, 0, 1, 1])
    expect = torch.from_numpy(data["targets"].astype(np.float16).astype(np.float32))[idx, views]
    assert torch.equal(store.gather(idx, views), expect)
    got = store.gather(idx, views, "logits")
    assert got.dtype == torch.float32 and got.shape == (4, C)
    feats = store.gather(idx, views, "features:pool.avg")
    assert torch.equal(feats, torch.from_numpy(data["features"]["pool.avg"].astype(np.float16)).float()[idx, views])
    assert store.size_bytes() == path.stat().st_size  # what `labels inspect` reports as the size on disk


def test_float16_widening_is_exact_for_every_bit_pattern():
    from labelopt.store.values import as_float32

    every = np.arange(2 ** 16, dtype=np.uint16).view(np.float16).reshape(256, 256)[:, ::3]  # strided too
    widened = as_float32(every)
    assert widened.dtype == np.float32
    assert np.array_equal(widened, every.astype(np.float32), equal_nan=True)  # subnormals, infinities, NaNs
    assert as_float32(np.ones(3, np.float32)).dtype == np.float32


def test_topk_round_trip_with_per_sample_params(tmp_path):
    layout = make_layout(topk=3, per_sample_params=True, param_size=4)
    path, data = build(tmp_path / "k.h5", layout)
    store = LabelStore.open(path)
    assert store.is_topk and store.topk == 3 and store.per_sample_params
    probs = data["targets"]
    with h5py.File(path, "r") as f:
        entries = f["topk/entries"][()]
        idx, vals = entries["index"], entries["value"]
        assert f["topk/entries"].shuffle and not f["labels"].shuffle  # interleaved ids and values gzip better so
        assert idx.dtype == np.int32 and vals.dtype == np.float16
    want_vals = -np.sort(-probs, axis=-1)[..., :3]
    assert np.array_equal(vals, want_vals.astype(np.float16))
    assert np.array_equal(np.take_along_axis(probs, idx.astype(np.int64), -1).astype(np.float16), vals)
    assert np.array_equal(store.view_params(), data["view_params"])
    assert np.array_equal(store.view_params([4, 1]), data["view_params"][[4, 1]])

    rows, views = torch.tensor([1, 8]), torch.tensor([0, 2])
    out = store.gather(rows, views)
    assert out.shape == (2, C)
    for r, (i, v) in enumerate(zip(rows.tolist(), views.tolist())):
        kept = [float(x) for x in vals[i, v]]
        rest = max(0.0, 1.0 - sum(kept)) / (C - 3)  # the missing mass, uniform over the 4 classes not stored
        dense = np.full(C, rest)
        dense[idx[i, v]] = kept
        np.testing.assert_allclose(out[r].numpy(), dense, rtol=1e-6, atol=1e-7)


def test_identity_policy_default_params(tmp_path):
    path, _ = build(tmp_path / "i.h5", make_layout(num_views=1), header=make_header(policy="identity"))
    store = LabelStore.open(path)
    assert np.array_equal(store.view_params(), [[0]])
    assert store.gather(torch.tensor([2, 5])).shape == (2, C)  # views default to 0


# -- resume and several writers -------------------------------------------------------------

def test_killed_writer_resumes_and_matches_one_go(tmp_path):
    layout = make_layout(logits=True)
    data = make_data(layout)
    path = tmp_path / "r.h5"
    first = StoreWriter(path, make_header(), layout)
    write_blocks(first, data, [0, 2])
    del first  # the "kill": nothing but block files survive
    again = StoreWriter(path, make_header(), layout)
    assert again.pending_blocks() == [1]
    with pytest.raises(StoreError) as exc:
        again.finish()
    assert "1 of 3 blocks" in one_line(exc)
    write_blocks(again, data, again.pending_blocks())
    again.finish()
    ref, _ = build(tmp_path / "ref.h5", layout, data)
    assert_same_store(path, ref)


def test_resume_with_other_options_is_refused(tmp_path):
    path = tmp_path / "r.h5"
    layout = make_layout()
    write_blocks(StoreWriter(path, make_header(), layout), make_data(layout), [0])
    with pytest.raises(StoreError) as exc:
        StoreWriter(path, make_header(fingerprint="other"), layout)
    assert "other options" in one_line(exc)
    with pytest.raises(StoreError):
        StoreWriter(path, make_header(), make_layout(topk=2))
    # --overwrite starts over.
    fresh = StoreWriter(path, make_header(fingerprint="other"), layout, overwrite=True)
    assert fresh.pending_blocks() == [0, 1, 2]


def test_existing_store_needs_overwrite_and_is_left_untouched(tmp_path):
    path, _ = build(tmp_path / "e.h5")
    before = path.read_bytes()
    with pytest.raises(StoreError) as exc:
        StoreWriter(path, make_header(), make_layout())
    assert "--overwrite" in one_line(exc)
    assert path.read_bytes() == before and not partial_dir(path).exists()
    build(path, make_layout(), make_data(make_layout(), seed=5), overwrite=True)
    assert path.read_bytes() != before


def test_two_writers_alternate_blocks(tmp_path):
    layout = make_layout(features={"pool": 3})
    data = make_data(layout)
    path = tmp_path / "m.h5"
    rank0 = StoreWriter(path, make_header(), layout)
    rank1 = StoreWriter(path, make_header(), layout)
    write_blocks(rank0, data, [b for b in rank0.pending_blocks() if b % 2 == 0])
    write_blocks(rank1, data, [b for b in range(layout.num_blocks()) if b % 2 == 1])
    assert rank0.pending_blocks() == []
    rank0.finish()
    ref, _ = build(tmp_path / "ref.h5", layout, data)
    assert_same_store(path, ref)


def _rank(path, rank, world, kill_after=None):
    layout = make_layout(num_samples=40)
    # As generate-labels' ranks do: only the job's one writer (here the parent) removes a killed run's temporary
    # files; a rank that did would delete the files its peer is writing.
    writer = StoreWriter(path, make_header(), layout, clean_stale=False)
    data = make_data(layout)
    for i, b in enumerate(b for b in writer.pending_blocks() if b % world == rank):
        if kill_after is not None and i == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)  # a real kill -9, mid-job
        write_blocks(writer, data, [b])


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_real_processes_killed_and_concurrent(tmp_path):
    ctx = multiprocessing.get_context("fork")
    path = tmp_path / "p.h5"
    victim = ctx.Process(target=_rank, args=(path, 0, 1, 3))
    victim.start()
    victim.join()
    assert victim.exitcode == -signal.SIGKILL
    layout = make_layout(num_samples=40)
    assert StoreWriter(path, make_header(), layout).pending_blocks() == list(range(3, 10))
    ranks = [ctx.Process(target=_rank, args=(path, r, 2)) for r in range(2)]
    for proc in ranks:
        proc.start()
    for proc in ranks:
        proc.join()
        assert proc.exitcode == 0
    StoreWriter(path, make_header(), layout).finish()
    ref, _ = build(tmp_path / "ref.h5", layout)
    assert_same_store(path, ref)


def test_write_block_rejects_bad_shapes(tmp_path):
    layout = make_layout()
    writer = StoreWriter(tmp_path / "b.h5", make_header(), layout)
    with pytest.raises(ValueError):
        writer.write_block(0, targets=np.zeros((3, V, C), np.float32), labels=np.zeros(4, np.int64))
    with pytest.raises(ValueError):
        writer.write_block(0, targets=np.zeros((4, V, C), np.float32), labels=np.zeros(4, np.int64),
                           logits=np.zeros((4, V, C), np.float32))


# -- refusals -------------------------------------------------------------------------------

@pytest.fixture
def good_store(tmp_path):
    path, _ = build(tmp_path / "good.h5", make_layout(logits=True))
    assert verify(path)["ok"]
    return path


def test_flipped_byte_is_caught_by_verify_and_by_reading(good_store):
    with h5py.File(good_store, "r") as f:
        info = f["targets"].id.get_chunk_info(0)
    raw = bytearray(good_store.read_bytes())
    raw[info.byte_offset + info.size // 2] ^= 0xFF
    good_store.write_bytes(bytes(raw))
    report = verify(good_store)
    assert not report["ok"]
    failed = [c["name"] for c in report["checks"] if not c["ok"]]
    assert failed == ["chunks:targets"]
    store = LabelStore.open(good_store)  # metadata is intact; the data is not
    with pytest.raises(StoreError) as exc:
        store.load()
    assert "targets" in one_line(exc)


def test_changed_content_fails_sha256(good_store):
    # A rewrite with valid fletcher32 but different values: only the sha256 attr catches it.
    with h5py.File(good_store, "r+") as f:
        f["labels"][0] = f["labels"][0] + 1
    failed = [c["name"] for c in verify(good_store)["checks"] if not c["ok"]]
    assert failed == ["sha256:labels"]


def test_truncated_file_is_refused(good_store):
    raw = good_store.read_bytes()
    good_store.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(StoreError) as exc:
        LabelStore.open(good_store)
    one_line(exc)
    assert not verify(good_store)["ok"]


@pytest.mark.parametrize("damage, words", [
    (lambda f: f.attrs.__delitem__("complete"), "incomplete store"),
    (lambda f: f.attrs.__setitem__("schema_version", 4), "schema version 4 is not supported"),
    (lambda f: f.attrs.__setitem__("schema_version", 1), "schema 1 label store, older than this labelopt reads"),
    (lambda f: f.__setitem__("x", h5py.ExternalLink("other.h5", "/")), "external link"),
    (lambda f: f.__setitem__("y", h5py.SoftLink("/nowhere")), "dangling soft link"),
    # odd dtypes under names the schema has (a feature tap may be called anything): refused for the dtype
    (lambda f: f.create_dataset("features/notes", data=np.array(["a"], dtype=h5py.string_dtype())),
     "non-numeric dtype"),
    (lambda f: f.create_dataset("features/objs", shape=(2,), dtype=h5py.vlen_dtype(np.int32)), "non-numeric dtype"),
    (lambda f: f.create_dataset("features/pairs", shape=(2,), dtype=[("index", "<i4", (1,)), ("value", "<f2", (1,))]),
     "non-numeric dtype"),  # the top-k entry's compound type is allowed at /topk/entries only
    (lambda f: f.attrs.__setitem__("format", "something.else"), "not a labelopt label store"),
])
def test_damaged_store_is_refused_on_open(good_store, damage, words):
    with h5py.File(good_store, "r+") as f:
        damage(f)
    with pytest.raises(StoreError) as exc:
        LabelStore.open(good_store)
    assert words in one_line(exc)
    report = verify(good_store)
    assert not report["ok"]
    assert any(words in c["detail"] for c in report["checks"] if not c["ok"])


def test_external_storage_is_refused(tmp_path, good_store):
    (tmp_path / "raw.bin").write_bytes(b"\0" * 16)
    with h5py.File(good_store, "r+") as f:
        f.create_dataset("features/ext", shape=(4,), dtype="<f4", external=[(str(tmp_path / "raw.bin"), 0, 16)])
    with pytest.raises(StoreError) as exc:
        LabelStore.open(good_store)
    assert "external storage" in one_line(exc)
    assert not verify(good_store)["ok"]


def test_missing_file_and_non_hdf5(tmp_path):
    with pytest.raises(StoreError) as exc:
        LabelStore.open(tmp_path / "nope.h5")
    assert "nope.h5" in one_line(exc)
    (tmp_path / "text.h5").write_text("hello")
    with pytest.raises(StoreError):
        LabelStore.open(tmp_path / "text.h5")
    assert not verify(tmp_path / "nope.h5")["ok"]


@pytest.mark.parametrize("field, value", [("fingerprint", "fp-other"), ("num_samples", N + 1),
                                          ("num_classes", C + 1), ("split", "test")])
def test_check_dataset_mismatch(good_store, field, value):
    identity = {"name": "tiny", "split": "train", "num_samples": N, "num_classes": C, "fingerprint": "fp-0"}
    store = LabelStore.open(good_store)
    store.check_dataset(identity)
    with pytest.raises(StoreError) as exc:
        store.check_dataset({**identity, field: value})
    msg = one_line(exc)
    assert field in msg and repr(value) in msg and "tiny/train" in msg and "generate-labels" in msg
    report = verify(good_store, {**identity, field: value})
    assert [c["name"] for c in report["checks"] if not c["ok"]] == ["identity"]


def test_require_names_the_flag(tmp_path):
    path, _ = build(tmp_path / "plain.h5")
    store = LabelStore.open(path)
    store.require("targets")
    with pytest.raises(StoreError) as exc:
        store.require("logits")
    assert "--logits" in one_line(exc)
    with pytest.raises(StoreError) as exc:
        store.require("features:stage3")
    assert "--features stage3" in one_line(exc)
    with pytest.raises(StoreError):
        store.gather(torch.tensor([0]), torch.tensor([0]), "logits")


# -- combine --------------------------------------------------------------------------------

def test_combine_weighted_mean_and_provenance(tmp_path):
    layout = make_layout(logits=True)
    a, da = build(tmp_path / "a.h5", layout, make_data(layout, seed=1))
    b, db = build(tmp_path / "b.h5", layout, make_data(layout, seed=2))
    db["labels"] = da["labels"]
    b, db = build(tmp_path / "b.h5", layout, db, overwrite=True)
    out = combine([a, b], tmp_path / "ens.h5", [1.0, 3.0], labelopt_version="t")
    store = LabelStore.open(out)
    # No logits: the mean of members' logits is not the ensemble's label.
    assert not store.is_topk and not store.has_logits and verify(out)["ok"]
    assert store.temperature == 1.0 and store.generator["temperature"] == 1.0
    want = 0.25 * da["targets"].astype(np.float16).astype(np.float32) + \
        0.75 * db["targets"].astype(np.float16).astype(np.float32)
    with h5py.File(out, "r") as f:
        got = f["targets"][()].astype(np.float32)
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)
    gen = store.generator
    assert gen["method"] == "combine" and gen["weights"] == [0.25, 0.75]
    assert [m["path"] for m in gen["members"]] == [str(a), str(b)]
    assert all(len(m["file_sha256"]) == 64 for m in gen["members"])
    assert gen["members"][0]["generator"]["teachers"][0]["arch"] == "resnet"


def test_combine_topk_members_stay_topk(tmp_path):
    layout = make_layout(topk=2)
    data = make_data(layout, seed=1)
    a, _ = build(tmp_path / "a.h5", layout, data)
    b, _ = build(tmp_path / "b.h5", layout, data)
    out = LabelStore.open(combine([a, b], tmp_path / "ens.h5"))
    assert out.topk == 2 and not out.has_logits
    idx = torch.arange(N)
    assert torch.equal(out.gather(idx, idx % V), LabelStore.open(a).gather(idx, idx % V))


def test_combine_refuses_other_data_or_views(tmp_path):
    layout = make_layout()
    data = make_data(layout)
    a, _ = build(tmp_path / "a.h5", layout, data)
    b, _ = build(tmp_path / "b.h5", layout, data, header=make_header(fingerprint="fp-other"))
    with pytest.raises(StoreError) as exc:
        combine([a, b], tmp_path / "x.h5")
    assert "fingerprint" in one_line(exc)
    c, _ = build(tmp_path / "c.h5", layout, data, header=make_header(policy="random-resized-crop"))
    with pytest.raises(StoreError) as exc:
        combine([a, c], tmp_path / "x.h5")
    assert "policy" in one_line(exc)
    d, _ = build(tmp_path / "d.h5", layout, data, shared_view_params=np.arange(V)[:, None] + 1)
    with pytest.raises(StoreError) as exc:
        combine([a, d], tmp_path / "x.h5")
    assert "view parameters" in one_line(exc)
    assert not (tmp_path / "x.h5").exists()


def test_top_k_entries_made_elsewhere_write_the_same_store_as_dense_targets(tmp_path):
    layout = make_layout(topk=3)
    data = make_data(layout)
    dense, _ = build(tmp_path / "dense.h5", layout, data)
    writer = StoreWriter(tmp_path / "given.h5", make_header(), layout)
    idx, vals = top_k(data["targets"], 3)
    for b in writer.pending_blocks():
        s, e = layout.block_range(b)
        writer.write_block(b, topk=(idx[s:e], vals[s:e]), labels=data["labels"][s:e])
    given = writer.finish()
    with h5py.File(dense, "r") as a, h5py.File(given, "r") as b:
        assert a.attrs["checksums"] == b.attrs["checksums"]
    for bad in (dict(targets=data["targets"][:4], topk=(idx[:4], vals[:4])), dict(),
                dict(topk=(idx[:4] + 100, vals[:4]))):
        with pytest.raises(ValueError):
            StoreWriter(tmp_path / "bad.h5", make_header(), layout, overwrite=True).write_block(
                0, labels=data["labels"][:4], **bad)
