"""One writer per output: an exclusive lock beside each store, run folder and prepared dataset.

The lock is store/files.py's exclusive_lock on a small file `.<name>.lock` next to the output; this file adds
what the pipeline writes in it (who took it: pid, host, command, time) and the refusal that names that holder.
The kernel drops an flock when its process dies, so a lock left by a killed run is simply taken over; the file's
text only serves to tell a second command who holds the output. Under torchrun the ranks share an output on
purpose: rank 0 takes the lock for all of them.
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import sys
import time
from pathlib import Path

from ..store.files import LockBusy, exclusive_lock, lock_path
from .atomic import ensure_writable_dir
from .errors import UserError


def holder_text(path: Path) -> str:
    try:
        who = json.loads(path.read_text())
        return (f"process {who['pid']} on {who['host']} ({who['command']}, since {who['since']})")
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


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
    with contextlib.ExitStack() as held:
        try:
            fd = held.enter_context(exclusive_lock(path, wait=False))
        except LockBusy:
            raise UserError(f"{what} {output} is in use by {holder_text(path)}; wait for it to finish or stop it, "
                            f"or choose another --out") from None
        except PermissionError:
            raise UserError(f"cannot write beside {output} (permission denied); choose an --out you can write"
                            ) from None
        who = {"pid": os.getpid(), "host": platform.node(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
               "command": "labelopt " + " ".join(command_words())}
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(who).encode())
        yield
