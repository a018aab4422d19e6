"""What a new user meets first: a label store passed where a checkpoint goes, the methods table, the top-level
help, the note about the dropped partial batch."""
import re
from types import SimpleNamespace

import h5py
import pytest
from click.testing import CliRunner

from labelopt.cli import SHORT_HELP, main
from labelopt.pipeline.run.train_setup import dropped_note


def one_error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


@pytest.fixture
def store_file(tmp_path):
    """An HDF5 file where a checkpoint is expected (a label store's format)."""
    path = tmp_path / "labels.h5"
    with h5py.File(path, "w") as f:
        f["labels"] = [0, 1]
    return path


@pytest.mark.parametrize("command", [
    ["train-student", "--student", "resnet20", "--method", "kd", "--epochs", "1", "--device", "cpu"],
    ["generate-labels", "--device", "cpu"],
    ["evaluate", "--device", "cpu"],
], ids=["train-student", "generate-labels", "evaluate"])
def test_a_label_store_given_as_a_checkpoint_is_named_as_one(command, store_file, tiny_cifar_dir, tmp_path):
    args = [*command, "--data", str(tiny_cifar_dir)]
    if command[0] == "evaluate":
        args.insert(1, str(store_file))
    else:
        args += ["--teacher", str(store_file), "--out", str(tmp_path / "out.h5")]
    line = one_error_line(CliRunner().invoke(main, args))
    assert line == (f"Error: {store_file} is a label store (an HDF5 file), not a model checkpoint: pass it as "
                    f"--labels (train-student); a teacher is a run's last.pt or best.pt")
    assert not (tmp_path / "out.h5").exists()


def test_a_file_torch_refuses_is_one_whole_reason_not_torchs_advice(tiny_cifar_dir, tmp_path):
    path = tmp_path / "noise.pt"
    path.write_bytes(bytes(range(256)) * 8)
    line = one_error_line(CliRunner().invoke(main, ["evaluate", str(path), "--data", str(tiny_cifar_dir)]))
    assert line.startswith(f"Error: {path} is not a labelopt checkpoint (it does not load as plain tensors: ")
    assert line.endswith(")") and "Re-running" not in line and "weights_only" not in line


@pytest.mark.parametrize("columns", [80, 100, 140])
def test_methods_fits_the_terminal_and_keeps_every_methods_loss(columns, monkeypatch):
    monkeypatch.setenv("COLUMNS", str(columns))
    result = CliRunner().invoke(main, ["methods"])
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert max(len(line) for line in lines) <= columns
    text = " ".join(" ".join(lines).split())
    for method in ("vanilla", "sl-kd", "crd+kd", "kdss"):
        assert re.search(rf"(^| ){re.escape(method)} ", text), method
    assert "defaults: ce_weight=0.1, kd_weight=0.9, temperature=4 loss: ce_weight * CE + kd_weight" in text  # kd


def test_the_top_level_help_names_every_command_whole_and_every_store_tool():
    runner = CliRunner()
    top = runner.invoke(main, ["--help"]).output
    assert "Stores: labels inspect, verify, card, combine, repack" in top
    for listing in (top, runner.invoke(main, ["labels", "--help"]).output):  # no line cut short with "..."
        assert "..." not in listing.split("Commands:")[1]
    named = {name for name in main.commands} | {f"labels {name}" for name in main.commands["labels"].commands}
    assert named == set(SHORT_HELP)  # a new command gets its line too
    for path, text in SHORT_HELP.items():
        group = runner.invoke(main, [*path.split()[:-1], "--help"]).output
        assert " ".join(text.split()) in " ".join(group.split()), path


def loader(images: int, batch: int, drop_last: bool = True):
    return SimpleNamespace(num_images=lambda: images - images % batch if drop_last else images)


def test_a_dropped_partial_batch_is_said_once_with_its_size():
    assert dropped_note(loader(1437, 64), 1437, 64, 1) == (
        "note: each epoch trains on 1,408 of the 1,437 training images in full batches of 64; the rest (29, "
        "different images each epoch) is dropped as a partial batch")
    assert dropped_note(loader(1408, 64), 1408, 64, 1) is None
    assert "full batches of 64 x 2 processes" in dropped_note(loader(700, 64), 1437, 64, 2)
