"""A .beton of raw, same-size images, read straight from the file, without FFCV.

FFCV's Loader compiles a numba pipeline in every process (0.5-1.1 s on a 2-core CPU, more on a many-core host) before
its first batch, and numba cannot cache that code: FFCV makes it at run time. Importing FFCV costs another 2-3 s.
A raw image needs no decoding, only a copy, so `RawBetonLoader` reads the file's table itself (beton_table.py),
orders each epoch as FFCV's traversal orders do (the same batches as its Loader, under torchrun too), and copies
the pixels out of a read-only memory map. It starts in milliseconds (benchmarks/loader.py). JPEG datasets keep
FFCV's Loader.
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import UserError
from .beton_table import RAW_MODE, BetonTable, read_beton_table


class EpochOrder:
    """Each epoch's sample order, as FFCV's Loader gives it for the same indices, seed and epoch: the indices as
    they are, or numpy's permutation seeded with seed + epoch; under torchrun, this rank's share through torch's
    DistributedSampler (all ranks' shares together cover every index)."""

    def __init__(self, indices: np.ndarray, *, shuffle: bool, seed: int, distributed: bool):
        self.indices, self.shuffle, self.seed = indices, shuffle, seed
        self.sampler = None
        if distributed:
            from torch.utils.data import DistributedSampler

            self.sampler = DistributedSampler(indices, shuffle=shuffle, seed=seed, drop_last=False)

    def of(self, epoch: int) -> np.ndarray:
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
            return self.indices[np.array(list(self.sampler))]
        return np.random.default_rng(self.seed + epoch).permutation(self.indices) if self.shuffle else self.indices


class RawBetonLoader:
    """Batches of (images uint8 [B, H, W, 3], labels int64 [B, 1], sample indices int64 [B, 1]) as torch tensors,
    the shapes FFCV's pipelines for these fields give; each batch is a new tensor (FFCV reuses its buffers).
    The attributes the project reads of FFCV's Loader (batch_size, drop_last, next_epoch, first_traversal_order)
    mean what they mean there, and like it this loader sets torch's intra-op threads to `num_workers` when made and
    at every epoch: a CPU run's float results depend on that count, so a run, its resume and a pack's member alone
    get the same one, whatever ran before in the process."""

    def __init__(self, fname: str, *, batch_size: int, num_workers: int, shuffle: bool, seed: int = 0,
                 indices: np.ndarray | None = None, drop_last: bool = False, distributed: bool = False):
        table = read_beton_table(fname)
        self.batch_size, self.num_workers, self.drop_last = batch_size, num_workers, drop_last
        indices = np.arange(table.num_samples, dtype="uint64") if indices is None else np.array(indices)
        self.order = EpochOrder(indices, shuffle=shuffle, seed=seed, distributed=distributed)
        self.next_epoch = 0
        self.first_traversal_order = self.order.of(0)
        self._shape, self._pointers = _raw_images(table)
        self._labels = np.ascontiguousarray(table.samples["label"])
        self._samples = np.ascontiguousarray(table.samples["index"])
        # Row p of this view is the image whose pixels start at byte p: a batch's images are one gather, with no
        # loop over them (_raw_images checked that every image lies inside the file).
        size = int(np.prod(self._shape))
        self._windows = np.lib.stride_tricks.as_strided(table.file, shape=(max(len(table.file) - size + 1, 0), size),
                                                        strides=(1, 1), writeable=False)
        torch.set_num_threads(num_workers)

    def __len__(self) -> int:
        count = len(self.first_traversal_order)
        return count // self.batch_size if self.drop_last else -(-count // self.batch_size)

    def __iter__(self):
        torch.set_num_threads(self.num_workers)
        order = self.order.of(self.next_epoch)[:len(self) * self.batch_size]
        self.next_epoch += 1
        for start in range(0, len(order), self.batch_size):
            rows = np.asarray(order[start:start + self.batch_size], dtype=np.int64)
            yield (self._images(rows), torch.from_numpy(self._labels[rows].reshape(-1, 1)),
                   torch.from_numpy(self._samples[rows].reshape(-1, 1)))

    def _images(self, rows: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self._windows[self._pointers[rows]].reshape(len(rows), *self._shape))


def _raw_images(table: BetonTable) -> tuple[tuple[int, int, int], np.ndarray]:
    """(the images' shape (H, W, 3), each sample's pixel offset in the file int64), checked: every image raw, of
    one size, and inside the file."""
    image = table.samples["image"]
    heights, widths = np.unique(image["height"]), np.unique(image["width"])
    if len(heights) > 1 or len(widths) > 1 or np.any(image["mode"] != RAW_MODE):
        raise UserError(f"{table.path} does not hold raw images of one size; prepare the dataset again with "
                        f"`labelopt prepare`")
    shape = (int(heights[0]), int(widths[0]), 3) if len(heights) else (0, 0, 3)
    pointers = image["data_ptr"].astype(np.int64)
    if len(pointers) and (pointers.min() < 0 or pointers.max() + int(np.prod(shape)) > len(table.file)):
        raise UserError(f"{table.path} is damaged: an image lies past the end of the file; prepare the dataset "
                        f"again with `labelopt prepare`")
    return shape, pointers


def raw_loader_applies(meta: dict, decode: tuple) -> bool:
    """Raw images of one size decoded as they are: copies, which need no FFCV pipeline."""
    return meta.get("storage") == "raw" and decode == ("simple",)
