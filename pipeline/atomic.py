"""Nothing half-written: outputs appear under their final name only when complete, in folders checked first.

The write itself is store/files.py's (one for every layer); this file adds the pipeline's checks of an output
(--overwrite, a folder it can write) and whole folders written aside and renamed into place."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from ..store.files import write_bytes_atomic
from .errors import UserError


def ensure_writable_dir(path: Path, what: str) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {what} {path}: {exc.strerror}; choose a folder you can write") from None
    if not os.access(path, os.W_OK):
        raise UserError(f"cannot write to {what} {path}: permission denied; choose a folder you can write")


def refuse_existing(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise UserError(f"{path} already exists; pass --overwrite to replace it")


def check_output_file(path: Path, overwrite: bool, what: str) -> None:
    """An output file's path: not a folder, not there unless --overwrite, in a folder we can write."""
    if path.is_dir():
        raise UserError(f"--out {path} is a folder; a {what} is one file: pass a file path such as "
                        f"{path / 'labels.h5'}")
    refuse_existing(path, overwrite)
    ensure_writable_dir(path.parent if str(path.parent) else Path("."), "output folder")


@contextlib.contextmanager
def atomic_directory(final: Path, overwrite: bool):
    """Yield a temporary sibling folder; on success it replaces `final`, on failure it is removed."""
    refuse_existing(final, overwrite)
    ensure_writable_dir(final.parent, "output folder")
    for stale in final.parent.glob(f".{final.name}.tmp-*"):  # a killed run's (the caller holds the lock)
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes 0700; the result should look like any folder
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if final.exists():
        old = final.parent / f".{final.name}.old-{os.getpid()}"
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode(), error=UserError)


def write_json_atomic(path: Path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")
