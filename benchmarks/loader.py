"""Loader throughput: labelopt (its loader + batched torch views) vs a torchvision DataLoader, side by side.

50,000 CIFAR-shaped images, one timed pass each after a warm-up pass, batch 256, the
standard pad-4 crop + flip + normalization in both. Then, for raw images, FFCV's Loader (its
compiled pipeline, in parallel over the workers) against labelopt's RawBetonLoader (no pipeline:
copies out of the file): the start of a new loader (construction and first batch, which for
FFCV holds numba's compile), both as the first loader of a fresh process (what a generate-labels
run pays; there numba also warms up) and as a later one in this process; the fresh process's
whole wall time (Python, imports, start, one epoch); and a bare epoch (no views). Each the
median of PIPELINE_REPEATS, alternating. Prints JSON, then tables.

    .venv/bin/python benchmarks/loader.py [--images 50000] [--batch-size 256] [--workers N]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import random_images, write_prepared  # noqa: E402

PIPELINE_REPEATS = 5
PIPELINES = ("ffcv", "raw_reader")  # FFCV's own Loader, labelopt's RawBetonLoader


def make_dataset(root: Path, n: int):
    """A prepared CIFAR-shaped dataset of n random images under root/bench; returns (folder, images, labels)."""
    images, labels = random_images(n)
    return write_prepared(root / "bench", images, labels), images, labels


def time_labelopt(folder: Path, batch_size: int, workers: int) -> dict:
    from labelopt.pipeline.data.datasets import open_dataset
    from labelopt.pipeline.data.loading import make_loader
    from labelopt.pipeline.views.policies import get_view_policy
    from labelopt.pipeline.data.normalize import Normalizer

    data = open_dataset(folder)
    loader = make_loader(data, "train", batch_size, shuffle=True, seed=0, drop_last=False, num_workers=workers)
    policy = get_view_policy("cifar-crop-flip", 32)
    normalize = Normalizer(data.mean, data.std, "cpu")
    generator = torch.Generator().manual_seed(0)

    def one_epoch(epoch):
        seen = 0
        for images, labels, indices in loader.epoch(epoch):
            params = policy.sample(images.shape[0], 32, 32, generator)
            out = normalize(policy.apply(images, params))
            seen += out.shape[0]
        return seen

    started = time.perf_counter()
    one_epoch(0)  # includes numba's compile
    first = time.perf_counter() - started
    started = time.perf_counter()
    seen = one_epoch(1)
    seconds = time.perf_counter() - started
    return {"images": seen, "seconds": seconds, "img_per_s": seen / seconds, "first_epoch_seconds": first}


def started_loader(folder: Path, pipeline: str, batch_size: int, workers: int):
    """(a new loader of `pipeline`, its epoch's batches after the first, the seconds to that first batch). FFCV is
    imported only for its own loader (importing it takes seconds), as labelopt does."""
    from labelopt.pipeline.data.datasets import open_dataset
    from labelopt.pipeline.data.loading import decode_plan, field_pipelines
    from labelopt.pipeline.data.raw_beton import RawBetonLoader

    data = open_dataset(folder)
    beton = str(data.beton("train"))
    if pipeline == "raw_reader":
        started = time.perf_counter()
        loader = RawBetonLoader(beton, batch_size=batch_size, num_workers=workers, shuffle=True, seed=0)
    else:
        from ffcv.loader import Loader, OrderOption  # its import is not part of the start

        started = time.perf_counter()
        loader = Loader(beton, batch_size=batch_size, num_workers=workers, order=OrderOption.RANDOM, seed=0,
                        pipelines=field_pipelines(decode_plan(data, True)))
    batches = iter(loader)
    next(batches)
    return loader, batches, time.perf_counter() - started


def first_start(folder: Path, pipeline: str, batch_size: int, workers: int) -> tuple[float, float]:
    """A fresh Python process (this script run again with --first-start): (the start of its first loader, the
    whole process's wall time: Python, its imports, the loader's start and one epoch), what a command pays."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, __file__, "--first-start", pipeline, "--folder", str(folder),
                           "--batch-size", str(batch_size), "--workers", str(workers)],
                          capture_output=True, text=True, check=True)
    return float(done.stdout.split()[-1]), time.perf_counter() - started


def time_pipelines(folder: Path, batch_size: int, workers: int) -> dict:
    """A new loader's start (first in a fresh process, later in this one) and a bare epoch's img/s, FFCV's Loader
    against labelopt's raw reader."""
    runs = {name: {"first_start": [], "process_seconds": [], "later_start": [], "epoch_img_per_s": []}
            for name in PIPELINES}
    for _ in range(PIPELINE_REPEATS):
        for name in PIPELINES:
            start, process = first_start(folder, name, batch_size, workers)
            runs[name]["first_start"].append(start)
            runs[name]["process_seconds"].append(process)
            loader, batches, start = started_loader(folder, name, batch_size, workers)
            for _ in batches:
                pass
            started, seen = time.perf_counter(), 0
            for images, _, _ in loader:
                seen += images.shape[0]
            runs[name]["later_start"].append(start)
            runs[name]["epoch_img_per_s"].append(seen / (time.perf_counter() - started))
    return {name: {**{f"median_{k}": statistics.median(v) for k, v in row.items()}, "runs": row}
            for name, row in runs.items()}


def time_torchvision(images: np.ndarray, labels: np.ndarray, batch_size: int, workers: int) -> dict:
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset
    from torchvision import transforms

    class ArrayDataset(Dataset):
        def __init__(self, transform):
            self.transform = transform

        def __len__(self):
            return len(images)

        def __getitem__(self, i):
            return self.transform(Image.fromarray(images[i])), int(labels[i])

    transform = transforms.Compose([
        transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
        transforms.Normalize((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))])
    loader = DataLoader(ArrayDataset(transform), batch_size=batch_size, shuffle=True, num_workers=workers,
                        persistent_workers=workers > 0)

    def one_epoch():
        seen = 0
        for x, y in loader:
            seen += x.shape[0]
        return seen

    started = time.perf_counter()
    one_epoch()
    first = time.perf_counter() - started
    started = time.perf_counter()
    seen = one_epoch()
    seconds = time.perf_counter() - started
    return {"images": seen, "seconds": seconds, "img_per_s": seen / seconds, "first_epoch_seconds": first}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=50000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--first-start", choices=PIPELINES, help=argparse.SUPPRESS)  # the fresh process
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.first_start:
        _, batches, start = started_loader(args.folder, args.first_start, args.batch_size, args.workers)
        for _ in batches:  # FFCV's thread ends with its epoch
            pass
        print(start)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        folder, images, labels = make_dataset(Path(tmp), args.images)
        ours = time_labelopt(folder, args.batch_size, args.workers)
        pipelines = time_pipelines(folder, args.batch_size, args.workers)
        torch.set_num_threads(args.workers)  # FFCV changed it; give torchvision the same cores
        theirs = time_torchvision(images, labels, args.batch_size, args.workers)
    result = {
        "benchmark": "loader",
        "images": args.images, "batch_size": args.batch_size, "workers": args.workers,
        "cpu_count": os.cpu_count(), "torch": torch.__version__,
        "labelopt_loader_views": ours, "torchvision_dataloader": theirs,
        "ratio_labelopt_over_torchvision": ours["img_per_s"] / theirs["img_per_s"],
        "raw_pipelines": pipelines,
    }
    print(json.dumps(result, indent=2))
    print()
    print(f"{'loader':<42} {'img/s':>10} {'epoch s':>9} {'first epoch s':>14}")
    for name, row in (("labelopt: loader + batched torch views", ours), ("torchvision DataLoader + transforms", theirs)):
        print(f"{name:<42} {row['img_per_s']:>10.0f} {row['seconds']:>9.2f} {row['first_epoch_seconds']:>14.2f}")
    print(f"ratio labelopt / torchvision: {result['ratio_labelopt_over_torchvision']:.2f}x")
    print()
    print(f"{'raw images, loader':<20} {'process s':>10} {'first start s':>14} {'later start s':>14} "
          f"{'bare epoch img/s':>17}")
    for name, row in pipelines.items():
        print(f"{name:<20} {row['median_process_seconds']:>10.3f} {row['median_first_start']:>14.3f} "
              f"{row['median_later_start']:>14.3f} {row['median_epoch_img_per_s']:>17.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
