"""--val-fraction: a validation split held out of the training split chooses best.pt; the test split never does.
The split is stratified, fixed by (data, fraction), never drawn by training, recorded in config.json; without it
a run writes no best.pt; a resumed run with it is the uninterrupted run bit for bit."""
import json
from collections import Counter

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from labelopt.cli import main
from labelopt.pipeline.data.datasets import open_dataset
from labelopt.pipeline.data.holdout import HOLDOUT_SEED, class_share, hold_out, indices_digest, stratified_holdout
from labelopt.pipeline.data.loading import SplitLoader
from labelopt.pipeline.errors import UserError
from labelopt.pipeline.run import train_loop
from labelopt.pipeline.run.options import TrainOptions
from labelopt.pipeline.run.training import train
from labelopt.tests.fakes import Crash, crash_after_first_epoch


def quiet(_):
    pass


def options(data, out, **overrides):
    base = dict(data=str(data), arch="resnet20", out=str(out), epochs=3, batch_size=32, seed=7, device="cpu",
                val_fraction=0.1)
    return TrainOptions(**{**base, **overrides})


def lines_of(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def held_run(tiny_cifar_dir, tmp_path_factory):
    """A 3-epoch run with --val-fraction 0.1, and the sample indices its training batches drew, per epoch."""
    drawn: list[list[int]] = []
    real = SplitLoader.host_batches

    def recording(self, epoch, **kwargs):
        training = self.loader.drop_last  # the training loader drops its partial batch; evaluation's never do
        if training:
            drawn.append([])
        for batch in real(self, epoch, **kwargs):
            if training:
                drawn[-1].extend(batch[2].tolist())
            yield batch

    out = tmp_path_factory.mktemp("val-runs") / "full"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SplitLoader, "host_batches", recording)
        train(options(tiny_cifar_dir, out), log=quiet)
    return out, drawn


def test_the_split_is_stratified_and_a_function_of_labels_and_fraction():
    labels = np.repeat(np.arange(5), [40, 21, 9, 2, 1])
    held = stratified_holdout(labels, 0.1)
    assert np.array_equal(held, stratified_holdout(labels, 0.1)) and np.array_equal(held, np.sort(held))
    per_class = Counter(labels[held].tolist())
    # 10 % of each class, rounded, at least one; a class of one stays whole in training
    assert per_class == {0: 4, 1: 2, 2: 1, 3: 1}
    assert [class_share(n, 0.1) for n in (40, 21, 9, 2, 1)] == [4, 2, 1, 1, 0]
    assert not np.array_equal(held, stratified_holdout(labels, 0.1, seed=HOLDOUT_SEED + 1))
    assert len(stratified_holdout(labels, 0.3)) == 12 + 6 + 3 + 1
    # the labels' order is the index order: shuffling them draws other images, still stratified
    shuffled = np.random.default_rng(0).permutation(labels)
    assert Counter(shuffled[stratified_holdout(shuffled, 0.1)].tolist()) == per_class


def test_a_datasets_split_is_the_same_every_time_and_disjoint_from_training(tiny_cifar_dir):
    data = open_dataset(tiny_cifar_dir)
    split = hold_out(data, 0.1)
    assert hold_out(data, 0.0) is None
    labels = data.labels("train")
    assert split.held.size == 10 and split.kept.size == 86  # one image of each of the 10 classes
    assert sorted(Counter(labels[split.held.astype(np.int64)].tolist()).values()) == [1] * 10
    assert np.intersect1d(split.held, split.kept).size == 0
    assert np.array_equal(np.union1d(split.held, split.kept), np.arange(96))
    assert np.array_equal(split.held, stratified_holdout(labels, 0.1))  # the fixed seed, not a run's


def test_training_never_draws_a_held_out_image(held_run, tiny_cifar_dir):
    _, drawn = held_run
    split = hold_out(open_dataset(tiny_cifar_dir), 0.1)
    assert len(drawn) == 3
    for epoch in drawn:
        assert len(epoch) == 64 and len(set(epoch)) == 64  # 86 images, full batches of 32
        assert not set(epoch) & set(split.held.tolist()) and set(epoch) <= set(split.kept.tolist())
    assert drawn[0] != drawn[1]  # each epoch its own order of the kept images


def test_config_records_the_split_and_metrics_score_it_each_epoch(held_run, tiny_cifar_dir):
    out, _ = held_run
    config = json.loads((out / "config.json").read_text())
    split = hold_out(open_dataset(tiny_cifar_dir), 0.1)
    assert config["val_fraction"] == 0.1
    assert config["validation"] == {"fraction": 0.1, "seed": HOLDOUT_SEED, "count": 10, "train_count": 86,
                                    "sha256": indices_digest(split.held), "selected_on": "val"}
    assert len(config["validation"]["sha256"]) == 16
    for line in lines_of(out):
        assert {"val_top1", "val_top5", "val_nll", "val_ece", "test_top1", "test_nll"} <= set(line)
        assert line["val_top1"] in {10.0 * k for k in range(11)}  # 10 images


def test_best_pt_is_the_first_epoch_of_highest_validation_top1(held_run):
    out, _ = held_run
    lines = lines_of(out)
    top = max(line["val_top1"] for line in lines)
    epoch = next(line["epoch"] for line in lines if line["val_top1"] == top)
    best = torch.load(out / "best.pt", weights_only=True)
    assert best["epoch"] == epoch and best["selected_on"] == "val" and best["metrics"]["val_top1"] == top
    assert json.loads((out / "best.json").read_text()) == {"top1": top, "epoch": epoch, "selected_on": "val"}


def test_best_follows_validation_not_test(tiny_cifar_dir, tmp_path, monkeypatch):
    """Scores made to disagree: validation peaks at epoch 1, test at epoch 2; best.pt is epoch 1."""
    val, test = [20.0, 50.0, 30.0], [60.0, 10.0, 90.0]

    def scored(run, record, loader, prefix, name):
        record[f"{prefix}_top1"] = (val if prefix == "val" else test)[record["epoch"]]
        record.update({f"{prefix}_{k}": 0.0 for k in ("top5", "nll", "ece")})
    monkeypatch.setattr(train_loop, "score_split", scored)
    out = tmp_path / "run"
    train(options(tiny_cifar_dir, out), log=quiet)
    assert torch.load(out / "best.pt", weights_only=True)["epoch"] == 1
    assert json.loads((out / "best.json").read_text())["epoch"] == 1


def test_without_a_validation_split_there_is_no_best_pt(tiny_cifar_dir, tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", "--data", str(tiny_cifar_dir), "--arch", "resnet20", "--out",
                                       str(out), "--epochs", "1", "--batch-size", "32", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "last.pt", "metrics.jsonl"]
    assert "(config.json, metrics.jsonl, last.pt)" in result.stdout
    config = json.loads((out / "config.json").read_text())
    assert config["val_fraction"] == 0.0 and config["validation"] is None
    line = lines_of(out)[0]
    assert "test_top1" in line and not any(k.startswith("val_") for k in line)
    assert torch.load(out / "last.pt", weights_only=True)["training"]["best"]["epoch"] == -1


@pytest.mark.parametrize("value", ["-0.1", "nan", "inf", "0.5", "0.9", "many"])
def test_bad_fractions_are_refused_in_one_line(tiny_cifar_dir, tmp_path, value):
    result = CliRunner().invoke(main, ["train", "--data", str(tiny_cifar_dir), "--arch", "resnet20", "--out",
                                       str(tmp_path / "run"), "--val-fraction", value])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and "--val-fraction" in lines[0], result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "run").exists()


def test_bad_fractions_are_refused_by_the_library_and_in_a_recipe(tiny_cifar_dir, tmp_path):
    with pytest.raises(UserError, match=r"--val-fraction 0.5 is out of range: pass a finite number in \[0, 0.5\)"):
        train(options(tiny_cifar_dir, tmp_path / "run", val_fraction=0.5), log=quiet)
    recipe = tmp_path / "r.toml"
    recipe.write_text("val_fraction = -1.0\n")
    result = CliRunner().invoke(main, ["train", "--config", str(recipe), "--data", str(tiny_cifar_dir), "--arch",
                                       "resnet20", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "val_fraction" in result.stderr and "out of range" in result.stderr


def test_a_runs_config_json_gives_back_its_fraction(held_run, tmp_path, monkeypatch):
    import labelopt.pipeline.run.training as training

    seen = []
    monkeypatch.setattr(training, "train", lambda opts, **_: seen.append(opts) or opts.out)
    result = CliRunner().invoke(main, ["train", "--config", str(held_run[0] / "config.json"), "--out",
                                       str(tmp_path / "again")])
    assert result.exit_code == 0, result.output
    assert seen[-1].val_fraction == 0.1 and seen[-1].epochs == 3


def test_resume_with_a_validation_split_equals_the_uninterrupted_run(held_run, tiny_cifar_dir, tmp_path):
    full, _ = held_run
    out = tmp_path / "crashed"

    with pytest.raises(Crash):
        train(options(tiny_cifar_dir, out), on_epoch_end=crash_after_first_epoch, log=quiet)
    with pytest.raises(UserError, match="val_fraction: 0.1 -> 0.2"):
        train(options(tiny_cifar_dir, out, resume=True, val_fraction=0.2), log=quiet)
    train(options(tiny_cifar_dir, out, resume=True), log=quiet)
    for name in ("last.pt", "best.pt"):
        a, b = (torch.load(run / name, weights_only=True) for run in (full, out))
        assert a["epoch"] == b["epoch"] and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    drop = ("train_seconds", "train_img_per_s")
    strip = lambda run: [{k: v for k, v in line.items() if k not in drop} for line in lines_of(run)]
    assert strip(full) == strip(out)
    assert (full / "best.json").read_text() == (out / "best.json").read_text()
