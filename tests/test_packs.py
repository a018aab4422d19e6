"""train-student --seeds and --member: a pack of students trained in one pass, its members of one method and store
(--seeds) or each of its own method, label store and seed (--member). Each member trains bit for bit as a
standalone run of its own options with the pack's data order (here in the CPU's stacked layout; that the GPU's
grouped layout computes each member as it computes alone is test_packing.py's, and a grouped pack resumes exactly
below). Its run folder is an ordinary one, and the pack resumes exactly, after a kill -9 too. The runs are marked
slow; the refusals are not."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from click.testing import CliRunner

from labelopt.cli import main
from labelopt.pipeline.errors import UserError
from labelopt.pipeline.jobs.labeling import GenerateOptions, generate_labels
from labelopt.pipeline.jobs.student import StudentOptions, train_student
from labelopt.pipeline.run.members import parse_member
from labelopt.tests.fakes import Crash, crash_after_first_epoch


def quiet(_):
    pass


def made_store(teacher, data, folder, views: str, temperature: float = 4.0, **options):
    """The tiny teacher's store of `views` over the tiny data, in its own folder."""
    out = folder / "labels.h5"
    generate_labels(GenerateOptions(data=str(data), out=str(out), teachers=(str(teacher),), views=views,
                                    temperature=temperature, device="cpu", **options), log=quiet)
    return out


@pytest.fixture(scope="module")
def identity_store(tiny_teacher, tiny_cifar_dir, tmp_path_factory):
    return made_store(tiny_teacher, tiny_cifar_dir, tmp_path_factory.mktemp("pack-store"), "identity")


def options(data, out, store, **overrides):
    base = dict(data=str(data), arch="resnet20", out=str(out), epochs=2, batch_size=32, device="cpu", method="sl",
                labels=str(store))
    return StudentOptions(**{**base, **overrides})


def weights(path):
    return torch.load(path, weights_only=True)["model"]


@pytest.mark.slow
def test_each_member_trains_as_a_run_of_its_seed_alone_with_the_packs_data_order(tiny_cifar_dir, identity_store,
                                                                                   tmp_path):
    """On a CPU a pack is stacked by default: each member runs its own layers, oneDNN's kernels included."""
    train_student(options(tiny_cifar_dir, tmp_path / "pack", identity_store, seeds=(3, 5)), log=quiet)
    for seed in (3, 5):
        train_student(options(tiny_cifar_dir, tmp_path / f"alone-{seed}", identity_store, seed=seed, order_seed=3),
                      log=quiet)
    for seed in (3, 5):
        member, alone = tmp_path / "pack" / f"seed-{seed}", tmp_path / f"alone-{seed}"
        got, want = weights(member / "last.pt"), weights(alone / "last.pt")
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want), seed
        member_lines = [json.loads(x) for x in (member / "metrics.jsonl").read_text().splitlines()]
        alone_lines = [json.loads(x) for x in (alone / "metrics.jsonl").read_text().splitlines()]
        for a, b in zip(member_lines, alone_lines):
            assert (a["train_loss"], a["test_top1"], a["test_nll"]) == (b["train_loss"], b["test_top1"], b["test_nll"])
        config = json.loads((member / "config.json").read_text())
        assert config["seed"] == seed and config["pack"]["layout"] == "stacked" and config["pack_layout"] is None
        assert not (member / "best.pt").exists() and not (member / "best.json").exists()  # no validation split
    # A member's checkpoint is an ordinary one; the pack's own is refused with the way to a member's.
    result = CliRunner().invoke(main, ["evaluate", str(tmp_path / "pack" / "seed-5" / "last.pt"),
                                       "--data", str(tiny_cifar_dir), "--json"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, ["evaluate", str(tmp_path / "pack" / "last.pt"), "--data", str(tiny_cifar_dir)])
    assert result.exit_code != 0 and "is a pack's checkpoint" in result.output and "seed-3/last.pt" in result.output


@pytest.mark.slow
def test_a_pack_resumed_after_a_crash_equals_the_uninterrupted_pack(tiny_cifar_dir, identity_store, tmp_path):
    """In the GPU's grouped layout, with a validation split: each member's best.pt is chosen on its own val_top1,
    and resumes exactly; a resume without --pack-layout continues in the layout the pack started in."""
    pack = lambda out, **kw: options(tiny_cifar_dir, out, identity_store, seeds=(1, 2), val_fraction=0.1, **kw)
    train_student(pack(tmp_path / "full", pack_layout="grouped"), log=quiet)

    with pytest.raises(Crash):
        train_student(pack(tmp_path / "crashed", pack_layout="grouped"), on_epoch_end=crash_after_first_epoch,
                      log=quiet)
    train_student(pack(tmp_path / "crashed", resume=True), log=quiet)
    assert json.loads((tmp_path / "crashed" / "config.json").read_text())["pack_layout"] == "grouped"
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


@pytest.mark.slow
def test_what_a_pack_does_not_take_is_refused_in_one_line(tiny_cifar_dir, identity_store, tiny_teacher, tmp_path):
    with pytest.raises(UserError, match="each member needs its own seed"):
        train_student(options(tiny_cifar_dir, tmp_path / "a", identity_store, seeds=(1, 1)), log=quiet)
    with pytest.raises(UserError, match="--method fitnet reads the student's features"):
        train_student(options(tiny_cifar_dir, tmp_path / "b", None, labels=None, teachers=(str(tiny_teacher),),
                              method="fitnet", seeds=(1, 2)), log=quiet)


# -- mixed packs: members of their own method, label store and seed (--member) -------------------------------------

@pytest.fixture(scope="module")
def sampled_store(tiny_teacher, tiny_cifar_dir, tmp_path_factory):
    """A second store of the same data: two sampled views per image at T 2, with logits (kd) and pool features."""
    return made_store(tiny_teacher, tiny_cifar_dir, tmp_path_factory.mktemp("pack-store-b"), "sampled:2",
                      temperature=2.0, logits=True, features=("pool",))


MIXED_SEEDS = (1, 2, 3)


def mixed_specs(store_a, store_b):
    """3 seeds x 2 methods from two stores, and a member without a teacher (no view keys, no store rows)."""
    return [*(f"name=sl-{s},method=sl,seed={s},labels={store_a}" for s in MIXED_SEEDS),
            *(f"name=kd-{s},method=kd,seed={s},labels={store_b},temperature=3,kd_weight=0.8" for s in MIXED_SEEDS),
            "name=plain-2,method=vanilla,seed=2"]


def mixed_args(data, out, store_a, store_b):
    args = student_args(data, out)
    for spec in mixed_specs(store_a, store_b):
        args += ["--member", spec]
    return args


def student_args(data, out):
    return ["train-student", "--data", str(data), "--student", "resnet20", "--epochs", "2", "--batch-size", "32",
            "--device", "cpu", "--out", str(out)]


def mixed_options(data, out, specs, **overrides):
    return options(data, out, None, labels=None, members=tuple(parse_member(s) for s in specs), **overrides)


@pytest.fixture(scope="module")
def mixed_pack(tiny_cifar_dir, identity_store, sampled_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("mixed") / "pack"
    result = CliRunner().invoke(main, mixed_args(tiny_cifar_dir, out, identity_store, sampled_store))
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.slow
def test_each_member_of_a_mixed_pack_trains_as_its_standalone_run(mixed_pack, tiny_cifar_dir, identity_store,
                                                                  sampled_store, tmp_path):
    standalone = {**{f"sl-{s}": dict(method="sl", seed=s, labels=str(identity_store)) for s in MIXED_SEEDS},
                  **{f"kd-{s}": dict(method="kd", seed=s, labels=str(sampled_store), temperature=3.0,
                                     method_options={"kd_weight": 0.8}) for s in MIXED_SEEDS},
                  "plain-2": dict(method="vanilla", seed=2, labels=None)}
    for name, own in standalone.items():
        train_student(options(tiny_cifar_dir, tmp_path / name, None, order_seed=1, **own), log=quiet)
    for name in standalone:
        member, alone = mixed_pack / name, tmp_path / name
        got, want = weights(member / "last.pt"), weights(alone / "last.pt")
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want), name
        lines = [[json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()] for run in (member, alone)]
        assert len(lines[0]) == len(lines[1]) == 2
        for a, b in zip(*lines):
            assert (a["train_loss"], a["test_top1"], a["test_nll"]) == (b["train_loss"], b["test_top1"], b["test_nll"])
        # its config.json reads as the standalone run's: method, store and its digest, seed, order seed, options
        mine, theirs = (json.loads((run / "config.json").read_text()) for run in (member, alone))
        assert {k: v for k, v in mine.items() if k not in ("out", "provenance", "pack")} == \
            {k: v for k, v in theirs.items() if k not in ("out", "provenance")}, name
        assert mine["pack"]["name"] == name
    pack = torch.load(mixed_pack / "last.pt", weights_only=True)["pack"]
    assert [(m["name"], m["method"], m["seed"]) for m in pack["members"]] == [
        *((f"sl-{s}", "sl", s) for s in MIXED_SEEDS), *((f"kd-{s}", "kd", s) for s in MIXED_SEEDS),
        ("plain-2", "vanilla", 2)]
    assert pack["members"][3]["labels"] == str(sampled_store) and pack["members"][6]["labels"] is None
    result = CliRunner().invoke(main, ["evaluate", str(mixed_pack / "last.pt"), "--data", str(tiny_cifar_dir)])
    assert result.exit_code != 0 and str(mixed_pack / "sl-1" / "last.pt") in result.output


LABELOPT = [sys.executable, "-m", "labelopt.cli"]


def kill_after_first_epoch(args: list[str], pack) -> None:
    """Start the pack in a process of its own and kill -9 it once the pack's first epoch is on disk."""
    proc = subprocess.Popen(LABELOPT + args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 900  # a loaded 2-core machine can take minutes for an epoch of 7 students
    while not (pack / "last.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert torch.load(pack / "last.pt", weights_only=True)["epoch"] == 0, "the pack ended before it was killed"


@pytest.mark.slow
def test_a_mixed_pack_killed_and_resumed_equals_the_uninterrupted_one(mixed_pack, tiny_cifar_dir, identity_store,
                                                                      sampled_store, tmp_path):
    """3 seeds x 2 methods from two stores (and a vanilla member): kill -9 after its first epoch, then --resume in a
    new process; every member's last.pt is the uninterrupted pack's, and evaluates as its own last epoch says."""
    pack, specs = tmp_path / "pack", mixed_specs(identity_store, sampled_store)
    args = mixed_args(tiny_cifar_dir, pack, identity_store, sampled_store)
    kill_after_first_epoch(args, pack)
    with pytest.raises(UserError, match=r"with other members: it holds sl-1 \(sl, seed 1, .*command gives sl-1"):
        train_student(mixed_options(tiny_cifar_dir, pack, specs[:4], resume=True), log=quiet)
    with pytest.raises(UserError, match=r"other options \(pack_layout: 'stacked' -> 'grouped'\)"):
        train_student(mixed_options(tiny_cifar_dir, pack, specs, resume=True, pack_layout="grouped"), log=quiet)
    subprocess.run(LABELOPT + args + ["--resume"], check=True, capture_output=True)
    for name in [*(f"{m}-{s}" for m in ("sl", "kd") for s in MIXED_SEEDS), "plain-2"]:
        full, resumed = (weights(run / name / "last.pt") for run in (mixed_pack, pack))
        assert all(torch.equal(full[k], resumed[k]) for k in full), name
        lines = [json.loads(x) for x in (pack / name / "metrics.jsonl").read_text().splitlines()]
        assert [x["epoch"] for x in lines] == [0, 1], name
    for name in ("sl-3", "kd-2"):
        result = CliRunner().invoke(main, ["evaluate", str(pack / name / "last.pt"), "--data", str(tiny_cifar_dir),
                                           "--device", "cpu", "--json"])
        assert result.exit_code == 0, result.output
        got, last = json.loads(result.output)["runs"][0], lines_of(pack / name)[-1]
        assert (got["top1"], got["nll"]) == pytest.approx((last["test_top1"], last["test_nll"]), rel=1e-5), name


def lines_of(run) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("extra, message", [
    (["--member", "name=a,method=sl"], "needs seed="),
    (["--member", "name=../a,method=vanilla,seed=1"], "must be a folder name"),
    (["--member", "name=a,method=vanilla,seed=1,temperature=0"], "temperature '0' is not a finite number in (0,"),
    (["--member", "name=a,method=vanilla,seed=1", "--member", "name=a,method=vanilla,seed=2"],
     "name 'a' is given twice"),
    (["--member", "name=a,method=vanilla,seed=1", "--seeds", "1,2"], "drop --seeds"),
    (["--member", "name=a,method=vanilla,seed=1", "--method", "sl"], "drop --method"),
    (["--member", "name=a,method=vanilla,seed=1", "--teacher", "t.pt"], "an online teacher packs its seeds with"),
    (["--member", "name=a,method=vanilla,seed=1,nope=2"], "--member a: nope is not an option of method vanilla"),
    (["--member", "name=a,method=nope,seed=1"], "--member a: unknown --method 'nope'"),
    (["--pack-layout", "stacked"], "--pack-layout stacked lays out a pack's members: give --seeds or --member"),
])
def test_what_a_mixed_pack_does_not_take_is_refused_in_one_line(tiny_cifar_dir, tmp_path, extra, message):
    result = CliRunner().invoke(main, student_args(tiny_cifar_dir, tmp_path / "pack") + extra)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1 and message in lines[0], result.output
    assert not (tmp_path / "pack").exists()


@pytest.mark.slow
def test_a_member_whose_method_cannot_pack_is_refused_naming_it(tiny_cifar_dir, identity_store, sampled_store,
                                                                 tmp_path):
    specs = ["name=a,method=vanilla,seed=1", f"name=b,method=pkt,seed=1,labels={sampled_store}"]
    with pytest.raises(UserError, match="--member b: --method pkt reads the student's features"):
        train_student(mixed_options(tiny_cifar_dir, tmp_path / "pack", specs), log=quiet)
    with pytest.raises(UserError, match="--member b: --method kd needs logits"):
        train_student(mixed_options(tiny_cifar_dir, tmp_path / "pack",
                                    [specs[0], f"name=b,method=kd,seed=1,labels={identity_store}"]), log=quiet)


# -- mixed images in a pack: stored mixes (aug-sl, aug-sl-kd) and fresh ones (--mix) ------------------------------

@pytest.fixture(scope="module")
def mix_store(tiny_teacher, tiny_cifar_dir, tmp_path_factory):
    """The teacher's labels of 2 CutMix images per training image, partners anywhere in the split."""
    return made_store(tiny_teacher, tiny_cifar_dir, tmp_path_factory.mktemp("pack-store-mix"), "mix:cutmix:2")


def assert_member_is_its_run(member, alone, name):
    got, want = weights(member / "last.pt"), weights(alone / "last.pt")
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want), name
    for a, b in zip(lines_of(member), lines_of(alone), strict=True):
        assert (a["train_loss"], a["train_top1"], a["test_nll"]) == (b["train_loss"], b["train_top1"], b["test_nll"])


@pytest.mark.slow
def test_members_on_stored_mixes_train_as_their_standalone_runs(tiny_cifar_dir, identity_store, mix_store,
                                                                 tmp_path):
    """aug-sl and aug-sl-kd members of one mix store (their pixels made in one call, their parts' ground truth
    their own), beside an sl member of another store and a vanilla one: each bit for bit its standalone run."""
    own = {"aug-1": dict(method="aug-sl", seed=1, labels=str(mix_store)),
           "augkd-2": dict(method="aug-sl-kd", seed=2, labels=str(mix_store)),
           "sl-3": dict(method="sl", seed=3, labels=str(identity_store)),
           "plain-4": dict(method="vanilla", seed=4, labels=None)}
    specs = [f"name={name},method={o['method']},seed={o['seed']}" + (f",labels={o['labels']}" if o["labels"] else "")
             for name, o in own.items()]
    train_student(mixed_options(tiny_cifar_dir, tmp_path / "pack", specs), log=quiet)
    for name, options_of in own.items():
        train_student(options(tiny_cifar_dir, tmp_path / name, None, order_seed=1, **options_of), log=quiet)
        assert_member_is_its_run(tmp_path / "pack" / name, tmp_path / name, name)


@pytest.mark.slow
def test_members_on_fresh_mixes_train_as_their_standalone_runs(tiny_cifar_dir, tmp_path):
    """--seeds with --mix: each member mixes its own batch with its own partners and shares."""
    train_student(options(tiny_cifar_dir, tmp_path / "pack", None, method="vanilla", labels=None, mix="ricap",
                          seeds=(1, 2)), log=quiet)
    for seed in (1, 2):
        train_student(options(tiny_cifar_dir, tmp_path / f"alone-{seed}", None, method="vanilla", labels=None,
                              mix="ricap", seed=seed, order_seed=1), log=quiet)
        assert_member_is_its_run(tmp_path / "pack" / f"seed-{seed}", tmp_path / f"alone-{seed}", seed)


def test_a_packs_mixed_members_get_their_own_parts_and_unmixed_ones_none():
    """PackViews stacks each mixed member's parts as [B, G, parts] (zero past a member's own), and member_batch
    gives member g exactly its own draw's parts, or none."""
    from labelopt.pipeline.run.packs import PackViews, member_batch
    from labelopt.pipeline.views.draws import AugmentViews
    from labelopt.pipeline.views.mixed import FreshMixes
    from labelopt.pipeline.views.mixes import get_mix_policy
    from labelopt.pipeline.views.policies import PadCropFlipView
    from labelopt.stages.batch import ViewedBatch

    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    indices, classes = torch.arange(6), torch.arange(6) % 3
    base = AugmentViews(PadCropFlipView())
    samplers = [FreshMixes(base, get_mix_policy("ricap", None), classes), base,
                FreshMixes(base, get_mix_policy("cutmix", None), classes)]
    pack = PackViews(samplers, [3, 4, 5])
    pack.start_epoch(0, rank=0)
    drawn = pack.draw(images, indices, None)
    assert pack.member_parts == [4, 0, 2] and drawn.mix.labels.shape == (6, 3, 4)
    batch = ViewedBatch(drawn.images, classes, indices, None, *drawn.mix)
    alone = PackViews(samplers, [3, 4, 5])
    alone.start_epoch(0, rank=0)
    for g, (sampler, generator) in enumerate(zip(samplers, alone.generators)):
        own, mine = sampler.draw(images, indices, generator), member_batch(batch, g, {}, False, pack.member_parts[g])
        assert torch.equal(mine.images, own.images), g
        if own.mix is None:
            assert mine.mix_labels is None and mine.mix_weights is None
        else:
            assert torch.equal(mine.mix_labels, own.mix.labels) and torch.equal(mine.mix_weights, own.mix.weights)


def test_a_pack_of_one_records_its_members_figures_as_any_pack_does():
    """The epoch's figures of a pack of one member (a table row of one seed) are a pack's: each member's top-1 and
    loss part, which its member's metrics.jsonl line is made of."""
    from labelopt.pipeline.run.train_loop import EpochTotals, epoch_figures

    totals = EpochTotals(torch.device("cpu"), steps=2)
    for loss, correct in ((2.0, 3.0), (1.0, 5.0)):  # [loss, member0's loss, member0's correct count], 8 rows
        totals.add(torch.tensor([loss, loss, correct]), {"member0": None}, rows=8)
    figures = epoch_figures(totals, pack=True)
    assert figures == {"train_loss": 1.5, "train_top1": 50.0, "train_top1_members": [50.0],
                       "train_loss_parts": {"member0": 1.5}}
    assert "train_top1_members" not in epoch_figures(totals, pack=False)


def test_a_packs_members_pixels_made_together_are_the_pixels_each_draw_makes_alone():
    """PackViews makes the pixels of all the members that share a policy in one call: each member's are bit for bit
    those of its own draw (same generator calls, same gathers), for crop + flip, random-resized crop and identity."""
    from labelopt.pipeline.run.packs import PackViews
    from labelopt.pipeline.views.draws import AugmentViews
    from labelopt.pipeline.views.policies import IdentityView, PadCropFlipView, ResizedCropFlipView

    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    indices = torch.arange(6)
    samplers = [AugmentViews(PadCropFlipView()), AugmentViews(ResizedCropFlipView(size=32), store_view=0),
                AugmentViews(PadCropFlipView(), store_view=0), AugmentViews(IdentityView()),
                AugmentViews(ResizedCropFlipView(size=32))]
    seeds = [3, 4, 5, 6, 7]
    pack = PackViews(samplers, seeds)
    pack.start_epoch(2, rank=0)
    drawn = pack.draw(images, indices, None)
    alone = PackViews(samplers, seeds)
    alone.start_epoch(2, rank=0)
    for g, (sampler, generator) in enumerate(zip(samplers, alone.generators)):
        own = sampler.draw(images, indices, generator)
        assert torch.equal(drawn.images[:, 3 * g:3 * g + 3], own.images), g
        if own.views is not None:
            assert torch.equal(drawn.views[:, g], own.views)
