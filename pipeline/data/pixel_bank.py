"""The decoded pixels of a whole split in memory: where a stored mix finds its partners' images.

A stored mix record names partner samples anywhere in the split (not in the same batch), so building its pixels
needs those samples' images at any step. The bank decodes the split once, through the same decode as the training
loader (so a partner's pixels are exactly the pixels the loader gives for it), into one uint8 [N, 3, H, W] tensor:
50,000 CIFAR images are 150 MB. A split whose pixels would take more than half of the memory available is refused.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from ..errors import UserError
from ...store.memory import available_memory_bytes
from .datasets import TRAIN_DECODE_SIDE, PreparedDataset
from .loading import block_loader

MEMORY_SHARE = 0.5  # the most of the available memory a bank may take
DECODE_BATCH = 512


def bank_bytes(data: PreparedDataset, split: str) -> int:
    side = data.input_size if data.fixed_size else TRAIN_DECODE_SIDE
    return data.num_samples(split) * 3 * side * side


def processes_per_node() -> int:
    """torchrun's LOCAL_WORLD_SIZE: each process on a node holds its own bank, all built at the same time."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def check_bank_fits(data: PreparedDataset, split: str) -> None:
    copies = processes_per_node()
    need, have = bank_bytes(data, split) * copies, available_memory_bytes()
    if need > MEMORY_SHARE * have:
        each = f" ({copies} processes on this node, one copy each)" if copies > 1 else ""
        raise UserError(f"mixed views need the {split} split's decoded pixels in memory (every partner image at "
                        f"any step): {need / 2**30:.1f} GiB for {data.num_samples(split)} images{each}, but only "
                        f"{have / 2**30:.1f} GiB is available (at most half of it may be used); stored mixes work "
                        f"for splits that fit, such as CIFAR's 150 MB; for larger data use online mixes "
                        f"(train-student --mix with --teacher)")


class PixelBank:
    """uint8 [N, 3, H, W] pixels and int64 [N] labels of a split, by sample index."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images, labels

    @classmethod
    def load(cls, data: PreparedDataset, split: str) -> "PixelBank":
        check_bank_fits(data, split)
        key = (str(data.beton(split).resolve()), data.beton(split).stat().st_mtime_ns)
        if key in _BANKS:
            return _BANKS[key]
        n = data.num_samples(split)
        # The training loader's decode: a partner's pixels are exactly those the loader gives for it.
        loader = block_loader(data, split, np.arange(n, dtype=np.uint64), DECODE_BATCH, train_decode=True)
        images, labels = None, torch.full((n,), -1, dtype=torch.long)
        for batch_images, batch_labels, batch_indices in loader:
            rows = batch_indices.view(-1).long()
            if images is None:
                images = torch.empty((n, 3, *batch_images.shape[1:3]), dtype=torch.uint8)
            images[rows] = batch_images.permute(0, 3, 1, 2)
            labels[rows] = batch_labels.view(-1).long()
        _BANKS[key] = bank = cls(images, labels)
        return bank

    def take(self, indices: torch.Tensor, device) -> torch.Tensor:
        return self.images[indices.cpu()].to(device, non_blocking=True)


_BANKS: dict[tuple, PixelBank] = {}  # one per split and process: the decode is paid once
