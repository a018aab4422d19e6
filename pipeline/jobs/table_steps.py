"""The steps of a table (`labelopt table`): what state each output is in, and running the unfinished ones.

Each step is one `labelopt` command run as its own process (`python -m labelopt ...`), so a failure stays in its
step and each step has its log (OUT/logs/<step>.log). A run folder is done when its metrics.jsonl holds every
epoch and last.pt was saved after that line; one with a last.pt short of that continues with --resume; a store is
done when its file exists and opens (generate-labels renames it only when complete, and a stopped one finishes
its missing blocks when run again). Killing the table and running it again therefore continues where it stopped.
"""
from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..run.runs import MetricsLog

HEARTBEAT_S = float(os.environ.get("LABELOPT_PROGRESS_SECONDS", "30"))  # a line per running step this often
DONE, RESUME, NEW = "done", "resume", "new"


@dataclass
class Step:
    phase: str  # data, teachers, stores, rows
    name: str  # what the progress lines call it: "teacher r56", "row sl (pack of 3 seeds)"
    args: list[str]  # labelopt's arguments, --resume / --overwrite included
    state: str  # done, resume or new
    log: Path
    why: str = ""  # what was found: "6 epochs", "2 of 6 epochs"

    def command(self) -> str:
        return shlex.join(["labelopt", *self.args])

    def describe(self) -> dict:
        return {"phase": self.phase, "name": self.name, "state": self.state, "why": self.why,
                "command": self.command(), "log": str(self.log)}


def read_config(folder: Path) -> dict | None:
    try:
        return json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None


def run_state(folder: Path, expect: dict) -> tuple[str, str]:
    """(done | resume | new, why) of a run folder; `expect`: config.json values the table fixes (arch, method,
    epochs, seed): a folder made with others is refused, since neither resuming nor skipping it would be right."""
    config = read_config(folder)
    if config is None:
        return NEW, "not started"
    changed = [(k, v) for k, v in expect.items() if config.get(k) != v]
    if changed:
        key, wanted = changed[0]
        raise UserError(f"{folder} was made with {key} {config.get(key)!r} and this table asks for {wanted!r}: "
                        f"delete that folder or choose another --out")
    last, metrics = folder / "last.pt", folder / "metrics.jsonl"
    if not last.is_file():
        return NEW, "no last.pt"
    lines = MetricsLog.read(metrics)
    total = int(config["epochs"]) + int(config.get("warmup_epochs") or 0)
    # The loop appends an epoch's line, then saves last.pt: a run killed between the two is not done.
    if lines and int(lines[-1]["epoch"]) + 1 >= total and last.stat().st_mtime_ns >= metrics.stat().st_mtime_ns:
        return DONE, f"{total} epochs"
    return RESUME, f"{len(lines)} of {total} epochs"


def pack_state(pack: Path, members: dict[int, Path], expect: dict) -> tuple[str, str]:
    """A pack's state: done when every member's folder is; resumable when the pack's own folder holds a last.pt
    of the same seeds; else new (the pack's folder is replaced)."""
    states = [run_state(folder, {**expect, "seed": seed}) for seed, folder in members.items()]
    if all(state == DONE for state, _ in states):
        return DONE, f"{len(states)} members, {states[0][1]}"
    state, why = run_state(pack, expect)
    config = read_config(pack) or {}
    if state == RESUME and list(config.get("seeds") or []) != list(members):
        return NEW, f"its pack folder holds seeds {config.get('seeds')}"
    return (NEW, why) if state == DONE else (state, why)


def members_state(pack: Path, members: list[tuple[dict, Path, dict]], expect: dict) -> tuple[str, str, list[int]]:
    """A pack of --member's state and the members it is to train, each member (its record, its run folder, what
    its config.json must hold): done when every member's folder is; resumable when the pack's folder holds a
    last.pt of exactly the members not done yet; else new, for those members (the pack's folder is replaced)."""
    states = [run_state(folder, own) for _, folder, own in members]
    pending = [i for i, (state, _) in enumerate(states) if state != DONE]
    if not pending:
        return DONE, f"{len(states)} members, {states[0][1]}", []
    state, why = run_state(pack, expect)
    recorded = ((read_config(pack) or {}).get("pack") or {}).get("members")
    if state == RESUME and recorded == [members[i][0] for i in pending]:
        return RESUME, why, pending
    done = len(states) - len(pending)
    return NEW, f"{len(pending)} members to train" + (f", {done} done" if done else ""), pending


def run_flag(state: str) -> list[str]:
    """What a run's command adds for its state: continue it, or start it over in a folder that may hold a
    killed attempt's files."""
    return ["--resume"] if state == RESUME else ["--overwrite"]


def log_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "._+-" else "-" for c in text)


class Lanes:
    """Up to `jobs` steps at once, each `python -m labelopt ARGS` with its output in its log; each lane gets its
    share of the cores for torch's threads (unless OMP_NUM_THREADS is set)."""

    def __init__(self, jobs: int, log):
        self.jobs, self.log = jobs, log
        self.env = dict(os.environ)
        if jobs > 1 and "OMP_NUM_THREADS" not in self.env:
            self.env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
        self.running: list[tuple[Step, subprocess.Popen, float]] = []
        self.failed: list[tuple[Step, int]] = []

    def run(self, steps: list[Step]) -> None:
        """Every step not done, `jobs` at a time; stops launching at the first failure and raises once the
        running ones have ended. Ctrl-C stops the running ones (each resumes on the next run)."""
        pending = [s for s in steps if s.state != DONE]
        beat = time.monotonic()
        # A plain kill of the table stops its steps too, as Ctrl-C does (each resumes on the next run).
        previous = signal.signal(signal.SIGTERM, stop_on_term) if is_main_thread() else None
        try:
            while pending or self.running:
                while pending and len(self.running) < self.jobs and not self.failed:
                    self.start(pending.pop(0))
                if not self.running:
                    break
                time.sleep(0.2)
                self.reap()
                if time.monotonic() - beat >= HEARTBEAT_S:
                    beat = time.monotonic()
                    self.heartbeat()
        except BaseException:
            self.stop()
            raise
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        if self.failed:
            raise UserError(failure_line(*self.failed[0]))

    def start(self, step: Step) -> None:
        step.log.parent.mkdir(parents=True, exist_ok=True)
        self.log(f"table: {step.name}: {'continue' if step.state == RESUME else 'start'}, log {step.log}")
        with step.log.open("w") as out:
            out.write(f"+ {step.command()}\n")
            out.flush()
            process = subprocess.Popen([sys.executable, "-m", "labelopt", *step.args], stdout=out,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env)
        self.running.append((step, process, time.monotonic()))

    def reap(self) -> None:
        still = []
        for step, process, started in self.running:
            code = process.poll()
            if code is None:
                still.append((step, process, started))
            elif code == 0:
                self.log(f"table: {step.name}: done in {time.monotonic() - started:.0f} s")
            else:
                self.failed.append((step, code))
                self.log(f"table: {step.name}: FAILED (exit {code}); last lines of {step.log}:")
                for line in last_lines(step.log, 5):
                    self.log(f"  {line}")
        self.running = still

    def heartbeat(self) -> None:
        for step, _, started in self.running:
            tail = [line for line in last_lines(step.log, 5) if not line.startswith(("note:", "+ "))][-1:]
            self.log(f"table: {step.name}: running {time.monotonic() - started:.0f} s"
                     + (f": {tail[0][:160]}" if tail else ""))

    def stop(self) -> None:
        for _, process, _ in self.running:
            if process.poll() is None:
                process.terminate()
        for _, process, _ in self.running:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
        self.running = []


def stop_on_term(signum, frame):
    raise SystemExit(128 + signum)


def is_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def last_lines(path: Path, n: int) -> list[str]:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    # progress bars rewrite one line with carriage returns: keep each line's last state
    lines = [line.rsplit("\r", 1)[-1].strip() for line in text.splitlines()]
    return [line for line in lines if line][-n:]


def failure_line(step: Step, code: int) -> str:
    tail = last_lines(step.log, 1)
    return (f"{step.name} failed (exit {code}){': ' + tail[0] if tail else ''}; its log: {step.log}; after a fix, "
            f"run the same table command again to continue")
