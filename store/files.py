"""Files on disk, for every layer: the atomic write, free space, and the exclusive lock beside an output.

It imports nothing of labelopt (nor h5py), so the pipeline and `labelopt train` use it without loading the store:
each caller names the error type of its own layer (`error=StoreError` in the store, `error=UserError` in the
pipeline), and the message is the same one line either way.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
from pathlib import Path

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def write_bytes_atomic(target: Path, data, *, error: type[Exception], then: str = "run the command again") -> None:
    """`data` under `target`'s name only when wholly written; a disk-full failure is one line ending in `then`."""
    # Unique temp name per process: two ranks writing the same file never share a temp.
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException as exc:  # a full disk or a kill: no half-written temporary stays behind
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError) and exc.errno in NO_SPACE:
            raise error(f"disk full writing {target} ({len(data) / 2**20:.1f} MiB; "
                        f"{free_mib(target.parent):.1f} MiB free there); free space and {then}") from None
        raise


def free_mib(folder: Path) -> float:
    try:
        return shutil.disk_usage(folder).free / 2 ** 20
    except OSError:
        return float("nan")


def check_free_space(folder: Path, need: int, what: str, *, error: type[Exception]) -> None:
    """Refuse early, with the figures, when `folder` cannot hold `need` bytes (+1 % and 1 MiB of slack)."""
    free = shutil.disk_usage(folder).free
    if free < need * 1.01 + 2 ** 20:
        raise error(f"not enough space for {what} in {folder}: needs about {need / 2**20:.1f} MiB, "
                    f"{free / 2**20:.1f} MiB free; free space or choose another --out")


def is_disk_full(exc: BaseException) -> bool:
    """Whether a failed write ran out of space; h5py reports one as OSError or RuntimeError with errno in its text."""
    return (getattr(exc, "errno", None) in NO_SPACE or "errno = 28" in str(exc) or "No space left" in str(exc))


# -- the lock ---------------------------------------------------------------------------------------------------

class LockBusy(Exception):
    """Another process holds the lock (raised only by a lock that does not wait)."""


def lock_path(target: Path) -> Path:
    """The lock file of an output: `.<name>.lock` beside it."""
    return target.parent / f".{target.name}.lock"


@contextlib.contextmanager
def exclusive_lock(path: Path, *, wait: bool = True):
    """Hold the flock of the lock file `path` for the block and yield its open descriptor (where a holder may write
    who it is). wait=False: raise LockBusy at once when another process holds it.

    The kernel drops an flock when its process dies, so a lock left by a killed process is simply taken over. The
    file is removed on release, while still held: a waiter that opened it meanwhile sees that and starts again on
    the path's new file, so no lock files pile up and no two processes ever hold locks on two files of one path."""
    fd = _acquire(path, wait)
    try:
        yield fd
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)  # closing the descriptor releases the lock


def _acquire(path: Path, wait: bool) -> int:
    """An open descriptor holding the flock of `path`; the file we locked is the one the path names."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BaseException as exc:
            os.close(fd)
            if isinstance(exc, BlockingIOError):
                raise LockBusy(str(path)) from None
            raise
        # The holder before us may have removed the file between our open and our flock: then we hold a lock on a
        # file nobody else can see; start again on the path's current file.
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)
