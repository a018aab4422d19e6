"""Label stores at ImageNet shape: size on disk, open time, a reader's memory and its gather latency, 50 k to 1.28 M.

Synthetic stores (1000 classes) are written through labelopt's own StoreWriter, one at a time, and removed after
their figures (unless --keep). Their rows are drawn from a pool of softmax(z / 4) float16 rows of peaked,
teacher-like logits, so the compressed layout compresses them as it would real labels:

  dense   /targets [N, V, 1000] float16 (2,000 bytes per entry)
  top-10  /topk/entries [N, V]: 10 int32 class ids then 10 float16 values (60 bytes per entry, one read)

in the contiguous layout (read in place with pread; store/contiguous.py) and, at the smaller sizes, the compressed
one (gzip, loaded whole into memory) for comparison. For each store a fresh reader process (imports, then):

  open      LabelStore.open: attributes, digest, listing, shapes
  check     load(): the sha256 of the targets (the whole dataset streamed once; compressed: read into memory)
  warm      passes over all N rows in random order, one random view each, in --batch-row gathers, with the
            store in the page cache (the check just read it; where it is larger than memory, what stayed): 3 runs
            of at least 2,500 gathers each (as many passes as that takes; one at 1.28 M), p50 and p99 per run and
            their medians (one run that meets a noisy moment of a shared machine does not decide the figure),
            after 8 untimed gathers of random rows (a fresh process's first gathers pay for growing its heap:
            1-4 ms each); contiguous stores: the same again through a plain Python loop of preads (labelopt's
            reads before store/entry_reads.py), side by side in the same process. Each gather also counts the
            bytes the process read from storage meanwhile (/proc/self/io): a kernel that pages out cached file
            pages on its own (this VM's does) makes some "warm" gathers cold; the table gives their number and
            the p99 of the gathers served from the page cache alone
  cold      the same pass in another order right after the page cache was emptied (as root:
            /proc/sys/vm/drop_caches; otherwise posix_fadvise DONTNEED on the store, which needs no root)
  memory    the process's peak resident set (VmHWM) and its anonymous part, against an empty-store reader's
            (the same process on a 512-row store): the goal is a reader whose memory is flat in N

Two readers: two reader processes on one store at once; each one's peak memory, and how much the page cache grew
(Cached in /proc/meminfo, from empty) against one reader alone: one copy per node means about the same growth.

Schema 2 beside 3: each top-10 store is also copied as schema 2 wrote it (class ids and values in two datasets, so
two reads per entry; tests/store_fakes.as_schema_v2) and one reader process gathers the same rows from both,
alternating store by store, so the ratio is measured side by side.

For the record, the largest dense store is also read through a memory map (what labelopt does not do: the warm
pass's latency and the mapped file pages it leaves in the reader's resident set).

    .venv/bin/python benchmarks/store_scale.py [--sizes 50000,320000,1280000] [--dense-views 5] [--topk-views 100]
        [--batch 512] [--only dense|top-10] [--keep DIR] [--json-only] [--smoke]

Needs about 2.2x the largest store free on disk while it is written (its blocks, then the file; a top-10 store and
its schema 2 copy: 2x). Prints JSON, then tables. Absolute times depend on the machine (printed with the results).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from labelopt.store import LabelStore, StoreLayout, StoreWriter

CLASSES, TOPK, POOL_ROWS = 1000, 10, 8192
WARMUP_GATHERS = 8
WARM_RUNS = 3  # a warm figure: the median of 3 runs of at least --warm-gathers gathers (2,500: one pass at 1.28 M)
warm_gathers = 2500  # set from --warm-gathers in main(), and passed on to the reader processes
BLOCK_ROWS = 4096


def header() -> dict:
    return {"labelopt_version": "benchmark", "views": {"policy": "identity"},
            "dataset": {"name": "synthetic-imagenet", "split": "train", "fingerprint": "synthetic"},
            "generator": {"method": "synthetic", "temperature": 4.0}}


def row_pool(topk: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((POOL_ROWS, CLASSES), dtype=np.float32) * 2
    logits[np.arange(POOL_ROWS), rng.integers(0, CLASSES, POOL_ROWS)] += 12  # a confident teacher's top class
    z = logits / 4
    probs = np.exp(z - z.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    if not topk:
        return probs.astype(np.float16)
    idx = np.argsort(-probs, axis=1)[:, :TOPK]
    return idx.astype(np.int32), np.take_along_axis(probs, idx, 1).astype(np.float16)


def write_store(path: Path, n: int, views: int, topk: bool, compression: str) -> float:
    """Write a synthetic store; returns the seconds it took (blocks + assembly)."""
    start = time.perf_counter()
    layout = StoreLayout(num_samples=n, num_views=views, num_classes=CLASSES, topk=TOPK if topk else None,
                         block_rows=BLOCK_ROWS)
    writer = StoreWriter(path, header(), layout, compression=compression, overwrite=True)
    pool, rng = row_pool(topk), np.random.default_rng(1)
    for b in writer.pending_blocks():
        lo, hi = layout.block_range(b)
        pick = rng.integers(0, POOL_ROWS, (hi - lo, views))
        labels = rng.integers(0, CLASSES, hi - lo)
        if topk:
            writer.write_block(b, topk=(pool[0][pick], pool[1][pick]), labels=labels)
        else:
            writer.write_block(b, targets=pool[pick], labels=labels)
    writer.finish()
    return time.perf_counter() - start


# -- the reader process -----------------------------------------------------------------------------------------

def memory_kib() -> dict:
    fields = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                fields[key] = int(rest.split()[0])
    return fields


def empty_page_cache(path: Path) -> str:
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
        return "drop_caches"
    except OSError:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        return "fadvise"


class StorageReads:
    """Bytes this process has made the kernel read from storage (/proc/self/io, all its threads): a "warm" gather
    that missed the page cache shows here. This machine is a VM whose kernel pages out file pages it sees as cold
    (a DAMON pageout scheme), so a store read once does not always stay cached."""

    def __init__(self):
        self.fd = os.open("/proc/self/io", os.O_RDONLY) if os.path.exists("/proc/self/io") else None

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)

    def total(self) -> int:
        if self.fd is None:
            return 0
        text = os.pread(self.fd, 4096, 0).decode()
        return next(int(line.split()[1]) for line in text.splitlines() if line.startswith("read_bytes:"))


def one_pass(store: LabelStore, batch: int, seed: int, warmup: int = 0, at_least: int = 0) -> dict:
    """Gathers of `batch` random (row, view) pairs over all N rows in a random order: one pass, or as many passes
    (each in a new order) as it takes to time `at_least` gathers. Besides the latencies: how many gathers had to
    read from storage, and the p99 of those served from the page cache alone."""
    import torch

    rng, storage = np.random.default_rng(seed), StorageReads()
    for _ in range(warmup):  # a fresh process's first gathers grow its heap (page faults): not timed
        store.gather(torch.from_numpy(rng.integers(0, store.num_samples, batch)),
                     torch.from_numpy(rng.integers(0, store.num_views, batch)))
    times, read = [], []
    while not times or len(times) < at_least:
        order = torch.from_numpy(rng.permutation(store.num_samples))
        views = torch.from_numpy(rng.integers(0, store.num_views, store.num_samples))
        for lo in range(0, store.num_samples, batch):
            rows, cols = order[lo:lo + batch], views[lo:lo + batch]
            before = storage.total()  # outside the timed call
            t = time.perf_counter()
            store.gather(rows, cols)
            times.append(time.perf_counter() - t)
            read.append(storage.total() - before)
    storage.close()
    ms, read = np.array(times) * 1e3, np.array(read)
    cached = ms[read == 0]
    return {"gathers": len(times), "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "mean_ms": float(ms.mean()), "seconds": float(ms.sum() / 1e3),
            "gathers_reading_storage": int((read > 0).sum()), "storage_read_mib": float(read.sum() / 2 ** 20),
            "p99_in_page_cache_ms": float(np.percentile(cached, 99)) if cached.size else float("nan")}


def warm_latency(store: LabelStore, batch: int) -> dict:
    """WARM_RUNS runs of at least WARM_GATHERS gathers each (after the untimed warm-up): each run's p50 and p99,
    and their medians, so one run that meets a noisy moment of the machine does not decide the figure."""
    runs = [one_pass(store, batch, seed=2 + r, warmup=WARMUP_GATHERS if r == 0 else 0, at_least=warm_gathers)
            for r in range(WARM_RUNS)]
    return {"p50_ms": float(np.median([r["p50_ms"] for r in runs])),
            "p99_ms": float(np.median([r["p99_ms"] for r in runs])), "runs": runs,
            "p99_in_page_cache_ms": float(np.median([r["p99_in_page_cache_ms"] for r in runs])),
            "gathers": sum(r["gathers"] for r in runs),
            "gathers_reading_storage": sum(r["gathers_reading_storage"] for r in runs),
            "storage_read_mib": sum(r["storage_read_mib"] for r in runs)}


def reader(path: Path, batch: int, cold: bool) -> dict:
    out = {"memory_start_kib": memory_kib()}
    t = time.perf_counter()
    store = LabelStore.open(path)
    out["open_ms"] = (time.perf_counter() - t) * 1e3
    t = time.perf_counter()
    store.load()
    out["check_s"] = time.perf_counter() - t
    out["warm"] = warm_latency(store, batch)
    out["warm"]["loadavg_1min"] = os.getloadavg()[0]
    if store.layout == "contiguous":
        with plain_reads():
            out["warm_plain"] = warm_latency(store, batch)
    if cold:
        out["emptied_by"] = empty_page_cache(path)
        out["cold"] = one_pass(store, batch, seed=3)
    out["memory_end_kib"] = memory_kib()
    out["layout"] = store.layout
    return out


def plain_reads():
    """For the side-by-side figure: contiguous reads as labelopt did them before store/entry_reads.py, one Python
    loop of preads on the caller's thread (the module's uncompiled path, which has no helpers)."""
    from labelopt.store import entry_reads

    return entry_reads.reads_in_python()


class MappedTargets:
    """What labelopt does not do, measured for the record: /targets through a memory map (dense stores only)."""

    def __init__(self, store: LabelStore):
        import mmap

        import h5py

        from labelopt.store.contiguous import dataset_region

        with h5py.File(store.path, "r") as f:
            offset, nbytes = dataset_region(f["targets"])
        with open(store.path, "rb") as fh:
            self.map = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        self.map.madvise(mmap.MADV_RANDOM)
        self.targets = np.frombuffer(self.map, np.float16, nbytes // 2, offset).reshape(
            store.num_samples, store.num_views, store.num_classes)
        self.num_samples, self.num_views = store.num_samples, store.num_views

    def gather(self, rows, cols):
        import torch

        from labelopt.store.values import as_float32

        return torch.from_numpy(as_float32(self.targets[rows.numpy(), cols.numpy()]))


def paired_reader(path: Path, old: Path, batch: int) -> dict:
    """The same random gathers from a store and its schema 2 copy, alternating which goes first: p50/p99 of each."""
    import torch

    stores = {"v3": LabelStore.open(path), "v2": LabelStore.open(old)}
    for store in stores.values():
        store.load()
    rng, times = np.random.default_rng(5), {name: [] for name in stores}
    n, v = stores["v3"].num_samples, stores["v3"].num_views
    for step in range(WARMUP_GATHERS + WARM_RUNS * warm_gathers):
        rows, cols = torch.from_numpy(rng.integers(0, n, batch)), torch.from_numpy(rng.integers(0, v, batch))
        for name in (("v3", "v2") if step % 2 else ("v2", "v3")):
            t = time.perf_counter()
            stores[name].gather(rows, cols)
            if step >= WARMUP_GATHERS:
                times[name].append(time.perf_counter() - t)
    out = {name: {"gathers": len(ts), "p50_ms": float(np.percentile(np.array(ts) * 1e3, 50)),
                  "p99_ms": float(np.percentile(np.array(ts) * 1e3, 99))} for name, ts in times.items()}
    out["p50_ratio_v2_over_v3"] = out["v2"]["p50_ms"] / out["v3"]["p50_ms"]
    return out


def side_by_side(path: Path, batch: int) -> dict:
    """Copy a top-k store as schema 2, time both in one reader process, remove the copy."""
    from labelopt.tests.store_fakes import as_schema_v2

    old = path.with_name(path.stem + "-v2.h5")
    as_schema_v2(path, old)
    try:
        command = [sys.executable, __file__, "--reader", str(path), "--pair", str(old), "--batch", str(batch),
                   "--warm-gathers", str(warm_gathers)]
        return json.loads(subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True).stdout)
    finally:
        old.unlink()


def mapped_reader(path: Path, batch: int) -> dict:
    store = LabelStore.open(path)
    store.load()  # the same sha256 pass, so the page cache starts as warm as the pread reader's
    mapped = MappedTargets(store)
    return {"warm": warm_latency(mapped, batch), "memory_end_kib": memory_kib(), "layout": "mmap"}


def run_readers(path: Path, batch: int, count: int, cold: bool, mapped: bool = False) -> list[dict]:
    command = [sys.executable, __file__, "--reader", str(path), "--batch", str(batch),
               "--warm-gathers", str(warm_gathers)] + ["--cold"] * cold
    command += ["--mmap"] * mapped
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(count)]
    results = []
    for proc in procs:
        stdout, _ = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"reader of {path} failed (exit {proc.returncode})")
        results.append(json.loads(stdout))
    return results


def cached_kib() -> int:
    with open("/proc/meminfo") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("Cached:"))


def readers_together(path: Path, batch: int) -> dict:
    """One reader, then two at once, each from an emptied page cache: peak memory and the cache's growth."""
    out = {}
    for count in (1, 2):
        out["emptied_by"] = empty_page_cache(path)
        before = cached_kib()
        results = run_readers(path, batch, count, cold=False)
        out[f"{count}"] = {"cache_growth_kib": cached_kib() - before,
                           "peak_kib": [r["memory_end_kib"]["VmHWM"] for r in results],
                           "anon_kib": [r["memory_end_kib"]["RssAnon"] for r in results]}
    return out


# -- the matrix --------------------------------------------------------------------------------------------------

def plan(args) -> list[dict]:
    """Contiguous dense stores at every size; compressed ones at the two smallest; the largest dense store with
    --dense-views views; top-10 stores with --topk-views views. Two readers: the compressed mid-size store and the
    largest dense one. --only keeps one kind's stores (a shorter run, say on a borrowed machine)."""
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = [{"kind": "dense", "n": n, "views": 1, "layout": "contiguous"} for n in sizes]
    rows += [{"kind": "dense", "n": n, "views": 1, "layout": "compressed", "together": n == sizes[1]}
             for n in sizes[:2]]
    rows.append({"kind": "dense", "n": sizes[-1], "views": args.dense_views, "layout": "contiguous", "together": True})
    rows += [{"kind": "top-10", "n": n, "views": args.topk_views, "layout": "contiguous"}
             for n in (sizes[0], sizes[-1])]
    return [r for r in rows if args.only in (None, r["kind"])]


def measure(row: dict, folder: Path, args, keep: bool) -> dict:
    path = folder / f"{row['kind']}-{row['layout']}-n{row['n']}-v{row['views']}.h5"
    row = dict(row)
    row["write_s"] = write_store(path, row["n"], row["views"], row["kind"] != "dense",
                                 "none" if row["layout"] == "contiguous" else "gzip")
    row["bytes"] = path.stat().st_size
    row["reader"] = run_readers(path, args.batch, 1, cold=True)[0]
    if row.get("together"):
        row["together"] = readers_together(path, args.batch)
        if row["kind"] == "dense" and row["layout"] == "contiguous":
            row["mmap"] = run_readers(path, args.batch, 1, cold=False, mapped=True)[0]
    if row["kind"] == "top-10" and row["layout"] == "contiguous":
        row["v2_side_by_side"] = side_by_side(path, args.batch)
    if not keep:
        path.unlink()
    return row


def p99_range(warm: dict) -> str:
    each = [run["p99_ms"] for run in warm["runs"]]
    return f"runs' p99 {min(each):.2f}-{max(each):.2f}"


def cached_p99(warm: dict) -> str:
    return (f"{warm['p99_in_page_cache_ms']:.2f} ms ({warm['gathers_reading_storage']:,} of {warm['gathers']:,}, "
            f"{warm['storage_read_mib']:.1f} MiB)")


def table(rows: list[dict], empty_kib: int) -> str:
    head = ("| store | layout | N | V | size | write | open | check | peak memory (vs empty reader) | anon "
            "| cold p50 / p99 | warm p50 / p99 (medians of 3 runs) | warm p99, page cache only (gathers that read "
            "storage) | warm, Python loop (before) |\n|" + " --- |" * 14)
    lines = [head]
    for r in rows:
        m, rd = r["reader"]["memory_end_kib"], r["reader"]
        cold, plain = rd.get("cold", {}), rd.get("warm_plain")
        before = (f"{plain['p50_ms']:.2f} / {plain['p99_ms']:.2f} ms ({plain['p50_ms'] / rd['warm']['p50_ms']:.1f}x)"
                  if plain else "")
        lines.append(
            f"| {r['kind']} | {r['layout']} | {r['n']:,} | {r['views']} | {r['bytes'] / 2**30:.2f} GiB "
            f"| {r['write_s']:.0f} s | {rd['open_ms']:.0f} ms | {rd['check_s']:.1f} s "
            f"| {m['VmHWM'] / 1024:.0f} MiB ({(m['VmHWM'] - empty_kib) / 1024:+.0f}) | {m['RssAnon'] / 1024:.0f} MiB "
            f"| {cold.get('p50_ms', float('nan')):.2f} / {cold.get('p99_ms', float('nan')):.2f} ms "
            f"| {rd['warm']['p50_ms']:.2f} / {rd['warm']['p99_ms']:.2f} ms ({p99_range(rd['warm'])}) "
            f"| {cached_p99(rd['warm'])} | {before} |")
    mapped = [r for r in rows if r.get("mmap")]
    if mapped:
        lines += ["", "| store | read through | warm p50 / p99 | peak memory (vs empty reader) "
                      "| of it mapped file pages |", "|" + " --- |" * 5]
        for r in mapped:
            for name, rd in (("pread (labelopt)", r["reader"]), ("mmap (for comparison)", r["mmap"])):
                m = rd["memory_end_kib"]
                lines.append(f"| dense N={r['n']:,} V={r['views']} | {name} | {rd['warm']['p50_ms']:.2f} / "
                             f"{rd['warm']['p99_ms']:.2f} ms | {m['VmHWM'] / 1024:.0f} MiB "
                             f"({(m['VmHWM'] - empty_kib) / 1024:+.0f}) | {m['RssFile'] / 1024:.0f} MiB |")
    paired = [r for r in rows if r.get("v2_side_by_side")]
    if paired:
        lines += ["", "| store | schema 3: one read per entry, p50 / p99 | schema 2: two reads, p50 / p99 "
                      "| p50 ratio |", "|" + " --- |" * 4]
        for r in paired:
            p = r["v2_side_by_side"]
            lines.append(f"| top-10 N={r['n']:,} V={r['views']} "
                         f"| {p['v3']['p50_ms']:.2f} / {p['v3']['p99_ms']:.2f} ms "
                         f"| {p['v2']['p50_ms']:.2f} / {p['v2']['p99_ms']:.2f} ms | {p['p50_ratio_v2_over_v3']:.2f}x |")
    together = [r for r in rows if r.get("together")]
    if together:
        lines += ["", "| store | readers | page cache growth | peak memory of each |", "|" + " --- |" * 4]
        for r in together:
            for count in ("1", "2"):
                t = r["together"][count]
                lines.append(f"| {r['kind']} {r['layout']} N={r['n']:,} V={r['views']} | {count} "
                             f"| {t['cache_growth_kib'] / 2**20:.2f} GiB "
                             f"| {', '.join(f'{k / 1024:.0f} MiB' for k in t['peak_kib'])} |")
    return "\n".join(lines)


def goals(rows: list[dict], empty_kib: int) -> dict:
    inplace = [r for r in rows if r["layout"] == "contiguous"]
    flat = max(r["reader"]["memory_end_kib"]["VmHWM"] for r in inplace) - empty_kib
    shared = [r["together"] for r in rows if r.get("together") and r["layout"] == "contiguous"]
    return {"contiguous_peak_over_empty_mib": flat / 1024, "flat_within_200_mib": flat < 200 * 1024,
            "warm_p99_ms_max": max(r["reader"]["warm"]["p99_ms"] for r in inplace),
            "warm_p99_under_1_ms": all(r["reader"]["warm"]["p99_ms"] < 1.0 for r in inplace),
            "warm_p99_in_page_cache_under_1_ms": all(r["reader"]["warm"]["p99_in_page_cache_ms"] < 1.0
                                                     for r in inplace),
            "warm_p99_each_run_ms": {f"{r['kind']} N={r['n']} V={r['views']}": [run["p99_ms"] for run in
                                                                              r["reader"]["warm"]["runs"]]
                                     for r in inplace},
            "two_readers_cache_growth_ratio": [t["2"]["cache_growth_kib"] / max(1, t["1"]["cache_growth_kib"])
                                               for t in shared],
            "largest_store_gib": max(r["bytes"] for r in rows) / 2 ** 30,
            "memory_total_gib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="50000,320000,1280000")
    parser.add_argument("--dense-views", type=int, default=5)
    parser.add_argument("--topk-views", type=int, default=100)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--warm-gathers", type=int, default=2500,
                        help="Timed gathers per warm run (3 runs; whole passes over N, at least this many).")
    parser.add_argument("--keep", type=Path, default=None, help="Write the stores here and keep them.")
    parser.add_argument("--json-only", action="store_true")
    parser.add_argument("--only", choices=("dense", "top-10"), default=None, help="Measure one kind of store only.")
    parser.add_argument("--smoke", action="store_true", help="Tiny sizes: checks the plumbing only.")
    parser.add_argument("--reader", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--cold", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mmap", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--pair", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    global warm_gathers
    warm_gathers = args.warm_gathers
    if args.reader is not None:
        if args.pair is not None:
            result = paired_reader(args.reader, args.pair, args.batch)
        elif args.mmap:
            result = mapped_reader(args.reader, args.batch)
        else:
            result = reader(args.reader, args.batch, args.cold)
        print(json.dumps(result))
        return
    if args.smoke:
        args.sizes, args.dense_views, args.topk_views = "3000,6000,9000", 2, 4
        warm_gathers = args.warm_gathers = 16
    for name in ("dense_views", "topk_views", "batch", "warm_gathers"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    loadavg_before = os.getloadavg()  # latencies are only as quiet as the machine
    folder = args.keep or Path(tempfile.mkdtemp(prefix="store-scale-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        rows = plan(args)
        empty = measure({"kind": "dense", "n": 512, "views": 1, "layout": "contiguous"}, folder, args, False)
        empty_kib = empty["reader"]["memory_end_kib"]["VmHWM"]
        results = []
        for r in rows:
            results.append(measure(r, folder, args, args.keep is not None))
            print(f"measured {r['kind']} {r['layout']} N={r['n']} V={r['views']}", file=sys.stderr)
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)
    report = {"empty_reader": empty, "stores": results, "goals": goals(results, empty_kib), "batch": args.batch,
              "machine": {"cpu_count": os.cpu_count(), "kernel": os.uname().release,
                          "loadavg_before": list(loadavg_before), "loadavg_after": list(os.getloadavg())}}
    print(json.dumps(report, indent=2))
    if not args.json_only:
        print("\n" + table(results, empty_kib))
        print("\n" + json.dumps(report["goals"]))


if __name__ == "__main__":
    main()
