"""The pixel bank (a split's decoded pixels, for stored mixes): decoded once into <split>.pixels beside the .beton
and mapped by every process of a node; a stale or damaged file is rebuilt, never used; where the folder cannot take
the file each process decodes its own copy, and the memory check counts every copy."""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from labelopt.pipeline.data import pixel_bank, pixel_bank_file
from labelopt.pipeline.data.datasets import open_dataset
from labelopt.pipeline.errors import UserError


@pytest.fixture
def own_cifar(tiny_cifar_dir, tmp_path):
    """A copy of the tiny prepared CIFAR set that this test may write a bank beside."""
    pixel_bank._BANKS.clear()
    yield shutil.copytree(tiny_cifar_dir, tmp_path / "cifar10", ignore=shutil.ignore_patterns("*.pixels"))
    pixel_bank._BANKS.clear()


def no_decode(*_args, **_kwargs):
    raise AssertionError("the split was decoded again")


def test_a_split_is_decoded_once_into_a_file_that_later_loads_map(own_cifar, monkeypatch):
    data = open_dataset(own_cifar)
    first = pixel_bank.PixelBank.load(data, "train")
    assert first.source == "decoded" and (own_cifar / "train.pixels").is_file()
    assert first.describe() == (f"partner pixels: 0.3 MiB decoded into {own_cifar / 'train.pixels'} (one copy per "
                                f"node, shared by its processes)")
    assert not list(own_cifar.glob(".train.pixels.tmp-*"))
    pixel_bank._BANKS.clear()  # a new process: it maps the file and decodes nothing
    monkeypatch.setattr(pixel_bank, "block_loader", no_decode)
    mapped = pixel_bank.PixelBank.load(data, "train")
    assert mapped.source == "shared file" and mapped.images.shape == (96, 3, 32, 32)
    assert "mapped from" in mapped.describe()
    assert torch.equal(mapped.images, first.images) and torch.equal(mapped.labels, first.labels)
    assert mapped.labels.min() >= 0  # every sample was decoded
    monkeypatch.undo()
    pixel_bank._BANKS.clear()  # a folder that cannot take the file: the same pixels, decoded into this process
    monkeypatch.setattr(pixel_bank, "can_write_beside", lambda *_: False)
    (own_cifar / "train.pixels").unlink()
    own = pixel_bank.PixelBank.load(data, "train")
    assert own.source == "memory" and torch.equal(own.images, first.images) and torch.equal(own.labels, first.labels)
    assert "each process on the node holds its own copy" in own.describe()
    assert not (own_cifar / "train.pixels").exists()


def fake_bank(tmp_path, fingerprint="abc"):
    beton = tmp_path / "train.beton"
    beton.write_bytes(b"x" * 100)
    shape = (5, 4, 4)
    header = pixel_bank_file.identity(beton, fingerprint, shape)
    buffer, labels, images = pixel_bank_file.new_buffer(header, shape)
    labels[:] = np.arange(5)
    images[:] = np.arange(images.size, dtype=np.uint64).reshape(images.shape) % 251
    path = pixel_bank_file.bank_path(beton)
    path.write_bytes(buffer.tobytes())
    return beton, path, header, shape, images.copy()


def test_a_bank_file_is_used_only_for_the_pixels_it_was_made_from(tmp_path):
    beton, path, header, shape, images = fake_bank(tmp_path)
    labels, mapped = pixel_bank_file.open_bank(path, header, shape)
    assert np.array_equal(mapped, images) and list(labels) == [0, 1, 2, 3, 4] and mapped.flags.writeable
    assert pixel_bank_file.open_bank(path, pixel_bank_file.identity(beton, "other data", shape), shape) is None
    assert pixel_bank_file.open_bank(path, header, (5, 4, 5)) is None  # another decode size
    os.utime(beton, ns=(1, 1))  # the .beton was prepared again
    assert pixel_bank_file.open_bank(path, pixel_bank_file.identity(beton, "abc", shape), shape) is None
    assert pixel_bank_file.open_bank(path, header, shape) is not None
    with open(path, "r+b") as fh:  # cut short: refused whatever its header says
        fh.truncate(path.stat().st_size - 1)
    assert pixel_bank_file.open_bank(path, header, shape) is None
    assert pixel_bank_file.open_bank(tmp_path / "absent.pixels", header, shape) is None


def test_the_memory_check_counts_one_copy_when_shared_and_every_process_when_not(own_cifar, monkeypatch):
    data = open_dataset(own_cifar)
    need = pixel_bank.bank_bytes(data, "train")
    monkeypatch.setattr(pixel_bank, "available_memory_bytes", lambda: 4 * need)  # half of it holds two copies
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    monkeypatch.setattr(pixel_bank, "block_loader", no_decode)
    monkeypatch.setattr(pixel_bank, "can_write_beside", lambda *_: False)
    with pytest.raises(UserError, match=r"\(4 processes on this node, one copy each\)"):
        pixel_bank.PixelBank.load(data, "train")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    pixel_bank.check_bank_fits(data, "train", copies=2)
    monkeypatch.setattr(pixel_bank, "available_memory_bytes", lambda: need)  # one copy is more than half
    with pytest.raises(UserError, match="decoded pixels in memory"):
        pixel_bank.check_bank_fits(data, "train")


LOAD = """
import sys
from labelopt.pipeline.data import pixel_bank
from labelopt.pipeline.data.datasets import open_dataset
bank = pixel_bank.PixelBank.load(open_dataset(sys.argv[1]), "train")
print(bank.source, int(bank.images.sum()))
"""


@pytest.mark.slow
def test_two_processes_of_a_node_decode_once_and_map_the_same_file(own_cifar):
    env = {**os.environ, "LOCAL_WORLD_SIZE": "2"}
    procs = [subprocess.Popen([sys.executable, "-c", LOAD, str(own_cifar)], stdout=subprocess.PIPE, text=True,
                              env=env) for _ in range(2)]
    outs = [proc.communicate(timeout=300)[0].strip().rsplit(" ", 1) for proc in procs]
    assert all(proc.returncode == 0 for proc in procs)
    assert sorted(source for source, _ in outs) == ["decoded", "shared file"]  # one decoded, the other waited
    assert outs[0][1] == outs[1][1]  # and both hold the same pixels
