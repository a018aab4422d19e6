"""Stage one's cost: `labelopt generate-labels` against bare teacher inference, store sizes, open + gather.

All in one process, one run, on CIFAR-shaped random images (100 classes, 32x32) written through labelopt's
own .beton writer (as in benchmarks/loader.py) and a teacher checkpoint saved the way `labelopt train` saves
one (freshly initialised with torch seeded, or trained --train-teacher-epochs epochs first):

  bare      the row loader generate-labels uses (block_loader over the same rows, its default blocks), the same
            view parameters and policy.apply, the same forward slices (a block's rows x views in slices of
            --batch-size), Teacher.outputs and the softmax at T; nothing leaves the device, nothing is written.
            This is the ceiling.
  generate  generate_labels(method sl, T 4) end to end: teacher loading, the same work, block files, and the
            HDF5 assembly (`finish`, also reported on its own).

for views `identity` (N images) and `cifar-crop-flip` (162 views; the first M images, a separate prepared
dataset, since 162 x 50,000 teacher passes are too many for a small CPU), plus a top-k cifar-crop-flip store.
img/s counts teacher passes, i.e. (image, view) pairs per second. Then the stores' bytes on disk against their
uncompressed size, a full CIFAR-100 162-view store projected from the measured bytes per row, and the time to
open, load and gather 512 random (index, view) rows from each store.

Warm-up (kept out of every timing): one generate-labels run (identity) over a small separate dataset and one
teacher forward of a full --batch-size slice of cifar-crop-flip views. It covers h5py's and the store
reader's first use and the teacher's first-call kernel setup. A new loader's start (milliseconds for these raw
images, which labelopt reads without FFCV; seconds of numba compiling for JPEGs through FFCV's Loader) is paid
by every generate-labels run, so both bare and generate include it (bare reports it as loader_start_seconds).

A randomly initialised teacher's outputs are near-uniform, and those compress differently from a trained
teacher's peaked ones; --train-teacher-epochs E trains the teacher first (labelopt train, recipe defaults
on the N images; the labels are random, so it mostly grows confident on memorised samples).

    .venv/bin/python benchmarks/generate_labels.py [--images 50000] [--crop-flip-images M] [--teacher-arch resnet20]
        [--batch-size 512] [--device auto] [--bf16] [--topk 10] [--train-teacher-epochs 0] [--keep DIR] [--json-only]
        [--channels-last] [--compile] [--no-anchor]

On a CPU each cifar-crop-flip image costs 162 teacher passes, three times over (bare, dense, top-k): resnet20
does about 150-300 passes/s on 2 cores, so the CPU defaults take ~40 min there; pass a smaller
--crop-flip-images for a quick run. Gathers are timed with torch's threads and with one thread: under
contention for the cores a multi-threaded 512-row gather waits for its helper thread.

The anchor (the limit generate-labels is measured against; --no-anchor skips it), after every generate-labels
setup in the same process: the same teacher checkpoint (loaded as generate-labels loads it, in channels_last under
--channels-last) over every image of the part's dataset already on the device as one uint8 [N, 3, H, W] tensor
(read once through the row loader, untimed): the (image, view) pairs are enumerated on the device in the store's
order, each batch of --batch-size pairs gathers its images, applies its views with the policy's own apply on the
device, normalises them on the device and runs the teacher under torch.no_grad (bf16 autocast under --bf16);
nothing is kept. Only whole batches are timed (the rest of the pairs is left out, so every timed batch has one
shape). Two variants: eager, and captured (the teacher through torch.compile: mode reduce-overhead, i.e. CUDA
graphs, on a GPU; the default mode on a CPU; dynamo is reset first, so it is compiled afresh). Each runs
ANCHOR_WARMUP_BATCHES untimed batches (they hold the compile and the graph capture), then one timed pass over the
whole batches with the device synchronised before each clock reading; its figure is teacher passes/s. The ratios
project / anchor divide each setup's passes/s (generate and bare; the top-k store against the cifar-crop-flip
anchor) by the anchor's. The goal (GPU, resnet56, batch 1024, bf16, --channels-last --compile): generate-labels
identity and cifar-crop-flip at least GOAL_OVER_EAGER_ANCHOR of the eager anchor. On a CPU the anchors add two
passes over each part's pairs: pass --no-anchor (or small sizes) for a quick run.

--channels-last and --compile go to generate-labels (GenerateOptions.channels_last / .compile); --channels-last
also to the bare run, the warm-up and the anchor; the bare run stays eager under --compile (its timing would hold
the compile), and the anchor has its eager and captured variants either way.

Absolute times depend on the machine (printed with the results); compare the ratios. Prints JSON, then tables.
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (NUM_CLASSES, add_run_arguments, checked_device, measure_in_work_folder,  # noqa: E402
                    print_result, random_images, write_prepared)

FULL_IMAGES, FULL_VIEWS = 50000, 162  # a full CIFAR-100 train store with every cifar-crop-flip view
TEMPERATURE = 4.0
CPU_CROP_FLIP_IMAGES = 1000
WARMUP_IMAGES = 512
GATHER_ROWS, GATHER_REPS, OPEN_REPS = 512, 200, 5
GOAL_RATIO, GOAL_GATHER_US = 0.9, 1000.0
ANCHOR_WARMUP_BATCHES = 5  # untimed anchor batches: they hold the captured variant's compile and CUDA graph capture
GOAL_OVER_EAGER_ANCHOR = 0.7  # generate-labels identity and cifar-crop-flip over the eager anchor (GPU, batch 1024)
VIEW_SPECS = ("identity", "cifar-crop-flip")


def log(message: str) -> None:
    print(f"generate_labels bench: {message}", file=sys.stderr, flush=True)


# -- setup ------------------------------------------------------------------------------------------

def make_teacher(root: Path, data_folder: Path, arch: str, epochs: int, device: str, bf16: bool) -> Path:
    """A teacher checkpoint as `labelopt train` writes it: fresh (seeded) weights, or E epochs of training."""
    from labelopt.models import create_model
    from labelopt.pipeline.run.checkpoints import save_checkpoint
    from labelopt.pipeline.data.datasets import open_dataset
    from labelopt.pipeline.run.runtime import seed_everything
    from labelopt.pipeline.run.options import TrainOptions
    from labelopt.pipeline.run.train_loop import checkpoint_payload
    from labelopt.pipeline.run.training import train

    if epochs > 0:
        log(f"training the {arch} teacher {epochs} epoch(s) on {open_dataset(data_folder).num_samples('train')} "
            f"random images")
        run = train(TrainOptions(data=str(data_folder), arch=arch, out=str(root / "teacher-run"), epochs=epochs,
                                 seed=0, device=device, bf16=bf16), log=log)
        return run / "last.pt"
    data = open_dataset(data_folder)
    seed_everything(0)  # the teacher's initial weights come from the seed
    model = create_model(arch, data.num_classes)
    path = root / f"teacher-{arch}.pt"
    save_checkpoint(path, checkpoint_payload(TrainOptions(data=str(data_folder), arch=arch, out=str(root)),
                                             data, model, epoch=0, record={}))
    return path


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- the two throughputs ----------------------------------------------------------------------------

@torch.no_grad()
def time_bare(folder: Path, teacher_path: Path, spec: str, batch_size: int, device: torch.device,
              bf16: bool, channels_last: bool = False) -> dict:
    """The ceiling: generate-labels' loader, views and forward slices, with nothing kept or written (the teacher
    eager, in channels_last when asked)."""
    from labelopt.pipeline.data.datasets import open_dataset
    from labelopt.pipeline.data.loading import block_loader
    from labelopt.pipeline.jobs.labeling import default_block_rows
    from labelopt.pipeline.run.checkpoints import load_teachers
    from labelopt.pipeline.views.store_sets import store_views
    from labelopt.pipeline.run.runtime import autocast, to_device
    from labelopt.pipeline.views.policies import IdentityView

    data = open_dataset(folder)
    teacher = load_teachers([teacher_path], data, device, channels_last=channels_last)[0]
    views = store_views(spec, data, seed=0)
    n, v = data.num_samples("train"), views.num_views
    rows = np.arange(n, dtype=np.uint64)
    # As generate-labels does: its default block for these views, and several blocks in one loader batch where
    # a block holds fewer rows than a teacher batch.
    block_rows = default_block_rows(v)
    per_batch = max(1, batch_size // (block_rows * v))
    started, cpu_started = time.perf_counter(), time.process_time()
    loader = block_loader(data, "train", rows, block_rows * per_batch,
                          train_decode=not isinstance(views.policy, IdentityView))
    loader_start = None
    for images, _, indices in loader:
        if loader_start is None:
            loader_start = time.perf_counter() - started
        images = to_device(images.permute(0, 3, 1, 2), device)
        count = images.shape[0]
        params = views.views_of(indices.view(-1).numpy(), images.shape[2], images.shape[3])
        flat_params = torch.from_numpy(params.reshape(count * v, -1))
        row_of = to_device(torch.arange(count).repeat_interleave(v), device)
        flat_params = flat_params if views.mixed else to_device(flat_params, device)
        for start in range(0, count * v, batch_size):
            sl = slice(start, min(start + batch_size, count * v))
            viewed = views.pixels(images[row_of[sl]], flat_params[sl])
            with autocast(device, bf16):
                logits, _ = teacher.outputs(viewed)
                torch.softmax(logits / TEMPERATURE, dim=1)
    sync(device)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    return {"images": n, "views": v, "teacher_passes": n * v, "seconds": seconds, "img_per_s": n * v / seconds,
            "cpu_seconds": cpu_seconds, "img_per_cpu_s": n * v / cpu_seconds, "loader_start_seconds": loader_start}


@contextlib.contextmanager
def finish_timer():
    """Time StoreWriter.finish (the HDF5 assembly) inside generate_labels without touching labelopt's code."""
    from labelopt.store.writer import StoreWriter

    original, spent = StoreWriter.finish, []

    def timed(self):
        started = time.perf_counter()
        try:
            return original(self)
        finally:
            spent.append(time.perf_counter() - started)

    StoreWriter.finish = timed
    try:
        yield spent
    finally:
        StoreWriter.finish = original


def time_generate(folder: Path, teacher_path: Path, spec: str, out: Path, args, device: torch.device,
                  topk: int | None = None) -> dict:
    from labelopt.pipeline.jobs.labeling import GenerateOptions, generate_labels

    options = GenerateOptions(data=str(folder), out=str(out), teachers=(str(teacher_path),), method="sl",
                              views=spec, temperature=TEMPERATURE, topk=topk, device=str(device), bf16=args.bf16,
                              batch_size=args.batch_size,  # the default block for these views
                              channels_last=getattr(args, "channels_last", False),  # generate_labels_imagenet.py's
                              compile=getattr(args, "compile", False))  # args have neither
    with finish_timer() as finish:
        started, cpu_started = time.perf_counter(), time.process_time()
        generate_labels(options, log=log)
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    from labelopt.store import LabelStore
    store = LabelStore.open(out)
    n, v = store.num_samples, store.num_views
    return {"images": n, "views": v, "teacher_passes": n * v, "topk": topk, "seconds": seconds,
            "img_per_s": n * v / seconds, "cpu_seconds": cpu_seconds, "img_per_cpu_s": n * v / cpu_seconds,
            "finish_seconds": finish[0] if finish else None,
            "img_per_s_before_finish": n * v / (seconds - finish[0]) if finish else None, "store": str(out)}


def warm_up(root: Path, images: np.ndarray, labels: np.ndarray, teacher: Path, args, device: torch.device) -> str:
    from labelopt.pipeline.data.datasets import open_dataset
    from labelopt.pipeline.run.checkpoints import load_teachers
    from labelopt.pipeline.views.store_sets import store_views

    n = min(WARMUP_IMAGES, len(images))
    folder = write_prepared(root / "warmup", images[:n], labels[:n])
    time_generate(folder, teacher, "identity", root / "warmup-identity.h5", args, device)
    data = open_dataset(folder)
    views = store_views("cifar-crop-flip", data, seed=0)
    batch = torch.from_numpy(images[:1]).permute(0, 3, 1, 2).to(device).expand(args.batch_size, -1, -1, -1)
    params = torch.arange(args.batch_size)[:, None] % views.num_views
    from labelopt.pipeline.run.runtime import autocast
    with torch.no_grad(), autocast(device, args.bf16):
        load_teachers([teacher], data, device, channels_last=args.channels_last)[0].outputs(
            views.policy.apply(batch, params))
    sync(device)
    return (f"generate-labels identity over a separate {n}-image dataset, then one {args.batch_size}-view "
            f"cifar-crop-flip teacher forward; not timed")


# -- the anchor: the same teacher over images already on the device -----------------------------------

def device_split(folder: Path, views, device) -> torch.Tensor:
    """Every image of the prepared train split as one uint8 [N, 3, H, W] tensor on the device, read once in order
    through generate-labels' own row loader (with the decode plan it uses for these views)."""
    from labelopt.pipeline.data.datasets import open_dataset
    from labelopt.pipeline.data.loading import block_loader
    from labelopt.pipeline.views.policies import IdentityView

    data = open_dataset(folder)
    rows = np.arange(data.num_samples("train"), dtype=np.uint64)  # read in batches of 256: untimed, any size does
    loader = block_loader(data, "train", rows, 256, train_decode=not isinstance(views.policy, IdentityView))
    # Each batch out of FFCV's reused buffer before the next one overwrites it.
    blocks = [images.permute(0, 3, 1, 2).contiguous() for images, _, _ in loader]
    return torch.cat(blocks).to(device)


def anchor_batches(count: int, num_views: int, batch: int, device) -> torch.Tensor:
    """int64 [B, batch] flat (image, view) pair ids p (image p // num_views, view p % num_views), enumerated on the
    device in the store's order. Whole batches only (every timed batch has one shape); one short batch of every
    pair when there are fewer than `batch`."""
    pairs = count * num_views
    whole = pairs // batch
    if whole == 0:
        return torch.arange(pairs, device=device).view(1, pairs)
    return torch.arange(whole * batch, device=device).view(whole, batch)


def anchor_pass(forward, normalize, views, images: torch.Tensor, device: torch.device, bf16: bool, graphs: bool):
    """infer(pairs) -> the teacher's logits for a batch of flat pair ids: their images gathered on the device, their
    views applied by the policy on the device, normalised on the device, then `forward` (the teacher's model,
    eager or compiled) under bf16 autocast when asked. Enumerated view sets only (a shared [V, P] table)."""
    from labelopt.pipeline.run.runtime import autocast

    if views.shared_params is None:
        raise ValueError(f"the anchor enumerates views; {views.policy.name} draws them per sample")
    table, v = views.shared_params.to(device), views.num_views

    def infer(pairs: torch.Tensor) -> torch.Tensor:
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()  # the previous batch's outputs are not read again
        pixels = views.policy.apply(images[pairs // v], table[pairs % v])
        with autocast(device, bf16):
            return forward(normalize(pixels))

    return infer


@torch.no_grad()
def time_anchor(teacher, views, images: torch.Tensor, *, batch: int, device, bf16: bool = False,
                captured: bool = False, warmup: int = ANCHOR_WARMUP_BATCHES, keep: bool = False):
    """The anchor over `images` (uint8 [N, 3, H, W] on the device) and every view of `views`: `warmup` untimed
    batches, then one timed pass over the whole batches, the device synchronised before each clock reading.
    Returns (its figures, and with `keep` the float32 logits of every timed pair in order, else None)."""
    device = torch.device(device)
    graphs = captured and device.type == "cuda"
    forward = torch.compile(teacher.model, mode="reduce-overhead" if graphs else "default") if captured \
        else teacher.model
    infer = anchor_pass(forward, teacher.normalize, views, images, device, bf16, graphs)
    batches = anchor_batches(len(images), views.num_views, batch, device)

    def clock() -> float:
        sync(device)
        return time.perf_counter()

    started = clock()
    for step in range(warmup):
        infer(batches[step % len(batches)])
    warmup_seconds = clock() - started
    kept = []
    started = clock()
    for pairs in batches:
        logits = infer(pairs)
        if keep:
            kept.append(logits.float().clone())  # a captured graph's output is overwritten by its next replay
    seconds = clock() - started
    passes = batches.numel()
    return {"mode": "CUDA graphs (reduce-overhead)" if graphs else "compiled (default)" if captured else "eager",
            "images": len(images), "views": views.num_views, "batch_size": batches.shape[1],
            "batches": len(batches), "teacher_passes": passes, "pairs_left_out": len(images) * views.num_views - passes,
            "warmup_batches": warmup, "warmup_seconds": warmup_seconds, "seconds": seconds,
            "img_per_s": passes / seconds}, (torch.cat(kept) if keep else None)


def run_anchors(folders: dict, teacher_path: Path, args, device: torch.device) -> dict:
    """{view spec: {"eager": figures, "captured": figures}}, each variant from the checkpoint loaded afresh; the
    captured one records its error instead of ending the run when torch.compile fails (the setups' figures stay)."""
    from labelopt.pipeline.data.datasets import open_dataset
    from labelopt.pipeline.run.checkpoints import load_teachers
    from labelopt.pipeline.views.store_sets import store_views

    anchors = {}
    for spec in VIEW_SPECS:
        data = open_dataset(folders[spec])
        views = store_views(spec, data, seed=0)
        images = device_split(folders[spec], views, device)
        anchors[spec] = {}
        for name, captured in (("eager", False), ("captured", True)):
            log(f"{spec}: anchor, {name}: {len(images)} images x {views.num_views} views on {device}, "
                f"batch {args.batch_size}")
            if captured:
                torch._dynamo.reset()  # compiled afresh: nothing cached from generate-labels' --compile
            teacher = load_teachers([teacher_path], data, device, channels_last=args.channels_last)[0]
            try:
                anchors[spec][name], _ = time_anchor(teacher, views, images, batch=args.batch_size, device=device,
                                                     bf16=args.bf16, captured=captured)
            except Exception as exc:  # noqa: BLE001  (a compile failure must not lose the setups' figures)
                if not captured:
                    raise
                log(f"{spec}: the captured anchor failed: {type(exc).__name__}: {exc}")
                anchors[spec][name] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        del images
    return anchors


# -- stores -----------------------------------------------------------------------------------------

def store_size(path: Path) -> dict:
    from labelopt.store import LabelStore

    store = LabelStore.open(path)
    n, v, c, k = store.num_samples, store.num_views, store.num_classes, store.topk
    size = store.size_bytes()
    dense = n * v * c * 2
    out = {"path": str(path), "num_samples": n, "num_views": v, "num_classes": c, "topk": k, "bytes": size,
           "bytes_per_row": size / (n * v), "bytes_per_sample_view_class": size / (n * v * c),
           "uncompressed_float16_bytes": dense, "over_uncompressed_float16": size / dense}
    if k is not None:
        raw = n * v * k * (4 + 2)  # int32 indices + float16 values
        out.update({"uncompressed_topk_bytes": raw, "over_uncompressed_topk": size / raw})
    return out


def projected_full(dense: dict, topk: dict) -> dict:
    """A full CIFAR-100 162-view store from the measured stores' bytes per (sample, view) row."""
    rows = FULL_IMAGES * FULL_VIEWS

    def one(store: dict, values_bytes: int) -> dict:
        return {"projected_bytes": store["bytes_per_row"] * rows,
                "from_store_rows": store["num_samples"] * store["num_views"], "uncompressed_bytes": rows * values_bytes}

    k = topk["topk"]
    return {"shape": [FULL_IMAGES, FULL_VIEWS, NUM_CLASSES], "method": "projected from measured bytes/row",
            "dense": one(dense, NUM_CLASSES * 2),  # float16
            f"top{k}": one(topk, k * (4 + 2))}  # int32 indices + float16 values


def time_open_gather(path: Path) -> dict:
    """open and load: median of a few fresh opens (the file is in the page cache: it was just written)."""
    from labelopt.store import LabelStore

    opens, loads, store = [], [], None
    for _ in range(OPEN_REPS):
        started = time.perf_counter()
        store = LabelStore.open(path)
        opens.append(time.perf_counter() - started)
        started = time.perf_counter()
        store.load()
        loads.append(time.perf_counter() - started)
    generator = torch.Generator().manual_seed(0)
    indices = torch.randint(0, store.num_samples, (GATHER_REPS, GATHER_ROWS), generator=generator)
    views = torch.randint(0, store.num_views, (GATHER_REPS, GATHER_ROWS), generator=generator)

    def gather_times() -> list[float]:
        store.gather(indices[0], views[0])  # first call: lazy torch kernel setup
        times = []
        for rep in range(GATHER_REPS):
            started = time.perf_counter()
            store.gather(indices[rep], views[rep])
            times.append(time.perf_counter() - started)
        return times

    threads = torch.get_num_threads()
    gathers = gather_times()
    # Also on one thread: a 512 x 100 gather is big enough for torch to split across its threads, and when
    # another process holds the cores, each parallel region waits a scheduler slice for its helper (~ms).
    torch.set_num_threads(1)
    try:
        single = gather_times()
    finally:
        torch.set_num_threads(threads)
    return {"store": "top-k" if store.is_topk else "dense", "topk": store.topk, "num_samples": store.num_samples,
            "num_views": store.num_views, "open_ms": 1e3 * statistics.median(opens),
            "load_ms": 1e3 * statistics.median(loads), "open_load_reps": OPEN_REPS,
            "gather_rows": GATHER_ROWS, "gather_reps": GATHER_REPS, "gather_torch_threads": threads,
            "gather_median_us": 1e6 * statistics.median(gathers),
            "gather_p90_us": 1e6 * float(np.percentile(gathers, 90)),
            "gather_1_thread_median_us": 1e6 * statistics.median(single),
            "gather_1_thread_p90_us": 1e6 * float(np.percentile(single, 90))}


# -- the run ----------------------------------------------------------------------------------------

def run(root: Path, args, device: torch.device) -> dict:
    from labelopt.pipeline.data.beton import worker_count

    images, labels = random_images(args.images)
    log(f"writing {args.images} and {args.crop_flip_images} CIFAR-shaped images under {root}")
    folders = {"identity": write_prepared(root / "data-identity", images, labels),
               "cifar-crop-flip": write_prepared(root / "data-crop-flip", images[:args.crop_flip_images],
                                                labels[:args.crop_flip_images])}
    # FFCV's writer leaves torch at one thread; a `labelopt generate-labels` process starts with all cores.
    torch.set_num_threads(worker_count())
    teacher = make_teacher(root, folders["identity"], args.teacher_arch, args.train_teacher_epochs, str(device),
                           args.bf16)
    torch.set_num_threads(worker_count())
    log("warm-up")
    warmup = warm_up(root, images, labels, teacher, args, device)

    stores_dir = root / "stores"
    stores_dir.mkdir()
    parts, store_paths = {}, {}
    for spec in VIEW_SPECS:
        log(f"{spec}: bare teacher inference")
        bare = time_bare(folders[spec], teacher, spec, args.batch_size, device, args.bf16, args.channels_last)
        log(f"{spec}: generate-labels ({bare['img_per_s']:.0f} img/s bare)")
        store_paths[spec] = stores_dir / f"{spec}.h5"
        gen = time_generate(folders[spec], teacher, spec, store_paths[spec], args, device)
        parts[spec] = {"bare": bare, "generate": gen, **ratios(gen, bare), "torch_threads": torch.get_num_threads()}
    topk_name = f"cifar-crop-flip top{args.topk}"
    log(f"{topk_name}: generate-labels")
    store_paths[topk_name] = stores_dir / f"cifar-crop-flip-top{args.topk}.h5"
    topk_gen = time_generate(folders["cifar-crop-flip"], teacher, "cifar-crop-flip", store_paths[topk_name], args,
                             device, topk=args.topk)
    # No bare run of its own: the teacher's work is the dense cifar-crop-flip one's.
    parts[topk_name] = {"generate": topk_gen, **ratios(topk_gen, parts["cifar-crop-flip"]["bare"]),
                        "torch_threads": torch.get_num_threads()}
    anchors = None if args.no_anchor else run_anchors(folders, teacher, args, device)

    log("store sizes, open, load and gather")
    sizes = {name: store_size(path) for name, path in store_paths.items()}
    access = {name: time_open_gather(path) for name, path in store_paths.items()}
    return {"warmup": warmup, "teacher_checkpoint": str(teacher), "throughput": parts, "anchor": anchors,
            "stores": sizes,
            "projected_full_store": projected_full(sizes["cifar-crop-flip"], sizes[topk_name]),
            "open_gather": access}


def ratios(gen: dict, bare: dict) -> dict:
    """generate / bare throughput, by wall time and by this process's CPU time.

    Wall time is what a user waits; CPU time (all of this process's threads) barely moves when other
    processes share the cores, so it is the steadier ratio on a busy CPU machine (on a GPU it mostly
    counts the host waiting, so read the wall ratio there).
    """
    return {"ratio_generate_over_bare": gen["img_per_s"] / bare["img_per_s"],
            "ratio_generate_over_bare_cpu_time": gen["img_per_cpu_s"] / bare["img_per_cpu_s"]}


def summarize(result: dict) -> dict:
    parts, access = result["throughput"], result["open_gather"]
    wall = {name: part["ratio_generate_over_bare"] for name, part in parts.items()}
    cpu = {name: part["ratio_generate_over_bare_cpu_time"] for name, part in parts.items()}
    worst_gather = max(row["gather_median_us"] for row in access.values())
    return {"ratio_generate_over_bare": wall, "ratio_generate_over_bare_cpu_time": cpu, "goal_ratio": GOAL_RATIO,
            "ratio_goal_met": all(r >= GOAL_RATIO for r in wall.values()),
            "ratio_goal_met_cpu_time": all(r >= GOAL_RATIO for r in cpu.values()),
            "worst_gather_median_us": worst_gather, "goal_gather_us": GOAL_GATHER_US,
            "gather_goal_met": worst_gather < GOAL_GATHER_US, **anchor_summary(parts, result.get("anchor"))}


def anchor_of(part: str) -> str:
    """The anchor a part is measured against: its view set's ("cifar-crop-flip top10" -> "cifar-crop-flip")."""
    return part.split()[0]


def anchor_summary(parts: dict, anchors: dict | None) -> dict:
    """project / anchor in teacher passes/s (above 1: the project is the faster): {part: ratio} for generate (every
    part) and bare (the parts with a bare run) against each anchor variant that ran, and the goal against the eager
    anchor for generate-labels identity and cifar-crop-flip (None when an eager anchor is missing)."""
    if not anchors:
        return {}
    out = {}
    for name in ("eager", "captured"):
        for kind in ("generate", "bare"):
            out[f"ratio_{kind}_over_anchor_{name}"] = {
                part: row[kind]["img_per_s"] / anchor["img_per_s"] for part, row in parts.items()
                if row.get(kind) and "img_per_s" in (anchor := anchors.get(anchor_of(part), {}).get(name, {}))}
    goal = [out["ratio_generate_over_anchor_eager"].get(part) for part in VIEW_SPECS]
    return {**out, "goal_over_anchor_eager": GOAL_OVER_EAGER_ANCHOR,
            "goal_over_anchor_eager_met": None if None in goal else all(r >= GOAL_OVER_EAGER_ANCHOR for r in goal)}


# -- output -----------------------------------------------------------------------------------------

def mib(n: float) -> float:
    return n / 2**20


def throughput_table(parts: dict) -> str:
    """One row per part: bare and generate teacher passes/s, their ratios, generate's seconds and finish's."""
    from labelopt.pipeline.jobs.reports import format_table

    rows = []
    for name, part in parts.items():
        bare, gen = part.get("bare"), part["generate"]
        rows.append({"part": name, "images": gen["images"], "views": gen["views"], "passes": gen["teacher_passes"],
                     "bare": bare and bare["img_per_s"], "gen": gen["img_per_s"],
                     "ratio": part["ratio_generate_over_bare"], "cpu": part["ratio_generate_over_bare_cpu_time"],
                     "seconds": gen["seconds"], "finish": gen["finish_seconds"],
                     "goal": part["ratio_generate_over_bare"] >= GOAL_RATIO})
    return format_table(rows, [("part", "part (views)"), ("images", "images"), ("views", "V"),
                               ("passes", "teacher passes"), ("bare", "bare img/s"), ("gen", "generate img/s"),
                               ("ratio", "gen/bare"), ("cpu", "gen/bare by CPU time"), ("seconds", "generate s"),
                               ("finish", "finish s"), ("goal", f">= {GOAL_RATIO}")])


def ratio_line(summary: dict) -> str:
    s = summary
    return ("generate/bare: " + ", ".join(f"{k} {v:.3f}" for k, v in s["ratio_generate_over_bare"].items())
            + f" (goal >= {GOAL_RATIO}: {'met' if s['ratio_goal_met'] else 'missed'}); by CPU time: "
            + ", ".join(f"{k} {v:.3f}" for k, v in s["ratio_generate_over_bare_cpu_time"].items())
            + f" ({'met' if s['ratio_goal_met_cpu_time'] else 'missed'})")


def machine_line(facts: dict, script_seconds: float) -> str:
    return (f"measured on {facts['device']} ({facts['device_name']}), {facts['cpu_affinity']} of "
            f"{facts['cpu_count']} cores, torch {facts['torch']} with {facts['torch_threads']} threads; load average "
            f"{facts['loadavg_before'][0]:.2f} before / {facts['loadavg_after'][0]:.2f} after; "
            f"whole script {script_seconds:.0f} s")


def teacher_flags(result: dict) -> str:
    """The teacher's new generate-labels flags as given ('' when neither is on)."""
    return "".join(f" --{flag.replace('_', '-')}" for flag in ("channels_last", "compile") if result.get(flag))


def anchor_table(anchors: dict) -> str:
    """One row per anchor variant that ran (or failed) over each view set."""
    from labelopt.pipeline.jobs.reports import format_table

    rows = []
    for spec, variants in anchors.items():
        for name, a in variants.items():
            if "img_per_s" not in a:
                error = " ".join(a.get("error", "").split())[:60]
                rows.append({"anchor": f"{spec} {name}", "mode": f"failed: {error}"})
                continue
            rows.append({"anchor": f"{spec} {name}", "mode": a["mode"], "images": a["images"], "views": a["views"],
                         "passes": a["teacher_passes"], "left": a["pairs_left_out"], "img_s": a["img_per_s"],
                         "seconds": a["seconds"], "warmup": a["warmup_seconds"]})
    return format_table(rows, [("anchor", "anchor"), ("mode", "mode"), ("images", "images"), ("views", "V"),
                               ("passes", "teacher passes timed"), ("left", "left out"),
                               ("img_s", "anchor img/s"), ("seconds", "s"), ("warmup", "warm-up s")])


def print_anchor_lines(result: dict) -> None:
    """The anchors' table, project / anchor for each setup in teacher passes/s, and the goal."""
    anchors, s = result.get("anchor"), result["summary"]
    if not anchors:
        return
    precision = "bf16" if result["bf16"] else "fp32"
    print()
    print(f"anchor: the same teacher over images already on {result['machine']['device']}, views applied and "
          f"normalised there, batch {result['batch_size']}, {precision}{teacher_flags(result)}; "
          f"{ANCHOR_WARMUP_BATCHES} warm-up batches, then one pass over the whole batches")
    print(anchor_table(anchors))
    for name in ("eager", "captured"):
        gen, bare = s.get(f"ratio_generate_over_anchor_{name}"), s.get(f"ratio_bare_over_anchor_{name}")
        if gen:
            print(f"project / anchor {name}: generate " + ", ".join(f"{k} {r:.3f}x" for k, r in gen.items())
                  + "; bare " + ", ".join(f"{k} {r:.3f}x" for k, r in bare.items()) + " (teacher passes/s)")
    met = s.get("goal_over_anchor_eager_met")
    if met is not None:
        print(f"goal (GPU, resnet56, batch 1024, bf16): generate-labels {' and '.join(VIEW_SPECS)} >= "
              f"{GOAL_OVER_EAGER_ANCHOR}x the eager anchor: {'met' if met else 'missed'} here "
              f"({result['teacher_arch']}, batch {result['batch_size']}, {precision}{teacher_flags(result)}, "
              f"{result['machine']['device']})")


def print_tables(result: dict) -> None:
    from labelopt.pipeline.jobs.reports import format_table

    print(f"generate-labels sl, T {TEMPERATURE:g}, teacher {result['teacher_arch']} "
          f"({result['teacher_trained_epochs']} training epochs), batch {result['batch_size']}{teacher_flags(result)}, "
          f"generate-labels' default blocks; img/s = teacher passes ((image, view) pairs) per second")
    print(throughput_table(result["throughput"]))
    print("(the top-k row's gen/bare is against the dense cifar-crop-flip bare run)")
    print_anchor_lines(result)

    print()
    rows = []
    for name, s in result["stores"].items():
        raw = s.get("uncompressed_topk_bytes", s["uncompressed_float16_bytes"])
        rows.append({"store": name, "shape": f"{s['num_samples']} x {s['num_views']} x {s['num_classes']}",
                     "mib": mib(s["bytes"]), "per_row": s["bytes_per_row"],
                     "per_value": s["bytes_per_sample_view_class"],
                     "f16": mib(s["uncompressed_float16_bytes"]), "raw": mib(raw), "over_raw": s["bytes"] / raw})
    print(format_table(rows, [("store", "store"), ("shape", "N x V x C"), ("mib", "MiB on disk"),
                              ("per_row", "bytes/row"), ("per_value", "bytes/(sample*view*class)"),
                              ("f16", "dense f16 MiB"), ("raw", "uncompressed MiB"),
                              ("over_raw", "disk/uncompressed")]))

    print()
    proj = result["projected_full_store"]
    rows = [{"store": f"{name} {FULL_IMAGES} x {FULL_VIEWS} x {NUM_CLASSES}", "proj": p["projected_bytes"] / 2**30,
             "raw": p["uncompressed_bytes"] / 2**30, "rows": p["from_store_rows"]}
            for name, p in proj.items() if isinstance(p, dict)]
    print(format_table(rows, [("store", "full CIFAR-100 train store"),
                              ("proj", "GiB projected from measured bytes/row"), ("rows", "measured on rows"),
                              ("raw", "GiB uncompressed (exact)")]))

    print()
    rows = [{"store": name, "kind": a["store"], "open": a["open_ms"], "load": a["load_ms"],
             "gather": a["gather_median_us"], "p90": a["gather_p90_us"], "one": a["gather_1_thread_median_us"],
             "goal": a["gather_median_us"] < GOAL_GATHER_US}
            for name, a in result["open_gather"].items()]
    threads = next(iter(result["open_gather"].values()))["gather_torch_threads"]
    print(format_table(rows, [("store", "store"), ("kind", "kind"), ("open", "open ms"), ("load", "load ms"),
                              ("gather", f"gather {GATHER_ROWS} rows us ({threads} threads, median of {GATHER_REPS})"),
                              ("p90", "p90 us"), ("one", "1 thread us"), ("goal", f"< {GOAL_GATHER_US:g} us")]))

    print()
    s = result["summary"]
    print(ratio_line(s))
    print(f"worst gather "
          f"{s['worst_gather_median_us']:.0f} us (goal < {GOAL_GATHER_US:g} us: "
          f"{'met' if s['gather_goal_met'] else 'missed'})")
    print(machine_line(result["machine"], result["script_seconds"]))


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=FULL_IMAGES, help="Images for the identity part [50000].")
    parser.add_argument("--crop-flip-images", type=int, default=None,
                        help=f"The first M images for the cifar-crop-flip part [all on a GPU, "
                             f"{CPU_CROP_FLIP_IMAGES} on a CPU].")
    parser.add_argument("--teacher-arch", default="resnet20", help="Teacher architecture [resnet20].")
    parser.add_argument("--batch-size", type=int, default=512, help="Teacher forward batch [512].")
    parser.add_argument("--topk", type=int, default=10, help="K of the top-k cifar-crop-flip store [10].")
    parser.add_argument("--train-teacher-epochs", type=int, default=0,
                        help="Train the teacher this many epochs first (labelopt train defaults) [0: fresh weights].")
    parser.add_argument("--channels-last", action="store_true",
                        help="generate-labels --channels-last: the teacher in channels_last (also the bare run, the "
                             "warm-up and the anchor).")
    parser.add_argument("--compile", action="store_true",
                        help="generate-labels --compile: torch.compile of the teacher (CUDA graphs on a GPU).")
    parser.add_argument("--no-anchor", action="store_true",
                        help="Skip the anchor (the same teacher over images already on the device).")
    add_run_arguments(parser, keeps="data, teacher and stores")
    return parser


def main(argv=None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    device = checked_device(parser, args)
    if args.crop_flip_images is None:
        args.crop_flip_images = args.images if device.type == "cuda" else min(CPU_CROP_FLIP_IMAGES, args.images)
    if args.images < 1 or not 1 <= args.crop_flip_images <= args.images:
        parser.error("need --images >= 1 and 1 <= --crop-flip-images <= --images")
    if not 1 <= args.topk < NUM_CLASSES or args.batch_size < 1 or args.train_teacher_epochs < 0:
        parser.error(f"need 1 <= --topk < {NUM_CLASSES}, --batch-size >= 1 and --train-teacher-epochs >= 0")

    outcome = measure_in_work_folder(args, device, "labelopt-bench-generate-", run, log)
    if outcome is None:
        return 1
    measured, facts = outcome
    result = {
        "benchmark": "generate_labels",
        "images": args.images, "crop_flip_images": args.crop_flip_images,
        "images_per_part": {"identity": args.images, "cifar-crop-flip": args.crop_flip_images,
                            f"cifar-crop-flip top{args.topk}": args.crop_flip_images},
        "teacher_arch": args.teacher_arch, "teacher_trained_epochs": args.train_teacher_epochs,
        "method": "sl", "temperature": TEMPERATURE, "batch_size": args.batch_size, "block_rows": "generate-labels' default",
        "bf16": args.bf16, "topk": args.topk, "channels_last": args.channels_last, "compile": args.compile,
        "img_per_s_counts": "teacher passes, i.e. (image, view) pairs",
        **measured, **facts,
    }
    result["summary"] = summarize(result)
    print_result(result, print_tables, args.json_only)
    return 0


if __name__ == "__main__":
    sys.exit(main())
