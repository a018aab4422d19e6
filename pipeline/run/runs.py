"""Run folders: config.json (every resolved option + provenance), metrics.jsonl, checkpoints."""
from __future__ import annotations

import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path

from ... import __version__
from ..atomic import ensure_writable_dir, write_json_atomic
from ..errors import UserError

TRACKED_PACKAGES = ("torch", "torchvision", "ffcv", "numpy", "h5py", "numba")


def git_commit() -> str:
    """The labelopt source commit, with '+dirty' when the work tree has changes; 'unknown' outside git."""
    here = Path(__file__).resolve().parents[2]  # the package root (the repository)
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                                timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def library_versions() -> dict:
    versions = {"labelopt": __version__, "python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def provenance() -> dict:
    return {"git_commit": git_commit(), "versions": library_versions(), "host": platform.node()}


def prepare_run_dir(out: Path, *, overwrite: bool, resume: bool) -> None:
    """A new run needs an empty or absent folder; --resume needs a run folder with last.pt."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a run folder; pass a folder path (it is created)")
    if resume and overwrite:
        raise UserError("--resume continues a run and --overwrite replaces it: pass only one")
    if out.is_dir():
        remove_stale_temporaries(out)
    if resume:
        if not (out / "last.pt").is_file():
            raise UserError(f"nothing to resume in {out} (no last.pt); drop --resume to start a new run")
        return
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise UserError(f"run folder {out} already exists; pass --overwrite to replace it or --resume to continue it")
        for name in ("config.json", "metrics.jsonl", "last.pt", "best.pt", "best.json", "reliability.png"):
            (out / name).unlink(missing_ok=True)
    ensure_writable_dir(out, "run folder")


def remove_stale_temporaries(out: Path) -> None:
    """`.<name>.tmp-<pid>` files of a killed or failed run (the caller holds the folder's lock)."""
    for stale in out.glob(".*.tmp-*"):
        if stale.is_file():
            stale.unlink(missing_ok=True)


def write_config(out: Path, config: dict) -> None:
    write_json_atomic(out / "config.json", config)


def read_config(out: Path) -> dict:
    try:
        return json.loads((out / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        raise UserError(f"{out}/config.json is missing or unreadable; cannot resume this run") from None


class MetricsLog:
    """One JSON line per epoch. On resume, lines past the checkpoint's epoch are dropped."""

    def __init__(self, path: Path, keep_through_epoch: int | None = None):
        self.path = path
        if keep_through_epoch is None:
            path.write_text("")
        else:
            kept = [line for line in self.read(path) if line["epoch"] <= keep_through_epoch]
            write_json_lines(path, kept)

    @staticmethod
    def read(path: Path) -> list[dict]:
        if not path.is_file():
            return []
        records = []
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:  # a line cut short by a full disk or a kill: that epoch has no checkpoint either
                continue
        return records

    def append(self, record: dict) -> None:
        with self.path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")


def write_json_lines(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
