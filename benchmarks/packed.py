"""Packed students against the same students one after another: aggregate student-images/s of training steps.

G resnet20 students (each its own seed, its own images) train for the same number of steps two ways, side by
side in one process on the same in-memory data:

  separate  G models, one step of each in turn (what G runs one after another cost, less their loaders)
  packed    the G models as one pack (models/packing.py; --layout grouped: one wide network, the GPU's layout;
            stacked: each member's own layers in turn, the CPU's): one step trains all of them

Student-images/s = G x batch x steps / seconds. The data are random CIFAR-shaped tensors already on the device, so
the figure is the training step's own cost (no loader, no store): the limit packing can reach. With --compile both
ways are compiled, the student with its loss (CUDA graphs on a GPU); the compile is paid in the untimed warm-up
steps.

    .venv/bin/python benchmarks/packed.py [--members 1,2,4,8,16] [--batch-size 128] [--steps 20]
                                          [--device auto] [--bf16] [--compile] [--layout grouped]
                                          [--json-only]

Prints JSON, then a table.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import checked_device, machine_facts, print_result  # noqa: E402

ARCH, CLASSES, SIDE = "resnet20", 100, 32
WARMUP_STEPS = 3


def make_members(count: int, device: torch.device) -> list[nn.Module]:
    from labelopt.models import create_model

    members = []
    for seed in range(count):
        torch.manual_seed(seed)
        members.append(create_model(ARCH, CLASSES).to(device))
    return members


def step_function(model: nn.Module, members: int, args, device: torch.device):
    """One SGD step of `model` on (images [B, members * 3, H, W], labels [B]); compiled with --compile."""
    from labelopt.models.packing import member_outputs
    from labelopt.pipeline.run.runtime import autocast

    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)

    def forward_loss(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = member_outputs(model(images), members)
        return sum(nn.functional.cross_entropy(logits[:, g], labels) for g in range(members))

    # Compiled, the members' losses join the student's graph, as train-student --compile has them.
    loss_of = forward_loss
    if args.compile:
        loss_of = torch.compile(forward_loss, mode="reduce-overhead" if device.type == "cuda" else "default")

    def step(images: torch.Tensor, labels: torch.Tensor) -> None:
        if args.compile and device.type == "cuda":
            torch.compiler.cudagraph_mark_step_begin()
        with autocast(device, args.bf16):
            loss = loss_of(images, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def timed(steps: list, batches: list, count: int, device: torch.device) -> float:
    """Seconds for `count` rounds of every step function on its own batch, after the warm-up rounds."""
    def run(rounds: int) -> None:
        for _ in range(rounds):
            for step, (images, labels) in zip(steps, batches):
                step(images, labels)
    run(WARMUP_STEPS)
    sync(device)
    started = time.perf_counter()
    run(count)
    sync(device)
    return time.perf_counter() - started


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(count: int, args, device: torch.device) -> dict:
    from labelopt.models.packing import pack_models, packed_inputs

    generator = torch.Generator(device="cpu").manual_seed(count)
    images = [torch.randn(args.batch_size, 3, SIDE, SIDE, generator=generator).to(device) for _ in range(count)]
    labels = torch.randint(0, CLASSES, (args.batch_size,), generator=generator).to(device)
    members = make_members(count, device)
    separate = timed([step_function(m, 1, args, device) for m in members],
                     [(x, labels) for x in images], args.steps, device)
    packed_model = pack_models(make_members(count, device), args.layout).to(device)
    packed = timed([step_function(packed_model, count, args, device)], [(packed_inputs(images), labels)],
                   args.steps, device)
    student_images = count * args.batch_size * args.steps
    return {"members": count, "separate_seconds": separate, "packed_seconds": packed,
            "separate_img_per_s": student_images / separate, "packed_img_per_s": student_images / packed,
            "speedup": separate / packed}


def print_tables(result: dict) -> None:
    from labelopt.pipeline.jobs.reports import format_table

    one = result["rows"][0]["separate_img_per_s"] if result["rows"][0]["members"] == 1 else None
    rows = [{"g": r["members"], "separate": r["separate_img_per_s"], "packed": r["packed_img_per_s"],
             "speedup": r["speedup"], "vs_one": r["packed_img_per_s"] / one if one else None}
            for r in result["rows"]]
    mode = "compiled" if result["compile"] else "eager"
    print(format_table(rows, [("g", "students"), ("separate", "one after another, student-img/s"),
                              ("packed", "packed, student-img/s"), ("speedup", "packed / separate"),
                              ("vs_one", "packed / one student")]))
    facts = result["machine"]
    print(f"\n{ARCH}, {result['layout']} packs, batch {result['batch_size']}, {result['steps']} timed steps after "
          f"{WARMUP_STEPS}, {mode}, "
          f"{'bf16' if result['bf16'] else 'fp32'}; device {facts['device']} ({facts['device_name']}), "
          f"{facts['cpu_affinity']} cores, torch {facts['torch']}")


def parse_members(text: str) -> list[int]:
    counts = [int(x) for x in text.split(",") if x.strip()]
    if not counts or any(c < 1 or c > 64 for c in counts):
        raise argparse.ArgumentTypeError(f"--members takes counts from 1 to 64, e.g. 1,2,4,8; got {text!r}")
    return counts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--members", type=parse_members, default=[1, 2, 4, 8, 16],
                        help="Pack sizes G to measure [1,2,4,8,16].")
    parser.add_argument("--batch-size", type=int, default=128, help="Images per student per step [128].")
    parser.add_argument("--steps", type=int, default=20, help="Timed steps per way and size [20].")
    parser.add_argument("--compile", action="store_true", help="torch.compile both ways (CUDA graphs on a GPU).")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N [auto].")
    parser.add_argument("--layout", choices=("grouped", "stacked"), default="grouped",
                        help="The pack's layout (models/packing.py) [grouped].")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU only).")
    parser.add_argument("--json-only", action="store_true", help="Print the JSON only, no tables.")
    parser.set_defaults(keep=None)  # checked_device's --keep check: this script writes no files
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.steps < 1:
        parser.error("--batch-size and --steps must be at least 1")
    device = checked_device(parser, args)
    loadavg = os.getloadavg()
    rows = []
    for count in args.members:
        print(f"packed: {count} students", file=sys.stderr, flush=True)
        rows.append(measure(count, args, device))
    result = {"arch": ARCH, "layout": args.layout, "batch_size": args.batch_size, "steps": args.steps, "compile": args.compile,
              "bf16": args.bf16, "rows": rows, "machine": machine_facts(device, loadavg)}
    print_result(result, print_tables, args.json_only)
    return 0


if __name__ == "__main__":
    sys.exit(main())
