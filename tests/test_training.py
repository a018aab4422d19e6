"""labelopt train: run folder contents, exact resume, schedules and refusals."""
import json
import math

import pytest
import torch
from click.testing import CliRunner

from labelopt.cli import main
from labelopt.pipeline.errors import UserError
from labelopt.pipeline.run.schedules import Schedule, default_milestones, resolve_milestones
from labelopt.pipeline.run.options import TrainOptions
from labelopt.pipeline.run.training import train
from labelopt.tests.fakes import Crash, crash_after_first_epoch


def options(data, out, **overrides):
    base = dict(data=str(data), arch="resnet20", out=str(out), epochs=3, batch_size=32, lr=0.05, seed=7,
                device="cpu")
    return TrainOptions(**{**base, **overrides})


def quiet(_):
    pass


@pytest.fixture(scope="module")
def finished_run(tiny_cifar_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "full"
    train(options(tiny_cifar_dir, out), log=quiet)
    return out


def test_run_folder_contents(finished_run, tiny_cifar_dir):
    config = json.loads((finished_run / "config.json").read_text())
    assert config["arch"] == "resnet20" and config["epochs"] == 3 and config["augment"] == "cifar-crop-flip"
    assert config["milestones"] == [2]  # 62.5/75/87.5 % of 3 epochs, rounded into the run (1..2), merged
    meta = json.loads((tiny_cifar_dir / "meta.json").read_text())
    assert config["dataset"]["fingerprint"] == meta["splits"]["train"]["fingerprint"]
    assert config["provenance"]["versions"]["torch"] and "git_commit" in config["provenance"]
    assert config["global_batch_size"] == 32 and config["world_size"] == 1
    lines = [json.loads(l) for l in (finished_run / "metrics.jsonl").read_text().splitlines()]
    assert [l["epoch"] for l in lines] == [0, 1, 2]
    assert [l["lr"] for l in lines] == pytest.approx([0.05, 0.05, 0.005])  # one decay, at epoch index 2
    assert {"train_loss", "train_top1", "test_top1", "test_top5", "test_nll", "test_ece", "lr"} <= set(lines[0])
    body = torch.load(finished_run / "last.pt", weights_only=True)
    assert body["format"] == "labelopt.checkpoint" and body["arch"] == "resnet20" and body["num_classes"] == 10
    assert "training" in body
    assert not (finished_run / "best.pt").exists()  # no --val-fraction: nothing chooses a best epoch


def test_resume_after_a_crash_equals_the_uninterrupted_run(finished_run, tiny_cifar_dir, tmp_path):
    out = tmp_path / "crashed"

    with pytest.raises(Crash):
        train(options(tiny_cifar_dir, out), on_epoch_end=crash_after_first_epoch, log=quiet)
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
    train(options(tiny_cifar_dir, out, resume=True), log=quiet)
    full = torch.load(finished_run / "last.pt", weights_only=True)
    resumed = torch.load(out / "last.pt", weights_only=True)
    assert full["epoch"] == resumed["epoch"] == 2
    for key, value in full["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    drop = ("train_seconds", "train_img_per_s")
    strip = lambda path: [{k: v for k, v in json.loads(l).items() if k not in drop}
                          for l in (path / "metrics.jsonl").read_text().splitlines()]
    assert strip(finished_run) == strip(out)


def test_resume_with_other_options_is_refused(finished_run, tiny_cifar_dir):
    with pytest.raises(UserError, match="--resume of .* with other options .*lr"):
        train(options(tiny_cifar_dir, finished_run, resume=True, lr=0.1), log=quiet)


def test_resume_of_a_complete_run_does_nothing(finished_run, tiny_cifar_dir):
    before = (finished_run / "last.pt").read_bytes()
    messages = []
    train(options(tiny_cifar_dir, finished_run, resume=True), log=messages.append)
    assert "already complete" in messages[-1] and (finished_run / "last.pt").read_bytes() == before


def test_schedules():
    step = Schedule("step", 0.05, 240, 10, (150, 180, 210), 0.1)
    assert step.lr(0, 0) == 0.05 and math.isclose(step.lr(150, 0), 0.005) and math.isclose(step.lr(239, 9), 5e-5)
    cosine = Schedule("cosine", 0.1, 10, 4, (), 0.1)
    assert cosine.lr(0, 0) == 0.1 and math.isclose(cosine.lr(5, 0), 0.05) and cosine.lr(9, 3) < 0.001
    assert default_milestones(240) == (150, 180, 210)


@pytest.mark.parametrize("epochs, expected", [(240, (150, 180, 210)), (200, (125, 150, 175)), (15, (9, 11, 13)),
                                              (10, (6, 8, 9)), (4, (2, 3)), (3, (2,)), (2, (1,)), (1, ())])
def test_default_milestones_are_increasing_epochs_inside_the_run(epochs, expected):
    got = default_milestones(epochs)
    assert got == expected
    assert all(0 < m < epochs for m in got) and all(a < b for a, b in zip(got, got[1:]))
    assert resolve_milestones(epochs, None) == got
    if got:  # what config.json records can be passed back as --milestones
        assert resolve_milestones(epochs, got) == got


def run_cli(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


@pytest.mark.parametrize("extra, message", [
    (["--arch", "resnet21"], "Invalid value for '--arch': 'resnet21' is not one of 'resnet20', 'resnet32'"),
    (["--arch", "resnet20", "--bf16", "--device", "cpu"], "--bf16 autocast runs on a GPU only"),
    (["--arch", "resnet20", "--schedule", "linear"], "'linear' is not one of 'step', 'cosine'"),
    (["--arch", "resnet20", "--milestones", "5,2"], "must be strictly increasing"),
    (["--arch", "resnet20", "--batch-size", "1000", "--epochs", "1"], "larger than the training split"),
])
def test_cli_train_bad_input(tiny_cifar_dir, tmp_path, extra, message):
    code, out = run_cli("train", "--data", tiny_cifar_dir, "--out", tmp_path / "run", "--device", "cpu", *extra)
    assert code != 0 and message in out and "Traceback" not in out


def test_cli_train_refuses_an_existing_run(finished_run, tiny_cifar_dir):
    before = (finished_run / "last.pt").read_bytes()
    code, out = run_cli("train", "--data", tiny_cifar_dir, "--arch", "resnet20", "--out", finished_run)
    assert code != 0 and "already exists; pass --overwrite" in out
    assert (finished_run / "last.pt").read_bytes() == before


def test_cli_train_with_label_smoothing_and_cosine(tiny_cifar_dir, tmp_path):
    code, out = run_cli("train", "--data", tiny_cifar_dir, "--arch", "resnet20", "--out", tmp_path / "ls",
                        "--epochs", "1", "--batch-size", "32", "--label-smoothing", "0.1", "--schedule", "cosine",
                        "--seed", "7", "--device", "cpu")
    assert code == 0, out
    config = json.loads((tmp_path / "ls" / "config.json").read_text())
    assert config["label_smoothing"] == 0.1 and config["schedule"] == "cosine"


def test_loader_order_depends_only_on_seed_and_epoch(tiny_cifar_dir):
    from labelopt.pipeline.data.datasets import open_dataset
    from labelopt.pipeline.data.loading import make_loader

    loader = make_loader(open_dataset(tiny_cifar_dir), "train", 32, shuffle=True, seed=7, drop_last=True)
    order = lambda e: torch.cat([i for _, _, i in loader.epoch(e)])
    first_pass = [order(e) for e in range(3)]
    assert not torch.equal(first_pass[0], first_pass[1])
    assert torch.equal(order(1), first_pass[1]) and torch.equal(order(0), first_pass[0])


@pytest.mark.slow
def test_kill_9_then_resume_equals_uninterrupted(digits_dir, tmp_path):
    """A real `labelopt train` process killed with SIGKILL mid-run, then resumed by a new process."""
    import os
    import signal
    import subprocess
    import sys
    import time

    args = ["--data", str(digits_dir), "--arch", "resnet20", "--epochs", "2", "--batch-size", "64", "--seed", "3",
            "--device", "cpu"]
    cmd = [sys.executable, "-m", "labelopt.cli", "train"]
    reference = tmp_path / "reference"
    subprocess.run(cmd + args + ["--out", str(reference)], check=True, capture_output=True)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(cmd + args + ["--out", str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 900  # a loaded 2-core machine can take minutes for the first epoch
    while not (killed / "last.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert torch.load(killed / "last.pt", weights_only=True)["epoch"] == 0, "the run ended before it was killed"
    subprocess.run(cmd + args + ["--out", str(killed), "--resume"], check=True, capture_output=True)
    a = torch.load(reference / "last.pt", weights_only=True)["model"]
    b = torch.load(killed / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_schedule_holds_the_base_lr_through_a_warmup_phase():
    plain = Schedule("step", 0.1, 10, 5, (5, 8), 0.1)
    held = Schedule("step", 0.1, 10, 5, (5, 8), 0.1, hold_epochs=3)
    assert [held.lr(e, 0) for e in range(3)] == [0.1] * 3
    assert [held.lr(e + 3, s) for e in range(10) for s in range(5)] == [plain.lr(e, s) for e in range(10) for s in range(5)]
    cosine = Schedule("cosine", 0.1, 10, 5, (), 0.1, hold_epochs=2)
    assert cosine.lr(1, 4) == 0.1 and cosine.lr(2, 0) == pytest.approx(0.1)
    decayed = Schedule("step", 0.1, 10, 5, (5, 8), 0.1, hold_epochs=4, hold_milestones=(2, 3))
    assert [decayed.lr(e, 0) for e in range(4)] == pytest.approx([0.1, 0.1, 0.01, 0.001])
    assert [decayed.lr(e + 4, 0) for e in range(10)] == [plain.lr(e, 0) for e in range(10)]  # then from the top


@pytest.mark.slow
def test_labelopt_train_imports_no_store_and_no_method(tiny_cifar_dir, tmp_path):
    """`labelopt train` (teachers, baselines) runs without the store (h5py), the methods or the teacher sources:
    a real run in a fresh process, then the modules it had loaded. Of the store package only files.py may load (the
    atomic write of checkpoints and the run folder's lock: no h5py), with the package's lazy __init__."""
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from labelopt.cli import main\n"
        f"main(['train', '--data', {str(tiny_cifar_dir)!r}, '--arch', 'resnet20', '--epochs', '1',\n"
        f"      '--batch-size', '32', '--device', 'cpu', '--out', {str(tmp_path / 'run')!r}],\n"
        "     standalone_mode=False)\n"
        "print('LOADED', *sorted(m for m in sys.modules if m == 'h5py' or m.startswith(\n"
        "    ('labelopt.store', 'labelopt.stages.distillers', 'labelopt.stages.teacher_sources', 'labelopt.stages.labelers'))))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "run" / "last.pt").is_file()
    loaded = next(line for line in done.stdout.splitlines() if line.startswith("LOADED")).split()[1:]
    assert [m for m in loaded if m not in ("labelopt.store", "labelopt.store.files")] == []
