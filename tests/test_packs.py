"""train-student --seeds: a pack of students, one per seed, trained in one pass as one grouped network. Each member
trains as a run of its seed alone with the pack's data order (bit for bit with the native convolution), its run
folder is an ordinary one, and the pack resumes exactly."""
import json

import pytest
import torch
from click.testing import CliRunner

from labelopt.cli import main
from labelopt.pipeline.errors import UserError
from labelopt.pipeline.jobs.labeling import GenerateOptions, generate_labels
from labelopt.pipeline.jobs.student import StudentOptions, train_student

pytestmark = pytest.mark.slow


class Crash(Exception):
    pass


def quiet(_):
    pass


@pytest.fixture(scope="module")
def identity_store(tiny_teacher, tiny_cifar_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("pack-store") / "identity.h5"
    generate_labels(GenerateOptions(data=str(tiny_cifar_dir), out=str(out), teachers=(str(tiny_teacher),),
                                    views="identity", temperature=4.0, device="cpu"), log=quiet)
    return out


def options(data, out, store, **overrides):
    base = dict(data=str(data), arch="resnet20", out=str(out), epochs=2, batch_size=32, device="cpu", method="sl",
                labels=str(store))
    return StudentOptions(**{**base, **overrides})


def weights(path):
    return torch.load(path, weights_only=True)["model"]


def test_each_member_trains_as_a_run_of_its_seed_alone_with_the_packs_data_order(tiny_cifar_dir, identity_store,
                                                                                   tmp_path):
    with torch.backends.mkldnn.flags(enabled=False):  # the native convolution sums a group as it sums a model
        train_student(options(tiny_cifar_dir, tmp_path / "pack", identity_store, seeds=(3, 5)), log=quiet)
        for seed in (3, 5):
            train_student(options(tiny_cifar_dir, tmp_path / f"alone-{seed}", identity_store, seed=seed,
                                  order_seed=3), log=quiet)
    for seed in (3, 5):
        member, alone = tmp_path / "pack" / f"seed-{seed}", tmp_path / f"alone-{seed}"
        got, want = weights(member / "last.pt"), weights(alone / "last.pt")
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want), seed
        member_lines = [json.loads(x) for x in (member / "metrics.jsonl").read_text().splitlines()]
        alone_lines = [json.loads(x) for x in (alone / "metrics.jsonl").read_text().splitlines()]
        for a, b in zip(member_lines, alone_lines):
            assert (a["train_loss"], a["test_top1"], a["test_nll"]) == (b["train_loss"], b["test_top1"], b["test_nll"])
        assert json.loads((member / "config.json").read_text())["seed"] == seed
        assert not (member / "best.pt").exists() and not (member / "best.json").exists()  # no validation split
    # A member's checkpoint is an ordinary one; the pack's own is refused with the way to a member's.
    result = CliRunner().invoke(main, ["evaluate", str(tmp_path / "pack" / "seed-5" / "last.pt"),
                                       "--data", str(tiny_cifar_dir), "--json"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, ["evaluate", str(tmp_path / "pack" / "last.pt"), "--data", str(tiny_cifar_dir)])
    assert result.exit_code != 0 and "is a pack's checkpoint" in result.output and "seed-3/last.pt" in result.output


def test_a_pack_resumed_after_a_crash_equals_the_uninterrupted_pack(tiny_cifar_dir, identity_store, tmp_path):
    """With a validation split: each member's best.pt is chosen on its own val_top1, and resumes exactly."""
    pack = lambda out, **kw: options(tiny_cifar_dir, out, identity_store, seeds=(1, 2), val_fraction=0.1, **kw)
    train_student(pack(tmp_path / "full"), log=quiet)

    def crash(epoch):
        if epoch == 0:
            raise Crash()

    with pytest.raises(Crash):
        train_student(pack(tmp_path / "crashed"), on_epoch_end=crash, log=quiet)
    train_student(pack(tmp_path / "crashed", resume=True), log=quiet)
    for seed in (1, 2):
        full, resumed = (weights(tmp_path / run / f"seed-{seed}" / "last.pt") for run in ("full", "crashed"))
        assert all(torch.equal(full[k], resumed[k]) for k in full)
        lines = [json.loads(x) for x in (tmp_path / "crashed" / f"seed-{seed}" / "metrics.jsonl").read_text()
                 .splitlines()]
        assert [x["epoch"] for x in lines] == [0, 1]
        top = max(x["val_top1"] for x in lines)
        best = {"top1": top, "epoch": next(x["epoch"] for x in lines if x["val_top1"] == top), "selected_on": "val"}
        for run in ("full", "crashed"):
            member = tmp_path / run / f"seed-{seed}"
            assert json.loads((member / "best.json").read_text()) == best
            assert torch.load(member / "best.pt", weights_only=True)["selected_on"] == "val"
        full, resumed = (weights(tmp_path / run / f"seed-{seed}" / "best.pt") for run in ("full", "crashed"))
        assert all(torch.equal(full[k], resumed[k]) for k in full)


def test_what_a_pack_does_not_take_is_refused_in_one_line(tiny_cifar_dir, identity_store, tiny_teacher, tmp_path):
    with pytest.raises(UserError, match="each member needs its own seed"):
        train_student(options(tiny_cifar_dir, tmp_path / "a", identity_store, seeds=(1, 1)), log=quiet)
    with pytest.raises(UserError, match="--method fitnet reads the student's features"):
        train_student(options(tiny_cifar_dir, tmp_path / "b", None, labels=None, teachers=(str(tiny_teacher),),
                              method="fitnet", seeds=(1, 2)), log=quiet)
