"""What the label store's integrity checks cost, against the time to load a store.

Every reader checks the sha256 of each dataset it reads and the digest of the root attributes (schema v3,
docs/label-store.md). This writes two realistic stores through labelopt's own StoreWriter (float16, gzip 4,
fletcher32, blocks of 256 rows): soft labels softmax(z / 4) of peaked teacher-like logits,

  dense   --samples x --views x --classes /targets (default 50,000 x 4 x 100, the issue's example)
  top-k   the same rows stored as the --topk largest (/topk/entries: int32 class ids and float16 values)

and times, as the median of --reps runs (the files are in the page cache: they were just written),

  open       LabelStore.open: attributes, the digest, the dataset listing, shapes (shared view params read+hashed)
  digest     the root digest alone (read the attributes, hash them)
  load       LabelStore.load(): read every targets dataset and check its sha256
  unchecked  the same reads with h5py and no check
  sha256     hashing the loaded arrays alone
  rows       rows() over the whole store in 1,024-row blocks on a fresh LabelStore (its first read of a dataset
             streams it through sha256 once), against the same slice reads with h5py and no check

check/load is sha256 / unchecked: the fraction the checks add to a load.

    .venv/bin/python benchmarks/store_checks.py [--samples 50000] [--views 4] [--classes 100] [--topk 10]
        [--reps 5] [--keep DIR] [--json-only]

Absolute times depend on the machine (printed with the results): compare the ratios. Prints JSON, then a table.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_facts, parse_store_shape, work_folder  # noqa: E402

TEMPERATURE = 4.0
BLOCK_ROWS = 256
ROWS_BLOCK = 1024


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def soft_labels(rng: np.random.Generator, n: int, v: int, c: int, labels: np.ndarray) -> np.ndarray:
    """float32 [n, v, c]: softmax at T=4 of logits with the true class ahead (a trained teacher's shape)."""
    z = rng.normal(size=(n, v, c)).astype(np.float32) * 2.0
    z[np.arange(n), :, labels] += 8.0
    z /= TEMPERATURE
    z -= z.max(-1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(-1, keepdims=True)
    return z


def write_store(path: Path, args, topk: int | None, seed: int = 0) -> Path:
    from labelopt.store import StoreLayout, StoreWriter

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, args.classes, size=args.samples)
    layout = StoreLayout(num_samples=args.samples, num_views=args.views, num_classes=args.classes, topk=topk,
                         block_rows=BLOCK_ROWS)
    header = {"labelopt_version": "bench",
              "dataset": {"name": "bench", "split": "train", "fingerprint": "bench"},
              "generator": {"method": "sl", "temperature": TEMPERATURE, "options": {}, "teachers": []},
              "views": {"policy": "bench", "param_names": ["view"]}}
    writer = StoreWriter(path, header, layout)
    for b in writer.pending_blocks():
        start, stop = layout.block_range(b)
        writer.write_block(b, targets=soft_labels(rng, stop - start, args.views, args.classes, labels[start:stop]),
                           labels=labels[start:stop])
    return writer.finish()


def median_time(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def measure(path: Path, reps: int) -> dict:
    import h5py

    from labelopt.store import LabelStore
    from labelopt.store.checksums import array_sha256, root_digest
    from labelopt.store.validation import root_attrs

    store = LabelStore.open(path)
    paths = ["topk/entries"] if store.is_topk else ["targets"]

    def unchecked():
        with h5py.File(path, "r") as f:
            return [f[p][()] for p in paths]

    def digest():
        with h5py.File(path, "r") as f:
            root_digest(root_attrs(f))

    def rows_checked():
        fresh = LabelStore.open(path)
        for start in range(0, fresh.num_samples, ROWS_BLOCK):
            fresh.rows("targets", start, min(start + ROWS_BLOCK, fresh.num_samples))

    def rows_unchecked():
        with h5py.File(path, "r") as f:
            for start in range(0, store.num_samples, ROWS_BLOCK):
                [f[p][start:start + ROWS_BLOCK] for p in paths]

    arrays = unchecked()
    out = {"store": f"top-{store.topk}" if store.is_topk else "dense", "path": str(path),
           "shape": [store.num_samples, store.num_views, store.num_classes], "file_bytes": store.size_bytes(),
           "loaded_bytes": sum(a.nbytes for a in arrays), "reps": reps,
           "open_s": median_time(lambda: LabelStore.open(path), reps),
           "digest_s": median_time(digest, reps),
           "load_s": median_time(lambda: LabelStore.open(path).load(), reps),
           "unchecked_load_s": median_time(unchecked, reps),
           "sha256_s": median_time(lambda: [array_sha256(a) for a in arrays], reps),
           "rows_pass_s": median_time(rows_checked, max(1, reps // 2)),
           "rows_pass_unchecked_s": median_time(rows_unchecked, max(1, reps // 2))}
    out["sha256_over_load"] = out["sha256_s"] / out["unchecked_load_s"]
    out["load_over_unchecked"] = out["load_s"] / out["unchecked_load_s"]
    out["digest_over_open"] = out["digest_s"] / out["open_s"]
    out["rows_over_unchecked"] = out["rows_pass_s"] / out["rows_pass_unchecked_s"]
    out["sha256_gb_per_s"] = out["loaded_bytes"] / out["sha256_s"] / 1e9
    return out


def table(results: list[dict]) -> str:
    from labelopt.pipeline.jobs.reports import format_table

    ms = lambda s: f"{1e3 * s:.1f}"
    rows = [{"store": r["store"], "mb": f"{r['loaded_bytes'] / 1e6:.1f}", "open": ms(r["open_s"]),
             "digest": ms(r["digest_s"]), "unchecked": ms(r["unchecked_load_s"]), "load": ms(r["load_s"]),
             "sha": ms(r["sha256_s"]), "ratio": f"{r['sha256_over_load']:.1%}",
             "rows": f"{r['rows_pass_s']:.2f} / {r['rows_pass_unchecked_s']:.2f}"} for r in results]
    return format_table(rows, [("store", "store"), ("mb", "MB loaded"), ("open", "open ms"),
                               ("digest", "digest ms"), ("unchecked", "read ms (no check)"),
                               ("load", "load ms (checked)"), ("sha", "sha256 ms"), ("ratio", "sha256 / read"),
                               ("rows", "rows() pass s: checked / not")])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    args = parse_store_shape(parser, None, samples=50000, views=4, reps=5)
    loadavg = os.getloadavg()
    results = []
    with work_folder(args.keep, "labelopt-store-checks-") as root:
        for name, k in (("dense", None), (f"top{args.topk}", args.topk)):
            log(f"writing the {name} store")
            path = write_store(root / f"{name}.h5", args, k)
            log(f"timing the {name} store")
            results.append(measure(path, args.reps))
    report = {"stores": results, "machine": machine_facts(torch.device("cpu"), loadavg)}
    print(json.dumps(report, indent=2))
    if not args.json_only:
        print()
        print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
