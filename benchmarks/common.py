"""What the benchmark scripts share: a CIFAR-shaped prepared dataset, the device, the work folder, machine facts."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

SIDE, NUM_CLASSES = 32, 100


def write_prepared(folder: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    """A prepared dataset (train split only) of these uint8 [N, 32, 32, 3] images, through labelopt's own writers."""
    from labelopt.pipeline.atomic import write_json_atomic
    from labelopt.pipeline.data.beton import write_beton
    from labelopt.pipeline.data.datasets import DATASET_FORMAT
    from labelopt.pipeline.data.sources import SplitSource

    n = len(images)
    split = SplitSource(n, labels, (SIDE, SIDE, 3), lambda i: images[i], lambda i: images[i].tobytes())
    folder.mkdir(parents=True)
    write_beton(split, folder / "train.beton", "raw", None, 90)
    write_json_atomic(folder / "meta.json", {
        "format": DATASET_FORMAT, "name": "bench", "num_classes": NUM_CLASSES,
        "class_names": [str(i) for i in range(NUM_CLASSES)], "image_shape": [SIDE, SIDE, 3], "storage": "raw",
        "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],
        "splits": {"train": {"file": "train.beton", "num_samples": n, "fingerprint": f"bench-{n}"}}})
    return folder


def random_images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n random CIFAR-shaped uint8 images and labels: speed does not depend on content."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, SIDE, SIDE, 3), dtype=np.uint8)
    return images, rng.integers(0, NUM_CLASSES, size=n).astype(np.int64)


def add_run_arguments(parser: argparse.ArgumentParser, keeps: str) -> None:
    """--device, --bf16, --keep and --json-only."""
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N [auto].")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU only).")
    parser.add_argument("--keep", type=Path, default=None,
                        help=f"Write {keeps} here (a new or empty folder) and keep them.")
    parser.add_argument("--json-only", action="store_true", help="Print the JSON only, no tables.")


def parse_store_shape(parser: argparse.ArgumentParser, argv, *, samples: int, views: int, reps: int):
    """The arguments of the scripts that time a synthetic store (store_checks.py, store_finish.py): its shape
    (--samples, --views, --classes, --topk), --reps, --keep and --json-only, parsed and checked."""
    parser.add_argument("--samples", type=int, default=samples)
    parser.add_argument("--views", type=int, default=views)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--topk", type=int, default=10)
    parser.add_argument("--reps", type=int, default=reps)
    parser.add_argument("--keep", type=Path, default=None, help="Write the stores here and keep them.")
    parser.add_argument("--json-only", action="store_true", help="Print the JSON only, no table.")
    args = parser.parse_args(argv)
    if min(args.samples, args.views, args.classes, args.reps) < 1 or not 1 <= args.topk < args.classes:
        parser.error("--samples, --views, --classes and --reps must be positive and --topk in 1..classes-1")
    return args


def checked_device(parser: argparse.ArgumentParser, args) -> torch.device:
    """The device of --device and --bf16, or a parser error; also refuses a --keep folder that is not empty."""
    from labelopt.pipeline.errors import UserError
    from labelopt.pipeline.run.runtime import check_precision, resolve_device

    try:
        device = resolve_device(args.device)
        check_precision(device, args.bf16)
    except UserError as exc:
        parser.error(str(exc))
    if args.keep is not None and args.keep.exists() and any(args.keep.iterdir()):
        parser.error(f"--keep {args.keep} is not empty; pass a new or empty folder")
    return device


@contextlib.contextmanager
def work_folder(keep: Path | None, prefix: str):
    """--keep's folder, or a temporary one removed afterwards."""
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep
    else:
        with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
            yield Path(tmp)


def machine_facts(device: torch.device, loadavg_before: tuple[float, ...]) -> dict:
    """What the absolute figures depend on, with the load average before and after the run."""
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), cpu)
    facts = {"device": str(device), "device_name": cpu, "cpu_model": cpu, "cpu_count": os.cpu_count(),
             "cpu_affinity": len(os.sched_getaffinity(0)), "torch_threads": torch.get_num_threads(),
             "torch": torch.__version__, "python": platform.python_version(),
             "loadavg_before": list(loadavg_before), "loadavg_after": list(os.getloadavg())}
    if device.type == "cuda":
        facts.update({"device_name": torch.cuda.get_device_name(device), "cuda": torch.version.cuda})
    return facts


def print_result(result: dict, print_tables, json_only: bool) -> None:
    """The JSON for programs, then (unless --json-only) the tables for people."""
    print(json.dumps(result, indent=2))
    if not json_only:
        print()
        print_tables(result)


def measure_in_work_folder(args, device: torch.device, prefix: str, run, log):
    """`run(root, args, device)` with torch seeded, in --keep's folder or a temporary one: (its figures, the
    machine facts, script seconds and kept folder for the result), or None once a UserError is logged."""
    from labelopt.pipeline.errors import UserError

    torch.manual_seed(0)
    loadavg_before, started = os.getloadavg(), time.perf_counter()
    try:
        with work_folder(args.keep, prefix) as root:
            measured = run(root, args, device)
    except UserError as exc:
        log(str(exc))
        return None
    return measured, {"machine": machine_facts(device, loadavg_before), "script_seconds": time.perf_counter() - started,
                      "kept": str(args.keep) if args.keep is not None else None}
