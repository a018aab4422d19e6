"""Stage one's own cost: `generate-labels` end to end with a teacher that costs nothing.

The teacher's forward is replaced by zeros of its output's shape, so no convolution runs and what is left is
labelopt's own work: opening the data and the checkpoint, the loader, the views, the labeler's softmax and
checks, the block files and the store's assembly (`finish`, also reported on its own). A GPU takes none of this
away, and the part of it on the main thread bounds a short job: the identity pass over 50,000 CIFAR images is
0.35 s of teacher at the eager anchor's speed on an H200 (docs/benchmarks.md), so the stage-one goal of 0.7x
that anchor leaves labelopt 0.15 s of its own.

Setups, run alternately in one process, each --reps times (the median is reported), on CIFAR-shaped random
images (benchmarks/common.py) and a fresh resnet20 checkpoint as `labelopt train` saves one:

  blocks-256   --block-rows 256 (generate-labels' block for every view set before 1-3 views got larger blocks)
  default      generate-labels' default block for the view set (identity: 1,024 samples)

for `--views identity` (default) or `cifar-crop-flip` over --images images. One untimed run over the same data
comes first (h5py's and the store's first use). Prints JSON, then a table.

    .venv/bin/python benchmarks/stage_one_overhead.py [--images 50000] [--views identity] [--reps 5]
        [--batch-size 1024] [--device auto] [--keep DIR] [--json-only]

Absolute times depend on the machine (printed with the results); compare the ratio.
"""
from __future__ import annotations

import argparse
import contextlib
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (NUM_CLASSES, add_run_arguments, checked_device, measure_in_work_folder,  # noqa: E402
                    print_result, random_images, write_prepared)
from generate_labels import finish_timer, make_teacher  # noqa: E402

SETUPS = {"blocks-256": 256, "default": None}  # setup -> --block-rows (None: generate-labels' default)


def log(message: str) -> None:
    print(f"stage_one_overhead: {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def free_teacher():
    """Every Teacher's forward returns float32 zeros of [B, classes] without touching its images."""
    from labelopt.stages.teachers import Teacher

    original = Teacher.outputs

    def zeros(self, images: torch.Tensor, taps=()):
        return torch.zeros(images.shape[0], NUM_CLASSES, device=images.device), {}

    Teacher.outputs = zeros
    try:
        yield
    finally:
        Teacher.outputs = original


def time_run(folder: Path, teacher: Path, out: Path, args, device: torch.device, block_rows: int | None) -> dict:
    from labelopt.pipeline.jobs.labeling import GenerateOptions, generate_labels
    from labelopt.store import LabelStore

    options = GenerateOptions(data=str(folder), out=str(out), teachers=(str(teacher),), views=args.views,
                              device=str(device), batch_size=args.batch_size, block_rows=block_rows)
    with finish_timer() as finish:
        started, cpu_started = time.perf_counter(), time.process_time()
        generate_labels(options, log=lambda _: None)
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    command = shlex.split(LabelStore.open(out).generator["command"])  # the block size the run really used
    rows = int(command[command.index("--block-rows") + 1])
    out.unlink()
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "finish_seconds": finish[0], "block_rows": rows}


def run(root: Path, args, device: torch.device) -> dict:
    images, labels = random_images(args.images)
    folder = write_prepared(root / "data", images, labels)
    teacher = make_teacher(root, folder, "resnet20", 0, str(device), False)
    runs: dict[str, list[dict]] = {name: [] for name in SETUPS}
    with free_teacher():
        time_run(folder, teacher, root / "warm-up.h5", args, device, None)
        for rep in range(args.reps):
            for name, block_rows in SETUPS.items():
                runs[name].append(time_run(folder, teacher, root / f"{name}.h5", args, device, block_rows))
            log(f"repetition {rep + 1}/{args.reps}: " + ", ".join(f"{n} {r[-1]['seconds']:.3f} s"
                                                                for n, r in runs.items()))
    return {"setups": {name: summary(rows) for name, rows in runs.items()}, "runs": runs}


def summary(rows: list[dict]) -> dict:
    median = lambda key: statistics.median(r[key] for r in rows)
    return {"block_rows": rows[0]["block_rows"], "median_seconds": median("seconds"),
            "min_seconds": min(r["seconds"] for r in rows), "median_finish_seconds": median("finish_seconds"),
            "median_cpu_seconds": median("cpu_seconds")}


def print_tables(result: dict) -> None:
    from labelopt.pipeline.jobs.reports import format_table

    setups = result["setups"]
    base = setups["blocks-256"]["median_seconds"]
    rows = [{"setup": name, "rows": s["block_rows"], "median": f"{s['median_seconds']:.3f}",
             "min": f"{s['min_seconds']:.3f}", "finish": f"{s['median_finish_seconds']:.3f}",
             "cpu": f"{s['median_cpu_seconds']:.2f}", "ratio": f"{s['median_seconds'] / base:.2f}x"}
            for name, s in setups.items()]
    print(f"generate-labels --views {result['views']} over {result['images']:,} images, the teacher free; "
          f"median of {result['reps']}")
    print(format_table(rows, [("setup", "setup"), ("rows", "block rows"), ("median", "s (median)"),
                              ("min", "s (fastest)"), ("finish", "of it finish, s"), ("cpu", "CPU s"),
                              ("ratio", "against blocks-256")]))
    machine = result["machine"]
    print(f"{machine['device_name']}, {machine['cpu_affinity']} cores, torch {machine['torch']}, load average "
          f"{machine['loadavg_before'][0]:.2f} before; script {result['script_seconds']:.0f} s")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=50_000, help="CIFAR-shaped images [50000].")
    parser.add_argument("--views", choices=("identity", "cifar-crop-flip"), default="identity",
                        help="The store's views [identity].")
    parser.add_argument("--reps", type=int, default=5, help="Runs of each setup, alternating [5].")
    parser.add_argument("--batch-size", type=int, default=1024, help="generate-labels --batch-size [1024].")
    add_run_arguments(parser, keeps="data, teacher and stores")
    return parser


def main(argv=None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    device = checked_device(parser, args)
    if args.images < 1 or args.reps < 1 or args.batch_size < 1:
        parser.error("need --images, --reps and --batch-size >= 1")
    outcome = measure_in_work_folder(args, device, "labelopt-bench-overhead-", run, log)
    if outcome is None:
        return 1
    measured, facts = outcome
    result = {"benchmark": "stage_one_overhead", "images": args.images, "views": args.views, "reps": args.reps,
              "batch_size": args.batch_size, **measured, **facts}
    base = result["setups"]["blocks-256"]["median_seconds"]
    result["default_over_blocks_256"] = result["setups"]["default"]["median_seconds"] / base
    print_result(result, print_tables, args.json_only)
    return 0


if __name__ == "__main__":
    sys.exit(main())
