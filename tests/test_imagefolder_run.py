"""An ImageNet-style dataset (an ImageFolder tree: train/ and val/) end to end: the run evaluates on val each epoch
at its --resolution, `evaluate` finds val and that resolution by itself, and a run whose output is not a terminal
prints plain progress lines."""
import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from labelopt.cli import main
from labelopt.pipeline.data.datasets import PreparedDataset
from labelopt.pipeline.data.loading import decode_plan
from labelopt.pipeline.data.prepare import prepare
from labelopt.pipeline.errors import UserError
from labelopt.tests.fakes import write_fake_imagefolder


@pytest.fixture(scope="module")
def imagefolder_dir(tmp_path_factory) -> Path:
    """3 classes, 15 train / 9 val JPEGs of about 40 x 48 pixels, prepared as `imagenet`."""
    raw = write_fake_imagefolder(tmp_path_factory.mktemp("raw-imagenet"), per_class_train=5, per_class_val=3)
    return prepare("imagenet", raw, tmp_path_factory.mktemp("prepared-imagenet"), max_side=64, log=lambda _: None)


def invoke(args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.mark.slow  # about 15 s on 2 cores: FFCV compiles the JPEG tree's training and evaluation loaders
def test_a_run_evaluates_on_val_each_epoch_and_evaluate_finds_val_and_the_resolution(imagefolder_dir, tmp_path,
                                                                                    monkeypatch):
    monkeypatch.setenv("LABELOPT_PROGRESS_SECONDS", "0.000001")  # every update: the run's output is not a terminal
    run = tmp_path / "run"
    done = invoke(["train", "--data", imagefolder_dir, "--arch", "resnet20", "--out", run, "--epochs", "2",
                   "--batch-size", "4", "--resolution", "32", "--device", "cpu"])
    assert done.exit_code == 0, done.output
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["eval_split"] for r in records] == ["val", "val"]
    assert all({"test_top1", "test_top5", "test_nll", "test_ece"} <= set(r) for r in records)
    epoch_lines = [line for line in done.stderr.splitlines() if re.match(r"epoch \d/2  loss", line)]
    assert len(epoch_lines) == 2 and all("  val " in line for line in epoch_lines)
    assert re.search(r"^epoch 1/2: 4/12 img \(33\.3%\), [\d.,]+ img/s, ETA \d+:\d\d:\d\d", done.stderr, re.M)
    assert "\r" not in done.stderr
    # 15 images in batches of 4: one line says 3 are left out each epoch
    assert done.stderr.count("note: each epoch trains on 12 of the 15 training images in full batches of 4") == 1
    config = json.loads((run / "config.json").read_text())
    meta = json.loads((imagefolder_dir / "meta.json").read_text())
    assert config["resolution"] == 32 and config["dataset"]["eval_split"] == "val"
    assert config["dataset"]["test_fingerprint"] == meta["splits"]["val"]["fingerprint"]

    scored = invoke(["evaluate", run / "last.pt", "--data", imagefolder_dir, "--json"])
    assert scored.exit_code == 0, scored.output
    result = json.loads(scored.stdout)
    assert result["dataset"]["split"] == "val" and result["runs"][0]["resolution"] == 32
    # the same model, split and pixels as the run's last evaluation: the same figures
    assert result["runs"][0]["top1"] == pytest.approx(records[-1]["test_top1"])
    assert result["runs"][0]["nll"] == pytest.approx(records[-1]["test_nll"], rel=1e-5)


def jpeg_data(**changes) -> PreparedDataset:
    meta = {"name": "imagenet", "image_shape": None, "splits": {"train": {}, "val": {}}}
    return PreparedDataset(Path("d"), {**meta, **changes})


def test_resolution_scales_the_imagenet_decode_and_crop_pair():
    assert (decode_plan(jpeg_data(), True), decode_plan(jpeg_data(), False)) == (
        ("center", 256, 1.0), ("center", 224, 224 / 256))
    small = jpeg_data().at_resolution(128)
    assert (small.input_size, small.decode_side) == (128, 146)
    assert (decode_plan(small, True), decode_plan(small, False)) == (("center", 146, 1.0), ("center", 128, 128 / 146))


def test_resolution_is_refused_for_fixed_size_images():
    cifar = jpeg_data(name="cifar10", image_shape=[32, 32, 3])
    assert cifar.at_resolution(32) is cifar
    with pytest.raises(UserError, match=r"^--resolution 64: cifar10's images are 32 pixels, fixed when it was "
                                        r"prepared; --resolution applies to datasets of JPEG images \(imagenet\)$"):
        cifar.at_resolution(64)


def test_evaluate_without_a_held_out_split_says_to_pass_split(tmp_path):
    data = tmp_path / "only-train"
    data.mkdir()
    (data / "meta.json").write_text(json.dumps({"format": "labelopt.dataset", "name": "x", "splits": {
        "train": {"file": "train.beton", "num_samples": 1, "fingerprint": "f"}}}))
    done = invoke(["evaluate", tmp_path / "missing.pt", "--data", data])
    assert done.exit_code == 1
    assert done.stderr.strip() == (f"Error: {data} has no held-out split (test or val); it has: train; pass --split")
