"""A .beton of raw, same-size images, read straight from the file.

FFCV's Loader compiles a numba pipeline in every process (0.5-1.1 s on a 2-core CPU, more on a many-core host) before
its first batch, and numba cannot cache that code: FFCV makes it at run time. A raw image needs no decoding, only a
copy, so `RawBetonLoader` skips the pipeline: FFCV's own `Reader` parses the file, FFCV's own traversal orders give
each epoch's order (the same batches as its Loader, under torchrun too), and the pixels are copied out of a
read-only memory map. It starts in about a millisecond (benchmarks/loader.py). JPEG datasets keep FFCV's Loader.
"""
from __future__ import annotations

import mmap

import numpy as np
import torch
from ffcv.loader.loader import ORDER_MAP, OrderOption
from ffcv.reader import Reader

from ..errors import UserError

FIELDS = ("image", "label", "index")  # pipeline/data/beton.py writes them, in this order
# FFCV's mode for a raw image (ffcv.fields.rgb_image.IMAGE_MODES["raw"]); that table is a numba Dict, and reading
# it compiles code (0.2 s).
RAW_MODE = 1


class RawBetonLoader:
    """Batches of (images uint8 [B, H, W, 3], labels int64 [B, 1], sample indices int64 [B, 1]) as torch tensors,
    the shapes FFCV's pipelines for these fields give; each batch is a new tensor (FFCV reuses its buffers).
    The attributes the project reads of a Loader (batch_size, drop_last, next_epoch, first_traversal_order) mean
    what they mean there, and like FFCV's Loader it sets torch's intra-op threads to `num_workers` when made and at
    every epoch: a CPU run's float results depend on that count, so a run, its resume and a pack's member alone
    get the same one, whatever ran before in the process."""

    def __init__(self, fname: str, *, batch_size: int, num_workers: int, order: OrderOption, seed: int = 0,
                 indices: np.ndarray | None = None, drop_last: bool = False, distributed: bool = False):
        reader = _reader(fname)
        self.fname, self.batch_size, self.num_workers, self.drop_last = fname, batch_size, num_workers, drop_last
        # What FFCV's traversal orders read of their loader.
        self.seed, self.distributed = seed, distributed
        self.indices = (np.arange(reader.num_samples, dtype="uint64") if indices is None
                        else np.array(indices))
        self.traversal_order = ORDER_MAP[order](self)
        self.next_epoch = 0
        self.first_traversal_order = self.traversal_order.sample_order(0)
        file = _read_only_map(fname)
        self._shape, self._pointers, self._labels, self._samples = _raw_fields(reader, fname, len(file))
        # Row p of this view is the image whose pixels start at byte p: a batch's images are one gather, with no
        # loop over them (the pointers were checked to lie inside the file).
        size = int(np.prod(self._shape))
        self._windows = np.lib.stride_tricks.as_strided(file, shape=(max(len(file) - size + 1, 0), size),
                                                        strides=(1, 1), writeable=False)
        torch.set_num_threads(num_workers)

    def __len__(self) -> int:
        count = len(self.first_traversal_order)
        return count // self.batch_size if self.drop_last else -(-count // self.batch_size)

    def __iter__(self):
        torch.set_num_threads(self.num_workers)
        order = self.traversal_order.sample_order(self.next_epoch)[:len(self) * self.batch_size]
        self.next_epoch += 1
        for start in range(0, len(order), self.batch_size):
            rows = np.asarray(order[start:start + self.batch_size], dtype=np.int64)
            yield (self._images(rows), torch.from_numpy(self._labels[rows].reshape(-1, 1)),
                   torch.from_numpy(self._samples[rows].reshape(-1, 1)))

    def _images(self, rows: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self._windows[self._pointers[rows]].reshape(len(rows), *self._shape))


def _reader(fname: str) -> Reader:
    """FFCV's parse of the file's header, fields, per-sample metadata and allocation table."""
    try:
        return Reader(fname)
    except (ValueError, AssertionError, IndexError, OSError) as exc:
        raise UserError(f"{fname} cannot be read as an FFCV .beton ({exc}); prepare the dataset again with "
                        f"`labelopt prepare`") from None


def _read_only_map(fname: str) -> np.ndarray:
    with open(fname, "rb") as handle:
        mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)  # stays valid once the file is closed
    return np.frombuffer(mapped, dtype=np.uint8)


def _raw_fields(reader: Reader, fname: str, file_bytes: int):
    """(image shape (H, W, 3), each sample's pixel offset int64, labels int64, sample indices int64), checked: every
    image raw, of one size, and inside the file."""
    if reader.field_names[:len(FIELDS)] != list(FIELDS):
        raise UserError(f"{fname} has the fields {reader.field_names}, not {list(FIELDS)}; prepare the dataset again "
                        f"with `labelopt prepare`")
    meta = reader.metadata
    image, labels, samples = (meta[f"f{reader.field_names.index(name)}"] for name in FIELDS)
    heights, widths = np.unique(image["height"]), np.unique(image["width"])
    if len(heights) != 1 or len(widths) != 1 or np.any(image["mode"] != RAW_MODE):
        raise UserError(f"{fname} does not hold raw images of one size; prepare the dataset again with "
                        f"`labelopt prepare`")
    shape = (int(heights[0]), int(widths[0]), 3)
    pointers = image["data_ptr"].astype(np.int64)
    if len(pointers) and (pointers.min() < 0 or pointers.max() + int(np.prod(shape)) > file_bytes):
        raise UserError(f"{fname} is damaged: an image lies past the end of the file; prepare the dataset again "
                        f"with `labelopt prepare`")
    return shape, pointers, np.ascontiguousarray(labels, dtype=np.int64), np.ascontiguousarray(samples, dtype=np.int64)


def raw_loader_applies(meta: dict, decode: tuple) -> bool:
    """Raw images of one size decoded as they are: copies, which need no FFCV pipeline."""
    return meta.get("storage") == "raw" and decode == ("simple",)
