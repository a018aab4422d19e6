"""A table's students as packs against the same students one run at a time: wall seconds of the rows, side by side.

`labelopt table TABLE --rows ROWS --out OUT/packed` runs first, whole: its data, teachers and label stores, then
the rows, packed as the table plans them (max_pack). Its teachers and stores are then copied to OUT/separate,
where the same rows run again over the same prepared data (--data) with --max-pack 1: one process per (row, seed),
each with its own data order. Both run with --jobs 1, so the rows' seconds are the sums of their steps' "done in" lines (one step at a
time), and each table's evaluation of every run is timed as a whole beside them. Top-1 per row is printed for both,
to show the two ways train the same kind of students (packs share one data order; single runs do not, so the
figures differ within the spread over seeds).

    .venv/bin/python benchmarks/table_packs.py OUT [--table digits] [--rows vanilla,ls,...] [--seeds 0,1,2]
                                               [--json-only]

The default rows are the digits table's label rows on unmixed images (vanilla, ls, random, sl, sl+gt, sl-enc,
sl-ens, sl-kd), three seeds: the issue's "digits table as packs against one run at a time", as first measured
(the mixed rows, vanilla+mix, aug-sl and aug-sl-kd, pack too now: add them with --rows). Prints JSON, then a
table.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_facts  # noqa: E402

LABEL_ROWS = "vanilla,ls,random,sl,sl+gt,sl-enc,sl-ens,sl-kd"
DONE_LINE = re.compile(r"^table: (?P<name>.+): done in (?P<seconds>\d+) s$")
SHARED = ("teachers", "labels")  # what the second table copies from the first (it reads the first's data)


def run_table(args, out: Path, *extra: str) -> dict:
    """One `labelopt table` command: its wall seconds, each step's seconds by phase, and its JSON report."""
    command = [sys.executable, "-m", "labelopt", "table", args.table, "--out", str(out), "--rows", args.rows,
               "--seeds", args.seeds, "--jobs", "1", "--json", *extra]
    print(f"table_packs: {' '.join(command[2:])}", file=sys.stderr, flush=True)
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"table_packs: the table failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    steps = [m.groupdict() for line in done.stderr.splitlines() if (m := DONE_LINE.match(line.strip()))]
    rows = [s for s in steps if s["name"].startswith(("row ", "pack "))]
    return {"wall_seconds": seconds, "steps": steps, "row_steps": len(rows),
            "row_seconds": sum(int(s["seconds"]) for s in rows),
            "other_step_seconds": sum(int(s["seconds"]) for s in steps) - sum(int(s["seconds"]) for s in rows),
            "report": json.loads(done.stdout)}


def copy_shared(source: Path, target: Path) -> None:
    target.mkdir(parents=True)
    for name in SHARED:
        if (source / name).exists():
            shutil.copytree(source / name, target / name, symlinks=True)


def top1_by_row(report: dict) -> dict:
    """{row: mean top-1 of its last epochs}, read from table.json's rows."""
    out = {}
    for row in report.get("rows", []):
        last = row.get("last") or {}
        top1 = last.get("top1") if isinstance(last, dict) else None
        out[row.get("name")] = top1.get("mean") if isinstance(top1, dict) else top1
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="A new folder for both tables.")
    parser.add_argument("--table", default="digits", help="A table file or a shipped table's name [digits].")
    parser.add_argument("--rows", default=LABEL_ROWS, help=f"The rows to time [{LABEL_ROWS}].")
    parser.add_argument("--seeds", default="0,1,2", help="The seeds of every row [0,1,2].")
    parser.add_argument("--json-only", action="store_true", help="Print the JSON only, no table.")
    args = parser.parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()):
        parser.error(f"{args.out} is not empty; pass a new folder")
    loadavg = os.getloadavg()
    packed = run_table(args, args.out / "packed")
    copy_shared(args.out / "packed", args.out / "separate")
    data = next((args.out / "packed" / "data").iterdir())  # the table's prepared dataset
    separate = run_table(args, args.out / "separate", "--max-pack", "1", "--data", str(data))
    result = {"benchmark": "table_packs", "table": args.table, "rows": args.rows.split(","), "seeds": args.seeds,
              "machine": machine_facts(torch.device("cpu"), loadavg), "packed": packed, "separate": separate,
              "ratio_rows_packed_over_separate": packed["row_seconds"] / max(separate["row_seconds"], 1),
              "top1_packed": top1_by_row(packed["report"]), "top1_separate": top1_by_row(separate["report"])}
    (args.out / "table_packs.json").write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps(result, indent=2, default=str))
    if not args.json_only:
        print_table(result)
    return 0


def print_table(result: dict) -> None:
    packed, separate = result["packed"], result["separate"]
    print(f"\n{result['table']}: rows {', '.join(result['rows'])}; seeds {result['seeds']}; --jobs 1")
    print(f"{'way':<28} {'row steps':>9} {'rows s':>8} {'whole command s':>16}")
    for name, part in (("packs (max_pack default)", packed), ("one run at a time", separate)):
        print(f"{name:<28} {part['row_steps']:>9} {part['row_seconds']:>8} {part['wall_seconds']:>16.0f}")
    print(f"packs / one at a time (rows): {result['ratio_rows_packed_over_separate']:.2f}x; the packed command "
          f"also made the data, teachers and stores ({packed['other_step_seconds']} s)")
    for row, top1 in result["top1_packed"].items():
        other = result["top1_separate"].get(row)
        print(f"  {row:<10} top-1 packed {fmt(top1)}  one at a time {fmt(other)}")


def fmt(value) -> str:
    return "-" if value is None else f"{value:.2f}"


if __name__ == "__main__":
    sys.exit(main())
