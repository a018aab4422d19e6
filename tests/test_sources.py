"""Dataset sources: each official on-disk format reads back exactly what the fakes wrote."""
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from labelopt.pipeline.errors import UserError
from labelopt.pipeline.data.sources import SOURCES, load_source, source_names
from labelopt.tests.fakes import (CIFAR10_NAMES, CIFAR100_NAMES, STL10_NAMES, fake_cifar_content,
                                  fake_stl10_content, write_fake_cifar10, write_fake_cifar100,
                                  write_fake_imagefolder, write_fake_stl10)


def assert_split_matches(split, images, labels):
    assert len(split) == split.num_samples == len(images)
    assert split.labels.dtype == np.int64
    np.testing.assert_array_equal(split.labels, labels)
    for i in range(len(split)):
        got = split.read_image(i)
        assert got.dtype == np.uint8 and got.flags.c_contiguous
        np.testing.assert_array_equal(got, images[i])
        assert split.read_fingerprint_bytes(i) == images[i].tobytes()


# --- registry -------------------------------------------------------------------------------------

def test_registry_names():
    assert source_names() == sorted(["cifar10", "cifar100", "stl10", "imagenet", "digits"])
    assert set(SOURCES) == set(source_names())


def test_unknown_dataset_lists_known_ones():
    with pytest.raises(UserError) as e:
        load_source("mnist", None)
    for name in source_names():
        assert name in str(e.value)
    assert "mnist" in str(e.value)


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "stl10", "imagenet"])
def test_missing_root_says_root_is_needed(name):
    with pytest.raises(UserError, match="needs --root"):
        load_source(name, None)


def test_root_that_does_not_exist(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_source("cifar10", tmp_path / "nowhere")


def test_root_without_the_dataset_folder(tmp_path):
    with pytest.raises(UserError, match="no cifar-10-batches-py folder"):
        load_source("cifar10", tmp_path)


def test_unlabeled_only_for_stl10(tmp_path):
    write_fake_cifar10(tmp_path, n_train=5, n_test=2)
    with pytest.raises(UserError, match="no unlabeled split"):
        load_source("cifar10", tmp_path, include_unlabeled=True)


# --- CIFAR ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("point_at_folder", [False, True])
def test_cifar10_round_trip(tmp_path, point_at_folder):
    folder = write_fake_cifar10(tmp_path, n_train=40, n_test=20, seed=3)
    source = load_source("cifar10", folder if point_at_folder else tmp_path)
    assert (source.name, source.num_classes, source.storage) == ("cifar10", 10, "raw")
    assert source.class_names == list(CIFAR10_NAMES)
    assert list(source.splits) == ["train", "test"]
    expected = fake_cifar_content(10, 40, 20, seed=3)
    for split_name, (images, labels) in expected.items():
        split = source.splits[split_name]
        assert split.image_shape == (32, 32, 3)
        assert_split_matches(split, images, labels)
    assert set(source.splits["train"].labels.tolist()) == set(range(10))


def test_cifar_planar_layout_by_hand(tmp_path):
    # The first 1024 bytes of a row are the red plane, row-major: byte 33 is red at (row 1, col 1).
    folder = write_fake_cifar10(tmp_path, n_train=5, n_test=1)
    with open(folder / "data_batch_1", "rb") as f:
        row = pickle.load(f, encoding="bytes")[b"data"][0]  # our own fake, so plain pickle is fine here
    image = load_source("cifar10", tmp_path).splits["train"].read_image(0)
    assert image[1, 1, 0] == row[33]
    assert image[1, 1, 1] == row[1024 + 33]
    assert image[0, 5, 2] == row[2048 + 5]


def test_cifar100_uses_fine_labels(tmp_path):
    write_fake_cifar100(tmp_path, n_train=30, n_test=12, seed=1)
    source = load_source("cifar100", tmp_path)
    assert source.num_classes == 100 and source.class_names == list(CIFAR100_NAMES)
    for split_name, (images, labels) in fake_cifar_content(100, 30, 12, seed=1).items():
        assert_split_matches(source.splits[split_name], images, labels)


def test_cifar_accepts_str_keys(tmp_path):
    folder = write_fake_cifar10(tmp_path, n_train=5, n_test=3)
    path = folder / "test_batch"
    with open(path, "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    with open(path, "wb") as f:
        pickle.dump({k.decode(): v for k, v in batch.items()}, f, protocol=2)
    split = load_source("cifar10", tmp_path).splits["test"]
    np.testing.assert_array_equal(split.labels, batch[b"labels"])


class _RunsAShell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_cifar_refuses_a_pickle_that_runs_code(tmp_path):
    folder = write_fake_cifar10(tmp_path, n_train=5, n_test=2)
    marker = tmp_path / "pwned"
    with open(folder / "data_batch_2", "wb") as f:
        pickle.dump({b"data": _RunsAShell(marker), b"labels": []}, f, protocol=2)
    with pytest.raises(UserError, match=r"refusing to unpickle .*system from .*data_batch_2"):
        load_source("cifar10", tmp_path)
    assert not marker.exists()


def test_cifar_truncated_batch_is_named(tmp_path):
    folder = write_fake_cifar10(tmp_path, n_train=10, n_test=2)
    path = folder / "data_batch_4"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(UserError, match="truncated or corrupt") as e:
        load_source("cifar10", tmp_path)
    assert str(path) in str(e.value)


def test_cifar_missing_batch_is_named(tmp_path):
    folder = write_fake_cifar10(tmp_path, n_train=10, n_test=2)
    (folder / "data_batch_3").unlink()
    with pytest.raises(UserError, match="missing CIFAR-10 file") as e:
        load_source("cifar10", tmp_path)
    assert str(folder / "data_batch_3") in str(e.value)
    assert "--root" in str(e.value)


@pytest.mark.parametrize("bad", ["shape", "count"])
def test_cifar_wrong_sizes_are_named(tmp_path, bad):
    folder = write_fake_cifar10(tmp_path, n_train=10, n_test=4)
    path = folder / "test_batch"
    data = np.zeros((4, 100 if bad == "shape" else 3072), dtype=np.uint8)
    labels = [0, 1, 2, 3] if bad == "shape" else [0, 1, 2]
    with open(path, "wb") as f:
        pickle.dump({b"data": data, b"labels": labels}, f, protocol=2)
    with pytest.raises(UserError) as e:
        load_source("cifar10", tmp_path)
    assert str(path) in str(e.value)


# --- STL-10 -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("include_unlabeled", [False, True])
def test_stl10_round_trip(tmp_path, include_unlabeled):
    folder = write_fake_stl10(tmp_path, n_train=10, n_test=8, n_unlabeled=6, seed=2)
    source = load_source("stl10", tmp_path, include_unlabeled=include_unlabeled)
    assert (source.name, source.num_classes, source.storage) == ("stl10", 10, "raw")
    assert source.class_names == list(STL10_NAMES)
    expected = fake_stl10_content(10, 8, 6, seed=2)
    wanted = ["train", "test"] + (["unlabeled"] if include_unlabeled else [])
    assert list(source.splits) == wanted
    for name in wanted:
        assert source.splits[name].image_shape == (96, 96, 3)
        assert_split_matches(source.splits[name], *expected[name])
    assert set(source.splits["train"].labels.tolist()) == set(range(10))
    if include_unlabeled:
        assert (source.splits["unlabeled"].labels == -1).all()
    assert load_source("stl10", folder).splits["test"].num_samples == 8  # root = the folder itself


def test_stl10_column_major_layout_by_hand(tmp_path):
    folder = write_fake_stl10(tmp_path, n_train=2, n_test=1, n_unlabeled=0)
    # Official layout: byte c*9216 + col*96 + row holds pixel (row, col, channel c).
    c, col, row = np.meshgrid(np.arange(3), np.arange(96), np.arange(96), indexing="ij")
    value = (row + 3 * col + 100 * c) % 256  # differs under row/col swap
    first = value.astype(np.uint8).reshape(-1).tobytes()
    rest = (folder / "train_X.bin").read_bytes()[27648:]
    (folder / "train_X.bin").write_bytes(first + rest)
    image = load_source("stl10", tmp_path).splits["train"].read_image(0)
    assert image.shape == (96, 96, 3)
    assert image[0, 1, 0] == first[96]  # the second column starts 96 bytes in
    assert image[1, 0, 0] == first[1]
    r, k, ch = np.meshgrid(np.arange(96), np.arange(96), np.arange(3), indexing="ij")
    np.testing.assert_array_equal(image, (r + 3 * k + 100 * ch) % 256)


def test_stl10_bad_sizes_are_named(tmp_path):
    folder = write_fake_stl10(tmp_path, n_train=3, n_test=2, n_unlabeled=0)
    (folder / "test_y.bin").write_bytes(b"\x01")
    with pytest.raises(UserError, match="holds 1 labels") as e:
        load_source("stl10", tmp_path)
    assert str(folder / "test_y.bin") in str(e.value)
    (folder / "train_X.bin").write_bytes(b"\x00" * 27647)
    with pytest.raises(UserError, match="multiple of 27648") as e:
        load_source("stl10", tmp_path)
    assert str(folder / "train_X.bin") in str(e.value)


def test_stl10_missing_file_is_named(tmp_path):
    folder = write_fake_stl10(tmp_path, n_unlabeled=0)
    (folder / "unlabeled_X.bin").unlink()
    assert load_source("stl10", tmp_path).splits.keys() == {"train", "test"}
    with pytest.raises(UserError, match="missing STL-10 file") as e:
        load_source("stl10", tmp_path, include_unlabeled=True)
    assert str(folder / "unlabeled_X.bin") in str(e.value)


# --- ImageFolder --------------------------------------------------------------------------------------

def test_imagefolder_round_trip(tmp_path):
    root = write_fake_imagefolder(tmp_path, classes=("eel", "cat", "dog"), per_class_train=4, per_class_val=2)
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    exact = np.random.default_rng(9).integers(0, 256, size=(17, 23, 3), dtype=np.uint8)
    Image.fromarray(exact).save(root / "train" / "dog" / "zz_lossless.png")
    source = load_source("imagenet", root)
    assert (source.name, source.num_classes, source.storage) == ("imagenet", 3, "jpg")
    assert source.class_names == ["cat", "dog", "eel"]
    train, val = source.splits["train"], source.splits["val"]
    assert list(source.splits) == ["train", "val"]
    assert train.image_shape is None and val.image_shape is None
    assert len(train) == 13 and len(val) == 6
    np.testing.assert_array_equal(train.labels, [0] * 4 + [1] * 5 + [2] * 4)
    np.testing.assert_array_equal(val.labels, [0, 0, 1, 1, 2, 2])
    files = [p for c in source.class_names for p in sorted((root / "train" / c).iterdir()) if p.suffix != ".txt"]
    shapes = set()
    for i, path in enumerate(files):
        image = train.read_image(i)
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3 and image.flags.c_contiguous
        with Image.open(path) as im:
            assert image.shape[:2] == (im.height, im.width)
            np.testing.assert_array_equal(image, np.asarray(im.convert("RGB")))
        assert train.read_fingerprint_bytes(i) == path.read_bytes()
        shapes.add(image.shape)
    assert len(shapes) > 1  # varied sizes
    np.testing.assert_array_equal(train.read_image(8), exact)  # the PNG sorts last in dog


def test_imagefolder_val_must_match_train_classes(tmp_path):
    root = write_fake_imagefolder(tmp_path)
    (root / "val" / "fox").mkdir()
    with pytest.raises(UserError, match="same class folders"):
        load_source("imagenet", root)


def test_imagefolder_empty_split(tmp_path):
    root = write_fake_imagefolder(tmp_path, per_class_val=0)
    with pytest.raises(UserError, match="no images under") as e:
        load_source("imagenet", root)
    assert str(root / "val") in str(e.value)


def test_imagefolder_missing_val(tmp_path):
    root = tmp_path / "tree"
    write_fake_imagefolder(root)
    for path in sorted((root / "val").rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    (root / "val").rmdir()
    with pytest.raises(UserError, match="no val/ folder"):
        load_source("imagenet", root)


# --- digits -------------------------------------------------------------------------------------------

def test_digits_fixed_stratified_split():
    source = load_source("digits", None)
    assert (source.name, source.num_classes, source.storage) == ("digits", 10, "raw")
    assert source.class_names == [str(d) for d in range(10)]
    train, test = source.splits["train"], source.splits["test"]
    assert (len(train), len(test)) == (1437, 360)
    for split in (train, test):
        assert set(split.labels.tolist()) == set(range(10))
        assert split.image_shape == (32, 32, 3)
        image = split.read_image(0)
        assert image.shape == (32, 32, 3) and image.dtype == np.uint8 and image.flags.c_contiguous
        assert (image[..., 0] == image[..., 1]).all() and (image[..., 0] == image[..., 2]).all()
    assert max(int(train.read_image(i).max()) for i in range(20)) == 255  # 16 -> 255
    again = load_source("digits", Path("/ignored"))
    for name in ("train", "test"):
        np.testing.assert_array_equal(again.splits[name].labels, source.splits[name].labels)
        for i in (0, 7, len(again.splits[name]) - 1):
            assert again.splits[name].read_fingerprint_bytes(i) == source.splits[name].read_fingerprint_bytes(i)


# --- fork ------------------------------------------------------------------------------------------------

def test_sources_read_after_fork(tmp_path):
    write_fake_stl10(tmp_path, n_train=3, n_test=2, n_unlabeled=0)
    write_fake_cifar10(tmp_path, n_train=5, n_test=2)
    root = write_fake_imagefolder(tmp_path / "tree")
    splits = [load_source("stl10", tmp_path).splits["train"], load_source("cifar10", tmp_path).splits["test"],
              load_source("imagenet", root).splits["val"]]
    expected = [s.read_image(1).tobytes() for s in splits]
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: same objects, inherited
        ok = all(s.read_image(1).tobytes() == e for s, e in zip(splits, expected))
        os.write(write_end, b"1" if ok else b"0")
        os._exit(0)
    os.close(write_end)
    answer = os.read(read_end, 1)
    os.waitpid(pid, 0)
    os.close(read_end)
    assert answer == b"1"
