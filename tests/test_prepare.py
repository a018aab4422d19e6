"""prepare: official formats -> .beton + meta.json, fingerprints, loaders that return exactly the source pixels."""
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from labelopt.cli import main
from labelopt.pipeline.data.datasets import open_dataset
from labelopt.pipeline.errors import UserError
from labelopt.pipeline.data.fingerprint import split_fingerprint
from labelopt.pipeline.data.loading import decode_plan, field_pipelines, make_loader, new_loader
from labelopt.pipeline.data.raw_beton import RawBetonLoader, raw_loader_applies
from labelopt.pipeline.data.prepare import prepare
from labelopt.pipeline.data.sources import load_source
from labelopt.tests.fakes import (fake_cifar_content, fake_stl10_content, write_fake_cifar10, write_fake_imagefolder,
                                  write_fake_stl10)


def run_cli(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


def read_split(data, split):
    """Every (image HWC, label) of a split through the project's loader, ordered by the index field."""
    loader = make_loader(data, split, 64, shuffle=False)
    images, labels, indices = [], [], []
    for x, y, i in loader.epoch(0):
        images.append(x.permute(0, 2, 3, 1))
        labels.append(y)
        indices.append(i)
    order = torch.cat(indices).argsort()
    return torch.cat(images)[order].numpy(), torch.cat(labels)[order].numpy(), torch.cat(indices)[order].numpy()


def test_digits_meta_and_fingerprint(digits_dir):
    meta = json.loads((digits_dir / "meta.json").read_text())
    assert meta["num_classes"] == 10 and meta["class_names"] == [str(k) for k in range(10)]
    assert meta["splits"]["train"]["num_samples"] == 1437 and meta["splits"]["test"]["num_samples"] == 360
    assert meta["image_shape"] == [32, 32, 3] and meta["storage"] == "raw"
    source = load_source("digits", None)
    assert meta["splits"]["test"]["fingerprint"] == split_fingerprint(source.splits["test"])
    pixels = np.stack([source.splits["train"].read_image(i) for i in range(1437)]).astype(np.float64) / 255
    assert np.allclose(meta["mean"], pixels.reshape(-1, 3).mean(0), atol=1e-5)
    assert np.allclose(meta["std"], pixels.reshape(-1, 3).std(0), atol=1e-5)
    assert oct((digits_dir).stat().st_mode)[-3:] != "700"


def test_digits_loader_returns_source_pixels_by_index(digits_dir):
    data = open_dataset(digits_dir)
    images, labels, indices = read_split(data, "test")
    source = load_source("digits", None).splits["test"]
    assert (indices == np.arange(360)).all()
    assert np.array_equal(labels, source.labels)
    assert np.array_equal(images, np.stack([source.read_image(i) for i in range(360)]))


def test_cifar10_roundtrip_exact(tiny_cifar_dir):
    data = open_dataset(tiny_cifar_dir)
    expected_images, expected_labels = fake_cifar_content(10, n_train=96, n_test=40, seed=1)["train"]
    images, labels, indices = read_split(data, "train")
    assert np.array_equal(images, expected_images) and np.array_equal(labels, expected_labels)
    assert data.class_names[0] == "airplane" and data.num_samples("test") == 40
    assert np.array_equal(data.labels("train"), expected_labels)  # read from the metadata, no decoding


def test_stl10_with_unlabeled_split(tmp_path):
    raw = write_fake_stl10(tmp_path / "raw", n_train=6, n_test=4, n_unlabeled=5)
    final = prepare("stl10", raw, tmp_path / "out", include_unlabeled=True, log=lambda m: None)
    data = open_dataset(final)
    assert data.splits == ["train", "test", "unlabeled"]
    assert data.input_size == 96 and data.num_samples("unlabeled") == 5
    expected = fake_stl10_content(n_train=6, n_test=4, n_unlabeled=5)
    source = load_source("stl10", raw, include_unlabeled=True)
    assert np.array_equal(source.splits["train"].read_image(2), expected["train"][0][2])
    assert (source.splits["unlabeled"].labels == -1).all()


def test_imagefolder_stored_as_jpeg_and_decoded_to_squares(tmp_path):
    raw = write_fake_imagefolder(tmp_path / "raw", per_class_train=3, per_class_val=2)
    final = prepare("imagenet", raw, tmp_path / "out", max_side=64, jpeg_quality=95, log=lambda m: None)
    data = open_dataset(final)
    assert data.meta["storage"] == "jpg" and data.meta["image_shape"] is None
    assert data.splits == ["train", "val"] and data.num_classes == 3
    x, y, i = next(iter(make_loader(data, "val", 6, shuffle=False, train_decode=False).epoch(0)))
    assert x.shape == (6, 3, 224, 224) and x.dtype == torch.uint8
    assert sorted(y.tolist()) == [0, 0, 1, 1, 2, 2]
    assert not raw_loader_applies(data.meta, decode_plan(data, True))  # JPEGs decode through FFCV's Loader


@pytest.mark.parametrize("shuffle, drop_last, subset", [(True, True, False), (False, False, True),
                                                       (True, False, True)])
def test_raw_images_are_read_from_the_file_in_the_batches_of_ffcvs_loader(digits_dir, shuffle, drop_last, subset):
    """Raw images skip FFCV: the same batches (pixels, labels, indices, dtypes and shapes) as FFCV's Loader over
    the same rows, order, seed and epoch, and the same length."""
    from ffcv.loader import Loader, OrderOption

    data = open_dataset(digits_dir)
    assert data.meta["storage"] == "raw"
    rows = np.sort(np.random.default_rng(1).choice(data.num_samples("train"), 701, replace=False)).astype(np.uint64)
    settings = dict(batch_size=100, seed=5, indices=rows if subset else None, drop_last=drop_last, distributed=False)
    ours = new_loader(data, data.beton("train"), decode=("simple",), workers=2, shuffle=shuffle, **settings)
    assert isinstance(ours, RawBetonLoader)
    theirs = Loader(str(data.beton("train")), num_workers=2, pipelines=field_pipelines(("simple",)),
                    order=OrderOption.RANDOM if shuffle else OrderOption.SEQUENTIAL, **settings)
    epochs = {}
    for loader in (ours, theirs):
        torch.set_num_threads(1)  # as an earlier job in the process may have left it
        loader.next_epoch = 1
        epochs[loader] = [[t.clone() for t in batch] for batch in loader]
        assert torch.get_num_threads() == 2  # the loader's workers, as FFCV sets them: a run's CPU floats depend on it
    assert len(ours) == len(theirs) == len(epochs[ours]) == len(epochs[theirs]) > 1
    for mine, ffcv in zip(epochs[ours], epochs[theirs]):
        assert all(a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b) for a, b in zip(mine, ffcv))


def test_the_beton_table_is_the_one_ffcvs_reader_parses(digits_dir, tmp_path):
    """labelopt's own parse of a .beton (raw images, and JPEGs) against FFCV's Reader: layout, fields, every
    sample's metadata; and the raw mode's value."""
    from ffcv.fields.rgb_image import IMAGE_MODES
    from ffcv.reader import Reader

    from labelopt.pipeline.data.beton_table import RAW_MODE, SAMPLE_RECORD, read_beton_table

    assert RAW_MODE == IMAGE_MODES["raw"]
    jpegs = prepare("imagenet", write_fake_imagefolder(tmp_path / "raw", per_class_train=3, per_class_val=2),
                    tmp_path / "out", max_side=64, jpeg_quality=95, log=lambda m: None)
    for beton in (open_dataset(digits_dir).beton("train"), open_dataset(jpegs).beton("train")):
        ours, theirs = read_beton_table(beton).samples, Reader(str(beton))
        assert theirs.field_names == ["image", "label", "index"]
        assert SAMPLE_RECORD.itemsize == theirs.metadata.dtype.itemsize
        assert [SAMPLE_RECORD.fields[n][1] for n in SAMPLE_RECORD.names] == \
            [theirs.metadata.dtype.fields[n][1] for n in theirs.metadata.dtype.names]
        assert ours.tobytes() == theirs.metadata.tobytes() and len(ours) == theirs.num_samples > 0
        for name in ("mode", "width", "height", "data_ptr"):
            assert np.array_equal(ours["image"][name], theirs.metadata["f0"][name])
        assert np.array_equal(ours["label"], theirs.metadata["f1"])
        assert np.array_equal(ours["index"], theirs.metadata["f2"])


@pytest.mark.parametrize("shuffle", [True, False])
def test_an_epochs_order_under_torchrun_is_ffcvs(shuffle, monkeypatch):
    """Each rank's share of an epoch, as FFCV's distributed traversal orders give it (2 ranks, several epochs)."""
    from ffcv.loader.loader import ORDER_MAP, OrderOption

    from labelopt.pipeline.data.raw_beton import EpochOrder

    indices = np.sort(np.random.default_rng(0).choice(1000, 301, replace=False)).astype(np.uint64)
    for rank in (0, 1):
        monkeypatch.setattr(torch.distributed, "is_available", lambda: True)
        monkeypatch.setattr(torch.distributed, "get_world_size", lambda group=None: 2)
        monkeypatch.setattr(torch.distributed, "get_rank", lambda group=None: rank)

        class Settings:  # what FFCV's orders read of their loader
            pass

        settings = Settings()
        settings.indices, settings.seed, settings.distributed = indices, 7, True
        theirs = ORDER_MAP[OrderOption.RANDOM if shuffle else OrderOption.SEQUENTIAL](settings)
        ours = EpochOrder(indices, shuffle=shuffle, seed=7, distributed=True)
        for epoch in range(3):
            assert np.array_equal(ours.of(epoch), theirs.sample_order(epoch))
        assert len(ours.of(0)) == 151


def test_a_cifar_model_on_raw_images_imports_neither_ffcv_nor_torchvision(digits_dir):
    """A process that reads raw images, views them and runs a CIFAR model never imports FFCV (2-3 s of numba
    compiling at import) or torchvision (about 1 s): they load only for JPEGs, ImageNet models and resized crops."""
    import subprocess
    import sys

    code = ("import sys, torch\n"
            "from labelopt.models import create_model\n"
            "from labelopt.pipeline.data.datasets import open_dataset\n"
            "from labelopt.pipeline.data.loading import make_loader\n"
            "from labelopt.pipeline.views.policies import PadCropFlipView\n"
            f"data = open_dataset({str(digits_dir)!r})\n"
            "images, _, _ = next(make_loader(data, 'train', 64, shuffle=True).epoch(0))\n"
            "views = PadCropFlipView().apply(images, torch.zeros(64, 1, dtype=torch.long))\n"
            "assert create_model('resnet20', 10)(views.float()).shape == (64, 10)\n"
            "assert data.labels('train').min() >= 0\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'ffcv', 'torchvision'}))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_a_damaged_raw_beton_is_refused_in_one_line(digits_dir, tmp_path):
    from labelopt.pipeline.data.beton_table import HEADER, FIELD_DESCRIPTOR

    source = open_dataset(digits_dir).beton("train")
    damaged = {name: tmp_path / f"{name}.beton" for name in ("empty", "header", "table", "moved", "version")}
    damaged["empty"].write_bytes(b"")
    damaged["header"].write_bytes(source.read_bytes()[:10])
    damaged["table"].write_bytes(source.read_bytes()[:HEADER.itemsize + 3 * FIELD_DESCRIPTOR.itemsize + 100])
    for name in ("moved", "version"):
        damaged[name].write_bytes(source.read_bytes())
    with open(damaged["moved"], "r+b") as handle:  # sample 0's pixels said to lie past the end of the file
        handle.seek(HEADER.itemsize + 3 * FIELD_DESCRIPTOR.itemsize + 5)
        handle.write(np.array([damaged["moved"].stat().st_size], dtype="<u8").tobytes())
    with open(damaged["version"], "r+b") as handle:
        handle.write(np.array([3], dtype="<u2").tobytes())
    expected = {"empty": "cannot be read", "header": "is cut short", "table": "is cut short",
                "moved": "is damaged: an image lies past the end of the file",
                "version": "is not a .beton labelopt wrote: it has format version 3 with 3 fields"}
    for name, message in expected.items():
        with pytest.raises(UserError, match=message):
            RawBetonLoader(str(damaged[name]), batch_size=10, num_workers=2, shuffle=False)


def test_cli_prepare_digits_refuses_existing_output_then_overwrites(tmp_path):
    code, out = run_cli("prepare", "--dataset", "digits", "--out", tmp_path)
    assert code == 0 and "train.beton" in out
    before = (tmp_path / "digits" / "meta.json").read_text()
    code, out = run_cli("prepare", "--dataset", "digits", "--out", tmp_path)
    assert code != 0 and "already exists; pass --overwrite" in out and "Traceback" not in out
    assert (tmp_path / "digits" / "meta.json").read_text() == before
    code, out = run_cli("prepare", "--dataset", "digits", "--out", tmp_path, "--overwrite")
    assert code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits"]  # no temporary or old folders left


@pytest.mark.parametrize("args, message", [
    (["--dataset", "mnist"], "unknown dataset 'mnist'"),
    (["--dataset", "cifar10"], "needs --root"),
    (["--dataset", "cifar10", "--root", "/nonexistent/place"], "/nonexistent/place"),
])
def test_cli_prepare_bad_input_is_one_line(tmp_path, args, message):
    code, out = run_cli("prepare", *args, "--out", tmp_path)
    assert code != 0 and message in out and "Traceback" not in out
    assert len(out.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_missing_cifar_batch_names_the_file_and_writes_nothing(tmp_path):
    folder = write_fake_cifar10(tmp_path / "raw", n_train=20, n_test=10)
    (folder / "data_batch_3").unlink()
    code, out = run_cli("prepare", "--dataset", "cifar10", "--root", tmp_path / "raw", "--out", tmp_path / "out")
    assert code != 0 and "data_batch_3" in out
    assert not (tmp_path / "out" / "cifar10").exists()


def test_failure_midway_leaves_nothing_half_written(tmp_path, monkeypatch):
    import labelopt.pipeline.data.prepare as prepare_module
    real = prepare_module.write_beton
    calls = []

    def failing(split, path, *args):
        calls.append(path.name)
        if len(calls) == 2:
            raise OSError("disk full")
        return real(split, path, *args)

    monkeypatch.setattr(prepare_module, "write_beton", failing)
    with pytest.raises(OSError):
        prepare("digits", None, tmp_path, log=lambda m: None)
    assert list(tmp_path.iterdir()) == []


def test_unwritable_output_is_refused(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code, out = run_cli("prepare", "--dataset", "digits", "--out", blocker / "sub")
    assert code != 0 and "cannot create output folder" in out and "Traceback" not in out


def test_data_folder_that_was_not_prepared(tmp_path, digits_dir):
    with pytest.raises(UserError, match="not a prepared dataset.*labelopt prepare"):
        open_dataset(tmp_path)
    with pytest.raises(UserError, match=f"did you mean {digits_dir}"):
        open_dataset(digits_dir.parent)
