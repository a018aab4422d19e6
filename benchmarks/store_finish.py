"""What assembling a gzip label store costs at the end of generate-labels: labelopt's finish against HDF5's own.

generate-labels writes a store's blocks as they are labelled, then `StoreWriter.finish` assembles the HDF5 file
once (a store under 1 GiB is gzip-compressed; larger ones are written contiguous and not compressed). This writes
the blocks of CIFAR-shaped stores (default 2,000 images x 162 cifar-crop-flip views x 100 classes: the GPU device
check's crop-flip part) through labelopt's StoreWriter, untimed, then times, side by side in one process,

  hdf5     the datasets written by h5py from the same block files, with the same storage options (float16, gzip 4,
           fletcher32; byte shuffle for top-k entries), hashed as they are written: HDF5 runs the filters in the
           writing thread, one chunk after another (labelopt's finish before store/chunks.py)
  finish   StoreWriter.finish: each chunk compressed by labelopt in threads on every core, written as it is

for a dense store and a top-k store, each --reps times (the median is reported), and checks that both files
hold the same bytes in every chunk. The soft labels are store_checks.py's: softmax at T=4 of teacher-like
logits (the true class ahead), which compress as a trained teacher's do.

    .venv/bin/python benchmarks/store_finish.py [--samples 2000] [--views 162] [--classes 100] [--topk 10]
        [--reps 3] [--keep DIR] [--json-only]

Absolute times depend on the machine and its cores (printed with the results): compare the ratio. Prints JSON,
then a table.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_facts, parse_store_shape, print_result, work_folder  # noqa: E402
from store_checks import BLOCK_ROWS, TEMPERATURE, soft_labels  # noqa: E402


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def written_blocks(path: Path, args, topk: int | None):
    """A StoreWriter with every block written (the partial store), not yet finished."""
    from labelopt.store import StoreLayout, StoreWriter

    rng = np.random.default_rng(0)
    labels = rng.integers(0, args.classes, size=args.samples)
    layout = StoreLayout(num_samples=args.samples, num_views=args.views, num_classes=args.classes, topk=topk,
                         block_rows=BLOCK_ROWS)
    header = {"labelopt_version": "bench", "dataset": {"name": "bench", "split": "train", "fingerprint": "bench"},
              "generator": {"method": "sl", "temperature": TEMPERATURE, "options": {}, "teachers": []},
              "views": {"policy": "bench", "param_names": ["view"]}}
    writer = StoreWriter(path, header, layout, compression="gzip", overwrite=True)
    for b in writer.pending_blocks():
        start, stop = layout.block_range(b)
        writer.write_block(b, targets=soft_labels(rng, stop - start, args.views, args.classes, labels[start:stop]),
                           labels=labels[start:stop])
    return writer


def hdf5_assembly(writer, out: Path) -> None:
    """The datasets of `writer`'s blocks written by h5py, HDF5 compressing each chunk as it is written."""
    import h5py

    from labelopt.store.layout import file_datasets, file_rows
    from labelopt.store.writer import storage_options

    lay = writer.layout
    chunk_rows = min(lay.block_rows, lay.num_samples)
    datasets = file_datasets(lay)
    with h5py.File(out, "w") as f:
        dsets = {path: f.create_dataset(path, shape=(lay.num_samples, *shape), dtype=dtype,
                                        **storage_options("gzip", shape, chunk_rows, dtype))
                 for path, (shape, dtype, _) in datasets.items()}
        hashes = {path: hashlib.sha256() for path in dsets}
        for b in range(lay.num_blocks()):
            start, stop = lay.block_range(b)
            block = writer._load_block(b)
            for path, (_, _, keys) in datasets.items():
                rows = file_rows(block, keys)
                dsets[path][start:stop] = rows
                hashes[path].update(rows.reshape(-1).view(np.uint8))
    with open(out, "rb") as fh:
        os.fsync(fh.fileno())


def same_chunks(ours: Path, theirs: Path) -> bool:
    """Every chunk of every dataset of `theirs` stored with the same bytes in `ours`."""
    import h5py

    with h5py.File(ours, "r") as a, h5py.File(theirs, "r") as b:
        for name in b:
            for item in ([name] if isinstance(b[name], h5py.Dataset) else [f"{name}/{k}" for k in b[name]]):
                one, two = a[item], b[item]
                for start in range(0, two.shape[0], two.chunks[0]):
                    offset = (start,) + (0,) * (two.ndim - 1)
                    if one.id.read_direct_chunk(offset) != two.id.read_direct_chunk(offset):
                        return False
    return True


def measure(root: Path, args, name: str, topk: int | None) -> dict:
    times = {"hdf5": [], "finish": []}
    same = True
    for rep in range(args.reps):
        writer = written_blocks(root / f"{name}.h5", args, topk)
        reference = root / f"{name}-hdf5.h5"
        started = time.perf_counter()
        hdf5_assembly(writer, reference)
        times["hdf5"].append(time.perf_counter() - started)
        started = time.perf_counter()
        path = writer.finish()
        times["finish"].append(time.perf_counter() - started)
        same = same and same_chunks(path, reference)
        log(f"{name} rep {rep + 1}/{args.reps}: hdf5 {times['hdf5'][-1]:.2f} s, finish {times['finish'][-1]:.2f} s")
    hdf5, finish = statistics.median(times["hdf5"]), statistics.median(times["finish"])
    return {"store": name, "shape": [args.samples, args.views, args.classes], "topk": topk,
            "file_bytes": path.stat().st_size, "reps": args.reps, "hdf5_seconds": hdf5, "finish_seconds": finish,
            "hdf5_over_finish": hdf5 / finish, "same_chunks": same, "all_seconds": times}


def table(result: dict) -> str:
    from labelopt.pipeline.jobs.reports import format_table

    rows = [{"store": r["store"], "mb": f"{r['file_bytes'] / 2 ** 20:.1f}", "hdf5": f"{r['hdf5_seconds']:.2f}",
             "finish": f"{r['finish_seconds']:.2f}", "ratio": f"{r['hdf5_over_finish']:.2f}x",
             "same": "yes" if r["same_chunks"] else "NO"} for r in result["stores"]]
    return format_table(rows, [("store", "store"), ("mb", "file MiB"), ("hdf5", "HDF5 compressing, s"),
                               ("finish", "labelopt finish, s"), ("ratio", "speed-up"), ("same", "same chunks")])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    args = parse_store_shape(parser, argv, samples=2000, views=162, reps=3)
    loadavg = os.getloadavg()
    with work_folder(args.keep, "labelopt-store-finish-") as root:
        stores = [measure(root, args, "dense", None), measure(root, args, f"top{args.topk}", args.topk)]
    from labelopt.store.chunks import chunk_workers
    print_result({"stores": stores, "threads": chunk_workers(), "machine": machine_facts(torch.device("cpu"), loadavg)},
                 lambda r: print(table(r)), args.json_only)
    return 0


if __name__ == "__main__":
    sys.exit(main())
