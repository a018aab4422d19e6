"""Faults other than a kill: a full disk at each write phase, two writers on one output, stale locks and
temporary files. Each case: one line, exit != 0, nothing half-written, and a rerun with space gives the same
store or weights as an uninterrupted run.

A full disk is injected at the write call (every machine), and made real on a small tmpfs where the tests run as
root and may mount one (skipped with the reason elsewhere).
"""
import errno
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from labelopt.cli import main
from labelopt.store import files as store_files
from labelopt.store import writer as store_writer


@pytest.fixture(scope="module")
def teacher(tiny_teacher):
    return tiny_teacher


def generate_args(data, teacher, out):
    # 96 training images in blocks of 32: three block files, then the assembly.
    return ["generate-labels", "--data", str(data), "--teacher", str(teacher), "--out", str(out), "--logits",
            "--block-rows", "32", "--device", "cpu"]


@pytest.fixture(scope="module")
def reference_store(tiny_cifar_dir, teacher, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "labels.h5"
    result = CliRunner().invoke(main, generate_args(tiny_cifar_dir, teacher, out))
    assert result.exit_code == 0, result.stderr
    return out


def store_content(path: Path) -> dict:
    """Every dataset's bytes and every attribute but the creation time and the digest that covers it."""
    content = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: content.__setitem__(name, obj[()].tobytes())
                     if isinstance(obj, h5py.Dataset) else None)
        for key, value in f.attrs.items():
            if key not in ("created_utc", "digest"):
                content[f"@{key}"] = value
    return content


def leftovers(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if ".tmp-" in p.name or p.name.endswith(".lock"))


def one_line(result, *, mentions: str):
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 1, result.stderr
    assert len(lines) == 1 and mentions in lines[0], result.stderr
    assert "Traceback" not in result.stderr


class FullDiskFile:
    """A file that takes a few bytes, then fails as a full disk does (leaving its partial bytes on disk)."""

    def __init__(self, path, mode):
        self.inner = open(path, mode)

    def write(self, data):
        self.inner.write(bytes(data[:100]))
        self.inner.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.inner.close()


def full_disk_for(module, fragment: str, monkeypatch):
    """Writes through `module`'s open() to a path containing `fragment` fail with ENOSPC."""
    def fake_open(path, mode="r", *args, **kwargs):
        if fragment in str(path) and "w" in mode:
            return FullDiskFile(path, mode)
        return open(path, mode, *args, **kwargs)

    monkeypatch.setattr(module, "open", fake_open, raising=False)


# -- disk full, injected -----------------------------------------------------------------------

@pytest.mark.slow
def test_disk_full_while_writing_a_block_then_a_rerun_finishes_the_same_store(tiny_cifar_dir, teacher,
                                                                               reference_store, tmp_path,
                                                                               monkeypatch):
    out = tmp_path / "labels.h5"
    full_disk_for(store_files, "block-000001", monkeypatch)
    one_line(CliRunner().invoke(main, generate_args(tiny_cifar_dir, teacher, out)), mentions="disk full writing")
    assert not out.exists() and leftovers(tmp_path) == []
    assert sorted(p.name for p in (tmp_path / ".labels.h5.partial").glob("block-*")) == ["block-000000.npz"]
    monkeypatch.undo()
    result = CliRunner().invoke(main, generate_args(tiny_cifar_dir, teacher, out))
    assert result.exit_code == 0, result.stderr
    assert store_content(out) == store_content(reference_store) and leftovers(tmp_path) == []


def test_disk_full_while_assembling_keeps_the_blocks_and_a_rerun_finishes(tiny_cifar_dir, teacher, reference_store,
                                                                          tmp_path, monkeypatch):
    out = tmp_path / "labels.h5"
    real = store_writer.StoreWriter._assemble

    def assemble_then_fill(self, tmp):
        real(self, tmp)  # the file is complete on disk, then the disk is full as h5py reports it
        raise RuntimeError("Unable to flush raw data (file write failed: errno = 28, error message = 'No space "
                           "left on device')")

    monkeypatch.setattr(store_writer.StoreWriter, "_assemble", assemble_then_fill)
    one_line(CliRunner().invoke(main, generate_args(tiny_cifar_dir, teacher, out)),
             mentions="disk full while assembling")
    assert not out.exists() and leftovers(tmp_path) == []
    assert len(list((tmp_path / ".labels.h5.partial").glob("block-*"))) == 3
    monkeypatch.undo()
    result = CliRunner().invoke(main, generate_args(tiny_cifar_dir, teacher, out))
    assert result.exit_code == 0 and "resuming, 0 of 3 blocks left" in result.stderr
    assert store_content(out) == store_content(reference_store) and leftovers(tmp_path) == []


def student_args(data, out, *extra):
    return ["train", "--arch", "resnet20", "--data", str(data), "--out", str(out), "--epochs", "2",
            "--batch-size", "32", "--device", "cpu", *extra]


@pytest.mark.slow
def test_disk_full_while_saving_best_pt_leaves_a_resumable_run(tiny_cifar_dir, tmp_path, monkeypatch):
    # best.pt is chosen on a validation split, and only with one; 86 images stay, in full batches of 43
    held = ("--val-fraction", "0.1", "--batch-size", "43")
    reference = tmp_path / "reference"
    assert CliRunner().invoke(main, student_args(tiny_cifar_dir, reference, *held)).exit_code == 0
    out = tmp_path / "run"
    full_disk_for(store_files, "best.pt", monkeypatch)
    one_line(CliRunner().invoke(main, student_args(tiny_cifar_dir, out, *held)), mentions="disk full writing")
    assert (out / "last.pt").is_file() and not (out / "best.pt").exists() and leftovers(tmp_path) == []
    monkeypatch.undo()
    result = CliRunner().invoke(main, student_args(tiny_cifar_dir, out, *held, "--resume"))
    assert result.exit_code == 0, result.stderr
    assert (out / "best.json").read_text() == (reference / "best.json").read_text()
    for name in ("last.pt", "best.pt"):
        ours, theirs = (torch.load(p / name, weights_only=True) for p in (out, reference))
        assert ours["epoch"] == theirs["epoch"]
        assert all(torch.equal(ours["model"][k], theirs["model"][k]) for k in theirs["model"])


def test_a_failed_config_write_leaves_no_temporary(tiny_cifar_dir, tmp_path, monkeypatch):
    full_disk_for(store_files, "config.json", monkeypatch)
    one_line(CliRunner().invoke(main, student_args(tiny_cifar_dir, tmp_path / "run")), mentions="disk full writing")
    assert leftovers(tmp_path) == []


# -- disk full, real (tmpfs) -----------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """An 8 MiB tmpfs, or a skip saying why there is none."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a real full disk needs root to mount a tmpfs; the injected ENOSPC tests cover the code paths")
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({made.stderr.decode().strip()[:80]})")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def fill(disk: Path, leave_bytes: int) -> Path:
    filler = disk / "filler"
    free = shutil.disk_usage(disk).free
    filler.write_bytes(b"\0" * max(0, free - leave_bytes))
    return filler


def test_real_full_disk_refuses_a_store_early_with_the_figures(tiny_cifar_dir, teacher, small_disk):
    fill(small_disk, 64 * 1024)
    result = CliRunner().invoke(main, generate_args(tiny_cifar_dir, teacher, small_disk / "labels.h5"))
    one_line(result, mentions="not enough space for label store labels.h5")
    assert "MiB free" in result.stderr and sorted(p.name for p in small_disk.iterdir()) == ["filler"]


def test_real_full_disk_during_train_then_resume_with_space(tiny_cifar_dir, small_disk, tmp_path):
    """resnet20's last.pt (weights + momentum) is ~2.2 MB and best.pt ~1.1 MB: 3 MB hold the first, not both."""
    held = ("--val-fraction", "0.1", "--batch-size", "43")  # a validation split, so a best.pt; full batches
    reference = tmp_path / "reference"
    assert CliRunner().invoke(main, student_args(tiny_cifar_dir, reference, *held)).exit_code == 0
    filler = fill(small_disk, 3 * 2 ** 20)
    out = small_disk / "run"
    one_line(CliRunner().invoke(main, student_args(tiny_cifar_dir, out, *held)), mentions="disk full writing")
    assert (out / "last.pt").is_file() and leftovers(small_disk) == []
    filler.unlink()
    result = CliRunner().invoke(main, student_args(tiny_cifar_dir, out, *held, "--resume"))
    assert result.exit_code == 0, result.stderr
    ours, theirs = (torch.load(p / "last.pt", weights_only=True) for p in (out, reference))
    assert all(torch.equal(ours["model"][k], theirs["model"][k]) for k in theirs["model"])
    assert (out / "best.pt").is_file() and leftovers(small_disk) == []


# -- two writers, stale locks, stale temporaries ------------------------------------------------------

HOLD = """
import sys, time
from pathlib import Path
from labelopt.pipeline.locks import output_lock
with output_lock(Path(sys.argv[1]), "test"):
    print("held", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def holder():
    """Start a second process that holds the lock of an output; killed (-9) at the end."""
    procs = []

    def start(output: Path) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", HOLD, str(output)], stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout.readline().strip() == "held"
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def test_a_second_writer_is_refused_naming_the_holder_then_a_dead_holders_lock_is_taken_over(
        tiny_cifar_dir, teacher, reference_store, tmp_path, holder):
    out = tmp_path / "labels.h5"
    proc = holder(out)
    result = CliRunner().invoke(main, generate_args(tiny_cifar_dir, teacher, out))
    one_line(result, mentions=f"is in use by process {proc.pid}")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".labels.h5.lock"]
    proc.send_signal(signal.SIGKILL)  # its lock file stays, its flock goes with it
    proc.wait()
    assert (tmp_path / ".labels.h5.lock").exists()
    result = CliRunner().invoke(main, generate_args(tiny_cifar_dir, teacher, out))
    assert result.exit_code == 0, result.stderr
    assert store_content(out) == store_content(reference_store) and leftovers(tmp_path) == []


@pytest.mark.parametrize("command", ["train", "prepare", "combine"])
def test_every_writer_takes_its_outputs_lock(command, tiny_cifar_dir, reference_store, tmp_path, holder):
    args, output = {
        "train": (student_args(tiny_cifar_dir, tmp_path / "run"), tmp_path / "run"),
        "prepare": (["prepare", "--dataset", "digits", "--out", str(tmp_path)], tmp_path / "digits"),
        "combine": (["labels", "combine", str(reference_store), str(reference_store), "--out",
                     str(tmp_path / "c.h5")], tmp_path / "c.h5"),
    }[command]
    proc = holder(output)
    one_line(CliRunner().invoke(main, args), mentions=f"is in use by process {proc.pid}")
    assert not output.exists()


def test_stale_temporaries_of_a_killed_run_are_cleaned_by_the_next(tiny_cifar_dir, teacher, reference_store,
                                                                   tmp_path):
    out = tmp_path / "labels.h5"
    partial = tmp_path / ".labels.h5.partial"
    partial.mkdir()
    (partial / ".block-000002.npz.tmp-99999").write_bytes(b"half a block")
    (tmp_path / ".labels.h5.tmp-99999.h5").write_bytes(b"half a store")
    result = CliRunner().invoke(main, generate_args(tiny_cifar_dir, teacher, out))
    assert result.exit_code == 0, result.stderr
    assert store_content(out) == store_content(reference_store) and leftovers(tmp_path) == []

    run = tmp_path / "run"
    run.mkdir()
    (run / ".last.pt.tmp-99999").write_bytes(b"half a checkpoint")
    assert CliRunner().invoke(main, student_args(tiny_cifar_dir, run, "--epochs", "1")).exit_code == 0
    assert leftovers(tmp_path) == [] and (run / "last.pt").is_file()
    assert np.isfinite(torch.load(run / "last.pt", weights_only=True)["metrics"]["train_loss"])


def test_the_one_lock_refuses_a_second_holder_and_hands_a_waiter_the_paths_new_file(tmp_path):
    """store/files.py's exclusive_lock, under every lock of labelopt: a holder that does not wait is refused; a
    waiter blocked on the file its holder removes on release starts again on the path's new file."""
    import threading

    from labelopt.store.files import LockBusy, exclusive_lock

    path = tmp_path / ".out.lock"
    waited = {}

    def waiter():
        with exclusive_lock(path) as fd:
            waited["same file"] = os.fstat(fd).st_ino == os.stat(path).st_ino

    with exclusive_lock(path):
        with pytest.raises(LockBusy), exclusive_lock(path, wait=False):
            pass
        thread = threading.Thread(target=waiter)
        thread.start()
        thread.join(timeout=0.5)
        assert thread.is_alive()  # blocked behind us
    thread.join(timeout=10)
    assert waited == {"same file": True} and not path.exists()
