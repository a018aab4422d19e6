"""Loaders for prepared splits, yielding uint8 images, labels and sample indices as torch tensors.

Raw images are read straight from the .beton (raw_beton.py); JPEGs decode through FFCV's Loader, which numba
compiles at its first batch (seconds). So loaders are kept per process and reused: a second run or an evaluation
in the same process with the same settings starts at once. A reused loader is told which epoch comes next, so its
order is exactly that of a fresh one.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from .beton import worker_count
from .datasets import PreparedDataset
from .raw_beton import RawBetonLoader, raw_loader_applies


@dataclass(frozen=True)
class LoaderKey:
    path: str
    mtime_ns: int
    batch_size: int
    shuffle: bool
    seed: int
    drop_last: bool
    distributed: bool
    decode: tuple
    num_workers: int
    subset: str | None = None  # a digest of the sample indices the loader reads (None: the whole split)


_LOADERS: dict[LoaderKey, object] = {}  # RawBetonLoader or FFCV's Loader


def new_loader(data: PreparedDataset, path, *, batch_size: int, shuffle: bool, seed: int, indices,
               drop_last: bool, distributed: bool, decode: tuple, workers: int):
    """Raw images of one size are read straight from the .beton (no FFCV, no pipeline to compile); JPEGs decode
    through FFCV's Loader on every worker."""
    if raw_loader_applies(data.meta, decode):
        return RawBetonLoader(str(path), batch_size=batch_size, num_workers=workers, shuffle=shuffle, seed=seed,
                              indices=indices, drop_last=drop_last, distributed=distributed)
    from ffcv.loader import Loader, OrderOption

    return Loader(str(path), batch_size=batch_size, num_workers=workers, seed=seed, indices=indices,
                  order=OrderOption.RANDOM if shuffle else OrderOption.SEQUENTIAL, drop_last=drop_last,
                  distributed=distributed, pipelines=field_pipelines(decode))


def _image_decoder(decode: tuple):
    from ffcv.fields.rgb_image import CenterCropRGBImageDecoder, SimpleRGBImageDecoder

    kind = decode[0]
    if kind == "simple":
        return SimpleRGBImageDecoder()
    _, side, ratio = decode
    return CenterCropRGBImageDecoder((side, side), ratio=ratio)


def field_pipelines(decode: tuple) -> dict:
    """FFCV pipelines for the image, label and index fields, ending as torch tensors."""
    from ffcv.fields.basics import IntDecoder
    from ffcv.transforms import ToTensor

    return {"image": [_image_decoder(decode), ToTensor()],
            "label": [IntDecoder(), ToTensor()], "index": [IntDecoder(), ToTensor()]}


def decode_plan(data: PreparedDataset, train: bool) -> tuple:
    """Fixed-size images decode as they are; JPEG trees decode to a centred square: the whole of it for training
    (data.decode_side, before the view's crop), its centre at the models' side for evaluation."""
    if data.fixed_size:
        return ("simple",)
    side, decoded = data.input_size, data.decode_side
    return ("center", decoded, 1.0) if train else ("center", side, side / decoded)


class SplitLoader:
    """Iterate one epoch of a split: (images uint8 [B,3,H,W] and labels int64 [B] on the device, sample indices
    int64 [B] on the CPU)."""

    def __init__(self, loader: Loader, device: torch.device):
        self.loader = loader
        self.device = device

    def __len__(self) -> int:
        return len(self.loader)

    def num_images(self) -> int:
        """The images of one epoch: this process's share of the split (under torchrun), less a dropped partial
        batch."""
        share = len(self.loader.first_traversal_order)
        return share - share % self.loader.batch_size if self.loader.drop_last else share

    def host_batches(self, epoch: int, *, pin: bool = False):
        """One epoch of (images uint8 [B,3,H,W], labels int64 [B], indices int64 [B]), all on the CPU, copied out
        of the loader's buffers (FFCV reuses them); `pin`: the images in pinned memory, for a copy that does not block."""
        # The random order (FFCV's, or RawBetonLoader's equal one) is seeded with seed + epoch; setting the epoch
        # makes resume exact.
        self.loader.next_epoch = epoch
        for images, labels, indices in self.loader:
            chw = images.permute(0, 3, 1, 2)
            yield (torch.empty(chw.shape, dtype=torch.uint8, pin_memory=pin).copy_(chw),
                   labels.view(-1).to(torch.long, copy=True),
                   indices.view(-1).to(torch.long, copy=True))  # they key view tables and stores

    def epoch(self, epoch: int):
        """One epoch with images and labels on the device, indices on the CPU."""
        for images, labels, indices in self.host_batches(epoch):
            yield images.to(self.device), labels.to(self.device), indices


def block_loader(data: PreparedDataset, split: str, rows, batch: int, train_decode: bool):
    """A sequential loader over exactly `rows` (uint64 sample indices, in order), nothing dropped: stage one's
    blocks, sl-enc's prototype pass, the pixel bank. Not cached: each caller passes its own rows."""
    return new_loader(data, data.beton(split), batch_size=batch, shuffle=False, seed=0, indices=rows,
                      drop_last=False, distributed=False, decode=decode_plan(data, train_decode),
                      workers=worker_count())


def make_loader(data: PreparedDataset, split: str, batch_size: int, *, shuffle: bool, seed: int = 0,
                drop_last: bool = False, distributed: bool = False, train_decode: bool | None = None,
                device: torch.device | str = "cpu", num_workers: int | None = None,
                indices: np.ndarray | None = None) -> SplitLoader:
    """A loader over `split`, or over its sample `indices` alone (uint64, sorted: a run's training images less
    its validation split, or that split). `train_decode` picks the decode plan (defaults to `shuffle`)."""
    path = data.beton(split)
    decode = decode_plan(data, shuffle if train_decode is None else train_decode)
    workers = num_workers or worker_count()
    subset = None if indices is None else hashlib.sha256(np.asarray(indices, dtype="<u8").tobytes()).hexdigest()
    key = LoaderKey(str(path.resolve()), path.stat().st_mtime_ns, batch_size, shuffle, seed, drop_last,
                    distributed, decode, workers, subset)
    loader = _LOADERS.get(key)
    if loader is None:
        loader = new_loader(data, path, batch_size=batch_size, shuffle=shuffle, seed=seed, indices=indices,
                            drop_last=drop_last, distributed=distributed, decode=decode, workers=workers)
        _LOADERS[key] = loader
    return SplitLoader(loader, torch.device(device))
