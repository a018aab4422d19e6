"""One writer per output: an exclusive lock beside each store, run folder and prepared dataset.

The lock is an flock on a small file `.<name>.lock` next to the output, holding who took it (pid, host, command,
time). The kernel drops an flock when its process dies, so a lock left by a killed run is simply taken over; the
file's text only serves to tell a second command who holds the output. Under torchrun the ranks share an output on
purpose: rank 0 takes the lock for all of them.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import sys
import time
from pathlib import Path

from .atomic import ensure_writable_dir
from .errors import UserError


def lock_path(output: Path) -> Path:
    return output.parent / f".{output.name}.lock"


def holder_text(path: Path) -> str:
    try:
        who = json.loads(path.read_text())
        return (f"process {who['pid']} on {who['host']} ({who['command']}, since {who['since']})")
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def _acquire(path: Path, what: str, output: Path) -> int:
    """An open descriptor holding the flock of `path`; the file we locked is the one the path names."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UserError(f"{what} {output} is in use by {holder_text(path)}; wait for it to finish or stop it, "
                            f"or choose another --out") from None
        # The holder before us may have removed the file between our open and our flock: then we hold a lock on a
        # file nobody else can see; start again on the path's current file.
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def command_words() -> list[str]:
    """`train`, `labels combine`: the words of the command line before its first option."""
    words = []
    for arg in sys.argv[1:]:
        if arg.startswith("-"):
            break
        words.append(arg)
    return words[:2]


@contextlib.contextmanager
def output_lock(output: Path, what: str, *, enabled: bool = True):
    """Hold the lock of `output` for the block; a second holder is refused with one line naming the first."""
    if not enabled:
        yield
        return
    output = Path(output)
    path = lock_path(output)
    ensure_writable_dir(output.parent, "output folder")
    try:
        fd = _acquire(path, what, output)
    except PermissionError:
        raise UserError(f"cannot write beside {output} (permission denied); choose an --out you can write") from None
    try:
        who = {"pid": os.getpid(), "host": platform.node(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
               "command": "labelopt " + " ".join(command_words())}
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(who).encode())
        yield
    finally:
        # Unlink while still holding the lock, so a waiter that opened the old file notices and starts again.
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)
