"""Shared, session-wide prepared datasets: each is written once and reused by every test module."""
from pathlib import Path

import pytest

from labelopt.pipeline.data.prepare import prepare
from labelopt.tests.fakes import write_fake_cifar10


def _quiet(_message):
    pass


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory) -> Path:
    """The embedded digits dataset, prepared (1,437 train / 360 test images)."""
    out = tmp_path_factory.mktemp("prepared")
    return prepare("digits", None, out, log=_quiet)


@pytest.fixture(scope="session")
def tiny_cifar_dir(tmp_path_factory) -> Path:
    """A CIFAR-10-format set of 96 train / 40 test random images, prepared: fast to train on."""
    raw = tmp_path_factory.mktemp("raw-cifar10")
    write_fake_cifar10(raw, n_train=96, n_test=40, seed=1)
    out = tmp_path_factory.mktemp("prepared-cifar10")
    return prepare("cifar10", raw, out, log=_quiet)


@pytest.fixture(scope="session")
def tiny_teacher(tiny_cifar_dir, tmp_path_factory) -> Path:
    """A resnet20 trained one epoch on tiny_cifar_dir (its last.pt): the teacher of every module that needs one
    and does not care how good it is. Tests must not write into its run folder."""
    from labelopt.pipeline.run.options import TrainOptions
    from labelopt.pipeline.run.training import train

    out = tmp_path_factory.mktemp("tiny-teacher") / "run"
    train(TrainOptions(data=str(tiny_cifar_dir), arch="resnet20", out=str(out), epochs=1, batch_size=32,
                       device="cpu"), log=_quiet)
    return out / "last.pt"
