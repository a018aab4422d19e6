"""Stage one at ImageNet shape: `generate-labels --views sampled:K --topk 10` against bare teacher inference over
a prepared ImageNet-style folder of JPEGs, and the projected size of a 1,281,167 x K store.

All in one process, one run:
  data      an ImageFolder tree of generated JPEGs (benchmarks/jpeg_tree.py: train/<class>/*.JPEG around 500x375,
            --classes folders, image i in class i % classes), prepared by labelopt's own `prepare --dataset
            imagenet` path with the README's settings (longest side 256, JPEG quality 90)
  teacher   a freshly initialised ImageNet ResNet (--teacher-arch, resnet18) with one output per class, saved the
            way `labelopt train` saves a checkpoint (benchmarks/generate_labels.py's make_teacher)
  bare      the ceiling: generate-labels' row loader (JPEGs decoded to a centred 256 square), the same K
            random-resized-crop + flip views per image (`sampled:K`, policy rrc-flip, resampled to 224), the same
            forward slices of --batch-size and the softmax; nothing kept, nothing written (generate_labels.py's
            time_bare)
  generate  generate_labels(method sl, T 4, --views sampled:K, --topk 10) end to end: teacher loading, the same
            work, top-k, block files and the HDF5 assembly (generate_labels.py's time_generate); with --dense also
            a dense float16 store, against the same bare run

img/s counts teacher passes, i.e. (image, view) pairs per second; the goal is generate/bare >= 0.9, as for CIFAR.
Bare and generate run alternately --repeats times (2) and each side's fastest run counts: on a shared machine
another process that takes the cores for a while then slows one run, not one side.
Then each store's bytes on disk split into what grows with (image, view) rows, what grows with images and what
is fixed (the header: the class names, the teacher's record), and a full ImageNet train store of K views
projected from them for K in 1, 10, 50, 100.

Warm-up (not timed): one generate-labels run with the same views over a separate small tree (numba's first
compile of FFCV's JPEG pipeline, the teacher's first calls, h5py).

A freshly initialised teacher's outputs are near-uniform, unlike a trained teacher's: its top-10 values all lie
close to 1/classes and its top-10 indices are close to random, so gzip packs them differently. Read the
projection as an order of magnitude.

    .venv/bin/python benchmarks/generate_labels_imagenet.py [--images 256] [--classes 1000] [--views-per-image 4]
        [--teacher-arch resnet18] [--batch-size 64 CPU / 512 GPU] [--topk 10] [--dense] [--repeats 2] [--long-side 500]
        [--device auto] [--bf16] [--keep DIR] [--json-only]

The CPU defaults take about 5 minutes on 2 cores (6.5 with --dense; resnet18 at 224 runs ~20-26 passes/s
there); on a GPU pass e.g. --images 5000 --views-per-image 8 --bf16. Absolute times depend on the machine (printed with the results);
compare the ratios. Prints JSON, then tables.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_run_arguments, checked_device, measure_in_work_folder, print_result  # noqa: E402
from generate_labels import (GOAL_RATIO, TEMPERATURE, machine_line, make_teacher, ratio_line, ratios,  # noqa: E402
                             store_size, throughput_table, time_bare, time_generate)
from jpeg_tree import LONG_SIDE, write_tree  # noqa: E402

IMAGENET_TRAIN = 1_281_167
PROJECTED_VIEWS = (1, 10, 50, 100)
PREPARE_MAX_SIDE, PREPARE_QUALITY = 256, 90  # the README's `labelopt prepare --dataset imagenet` command
PARAMS_PER_VIEW = 5  # rrc-flip: top, left, height, width, flip, stored as int64 per (image, view)


def log(message: str) -> None:
    print(f"generate_labels_imagenet bench: {message}", file=sys.stderr, flush=True)


# -- data -------------------------------------------------------------------------------------------

def prepared_tree(root: Path, images: int, args, seed: int) -> tuple[Path, dict]:
    """A generated JPEG tree under root/tree, prepared into root/data/imagenet; the figures of both steps."""
    from labelopt.pipeline.data.beton import worker_count
    from labelopt.pipeline.data.prepare import prepare

    started = time.perf_counter()
    tree = write_tree(root / "tree", images, args.classes, seed=seed, long_side=args.long_side,
                      workers=worker_count())
    written = time.perf_counter() - started
    started = time.perf_counter()
    folder = prepare("imagenet", root / "tree", root / "data", max_side=PREPARE_MAX_SIDE,
                     jpeg_quality=PREPARE_QUALITY, log=log)
    return folder, {**tree, "write_seconds": written, "prepare_seconds": time.perf_counter() - started,
                    "prepare_max_side": PREPARE_MAX_SIDE, "prepare_jpeg_quality": PREPARE_QUALITY,
                    **stored_jpegs(folder / "train.beton")}


def stored_jpegs(beton: Path) -> dict:
    """What the .beton holds per image: its JPEG's bytes (FFCV's allocation table: one allocation per image)
    and its mean side; the file itself is allocated in pages, so its size overstates a small split."""
    from ffcv.reader import Reader

    reader = Reader(str(beton))
    image = reader.metadata[f"f{reader.field_names.index('image')}"]
    return {"train_beton_bytes": os.path.getsize(beton),
            "beton_jpeg_bytes_per_image": float(reader.alloc_table["size"].sum()) / reader.num_samples,
            "beton_mean_height": float(image["height"].mean()), "beton_mean_width": float(image["width"].mean())}


# -- stores -----------------------------------------------------------------------------------------

def store_parts(path: Path, n: int, views: int) -> dict:
    """Bytes on disk by what they grow with: datasets [N, V, ...] per (image, view) row, [N, ...] per image, and
    the rest (attributes, HDF5's own metadata) fixed."""
    import h5py

    sizes: list[tuple[str, tuple, int]] = []
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: sizes.append((name, obj.shape, obj.id.get_storage_size()))
                     if isinstance(obj, h5py.Dataset) else None)
    total = os.path.getsize(path)
    per_view = {name: size for name, shape, size in sizes if shape[:2] == (n, views)}
    per_image = {name: size for name, shape, size in sizes if name not in per_view and shape[:1] == (n,)}
    return {"datasets_bytes": {name: size for name, _, size in sizes},
            "bytes_per_image_view": sum(per_view.values()) / (n * views),
            "bytes_per_image": sum(per_image.values()) / n,
            "fixed_bytes": total - sum(per_view.values()) - sum(per_image.values())}


def projection(parts: dict, num_classes: int, topk: int | None) -> list[dict]:
    """A 1,281,167 x K store for each K of PROJECTED_VIEWS: from the measured bytes, and uncompressed."""
    per_row = (topk * (4 + 2) if topk else num_classes * 2) + PARAMS_PER_VIEW * 8
    return [{"views": k, "rows": IMAGENET_TRAIN * k,
             "projected_bytes": parts["fixed_bytes"] + IMAGENET_TRAIN * (parts["bytes_per_image"]
                                                                         + k * parts["bytes_per_image_view"]),
             "uncompressed_bytes": IMAGENET_TRAIN * (8 + k * per_row)} for k in PROJECTED_VIEWS]


def measured_store(path: Path, num_classes: int, topk: int | None) -> dict:
    from labelopt.store import LabelStore

    size = store_size(path)
    out = {**size, **store_parts(path, size["num_samples"], size["num_views"]),
           "view_policy": LabelStore.open(path).views.get("policy")}
    return {**out, "projected_imagenet_store": projection(out, num_classes, topk)}


# -- the run ----------------------------------------------------------------------------------------

def run(root: Path, args, device: torch.device) -> dict:
    from labelopt.pipeline.data.beton import worker_count

    spec = f"sampled:{args.views_per_image}"
    log(f"writing and preparing {args.images} JPEGs in {args.classes} classes under {root}")
    folder, data = prepared_tree(root / "bench", args.images, args, seed=0)
    warm_images = max(8, math.ceil(args.batch_size / args.views_per_image))  # at least one full forward slice
    warm_folder, _ = prepared_tree(root / "warmup", warm_images, args, seed=1)
    # FFCV's writer leaves torch at one thread; a `labelopt generate-labels` process starts with all cores.
    torch.set_num_threads(worker_count())
    teacher = make_teacher(root, folder, args.teacher_arch, 0, str(device), args.bf16)
    torch.set_num_threads(worker_count())
    log(f"warm-up: generate-labels {spec} over {warm_images} other images")
    time_generate(warm_folder, teacher, spec, root / "warmup.h5", args, device, topk=args.topk)

    stores_dir = root / "stores"
    stores_dir.mkdir()
    wanted = {f"{spec} top{args.topk}": args.topk, **({f"{spec} dense": None} if args.dense else {})}
    paths = {name: stores_dir / f"{name.replace(' ', '-').replace(':', '')}.h5" for name in wanted}
    runs: dict[str, list[dict]] = {"bare": [], **{name: [] for name in wanted}}
    # Alternated and repeated: another process taking the cores for a while slows one run, not one side.
    for rep in range(args.repeats):
        log(f"{spec}: bare teacher inference ({rep + 1}/{args.repeats})")
        runs["bare"].append(time_bare(folder, teacher, spec, args.batch_size, device, args.bf16))
        for name, topk in wanted.items():
            log(f"{name}: generate-labels ({rep + 1}/{args.repeats})")
            paths[name].unlink(missing_ok=True)  # the last repeat's store is the one measured
            runs[name].append(time_generate(folder, teacher, spec, paths[name], args, device, topk=topk))
    bare = fastest(runs["bare"])
    parts = {name: {"bare": bare, "generate": fastest(runs[name]), **ratios(fastest(runs[name]), bare),
                    "bare_img_per_s_runs": [r["img_per_s"] for r in runs["bare"]],
                    "generate_img_per_s_runs": [r["img_per_s"] for r in runs[name]],
                    "torch_threads": torch.get_num_threads()} for name in wanted}
    stores = {name: measured_store(paths[name], args.classes, wanted[name]) for name in wanted}
    return {"data": data, "warmup": f"generate-labels {spec} over a separate {warm_images}-image tree; not timed",
            "teacher_checkpoint": str(teacher), "throughput": parts, "stores": stores}


def fastest(runs: list[dict]) -> dict:
    return max(runs, key=lambda r: r["img_per_s"])


def summarize(result: dict) -> dict:
    wall = {name: part["ratio_generate_over_bare"] for name, part in result["throughput"].items()}
    cpu = {name: part["ratio_generate_over_bare_cpu_time"] for name, part in result["throughput"].items()}
    return {"ratio_generate_over_bare": wall, "ratio_generate_over_bare_cpu_time": cpu, "goal_ratio": GOAL_RATIO,
            "ratio_goal_met": all(r >= GOAL_RATIO for r in wall.values()),
            "ratio_goal_met_cpu_time": all(r >= GOAL_RATIO for r in cpu.values()),
            "projected_gib": {name: {p["views"]: p["projected_bytes"] / 2**30 for p in s["projected_imagenet_store"]}
                              for name, s in result["stores"].items()}}


# -- output -----------------------------------------------------------------------------------------

def print_tables(result: dict) -> None:
    from labelopt.pipeline.jobs.reports import format_table

    d = result["data"]
    print(f"data: {d['train_images']} generated JPEGs in {d['classes']} classes, mean {d['mean_train_jpeg_bytes'] / 1e3:.0f}"
          f" KB (long side {d['long_side']}, quality {d['jpeg_quality']}); prepared (max side {d['prepare_max_side']},"
          f" quality {d['prepare_jpeg_quality']}) in {d['prepare_seconds']:.1f} s to {d['beton_mean_width']:.0f} x "
          f"{d['beton_mean_height']:.0f} on average, {d['beton_jpeg_bytes_per_image'] / 1e3:.1f} KB of JPEG per image")
    print(f"generate-labels sl, T {TEMPERATURE:g}, --views sampled:{result['views_per_image']} (rrc-flip to 224), "
          f"teacher {result['teacher_arch']} (fresh weights, {result['classes']} classes), batch "
          f"{result['batch_size']}, bf16 {result['bf16']}; img/s = teacher passes ((image, view) pairs) per second")
    print(throughput_table(result["throughput"]))
    for name, part in result["throughput"].items():
        print(f"{name}: fastest of {result['repeats']} alternated runs; img/s bare "
              + ", ".join(f"{v:.2f}" for v in part["bare_img_per_s_runs"]) + ", generate "
              + ", ".join(f"{v:.2f}" for v in part["generate_img_per_s_runs"]))

    print()
    rows = [{"store": name, "shape": f"{s['num_samples']} x {s['num_views']} x {s['num_classes']}",
             "bytes": s["bytes"], "per_row": s["bytes_per_row"], "per_view": s["bytes_per_image_view"],
             "per_image": s["bytes_per_image"], "fixed": s["fixed_bytes"]} for name, s in result["stores"].items()]
    print(format_table(rows, [("store", "store"), ("shape", "N x V x C"), ("bytes", "bytes on disk"),
                              ("per_row", "bytes/(image, view) row, all in"),
                              ("per_view", "bytes/row, row datasets"), ("per_image", "bytes/image"),
                              ("fixed", "fixed bytes")]))

    print()
    rows = [{"store": f"{name}: {IMAGENET_TRAIN} x {p['views']}", "proj": p["projected_bytes"] / 2**30,
             "raw": p["uncompressed_bytes"] / 2**30, "dense": IMAGENET_TRAIN * p["views"] * s["num_classes"] * 2 / 2**30}
            for name, s in result["stores"].items() for p in s["projected_imagenet_store"]]
    print(format_table(rows, [("store", "ImageNet train store (images x views)"),
                              ("proj", "GiB projected from measured bytes"), ("raw", "GiB uncompressed"),
                              ("dense", "GiB dense float16 targets alone")]))

    print()
    s = result["summary"]
    print(ratio_line(s))
    print(machine_line(result["machine"], result["script_seconds"]))


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256, help="Training images to generate and label [256].")
    parser.add_argument("--classes", type=int, default=1000, help="Class folders, and the teacher's outputs [1000].")
    parser.add_argument("--views-per-image", type=int, default=4, help="K of --views sampled:K [4].")
    parser.add_argument("--teacher-arch", default="resnet18", help="An ImageNet ResNet (labelopt models) [resnet18].")
    parser.add_argument("--batch-size", type=int, default=None, help="Teacher forward batch [64 on a CPU, 512 on a GPU].")
    parser.add_argument("--topk", type=int, default=10, help="K of the top-k store [10].")
    parser.add_argument("--dense", action="store_true", help="Also generate a dense float16 store (one more run).")
    parser.add_argument("--repeats", type=int, default=2,
                        help="Bare and generate runs, alternated; each side's fastest counts [2].")
    parser.add_argument("--long-side", type=int, default=LONG_SIDE, help=f"Generated JPEGs' long side [{LONG_SIDE}].")
    add_run_arguments(parser, keeps="the JPEG trees, prepared data, teacher and stores")
    args = parser.parse_args(argv)
    device = checked_device(parser, args)
    if args.batch_size is None:
        args.batch_size = 512 if device.type == "cuda" else 64  # generate-labels' own defaults
    if min(args.images, args.views_per_image, args.batch_size, args.repeats) < 1 or args.classes < 2 \
            or args.long_side < 16:
        parser.error("need --images, --views-per-image, --batch-size and --repeats >= 1, --classes >= 2 and "
                     "--long-side >= 16")
    if not 1 <= args.topk < args.classes:
        parser.error(f"need 1 <= --topk < --classes ({args.classes})")
    from labelopt.models import get_spec, model_names

    imagenet = [name for name in model_names() if get_spec(name).family == "imagenet"]
    if args.teacher_arch not in imagenet:
        parser.error(f"--teacher-arch {args.teacher_arch}: use an ImageNet model, one of {', '.join(imagenet)}")
    return args, device


def main(argv=None) -> int:
    args, device = parse_args(argv)
    outcome = measure_in_work_folder(args, device, "labelopt-bench-generate-imagenet-", run, log)
    if outcome is None:
        return 1
    measured, facts = outcome
    result = {"benchmark": "generate_labels_imagenet", "images": args.images, "classes": args.classes,
              "views_per_image": args.views_per_image, "views": f"sampled:{args.views_per_image}",
              "teacher_arch": args.teacher_arch, "teacher_trained_epochs": 0, "method": "sl",
              "temperature": TEMPERATURE, "batch_size": args.batch_size, "bf16": args.bf16, "topk": args.topk,
              "repeats": args.repeats,
              "img_per_s_counts": "teacher passes, i.e. (image, view) pairs",
              **measured, **facts}
    result["summary"] = summarize(result)
    print_result(result, print_tables, args.json_only)
    return 0


if __name__ == "__main__":
    sys.exit(main())
