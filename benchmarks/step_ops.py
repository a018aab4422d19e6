"""What a training step runs outside its compiled graph: the operators launched one by one per step.

On a GPU each such operator is a kernel launched from Python, and a captured (CUDA graphs) step is bound by them
once the graph itself is short: this counts them, which a CPU can do exactly (the count does not depend on the
device's speed). The same resnet20 students, data and batch in three setups, each in three variants, one after the
other in one process:

  setups    vanilla  `labelopt train` (cross-entropy, fresh crop + flip views)
            store    `train-student --method sl` from an identity label store (one stored label per image)
            pack     `train-student --seeds 0..G-1 --method sl` from the same store: G students in one pass
  variants  eager    no --compile: every operator of the step runs one by one
            student  --compile of the student alone (its forward and backward): what --compile compiled before the
                     method's loss joined the graph, and still what it compiles with an online teacher or torchrun
            step     --compile as it is: the student with its normalisation and the method's loss, one graph

Each run trains 3 epochs; epoch 2 runs under torch.profiler. The operators counted are the top-level aten
operators (not the ones a composite operator calls) inside each step's "labelopt.step" range (the training
loop's own: the step and its loss totals), outside any compiled region, less the views (detach, view, select, ...:
no kernel). They are split by where they run: the optimizer's step, the accumulation of the gradients into .grad
(AccumulateGrad), and the rest (normalisation, loss, loss totals, the nan watch). On a CPU the SGD step runs
per parameter (four operators each); on a GPU it runs as a few multi-tensor kernels, so its count here is not a
GPU's. `graphs_per_step` counts the compiled regions a step enters (1: no graph break). The img/s of epoch 3
(not profiled) is printed too; on a CPU it is noisy and not the point.

    .venv/bin/python benchmarks/step_ops.py [--images 320] [--batch-size 64] [--members 4] [--device auto]
                                            [--bf16] [--keep DIR] [--json-only]

Prints JSON, then a table.
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_run_arguments, checked_device, measure_in_work_folder, print_result  # noqa: E402
from loader import make_dataset  # noqa: E402

from labelopt.pipeline.run.batches import BATCH_RANGE  # noqa: E402  (the batch loader's range around a batch)
from labelopt.pipeline.run.train_loop import STEP_RANGE  # noqa: E402  (the training loop's range around a step)
COMPILED_RANGES = ("Torch-Compiled Region", "CompiledFunction", "## Call CompiledFxGraph")
NO_KERNEL = {"aten::detach", "aten::view", "aten::select", "aten::slice", "aten::expand", "aten::unsqueeze",
             "aten::squeeze", "aten::reshape", "aten::as_strided", "aten::alias", "aten::t", "aten::permute",
             "aten::transpose", "aten::_reshape_alias", "aten::unbind", "aten::split", "aten::lift_fresh",
             "aten::resolve_conj", "aten::resolve_neg", "aten::_unsafe_view"}
SETUPS, VARIANTS = ("vanilla", "store", "pack"), ("eager", "student", "step")
PROFILED_EPOCH = 1  # of 0, 1, 2: epoch 1 holds the compile and numba's, epoch 3 is timed


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def ancestors(event):
    parent = event.cpu_parent
    while parent is not None:
        yield parent.name
        parent = parent.cpu_parent


def count_step_operators(events) -> dict:
    """Per-step counts from a profile's events: steps, compiled regions entered, operators outside them; and the
    operators that made each batch (the batch loader's range: inline on a CPU, in its thread on a GPU)."""
    counts = collections.Counter()
    for event in events:
        names = list(ancestors(event))
        counts["steps"] += event.name == STEP_RANGE
        counts["batches"] += event.name == BATCH_RANGE
        counts["graphs"] += event.name.startswith("Torch-Compiled Region") and STEP_RANGE in names
        if (not event.name.startswith("aten::") or event.name in NO_KERNEL or (names and names[0].startswith("aten::"))
                or any(name.startswith(COMPILED_RANGES) for name in names)):
            continue
        if BATCH_RANGE in names:
            counts["batch"] += 1
        elif STEP_RANGE in names:
            counts[step_part(names)] += 1
    steps = max(counts["steps"], 1)
    per_step = {k: counts[k] / steps for k in ("optimizer", "grad_accumulation", "loss_and_bookkeeping")}
    return {"steps": counts["steps"], "graphs_per_step": counts["graphs"] / steps, "ops_per_step": per_step,
            "ops_per_step_total": sum(per_step.values()), "ops_per_batch": counts["batch"] / max(counts["batches"], 1)}


def step_part(names: list[str]) -> str:
    """Where in the step an operator ran, from the names of the ranges around it."""
    if any(name.startswith("Optimizer.") for name in names):
        return "optimizer"
    return "grad_accumulation" if any("AccumulateGrad" in name for name in names) else "loss_and_bookkeeping"


class EpochProfiler:
    """torch.profiler over one whole epoch, started and stopped from the training loop's epoch hook."""

    def __init__(self):
        self.profile = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
        self.running = False

    def __call__(self, epoch: int) -> None:  # on_epoch_end
        if epoch == PROFILED_EPOCH - 1:
            self.profile.start()
            self.running = True
        elif epoch == PROFILED_EPOCH and self.running:
            self.profile.stop()
            self.running = False


def scoped(variant: str):
    """train_setup.compile_step with --compile held to the student alone (the 'student' variant)."""
    from labelopt.pipeline.run import train_setup

    real = train_setup.compile_step

    def compile_student_only(options, objective, normalize, model, extra, capture, *rest, **kwargs):
        return real(options, objective, normalize, model, extra, "student" if capture == "step" else capture,
                    *rest, **kwargs)
    return compile_student_only if variant == "student" else real


def run_one(setup: str, variant: str, out: Path, folder: Path, store: Path, args, device) -> dict:
    from labelopt.pipeline.jobs.student import StudentOptions, train_student
    from labelopt.pipeline.run import train_setup
    from labelopt.pipeline.run.options import TrainOptions
    from labelopt.pipeline.run.training import train

    common = dict(data=str(folder), arch="resnet20", out=str(out), epochs=3, batch_size=args.batch_size,
                  device=str(device), bf16=args.bf16, compile=variant != "eager")
    profiler, real = EpochProfiler(), train_setup.compile_step
    train_setup.compile_step = scoped(variant)
    try:
        if setup == "vanilla":
            train(TrainOptions(**common), on_epoch_end=profiler, log=lambda _: None)
        else:
            seeds = tuple(range(args.members)) if setup == "pack" else None
            train_student(StudentOptions(**common, method="sl", labels=str(store), seeds=seeds),
                          on_epoch_end=profiler, log=lambda _: None)
    finally:
        train_setup.compile_step = real
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    members = args.members if setup == "pack" else 1
    return {"setup": setup, "variant": variant, "members": members,
            **count_step_operators(profiler.profile.events()),
            "compile_seconds": records[0].get("compile_seconds"),
            "img_per_s_epoch_3": members * records[-1]["train_img_per_s"]}


def measure(root: Path, args, device) -> dict:
    from labelopt.pipeline.jobs.labeling import GenerateOptions, generate_labels
    from labelopt.pipeline.run.options import TrainOptions
    from labelopt.pipeline.run.training import train

    folder, _, _ = make_dataset(root, args.images)
    teacher = root / "teacher"
    log("step_ops: a one-epoch resnet20 teacher and its identity store")
    train(TrainOptions(data=str(folder), arch="resnet20", out=str(teacher), epochs=1, batch_size=args.batch_size,
                       device=str(device)), log=lambda _: None)
    store = root / "identity.h5"
    generate_labels(GenerateOptions(data=str(folder), out=str(store), teachers=(str(teacher / "last.pt"),),
                                    views="identity", temperature=4.0, device=str(device)), log=lambda _: None)
    rows = []
    for setup in SETUPS:
        for variant in VARIANTS:
            log(f"step_ops: {setup}, {variant}")
            rows.append(run_one(setup, variant, root / "runs" / f"{setup}-{variant}", folder, store, args, device))
    return {"images": args.images, "batch_size": args.batch_size, "rows": rows}


def print_table(result: dict) -> None:
    print(f"Operators per step outside the compiled graph (resnet20, batch {result['batch_size']}, "
          f"{result['machine']['device']}):")
    print(f"{'setup':<8} {'variant':<8} {'graphs':>6} {'loss+book':>10} {'grad acc':>9} {'optimizer':>10} "
          f"{'per batch':>10} {'img/s':>9}")
    for row in result["rows"]:
        ops = row["ops_per_step"]
        print(f"{row['setup'] + (str(row['members']) if row['setup'] == 'pack' else ''):<8} {row['variant']:<8} "
              f"{row['graphs_per_step']:>6.1f} {ops['loss_and_bookkeeping']:>10.1f} "
              f"{ops['grad_accumulation']:>9.1f} {ops['optimizer']:>10.1f} {row['ops_per_batch']:>10.1f} "
              f"{row['img_per_s_epoch_3']:>9.0f}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=320, help="CIFAR-shaped images [320].")
    parser.add_argument("--batch-size", type=int, default=64, help="Per step [64].")
    parser.add_argument("--members", type=int, default=4, help="Students in the pack setup [4].")
    add_run_arguments(parser, "the data, store and runs")
    args = parser.parse_args(argv)
    device = checked_device(parser, args)
    if args.images < 2 * args.batch_size or args.members < 2:
        parser.error("--images must hold two batches and --members be at least 2")
    measured = measure_in_work_folder(args, device, "step-ops-", measure, log)
    if measured is None:
        return 1
    figures, facts = measured
    print_result({**figures, **facts}, print_table, args.json_only)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
