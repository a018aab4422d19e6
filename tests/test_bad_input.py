"""Bad input, as a new user types it: one line on stderr, a non-zero exit, no traceback, nothing written.

Two parts: the issue's cases one by one (a table), and a walk over every command's every numeric option with
0, -1, nan, inf and a huge value, which either refuses the value at parse time or, for values in range, runs.
"""
import errno
import math
import os
from pathlib import Path

import click
import pytest
import torch
from click.testing import CliRunner

from labelopt import cli
from labelopt.cli import Number, main
from labelopt.pipeline.jobs.labeling import GenerateOptions, generate_labels
from labelopt.pipeline.limits import BOUNDS
from labelopt.pipeline.run.options import TrainOptions
from labelopt.pipeline.run.train_loop import TrainingDiverged
from labelopt.pipeline.run.training import cross_entropy_objective, train


def quiet(_):
    pass


@pytest.fixture(scope="module")
def teacher(tiny_teacher):
    return tiny_teacher


@pytest.fixture(scope="module")
def store(teacher, tiny_cifar_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("store") / "labels.h5"
    generate_labels(GenerateOptions(data=str(tiny_cifar_dir), out=str(path), teachers=(str(teacher),), logits=True,
                                    device="cpu"), log=quiet)
    return path


@pytest.fixture(scope="module")
def ensemble_store(store, tmp_path_factory):
    path = tmp_path_factory.mktemp("ensemble") / "ens.h5"
    assert CliRunner().invoke(main, ["labels", "combine", str(store), str(store), "--out", str(path)]).exit_code == 0
    return path


@pytest.fixture(scope="module")
def odd_files(teacher, tmp_path_factory):
    """A text file named .pt, a checkpoint whose header lacks the architecture, a file, a folder."""
    root = tmp_path_factory.mktemp("odd")
    (root / "text.pt").write_text("not a checkpoint\n")
    body = torch.load(teacher, weights_only=True)
    body.pop("arch")
    torch.save(body, root / "no-arch.pt")
    (root / "a-file").write_text("x")
    (root / "a-folder").mkdir()
    (root / "a-folder" / "keep.txt").write_text("keep")
    return root


def listing(root: Path) -> dict:
    """Every file under root with its size and mtime: a refused command must leave this unchanged."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def invoke(args):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_line_refusal(result, *, code=None, mentions=None):
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code != 0, result.output
    if code is not None:
        assert result.exit_code == code, result.stderr
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output and "Traceback" not in result.stderr
    assert lines[0].startswith("Error: "), lines[0]
    if mentions:
        assert mentions in lines[0], lines[0]


# -- the cases ------------------------------------------------------------------------

CASES = {
    # name: (argument list with {data}, {teacher}, {store}, {odd}, {out}; exit code; a word the line must hold)
    "inspect bins 0": (["labels", "inspect", "{store}", "--bins", "0"], 2, "--bins"),
    "inspect bins negative": (["labels", "inspect", "{store}", "--bins", "-3"], 2, "--bins"),
    "inspect bins huge": (["labels", "inspect", "{store}", "--bins", "1000000000"], 2, "--bins"),
    "evaluate bins 0": (["evaluate", "{teacher}", "--data", "{data}", "--bins", "0"], 2, "--bins"),
    "evaluate text file": (["evaluate", "{odd}/text.pt", "--data", "{data}"], 1, "not a labelopt checkpoint"),
    "teacher text file": (["generate-labels", "--data", "{data}", "--teacher", "{odd}/text.pt", "--out",
                           "{out}/s.h5"], 1, "not a labelopt checkpoint"),
    "checkpoint without arch": (["evaluate", "{odd}/no-arch.pt", "--data", "{data}"], 1, "arch"),
    "block rows 0": (["generate-labels", "--data", "{data}", "--teacher", "{teacher}", "--out", "{out}/s.h5",
                      "--block-rows", "0"], 2, "--block-rows"),
    "store out is a folder": (["generate-labels", "--data", "{data}", "--teacher", "{teacher}", "--out",
                               "{odd}/a-folder", "--overwrite"], 1, "is a folder"),
    "lr negative": (["train-student", "--student", "resnet20", "--data", "{data}", "--labels", "{store}", "--out",
                     "{out}/r", "--lr", "-1"], 2, "--lr"),
    "label smoothing 2": (["train-student", "--student", "resnet20", "--data", "{data}", "--method", "ls",
                           "--label-smoothing", "2", "--out", "{out}/r"], 2, "--label-smoothing"),
    "student out is a file": (["train-student", "--student", "resnet20", "--data", "{data}", "--labels", "{store}",
                               "--out", "{odd}/a-file"], 1, "is a file"),
    "temperature nan": (["generate-labels", "--data", "{data}", "--teacher", "{teacher}", "--out", "{out}/s.h5",
                         "--temperature", "nan"], 2, "--temperature"),
    "temperature inf": (["generate-labels", "--data", "{data}", "--teacher", "{teacher}", "--out", "{out}/s.h5",
                         "--temperature", "inf"], 2, "--temperature"),
    "lr nan": (["train", "--arch", "resnet20", "--data", "{data}", "--out", "{out}/r", "--lr", "nan"], 2, "--lr"),
    "kd temperature negative": (["train-student", "--student", "resnet20", "--data", "{data}", "--method", "kd",
                                 "--teacher", "{teacher}", "--temperature", "-1", "--out", "{out}/r"], 2,
                                "--temperature"),
    "kd temperature option negative": (["train-student", "--student", "resnet20", "--data", "{data}", "--method",
                                        "kd", "--teacher", "{teacher}", "--method-option", "temperature=-1",
                                        "--out", "{out}/r"], 1, "temperature"),
    "method option nan": (["train-student", "--student", "resnet20", "--data", "{data}", "--method", "kd",
                           "--teacher", "{teacher}", "--method-option", "kd_weight=nan", "--out", "{out}/r"], 2,
                          "--method-option"),
    "workers 0": (["train", "--arch", "resnet20", "--data", "{data}", "--out", "{out}/r", "--workers", "0"], 2,
                  "--workers"),
    "workers negative": (["train", "--arch", "resnet20", "--data", "{data}", "--out", "{out}/r", "--workers",
                          "-2"], 2, "--workers"),
    "gamma negative": (["train", "--arch", "resnet20", "--data", "{data}", "--out", "{out}/r", "--gamma", "-1"], 2,
                       "--gamma"),
    "epochs absurd": (["train", "--arch", "resnet20", "--data", "{data}", "--out", "{out}/r", "--epochs",
                       "99999999999999999999"], 2, "--epochs"),
    "milestones repeated": (["train", "--arch", "resnet20", "--data", "{data}", "--out", "{out}/r", "--epochs", "4",
                             "--milestones", "2,2,3"], 2, "--milestones"),
    "resume with overwrite": (["train", "--arch", "resnet20", "--data", "{data}", "--out", "{teacher_run}",
                               "--resume", "--overwrite", "--epochs", "1", "--batch-size", "32"], 1, "only one"),
    "combine weight nan": (["labels", "combine", "{store}", "{store}", "--out", "{out}/c.h5", "--weights",
                            "1,nan"], 2, "--weights"),
    "ensemble logits": (["generate-labels", "--data", "{data}", "--method", "sl-ens", "--teacher", "{teacher}",
                         "--teacher", "{teacher}", "--logits", "--out", "{out}/s.h5"], 1, "--logits"),
    "kd from an ensemble store": (["train-student", "--student", "resnet20", "--data", "{data}", "--method", "kd",
                                   "--labels", "{ensemble}", "--out", "{out}/r"], 1, "holds soft labels only"),
    "kd from an online ensemble": (["train-student", "--student", "resnet20", "--data", "{data}", "--method", "kd",
                                    "--teacher", "{teacher}", "--teacher", "{teacher}", "--out", "{out}/r"], 1,
                                   "single --teacher"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_reported_case_is_one_line_and_writes_nothing(case, tiny_cifar_dir, teacher, store, ensemble_store,
                                                            odd_files, tmp_path):
    args, code, mentions = CASES[case]
    places = {"data": tiny_cifar_dir, "teacher": teacher, "teacher_run": teacher.parent, "store": store,
              "ensemble": ensemble_store, "odd": odd_files, "out": tmp_path}
    watched = [odd_files, tmp_path, teacher.parent, store.parent]
    before = [listing(p) for p in watched]
    result = invoke([a.format(**places) for a in args])
    assert_one_line_refusal(result, code=code, mentions=mentions)
    assert [listing(p) for p in watched] == before


def test_an_os_error_is_one_line_naming_the_path(monkeypatch, tiny_cifar_dir, tmp_path):
    """A read-only mount or a full disk (injected: root may write anywhere, and CI cannot mount)."""
    def read_only(*_args, **_kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(tmp_path / "s.h5"))

    monkeypatch.setattr("labelopt.pipeline.jobs.labeling.generate_labels", read_only)
    result = invoke(["generate-labels", "--data", tiny_cifar_dir, "--teacher", "x.pt", "--out", tmp_path / "s.h5"])
    assert_one_line_refusal(result, code=1, mentions="read-only")
    assert str(tmp_path / "s.h5") in result.stderr


def test_an_internal_error_is_one_line_with_the_traceback_in_a_log(monkeypatch, tmp_path):
    def broken(*_args, **_kwargs):
        raise ZeroDivisionError("a bug of ours")

    monkeypatch.setenv("LABELOPT_LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.setattr("labelopt.pipeline.jobs.evaluation.evaluate_checkpoints", broken)
    result = invoke(["evaluate", "x.pt", "--data", tmp_path])
    assert_one_line_refusal(result, code=1, mentions="internal error (ZeroDivisionError: a bug of ours)")
    logs = list((tmp_path / "logs").iterdir())
    assert len(logs) == 1 and str(logs[0]) in result.stderr
    assert "Traceback" in logs[0].read_text() and "a bug of ours" in logs[0].read_text()


# -- a NaN loss stops the run -------------------------------------------------------------------

def test_a_loss_that_turns_nan_stops_with_epoch_and_step_and_keeps_the_last_good_checkpoint(tiny_cifar_dir,
                                                                                            tmp_path, monkeypatch):
    calls = {"n": 0}
    real = cross_entropy_objective(0.0)

    def poisoned(label_smoothing):
        def objective(model, inputs, batch, extra=None):
            calls["n"] += 1
            loss, logits, parts = real(model, inputs, batch, extra)
            # 96 images, batch 32: 3 steps an epoch; the 2nd step of the 2nd epoch goes nan.
            return (loss * float("nan") if calls["n"] == 5 else loss), logits, parts
        return objective

    monkeypatch.setattr("labelopt.pipeline.run.training.cross_entropy_objective", poisoned)
    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged) as info:
        train(TrainOptions(data=str(tiny_cifar_dir), arch="resnet20", out=str(out), epochs=3, batch_size=32,
                           device="cpu"), log=quiet)
    message = str(info.value)
    assert "nan at epoch 2/3, step 2/3" in message and f"{out / 'last.pt'} (1 epochs done)" in message
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
    assert all(math.isfinite(v.float().sum().item())
               for v in torch.load(out / "last.pt", weights_only=True)["model"].values())


def test_a_nan_loss_through_the_command_line_is_one_line(tiny_cifar_dir, tmp_path, monkeypatch):
    def always_nan(label_smoothing):
        real = cross_entropy_objective(label_smoothing)

        def objective(model, inputs, batch, extra=None):
            loss, logits, parts = real(model, inputs, batch, extra)
            return loss * float("inf"), logits, parts
        return objective

    monkeypatch.setattr("labelopt.pipeline.run.training.cross_entropy_objective", always_nan)
    result = invoke(["train", "--arch", "resnet20", "--data", tiny_cifar_dir, "--out", tmp_path / "run",
                     "--epochs", "1", "--batch-size", "32", "--device", "cpu"])
    assert_one_line_refusal(result, code=1, mentions="step 1/3")
    assert not (tmp_path / "run" / "last.pt").exists() and not (tmp_path / "run" / "best.pt").exists()


# -- every numeric option of every command -------------------------------------------------------

PROBES = ("0", "-1", "nan", "inf", "99999999999999999999")


def all_commands(group=main, path=()):
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            yield from all_commands(command, path + (name,))
        else:
            yield path + (name,), command


def numeric_options(command):
    return [p for p in command.params if isinstance(p, click.Option) and not p.is_flag
            and isinstance(p.type, (Number, click.types.IntParamType, click.types.FloatParamType))]


def test_every_numeric_option_is_range_checked():
    unchecked = [(" ".join(path), p.opts[0]) for path, command in all_commands() for p in numeric_options(command)
                 if not isinstance(p.type, Number)]
    assert unchecked == []
    names = {p.type.bound_name for _, command in all_commands() for p in numeric_options(command)}
    assert names <= set(BOUNDS)


def base_arguments(path, places):
    """The least each command needs to run for real on the tiny dataset (one short epoch)."""
    run = ["--data", places["data"], "--epochs", "1", "--batch-size", "32", "--device", "cpu", "--out",
           places["out"] / "run"]
    return {
        ("prepare",): ["--dataset", "digits", "--out", places["out"] / "prepared"],
        ("models",): [],
        ("train",): ["--arch", "resnet20", *run],
        ("train-student",): ["--student", "resnet20", "--method", "sl-kd", "--labels", places["store"], *run],
        ("evaluate",): [places["teacher"], "--data", places["data"], "--device", "cpu"],
        ("generate-labels",): ["--data", places["data"], "--teacher", places["teacher"], "--device", "cpu",
                               "--out", places["out"] / "s.h5"],
        ("labels", "inspect"): [places["store"]],
        ("labels", "verify"): [places["store"]],
        ("labels", "combine"): [places["store"], places["store"], "--out", places["out"] / "c.h5"],
        ("table",): ["digits", "--data", places["data"], "--rows", "vanilla", "--out", places["out"] / "t", "--dry-run"],
    }[path]


# In-range values the base invocation cannot take: sl-kd has no label smoothing (refused with one line, tested
# in the table above), and prepare's real run would prepare digits again (its options' probes are all refused).
NOT_WITH_BASE = {("train-student",): ("--label-smoothing",)}


def test_every_command_refuses_bad_numbers_and_runs_with_the_in_range_ones(tiny_cifar_dir, teacher, store,
                                                                           tmp_path):
    """Out-of-range probes: one line, exit 2, nothing written. In-range probes (e.g. --seed 0, --momentum 0):
    all of one command's at once in one real run, which must succeed."""
    checked = 0
    for path, command in all_commands():
        accepted = []
        for option in numeric_options(command):
            flag = max(option.opts, key=len)
            for probe in PROBES:
                value = float(probe) if option.type.bound.kind is float else int(float(probe)) \
                    if math.isfinite(float(probe)) else None
                if value is not None and option.type.bound.accepts(value):
                    if probe != PROBES[-1]:  # a huge value in range (a seed) needs no run of its own
                        accepted.append((flag, probe))
                    continue
                out = tmp_path / f"probe-{checked}"
                out.mkdir()
                places = {"data": tiny_cifar_dir, "teacher": teacher, "store": store, "out": out}
                result = invoke([*path, *base_arguments(path, places), flag, probe])
                assert_one_line_refusal(result, code=2, mentions=flag)
                assert list(out.iterdir()) == [], (path, flag, probe)
                checked += 1
        accepted = [(flag, probe) for flag, probe in accepted if flag not in NOT_WITH_BASE.get(path, ())]
        if accepted and path != ("prepare",):
            out = tmp_path / f"accepted-{'-'.join(path)}"
            out.mkdir()
            places = {"data": tiny_cifar_dir, "teacher": teacher, "store": store, "out": out}
            chosen = dict(accepted)  # one in-range value per flag
            extra = [x for flag, probe in chosen.items() for x in (flag, probe)]
            result = invoke([*path, *base_arguments(path, places), *extra])
            assert result.exit_code == 0, (path, extra, result.stderr)
            assert "Traceback" not in result.stderr
    assert checked > 60


def test_a_block_too_large_for_memory_is_refused_with_a_size_that_fits():
    from labelopt.pipeline.errors import UserError
    from labelopt.pipeline.jobs.labeling import check_block_memory
    from labelopt.store import StoreLayout

    imagenet = StoreLayout(num_samples=1_281_167, num_views=10, num_classes=1000, logits=True)
    with pytest.raises(UserError, match=r"--block-rows 1000000 would hold 74\.5 GiB .* use --block-rows 107374 or"):
        check_block_memory(GenerateOptions(data="d", out="o", block_rows=1_000_000), imagenet)
    check_block_memory(GenerateOptions(data="d", out="o", block_rows=107_374), imagenet)
    huge = StoreLayout(num_samples=10, num_views=10_000, num_classes=100_000, logits=True,
                       features={"embedding": 100_000})  # 11.2 GiB a sample: no --block-rows fits
    with pytest.raises(UserError, match=r"one sample's teacher outputs alone would take 11\.2 GiB .* fewer views"):
        check_block_memory(GenerateOptions(data="d", out="o", block_rows=1), huge)
