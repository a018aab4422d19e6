"""Issue 27: hostile stores, teachers and datasets, each built the way the hostile run built it, refused by every
tool that opens them: one line, a non-zero exit, nothing written.

1. a virtual dataset reading another file; 2. a soft link (and a second hard link) inside a store; 3. a huge
dataset whose chunks were never written (verify ends at once); 4. a teacher whose outputs are NaN, and a store of
NaN labels; 5. a .beton swapped under its meta.json; 6. a forged store against a pinned root digest.
"""
import hashlib
import json
import os
import shutil
import time

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from labelopt.cli import main
from labelopt.pipeline.data import fingerprint as beton_checks
from labelopt.pipeline.data.datasets import open_dataset
from labelopt.pipeline.errors import UserError
from labelopt.pipeline.jobs.store_card import store_card
from labelopt.pipeline.jobs.store_report import combine_stores, inspect_store, repack_store, verify_store
from labelopt.pipeline.jobs.student import StudentOptions, train_student
from labelopt.stages.labelers import EnsembleLabeler, LabelRequest, SoftLabeler, TeacherOutputError
from labelopt.stages.teachers import Teacher
from labelopt.store import LabelStore, StoreError, StoreLayout, StoreWriter, combine, verify
from labelopt.tests.store_fakes import build, forge, independent_digest, make_header, make_layout

HUGE = 10 ** 10


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_line(result, words):
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code != 0, result.output
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.output and "Traceback" not in result.stderr
    assert words in lines[0], lines[0]


def listing(root):
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def data(tiny_cifar_dir):
    return open_dataset(tiny_cifar_dir)


def cifar_store(path, data, compression="gzip", **layout):
    """A store of tiny_cifar_dir's training split (made by the writer), so train-student gets as far as opening it."""
    header = make_header()
    header["generator"]["temperature"] = 4.0
    header["dataset"] = {**data.identity("train"), "class_names": data.class_names}
    header["views"] = {"policy": "identity"}
    base = dict(num_samples=data.num_samples("train"), num_classes=data.num_classes, num_views=1)
    return build(path, make_layout(**{**base, **layout}), header=header, compression=compression)[0]


# -- the hostile stores, each resealed (checksums and digest recomputed) ------------------------------------------

def virtual_targets(path, data):
    """/targets replaced by a virtual dataset whose source is another file; checksums over what it reads."""
    other = path.with_name("other.h5")
    with h5py.File(path, "r") as f:
        shape, dtype = f["targets"].shape, f["targets"].dtype
    with h5py.File(other, "w") as f:
        f["t"] = np.full(shape, 1.0 / shape[-1], dtype=dtype)

    def edit(f):
        del f["targets"]
        layout = h5py.VirtualLayout(shape=shape, dtype=dtype)
        layout[...] = h5py.VirtualSource(str(other), "t", shape=shape)
        f.create_virtual_dataset("targets", layout)
    forge(path, edit)
    with h5py.File(path, "r") as f:  # the hostile store really serves the other file's values
        assert f["targets"].is_virtual and np.all(f["targets"][0] == dtype.type(1.0 / shape[-1]))


def soft_link(path, data):
    forge(path, lambda f: f.__setitem__("extra", h5py.SoftLink("/targets")))


def logits_linked_to_targets(path, data):
    """A soft link under a name the schema has: /logits would serve the targets."""
    def edit(f):
        del f["logits"]
        f["logits"] = h5py.SoftLink("/targets")
    forge(path, edit)


def extra_hard_link(path, data):
    """A plain hard link to /targets, under a name that is not the schema's."""
    forge(path, lambda f: f.__setitem__("extra", f["targets"]))


def logits_named_targets(path, data):
    """A plain hard link under a name the schema has: /logits, a second name for the targets' dataset."""
    def edit(f):
        del f["logits"]
        f["logits"] = f["targets"]
    forge(path, edit)


def unwritten(path, data, chunked=True):
    """A store of a few KB declaring /targets of 10^10 rows, no chunk written; its attributes resealed."""
    good = cifar_store(path.with_name("seed.h5"), data)
    with h5py.File(good, "r") as g:
        attrs, params = {k: g.attrs[k] for k in g.attrs}, g["views/params"][()]
    dataset = {**json.loads(attrs["dataset"]), "num_samples": HUGE}
    storage = lambda *chunk: dict(chunks=chunk, compression="gzip", fletcher32=True) if chunked else {}
    with h5py.File(path, "w") as f:
        for key, value in attrs.items():
            f.attrs[key] = value
        f.attrs["dataset"] = json.dumps(dataset, sort_keys=True)
        f.create_dataset("targets", shape=(HUGE, 1, data.num_classes), dtype="<f2", **storage(256, 1, data.num_classes))
        f.create_dataset("labels", shape=(HUGE,), dtype="<i8", **storage(256))
        f.create_dataset("views/params", data=params)
        f.attrs["checksums"] = json.dumps({"labels": "0" * 64, "targets": "0" * 64,
                                           "views/params": hashlib.sha256(params.tobytes()).hexdigest()})
        f.attrs["digest"] = independent_digest(f)
    os.unlink(good)
    assert os.path.getsize(path) < 2 ** 20


def nan_label(path, data):
    forge(path, lambda f: f["targets"].__setitem__((5, 0, 3), np.nan))


HOSTILE = {
    # name: (how it is made, layout of the store it starts from, the words of its refusal)
    "virtual dataset": (virtual_targets, {}, "virtual dataset"),
    "soft link": (soft_link, {}, "soft link to /targets"),
    "soft link at a schema name": (logits_linked_to_targets, {"logits": True}, "soft link to /targets"),
    "extra hard link": (extra_hard_link, {}, "/extra that is not part of a label store"),
    "second name at a schema name": (logits_named_targets, {"logits": True}, "another name"),
    "unwritten chunks": (unwritten, None, "chunks were ever written"),
    "unwritten contiguous": (lambda p, d: unwritten(p, d, chunked=False), None, "does not hold its bytes"),
    "nan label": (nan_label, {}, "not finite"),
    "nan label in place": (nan_label, {"compression": "none"}, "not finite"),
}


@pytest.fixture
def hostile(request, data, tmp_path):
    make, layout, words = HOSTILE[request.param]
    folder = tmp_path / "stores"
    folder.mkdir()
    path = folder / "hostile.h5"
    if layout is not None:
        cifar_store(path, data, **layout)
    make(path, data)
    good = cifar_store(folder / "good.h5", data)
    return path, good, words


TOOLS = {
    "inspect": lambda s, g, d, out: ["labels", "inspect", s],
    "card": lambda s, g, d, out: ["labels", "card", s, "--out", out / "card.md"],
    "combine": lambda s, g, d, out: ["labels", "combine", g, s, "--out", out / "c.h5"],
    "repack": lambda s, g, d, out: ["labels", "repack", s, "--layout", "contiguous", "--out", out / "r.h5"],
    "train-student": lambda s, g, d, out: ["train-student", "--student", "resnet20", "--labels", s, "--data", d,
                                           "--out", out / "run", "--epochs", "1", "--device", "cpu"],
}


@pytest.mark.parametrize("hostile", sorted(HOSTILE), indirect=True)
def test_every_tool_refuses_each_hostile_store_in_one_line_writing_nothing(hostile, tiny_cifar_dir, tmp_path):
    store, good, words = hostile
    out = tmp_path / "out"
    out.mkdir()
    before = listing(store.parent)
    with pytest.raises(StoreError, match=words):
        LabelStore.open(store).load()
    for tool, args in TOOLS.items():
        result = invoke(*args(store, good, tiny_cifar_dir, out))
        assert_one_line(result, words)
        assert not any(out.iterdir()), (tool, list(out.iterdir()))
    result = invoke("labels", "verify", store, "--json")
    assert result.exit_code == 1 and "Traceback" not in result.output
    failed = [c for c in json.loads(result.stdout)["checks"] if not c["ok"]]
    assert any(words in c["detail"] for c in failed), failed
    assert listing(store.parent) == before


def test_verify_of_a_store_declaring_ten_billion_unwritten_rows_ends_at_once(data, tmp_path):
    path = tmp_path / "huge.h5"
    unwritten(path, data)
    started = time.perf_counter()
    result = invoke("labels", "verify", path)
    seconds = time.perf_counter() - started
    assert result.exit_code == 1 and seconds < 1.0, (seconds, result.output)
    assert "storage" in result.stderr and "chunks were ever written" in result.stdout
    started = time.perf_counter()
    report = verify(path)
    assert time.perf_counter() - started < 1.0 and not report["ok"]
    assert [c["name"] for c in report["checks"] if not c["ok"]] == ["storage"]  # nothing hashed: no chunk read


def test_a_store_declaring_more_than_its_file_can_hold_is_refused(tmp_path):
    """Every chunk written, each of one byte: 128 MiB declared in a file of kilobytes, which no filter packs."""
    path, _ = build(tmp_path / "s.h5")
    with h5py.File(path, "r+") as f:
        dset = f.create_dataset("features/pool", shape=(2 ** 20, 64), dtype="<f2", chunks=(2 ** 16, 64),
                                compression="gzip")
        for start in range(0, 2 ** 20, 2 ** 16):
            dset.id.write_direct_chunk((start, 0), b"x")
    assert os.path.getsize(path) < 2 ** 17
    with pytest.raises(StoreError, match="more than its .* could hold"):
        LabelStore.open(path)


# -- 4. a teacher that outputs NaN ------------------------------------------------------------------------------

class RowsNaN(torch.nn.Module):
    """A finite model whose output rows are NaN where its input's first pixel is 255."""

    def __init__(self, classes=10):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(classes))

    def forward(self, x):
        logits = x.flatten(1)[:, :1] * self.scale
        return torch.where(x.flatten(1)[:, :1] > 254, float("nan"), logits)


def fake_teacher(name="bad.pt"):
    return Teacher(RowsNaN(), "resnet20", lambda images: images.float(), {"checkpoint": name})


def request_with_nan_at(row, indices=(10, 11, 12, 13)):
    images = torch.zeros(len(indices), 3, 4, 4, dtype=torch.uint8)
    images[row, :, 0, 0] = 255
    return LabelRequest(images, torch.tensor(indices), torch.zeros(len(indices), dtype=torch.long))


def test_labelers_refuse_non_finite_outputs_naming_the_checkpoint_and_the_sample():
    with pytest.raises(TeacherOutputError, match="teacher bad.pt .* not finite .* sample 12"):
        SoftLabeler([fake_teacher()], 4.0)(request_with_nan_at(2))
    ensemble = EnsembleLabeler([fake_teacher("good.pt"), fake_teacher("other.pt")], 4.0)
    with pytest.raises(TeacherOutputError, match="teacher good.pt .* sample 11"):
        ensemble(request_with_nan_at(1))
    clean = LabelRequest(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.tensor([1, 2]),
                         torch.zeros(2, dtype=torch.long))
    assert torch.isfinite(SoftLabeler([fake_teacher()], 4.0)(clean).probs).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the deferred check of CUDA outputs needs a GPU")
def test_on_cuda_the_check_waits_for_no_batch_and_still_refuses():
    teacher = Teacher(RowsNaN().cuda(), "resnet20", lambda images: images.float(), {"checkpoint": "bad.pt"})
    labeler = SoftLabeler([teacher], 4.0)
    clean = LabelRequest(torch.zeros(4, 3, 4, 4, dtype=torch.uint8, device="cuda"), torch.arange(4, device="cuda"),
                         torch.zeros(4, dtype=torch.long, device="cuda"))
    labeler(clean)
    bad = request_with_nan_at(3, indices=(20, 21, 22, 23))
    bad = LabelRequest(bad.images.cuda(), bad.indices.cuda(), bad.labels.cuda())
    with pytest.raises(TeacherOutputError, match="sample 23"):
        labeler(bad)
        labeler.check_outputs()


def test_the_writer_refuses_a_block_that_is_not_finite_naming_sample_and_teacher(tmp_path):
    header = make_header()
    header["generator"]["teachers"] = [{"arch": "resnet20", "checkpoint": "bad.pt"}]
    layout = make_layout()
    writer = StoreWriter(tmp_path / "s.h5", header, layout)
    targets = np.full((4, layout.num_views, layout.num_classes), 1 / layout.num_classes, np.float32)
    targets[2, 1, 0] = np.inf
    with pytest.raises(StoreError, match="soft labels of sample 6 are not finite .* teacher bad.pt"):
        writer.write_block(1, targets=targets, labels=np.zeros(4, np.int64))
    assert not writer.block_file(1).exists()


@pytest.fixture(scope="module")
def nan_checkpoint(tiny_teacher, tmp_path_factory):
    body = torch.load(tiny_teacher, weights_only=True)
    name = next(k for k, v in body["model"].items() if v.is_floating_point())
    body["model"][name] = torch.full_like(body["model"][name], float("nan"))
    path = tmp_path_factory.mktemp("nan-teacher") / "nan.pt"
    torch.save(body, path)
    return path


def test_a_nan_checkpoint_is_refused_by_generate_labels_train_student_and_evaluate(nan_checkpoint, tiny_cifar_dir,
                                                                                  tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    result = invoke("generate-labels", "--data", tiny_cifar_dir, "--teacher", nan_checkpoint, "--out", out / "s.h5",
                    "--device", "cpu")
    assert_one_line(result, "teacher checkpoint nan.pt holds weights that are not finite")
    result = invoke("train-student", "--student", "resnet20", "--teacher", nan_checkpoint, "--data", tiny_cifar_dir,
                    "--out", out / "run", "--epochs", "1", "--device", "cpu")
    assert_one_line(result, "nan.pt holds weights that are not finite")
    result = invoke("evaluate", nan_checkpoint, "--data", tiny_cifar_dir, "--device", "cpu", "--out", out / "eval")
    assert_one_line(result, "the model's outputs are not finite")
    assert [p for p in out.rglob("*") if p.is_file()] == []


# -- 5. a .beton that does not match its meta.json -------------------------------------------------------------

@pytest.fixture
def copied(tiny_cifar_dir, tmp_path):
    """A copy of the prepared dataset (times kept, as shutil.copytree keeps them)."""
    return shutil.copytree(tiny_cifar_dir, tmp_path / "data")


def flip_a_byte(path):
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))


def test_a_beton_swapped_under_its_meta_json_is_refused_at_open(copied):
    shutil.copyfile(copied / "test.beton", copied / "train.beton")  # another split's file: another count
    with pytest.raises(UserError, match="holds 40 samples but meta.json says 96.*labelopt prepare --overwrite"):
        open_dataset(copied).beton("train")
    with pytest.raises(UserError, match="labelopt prepare --overwrite"):
        open_dataset(copied).identity("train")


def test_a_beton_of_the_same_count_and_size_but_other_images_is_refused(copied, tiny_cifar_dir, data, tmp_path):
    flip_a_byte(copied / "train.beton")
    with pytest.raises(UserError, match="has sha256 .* when prepared.*labelopt prepare --overwrite"):
        open_dataset(copied).fingerprint("train")
    out = tmp_path / "out"
    out.mkdir()
    store = cifar_store(tmp_path / "labels.h5", data)
    result = invoke("generate-labels", "--data", copied, "--method", "random", "--out", out / "s.h5",
                    "--device", "cpu")
    assert_one_line(result, "labelopt prepare --overwrite")
    result = invoke("train-student", "--student", "resnet20", "--labels", store, "--data", copied,
                    "--out", out / "run", "--epochs", "1", "--device", "cpu")
    assert_one_line(result, "labelopt prepare --overwrite")
    assert not any(out.iterdir())
    result = invoke("labels", "verify", store, "--data", copied, "--json")
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    assert result.exit_code == 1 and not checks["identity"]["ok"]
    assert "labelopt prepare --overwrite" in checks["identity"]["detail"]
    assert invoke("labels", "verify", store, "--data", tiny_cifar_dir).exit_code == 0


def test_a_copy_with_new_times_is_hashed_once_then_trusted(copied, monkeypatch):
    beton = copied / "train.beton"
    os.utime(beton, ns=(time.time_ns(), time.time_ns()))
    fingerprint = json.loads((copied / "meta.json").read_text())["splits"]["train"]["fingerprint"]
    assert open_dataset(copied).fingerprint("train") == fingerprint  # hashed: the same bytes
    assert json.loads(beton_checks.checked_path(beton).read_text())["file_size"] == beton.stat().st_size
    beton_checks._VERIFIED.clear()  # a new process: only the file beside the .beton remembers

    def no_hashing(_):
        raise AssertionError("hashed again")
    monkeypatch.setattr(beton_checks, "file_sha256", no_hashing)
    assert open_dataset(copied).identity("train")["fingerprint"] == fingerprint


def test_a_dataset_prepared_before_files_were_recorded_is_checked_by_count(copied):
    meta = json.loads((copied / "meta.json").read_text())
    for split in meta["splits"].values():
        for key in ("file_size", "file_mtime_ns", "file_sha256"):
            split.pop(key)
    (copied / "meta.json").write_text(json.dumps(meta))
    open_dataset(copied).fingerprint("train")
    shutil.copyfile(copied / "test.beton", copied / "train.beton")
    with pytest.raises(UserError, match="holds 40 samples"):
        open_dataset(copied).fingerprint("train")


# -- 6. a pinned root digest -----------------------------------------------------------------------------------

def test_a_forged_store_passes_its_checks_but_not_a_pin(data, tiny_cifar_dir, tmp_path):
    path = cifar_store(tmp_path / "s.h5", data)
    pin = LabelStore.open(path).digest
    assert LabelStore.open(path, expect_digest=pin.upper()).digest == pin
    forge(path, lambda f: f["targets"].__setitem__(0, np.flip(f["targets"][0], -1)))
    assert verify(path)["ok"]  # checksums and digest recomputed: only the pin tells
    with pytest.raises(StoreError, match="not the pinned"):
        LabelStore.open(path, expect_digest=pin)
    report = verify(path, expect_digest=pin)
    assert [c["name"] for c in report["checks"] if not c["ok"]] == ["pin"]
    assert verify_store(path, expect_digest=pin)["ok"] is False
    out = tmp_path / "out"
    out.mkdir()
    for call in (lambda: inspect_store(path, expect_digest=pin), lambda: store_card(path, expect_digest=pin),
                 lambda: combine_stores([path, path], out / "c.h5", None, expect_digests=[None, pin]),
                 lambda: repack_store(path, out / "r.h5", "contiguous", expect_digest=pin),
                 lambda: train_student(StudentOptions(data=str(tiny_cifar_dir), arch="resnet20", out=str(out / "run"),
                                                      labels=str(path), expect_digest=pin, epochs=1, device="cpu"),
                                       log=lambda m: None)):
        with pytest.raises((UserError, StoreError), match="not the pinned"):
            call()
    assert not any(out.iterdir())


def test_the_digest_is_shown_and_a_pin_that_is_no_digest_is_refused(data, tiny_cifar_dir, tmp_path):
    path = cifar_store(tmp_path / "s.h5", data)
    digest = LabelStore.open(path).digest
    assert inspect_store(path)["digest"] == digest
    assert f"`{digest}`" in store_card(path) and f"--expect-digest {digest}" in store_card(path)
    assert digest in invoke("labels", "inspect", path).output
    for pin in ("abc", "z" * 64):
        with pytest.raises(StoreError, match="64 hex digits"):
            LabelStore.open(path, expect_digest=pin)
    with pytest.raises(StoreError, match="one --expect-digest per store"):
        combine([path, path], tmp_path / "c.h5", expect_digests=[digest])
    with pytest.raises(UserError, match="pass it with --labels"):
        train_student(StudentOptions(data=str(tiny_cifar_dir), arch="resnet20", out=str(tmp_path / "run"),
                                     expect_digest=digest, method="ls"), log=lambda m: None)


def test_a_dataset_through_a_filter_stores_never_use_is_refused(tmp_path):
    path, _ = build(tmp_path / "s.h5")
    with h5py.File(path, "r+") as f:
        f.create_dataset("features/pool", data=np.zeros((10, 3, 4), "<f4"), chunks=(5, 3, 4), scaleoffset=2)
    with pytest.raises(StoreError, match="filter 6, which label stores never use"):
        LabelStore.open(path)


def cli_takes_expect_digest() -> bool:
    return any(p.name == "expect_digest" for p in main.commands["labels"].commands["inspect"].params)


@pytest.mark.skipif(not cli_takes_expect_digest(), reason="cli.py's --expect-digest options are not applied yet")
def test_every_command_that_reads_a_store_refuses_another_digest_than_its_pin(data, tiny_cifar_dir, tmp_path):
    path = cifar_store(tmp_path / "s.h5", data)
    pin = LabelStore.open(path).digest
    forge(path, lambda f: f["targets"].__setitem__(0, np.flip(f["targets"][0], -1)))
    out = tmp_path / "out"
    out.mkdir()
    for args in (["labels", "inspect", path], ["labels", "card", path, "--out", out / "card.md"],
                 ["labels", "combine", path, path, "--out", out / "c.h5", "--expect-digest", "0" * 64],
                 ["labels", "repack", path, "--layout", "contiguous", "--out", out / "r.h5"],
                 ["train-student", "--student", "resnet20", "--labels", path, "--data", tiny_cifar_dir,
                  "--out", out / "run", "--epochs", "1", "--device", "cpu"]):
        assert_one_line(invoke(*args, "--expect-digest", pin), "not the pinned")
    assert not any(out.iterdir())
    result = invoke("labels", "verify", path, "--expect-digest", pin)
    assert result.exit_code == 1 and "verification failed (pin)" in result.stderr
    assert invoke("labels", "inspect", path, "--expect-digest", LabelStore.open(path).digest).exit_code == 0
