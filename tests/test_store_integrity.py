"""Label store v2: every reader checks what it reads, a digest covers the attributes, temperature and top-k meaning."""
import hashlib
import json

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from labelopt.cli import main
from labelopt.pipeline.data.datasets import open_dataset
from labelopt.store import LabelStore, StoreError, combine, verify
from labelopt.store.schema import generator_temperature
from labelopt.store.values import densify_topk
from labelopt.tests.store_fakes import (C, N, V, build, forge, independent_digest, make_data, make_header,
                                        make_layout)


def one_line(exc_info):
    msg = str(exc_info.value)
    assert "\n" not in msg and msg
    return msg


def failed_checks(path):
    return [c["name"] for c in verify(path)["checks"] if not c["ok"]]


def set_generator(f, **changes):
    f.attrs["generator"] = json.dumps({**json.loads(f.attrs["generator"]), **changes})


def t4_header():
    header = make_header()
    header["generator"]["temperature"] = 4.0
    return header


# -- the definitions, computed independently (store_fakes.independent_digest) -----------------------

def test_checksums_and_digest_match_their_documented_definitions(tmp_path):
    path, _ = build(tmp_path / "s.h5", make_layout(logits=True, features={"pool": 2}, per_sample_params=True,
                                                   param_size=2))
    with h5py.File(path, "r") as f:
        sums = json.loads(f.attrs["checksums"])
        names = []
        f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
        assert sorted(sums) == sorted(names) == ["features/pool", "labels", "logits", "targets", "views/params"]
        for name in names:
            assert sums[name] == hashlib.sha256(f[name][()].tobytes()).hexdigest(), name
        assert f.attrs["digest"] == independent_digest(f)
        assert f.attrs["schema_version"] == 3


# -- content: every reader checks what it reads ---------------------------------------------------

def rewrite(f, name):
    """Other values with valid chunks (fletcher32 recomputed by HDF5): only a sha256 notices."""
    data = f[name][()]
    f[name][...] = (data + 1) if data.dtype.kind in "iu" else data[..., ::-1]


@pytest.mark.parametrize("dataset, read", [
    ("targets", lambda s: s.load()),
    ("targets", lambda s: s.rows("targets", 0, 2)),
    ("logits", lambda s: s.gather(torch.tensor([0]), torch.tensor([0]), "logits")),
    ("labels", lambda s: s.labels()),
    ("views/params", lambda s: s.view_params([0])),
])
def test_a_rewritten_dataset_is_refused_by_the_reader_that_reads_it(tmp_path, dataset, read):
    path, _ = build(tmp_path / "s.h5", make_layout(logits=True, per_sample_params=True))
    with h5py.File(path, "r+") as f:
        rewrite(f, dataset)
    store = LabelStore.open(path)  # the attributes are intact; the data is not
    with pytest.raises(StoreError) as exc:
        read(store)
    msg = one_line(exc)
    assert f"/{dataset} " in msg and "re-fetch" in msg and "regenerate" in msg
    assert failed_checks(path) == [f"sha256:{dataset}"]


def test_rewritten_topk_values_and_shared_params_are_refused(tmp_path):
    path, _ = build(tmp_path / "k.h5", make_layout(topk=2))
    with h5py.File(path, "r+") as f:
        rewrite(f, "topk/entries")
    with pytest.raises(StoreError, match="/topk/entries "):
        LabelStore.open(path).gather(torch.tensor([0]), torch.tensor([0]))
    shared, _ = build(tmp_path / "p.h5", shared_view_params=np.arange(V)[:, None] * 3)
    with h5py.File(shared, "r+") as f:
        rewrite(f, "views/params")
    with pytest.raises(StoreError, match="/views/params "):
        LabelStore.open(shared)  # shared parameters are read, so checked, on open


# -- attributes: one digest over all of them ------------------------------------------------------

@pytest.mark.parametrize("edit", [
    lambda f: f.attrs.__setitem__("checksums", f.attrs["checksums"].replace('"targets": "', '"targets": "0')),
    lambda f: set_generator(f, temperature=1.0),
    lambda f: f.attrs.__setitem__("created_utc", "2001-01-01T00:00:00+00:00"),
    lambda f: f.attrs.__setitem__("note", "added later"),
    lambda f: f.attrs.__setitem__("digest", "0" * 64),
])
def test_an_edited_attribute_fails_the_digest_everywhere(tmp_path, edit):
    path, _ = build(tmp_path / "s.h5", header=t4_header())
    with h5py.File(path, "r+") as f:
        edit(f)
    with pytest.raises(StoreError) as exc:
        LabelStore.open(path)
    assert "digest" in one_line(exc) and "regenerate" in one_line(exc)
    assert "digest" in failed_checks(path)
    inspect = CliRunner().invoke(main, ["labels", "inspect", str(path)])
    assert inspect.exit_code == 1 and "digest" in inspect.output and "Traceback" not in inspect.output


def test_a_store_without_digest_and_a_v1_store_are_refused(tmp_path):
    path, _ = build(tmp_path / "s.h5")
    with h5py.File(path, "r+") as f:
        del f.attrs["digest"]
    with pytest.raises(StoreError, match="no 'digest' attribute"):
        LabelStore.open(path)
    old, _ = build(tmp_path / "v1.h5")
    forge(old, lambda f: f.attrs.__setitem__("schema_version", np.int64(1)))
    with pytest.raises(StoreError) as exc:
        LabelStore.open(old)
    assert "schema 1 label store" in one_line(exc) and "regenerate it with labelopt generate-labels" in one_line(exc)


def test_a_deleted_or_added_dataset_is_refused_on_open(tmp_path):
    path, _ = build(tmp_path / "s.h5", make_layout(logits=True))
    with h5py.File(path, "r+") as f:
        del f["logits"]
    with pytest.raises(StoreError, match="no such dataset"):
        LabelStore.open(path)
    extra, _ = build(tmp_path / "e.h5")
    with h5py.File(extra, "r+") as f:
        f.create_dataset("features/more", data=np.zeros(3))  # a name the schema has: caught by the listing
    with pytest.raises(StoreError, match="/features/more has no entry in the checksums"):
        LabelStore.open(extra)
    with h5py.File(extra, "r+") as f:
        del f["features"]
        f.create_dataset("more", data=np.zeros(3))  # a name it has not: refused before the listing is read
    with pytest.raises(StoreError, match="/more that is not part of a label store"):
        LabelStore.open(extra)


# -- temperature --------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [float("nan"), float("inf"), 0.0, -4.0, "4", True, None])
def test_a_store_without_a_usable_temperature_is_refused(tmp_path, value):
    path, _ = build(tmp_path / "s.h5")
    forge(path, lambda f: set_generator(f, temperature=value))  # consistent checksums and digest: only T is bad
    with pytest.raises(StoreError) as exc:
        LabelStore.open(path)
    assert "temperature" in one_line(exc) and "regenerate" in one_line(exc)
    assert failed_checks(path) == ["temperature"]
    bad = make_header()
    bad["generator"]["temperature"] = value
    with pytest.raises(ValueError, match="temperature"):
        build(tmp_path / "never.h5", header=bad)  # the writer refuses to make such a store


def test_temperature_is_the_generators_or_the_members_common_one(tmp_path):
    path, _ = build(tmp_path / "t4.h5", header=t4_header())
    assert LabelStore.open(path).temperature == 4.0
    member = {"generator": {"temperature": 2}}
    assert generator_temperature({"method": "combine", "members": [member, member]}) == 2.0
    for bad in ({"members": [member, {"generator": {"temperature": 3}}]}, {"members": []}, {"method": "sl"},
                {"temperature": 2, "members": [{"generator": {"temperature": 3}}]}):
        with pytest.raises(ValueError):
            generator_temperature(bad)


def test_combine_refuses_other_temperatures_and_keeps_the_common_one(tmp_path):
    layout = make_layout(logits=True)
    data = make_data(layout)
    t1, _ = build(tmp_path / "t1.h5", layout, data)
    t4, _ = build(tmp_path / "t4.h5", layout, data, header=t4_header())
    result = CliRunner().invoke(main, ["labels", "combine", str(t1), str(t4), "--out", str(tmp_path / "x.h5")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    line = [x for x in result.output.splitlines() if x.startswith("Error:")]
    assert len(line) == 1 and "temperature 1" in line[0] and "temperature 4" in line[0] and "regenerate" in line[0]
    assert not (tmp_path / "x.h5").exists()
    other, _ = build(tmp_path / "t4b.h5", layout, data, header=t4_header())
    ens = LabelStore.open(combine([t4, other], tmp_path / "ens.h5"))
    assert ens.temperature == 4.0 and not ens.has_logits  # members had logits; an ensemble's are not their mean
    with h5py.File(ens.path) as f:
        assert "logits" not in f


# -- top-k: the missing mass spread uniformly -------------------------------------------------------

def test_topk_rows_sum_to_one_keep_their_values_and_spread_the_rest(tmp_path):
    layout = make_layout(topk=3)
    path, data = build(tmp_path / "k.h5", layout)
    store = LabelStore.open(path)
    idx = torch.arange(N).repeat_interleave(V)
    views = torch.arange(V).repeat(N)
    got = store.gather(idx, views).numpy().astype(np.float64)  # [N*V, C]
    with h5py.File(path) as f:
        entries = f["topk/entries"][()]
        kept_idx = entries["index"].reshape(N * V, 3)
        kept = entries["value"].reshape(N * V, 3).astype(np.float64)
    np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-6)
    assert np.array_equal(np.take_along_axis(got, kept_idx, 1), kept)  # stored values exactly
    others = np.ones_like(got, bool)
    np.put_along_axis(others, kept_idx, False, 1)
    want_rest = (1.0 - kept.sum(1)) / (C - 3)
    np.testing.assert_allclose(got[others].reshape(N * V, C - 3), want_rest[:, None] * np.ones((1, C - 3)),
                               rtol=1e-6)
    # The tools' row reader gives the very same rows.
    assert np.array_equal(store.rows("targets", 0, N).reshape(N * V, C), got.astype(np.float32))
    assert want_rest.min() > 0  # the fixture keeps less than all the mass


def test_topk_densify_clamps_overfull_rows_and_fills_nothing_when_k_is_c():
    values = np.array([[0.75, 0.5], [0.5, 0.25]], np.float16)  # the first row keeps 1.25 (rounding gone wild)
    indices = np.array([[2, 0], [1, 3]])
    out = densify_topk(indices, values, 4)
    assert out.tolist() == [[0.5, 0.0, 0.75, 0.0], [0.125, 0.5, 0.125, 0.25]]
    full = densify_topk(np.array([[1, 0]]), np.array([[0.5, 0.25]], np.float16), 2)
    assert full.tolist() == [[0.25, 0.5]]


# -- train-student loads nothing unchecked -----------------------------------------------------

@pytest.mark.parametrize("edit, words", [
    (lambda f: rewrite(f, "targets"), "/targets has sha256"),
    (lambda f: f.attrs.__setitem__("checksums", f.attrs["checksums"].replace('"targets": "', '"targets": "0')),
     "digest"),
    (lambda f: set_generator(f, temperature=1.0), "digest"),
])
def test_train_student_refuses_a_tampered_store(tmp_path, tiny_cifar_dir, edit, words):
    data = open_dataset(tiny_cifar_dir)
    header = t4_header()
    header["dataset"] = {**data.identity("train"), "class_names": data.class_names}
    path, _ = build(tmp_path / "m.h5", make_layout(num_samples=data.num_samples("train"), num_classes=10,
                                                   num_views=1), header=header | {"views": {"policy": "identity"}})
    with h5py.File(path, "r+") as f:
        edit(f)
    result = CliRunner().invoke(main, ["train-student", "--student", "resnet20", "--labels", str(path), "--data",
                                       str(tiny_cifar_dir), "--out", str(tmp_path / "run"), "--epochs", "1",
                                       "--device", "cpu"])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    lines = [x for x in result.output.splitlines() if x.startswith("Error:")]
    assert len(lines) == 1 and words in lines[0], result.output
    assert not (tmp_path / "run" / "last.pt").exists()
