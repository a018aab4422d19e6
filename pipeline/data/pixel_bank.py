"""The decoded pixels of a whole split: where a stored mix finds its partners' images.

A stored mix record names partner samples anywhere in the split (not in the same batch), so building its pixels
needs those samples' images at any step. The bank decodes the split once, through the same decode as the training
loader (so a partner's pixels are exactly the pixels the loader gives for it), into uint8 [N, 3, H, W]: 50,000
CIFAR images are 150 MB. It writes them to <split>.pixels beside the .beton (pixel_bank_file.py), and every process
maps that file: the processes of a node hold one copy in the page cache, and later runs skip the decode. Where the
folder cannot take the file (read-only, full), each process decodes into its own memory. A split whose pixels would
take more than half of the memory available (one copy, or one per process when they cannot share) is refused.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..progress import Progress
from ...store.files import write_bytes_atomic
from ...store.memory import available_memory_bytes
from .datasets import PreparedDataset
from .loading import block_loader
from .pixel_bank_file import bank_lock, bank_path, can_write_beside, file_bytes, identity, new_buffer, open_bank

MEMORY_SHARE = 0.5  # the most of the available memory a bank may take
DECODE_BATCH = 512


def bank_shape(data: PreparedDataset, split: str) -> tuple[int, int, int]:
    side = data.decode_side
    return data.num_samples(split), side, side


def bank_bytes(data: PreparedDataset, split: str) -> int:
    n, h, w = bank_shape(data, split)
    return n * 3 * h * w


def processes_per_node() -> int:
    """torchrun's LOCAL_WORLD_SIZE: the processes of a node, which hold one copy each when they cannot share."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def check_bank_fits(data: PreparedDataset, split: str, copies: int = 1) -> None:
    need, have = bank_bytes(data, split) * copies, available_memory_bytes()
    if need > MEMORY_SHARE * have:
        each = f" ({copies} processes on this node, one copy each)" if copies > 1 else ""
        raise UserError(f"mixed views need the {split} split's decoded pixels in memory (every partner image at "
                        f"any step): {need / 2**30:.1f} GiB for {data.num_samples(split)} images{each}, but only "
                        f"{have / 2**30:.1f} GiB is available (at most half of it may be used); stored mixes work "
                        f"for splits that fit, such as CIFAR's 150 MB; for larger data use online mixes "
                        f"(train-student --mix with --teacher)")


class PixelBank:
    """uint8 [N, 3, H, W] pixels and int64 [N] labels of a split, by sample index. `source` says where they came
    from: "decoded" (this process wrote the node's shared file), "shared file" (mapped one already written),
    "memory" (decoded for this process alone: the folder could not take the file)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, source: str = "memory", path: Path | None = None):
        self.images, self.labels, self.source, self.path = images, labels, source, path

    def describe(self) -> str:
        """One line for the log: where the partners' pixels are and how many copies the node holds."""
        mib = self.images.numel() / 2 ** 20
        size = f"{mib:.1f} MiB" if mib < 10 else f"{mib:.0f} MiB"
        if self.source == "memory":
            return (f"partner pixels: {size} decoded into this process's memory (the dataset folder cannot take "
                    f"the shared file; each process on the node holds its own copy)")
        done = "decoded into" if self.source == "decoded" else "mapped from"
        return f"partner pixels: {size} {done} {self.path} (one copy per node, shared by its processes)"

    @classmethod
    def load(cls, data: PreparedDataset, split: str) -> "PixelBank":
        beton = data.beton(split)
        key = (str(beton.resolve()), beton.stat().st_mtime_ns)
        if key not in _BANKS:
            _BANKS[key] = _load(data, split, beton)
        return _BANKS[key]

    def take(self, indices: torch.Tensor, device) -> torch.Tensor:
        return self.images[indices.cpu()].to(device, non_blocking=True)


_BANKS: dict[tuple, PixelBank] = {}  # one per split and process: the file is opened (or the decode paid) once


def _load(data: PreparedDataset, split: str, beton: Path) -> PixelBank:
    shape = bank_shape(data, split)
    path, header = bank_path(beton), identity(beton, data.fingerprint(split), shape)
    found = open_bank(path, header, shape)
    if found is None and not can_write_beside(path, file_bytes(shape)):
        check_bank_fits(data, split, copies=processes_per_node())
        _, labels, images = new_buffer(header, shape)
        _decode_into(data, split, labels, images)
        return PixelBank(torch.from_numpy(images), torch.from_numpy(labels), "memory")
    check_bank_fits(data, split)
    source = "shared file"
    if found is None:
        with bank_lock(path):
            found = open_bank(path, header, shape)  # another process of the node may have written it meanwhile
            if found is None:
                for stale in path.parent.glob(f".{path.name}.tmp-*"):  # a killed builder's; we hold the lock
                    stale.unlink(missing_ok=True)
                buffer, labels, images = new_buffer(header, shape)
                _decode_into(data, split, labels, images)
                write_bytes_atomic(path, buffer, error=UserError)
                del buffer, labels, images  # the mapped file replaces this process's own copy
                found, source = open_bank(path, header, shape), "decoded"
    if found is None:  # the .beton changed while its pixels were decoded
        raise UserError(f"{beton} changed while its pixels were decoded into {path}; run the command again")
    labels, images = found
    return PixelBank(torch.from_numpy(images), torch.from_numpy(labels), source, path)


def _decode_into(data: PreparedDataset, split: str, labels: np.ndarray, images: np.ndarray) -> None:
    """The training loader's decode of every sample, into `images` and `labels` by sample index."""
    n = len(labels)
    labels[:] = -1
    loader = block_loader(data, split, np.arange(n, dtype=np.uint64), DECODE_BATCH, train_decode=True)
    with Progress(n, f"decoding the {split} split's pixels") as bar:
        for batch_images, batch_labels, batch_indices in loader:
            if tuple(batch_images.shape[1:3]) != images.shape[2:]:
                raise UserError(f"the {split} split decodes to {tuple(batch_images.shape[1:3])} pixels, not the "
                                f"{images.shape[2:]} its metadata gives; prepare the dataset again")
            rows = batch_indices.view(-1).long().numpy()
            images[rows] = batch_images.permute(0, 3, 1, 2).numpy()
            labels[rows] = batch_labels.view(-1).long().numpy()
            bar.update(len(rows))
