"""Store files on disk: written atomically, and refused early (with the figures) where the disk cannot hold them.

(pipeline/atomic.py has the training side's twin: the store imports nothing of pipeline, and `labelopt train`
should not import the store.)"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path

from .schema import StoreError


def write_bytes_atomic(target: Path, data, *, then: str = "rerun the same command: finished blocks are kept") -> None:
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
            raise StoreError(f"disk full writing {target} ({len(data) / 2**20:.1f} MiB; "
                             f"{free_mib(target.parent):.1f} MiB free there); free space and {then}") from None
        raise


NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def free_mib(folder: Path) -> float:
    try:
        return shutil.disk_usage(folder).free / 2 ** 20
    except OSError:
        return float("nan")


def check_free_space(folder: Path, need: int, what: str) -> None:
    """Refuse early, with the figures, when `folder` cannot hold `need` bytes (+1 % and 1 MiB of slack)."""
    free = shutil.disk_usage(folder).free
    if free < need * 1.01 + 2 ** 20:
        raise StoreError(f"not enough space for {what} in {folder}: needs about {need / 2**20:.1f} MiB, "
                         f"{free / 2**20:.1f} MiB free; free space or choose another --out")


def is_disk_full(exc: BaseException) -> bool:
    """Whether a failed write ran out of space; h5py reports one as OSError or RuntimeError with errno in its text."""
    return (getattr(exc, "errno", None) in NO_SPACE or "errno = 28" in str(exc) or "No space left" in str(exc))
