"""How long `labelopt <command> --help` takes, for every command, each run in a fresh process.

A command's help is what a new user runs first, and a refused option costs the same: neither may import torch
(the registries' names come from modules that import nothing heavy). Each command's help runs --reps times in a
new `labelopt` process (the console script of this venv); the figure is the median wall time, with the fastest and
slowest run, and whether the process imported torch (one extra run under `python -X importtime`).

    .venv/bin/python benchmarks/cli_help.py [--reps 5] [--json-only]

Absolute times depend on the machine and its load (printed with the results). Prints JSON, then a table.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_facts, print_result  # noqa: E402

LABELOPT = Path(sys.executable).with_name("labelopt")
HEAVY = ("torch", "torchvision", "h5py", "ffcv")  # modules whose import the help must not pay


def command_paths() -> list[tuple[str, ...]]:
    """Every command and subcommand of the CLI, the group itself first."""
    import click

    from labelopt.cli import main

    paths = [()]
    for name, command in main.commands.items():
        paths.append((name,))
        if isinstance(command, click.Group):
            paths.extend((name, sub) for sub in command.commands)
    return paths


def time_help(path: tuple[str, ...], reps: int) -> dict:
    """Wall seconds of `labelopt PATH --help` in `reps` fresh processes, and the heavy modules one of them imports."""
    seconds = []
    for _ in range(reps):
        started = time.perf_counter()
        subprocess.run([str(LABELOPT), *path, "--help"], check=True, capture_output=True)
        seconds.append(time.perf_counter() - started)
    traced = subprocess.run([sys.executable, "-X", "importtime", "-c",
                             "import sys; from labelopt.cli import main; main()", *path, "--help"],
                            capture_output=True, text=True)
    imported = {line.split("|")[-1].strip() for line in traced.stderr.splitlines() if line.startswith("import time:")}
    return {"command": " ".join(("labelopt", *path, "--help")), "median_s": round(statistics.median(seconds), 3),
            "min_s": round(min(seconds), 3), "max_s": round(max(seconds), 3),
            "imports": [name for name in HEAVY if name in imported]}


def print_tables(result: dict) -> None:
    rows = result["commands"]
    width = max(len(r["command"]) for r in rows)
    print(f"{'command':<{width}}  median s  min s  max s  heavy imports")
    for r in rows:
        print(f"{r['command']:<{width}}  {r['median_s']:8.3f}  {r['min_s']:5.3f}  {r['max_s']:5.3f}  "
              f"{', '.join(r['imports']) or 'none'}")
    machine = result["machine"]
    print(f"\nslowest median {result['slowest_median_s']:.3f} s; {machine['cpu_affinity']} cores, load average "
          f"{machine['loadavg_before'][0]:.2f} before, {machine['loadavg_after'][0]:.2f} after")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5, help="Fresh processes per command [5].")
    parser.add_argument("--json-only", action="store_true", help="Print the JSON only, no table.")
    args = parser.parse_args(argv)
    if args.reps < 1:
        parser.error("--reps must be at least 1")
    import torch  # for the machine facts only: the timed processes are fresh

    loadavg_before = os.getloadavg()
    rows = [time_help(path, args.reps) for path in command_paths()]
    result = {"reps": args.reps, "commands": rows, "slowest_median_s": max(r["median_s"] for r in rows),
              "machine": machine_facts(torch.device("cpu"), loadavg_before)}
    print_result(result, print_tables, args.json_only)
    return 0


if __name__ == "__main__":
    sys.exit(main())
