"""train-student: stored labels equal online distillation, exact resume, DDP, and the refusals."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from labelopt.cli import main
from labelopt.pipeline.errors import UserError
from labelopt.pipeline.jobs.labeling import GenerateOptions, generate_labels
from labelopt.pipeline.jobs.student import StudentOptions, train_student
from labelopt.pipeline.run.options import TrainOptions
from labelopt.pipeline.run.training import train
from labelopt.stages.distillers.sl import SoftLabels
from labelopt.store import LabelStore
from labelopt.tests.run_checks import assert_last_checkpoint_matches_log
from labelopt.tests.two_nodes import run_two_nodes
from labelopt.tests.fakes import Crash, crash_after_first_epoch


def quiet(_):
    pass


@pytest.fixture(scope="module")
def teacher(tiny_cifar_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher") / "run"
    train(TrainOptions(data=str(tiny_cifar_dir), arch="resnet20", out=str(out), epochs=2, batch_size=32,
                       device="cpu"), log=quiet)
    return out / "last.pt"


@pytest.fixture(scope="module")
def stores(teacher, tiny_cifar_dir, tmp_path_factory):
    """Every view of the training split (crop-flip, T=4), an identity store (with logits) and 3 CutMix records per
    image."""
    root = tmp_path_factory.mktemp("stores")
    made = {}
    for name, views in (("crop_flip", "cifar-crop-flip"), ("identity", "identity"), ("mix", "mix:cutmix:3")):
        made[name] = root / f"{name}.h5"
        generate_labels(GenerateOptions(data=str(tiny_cifar_dir), out=str(made[name]), teachers=(str(teacher),),
                                        views=views, temperature=4.0, logits=name == "identity", device="cpu"),
                        log=quiet)
    return made


def student(data, out, **overrides):
    base = dict(data=str(data), arch="resnet20", out=str(out), epochs=2, batch_size=32, seed=3, device="cpu")
    return StudentOptions(**{**base, **overrides})


def recording_soft_labels(monkeypatch):
    """Record the targets and the loss of every SL step."""
    seen = []
    real = SoftLabels.forward

    def forward(self, logits, student_feats, teacher, batch):
        parts = real(self, logits, student_feats, teacher, batch)
        seen.append((teacher["targets"].detach().clone(), parts["loss"].item(), batch.indices.clone()))
        return parts

    monkeypatch.setattr(SoftLabels, "forward", forward)
    return seen


def test_stored_labels_equal_online_distillation_step_by_step(stores, teacher, tiny_cifar_dir, tmp_path,
                                                               monkeypatch):
    seen = recording_soft_labels(monkeypatch)
    train_student(student(tiny_cifar_dir, tmp_path / "store", labels=str(stores["crop_flip"])), log=quiet)
    from_store = list(seen)
    seen.clear()
    train_student(student(tiny_cifar_dir, tmp_path / "online", teachers=(str(teacher),), temperature=4.0), log=quiet)
    online = list(seen)
    assert len(from_store) == len(online) == 2 * (96 // 32)
    for step, ((t_store, loss_store, idx_store), (t_online, loss_online, idx_online)) in \
            enumerate(zip(from_store, online)):
        assert torch.equal(idx_store, idx_online), step
        assert torch.allclose(t_store, t_online, atol=2e-3), step  # float16 storage
        assert loss_store == pytest.approx(loss_online, rel=2e-3), step
    configs = [json.loads((tmp_path / n / "config.json").read_text()) for n in ("store", "online")]
    assert configs[0]["views"]["draw"] == "store" and configs[0]["views"]["num_views"] == 162
    assert configs[1]["views"]["draw"] == "augment" and configs[0]["augment"] == configs[1]["augment"]
    assert configs[0]["teacher_source"]["kind"] == "store" and configs[1]["teacher_source"]["kind"] == "online"


def test_stored_mixes_equal_the_teacher_online_on_the_same_mixes_step_by_step(stores, teacher, tiny_cifar_dir,
                                                                             tmp_path, monkeypatch):
    """Aug-SL paid once: a store of K CutMix records per image against the teacher run online on the same record
    space (the seed's records, rebuilt without the store): the same mixed pixels, parts, targets and loss."""
    from labelopt.pipeline.data.datasets import open_dataset
    from labelopt.pipeline.views.store_sets import store_views
    from labelopt.pipeline.jobs import student as student_job

    seen = []
    real = SoftLabels.forward

    def forward(self, logits, student_feats, teacher_signals, batch):
        parts = real(self, logits, student_feats, teacher_signals, batch)
        seen.append((batch.images.clone(), teacher_signals["targets"].detach().clone(), batch.mix_labels.clone(),
                     batch.mix_weights.clone(), parts["loss"].item()))
        return parts

    monkeypatch.setattr(SoftLabels, "forward", forward)
    train_student(student(tiny_cifar_dir, tmp_path / "store", method="aug-sl", labels=str(stores["mix"])), log=quiet)
    from_store = list(seen)
    seen.clear()
    data = open_dataset(tiny_cifar_dir)
    space = store_views("mix:cutmix:3", data, seed=0)  # what generate-labels drew, rebuilt from its seed
    space.sample_params = space.views_of(np.arange(96), 32, 32)
    space.attach_bank(data, "train")
    real_online = student_job.online_source
    monkeypatch.setattr(student_job, "online_source", lambda *a: (real_online(*a)[0], space))
    train_student(student(tiny_cifar_dir, tmp_path / "online", method="sl", teachers=(str(teacher),),
                          temperature=4.0), log=quiet)
    online = list(seen)
    assert len(from_store) == len(online) == 2 * (96 // 32)
    for step, (stored, fresh) in enumerate(zip(from_store, online)):
        assert torch.equal(stored[0], fresh[0]), step  # the same mixed pixels
        assert any(0 < w < 1 for w in stored[3][:, 1].tolist()), step  # really mixed
        assert torch.equal(stored[2], fresh[2]) and torch.equal(stored[3], fresh[3]), step  # parts and shares
        assert torch.allclose(stored[1], fresh[1], atol=2e-3), step  # float16 storage
        assert stored[4] == pytest.approx(fresh[4], rel=2e-3), step


def test_a_mix_store_is_inspected_and_its_mixes_rebuilt_and_relabelled(stores, teacher, tiny_cifar_dir):
    code, out = run_cli("labels", "inspect", stores["mix"])
    assert code == 0 and "mix:cutmix:3  (3 per sample; cutmix alpha 1.0 over cifar-crop-flip, 2 images each" in out
    code, out = run_cli("labels", "inspect", stores["mix"], "--json")
    views = json.loads(out)["views"]
    assert views["policy"] == "mix" and views["mix"] == "cutmix" and views["num_views"] == 3
    assert views["param_names"] == ["partner1", "part0.view", "part1.view", "top", "left", "bottom", "right"]
    code, out = run_cli("labels", "verify", stores["mix"], "--data", tiny_cifar_dir, "--teacher", teacher,
                        "--sample", 12, "--device", "cpu", "--json")
    assert code == 0, out
    checks = {c["name"]: c["ok"] for c in json.loads(out)["checks"]}
    assert checks["views"] and checks["relabel"] and checks["ground truth"]  # the mixes redrawn, relabelled alike


def test_a_stores_card_says_what_made_it_and_its_command_makes_the_same_labels(stores, teacher, tmp_path):
    import shlex

    card = tmp_path / "card.md"
    code, out = run_cli("labels", "card", stores["identity"], "--out", card)
    assert code == 0 and card.is_file(), out
    text = card.read_text()
    store = LabelStore.open(stores["identity"])
    assert store.dataset["fingerprint"] in text and store.checksums["targets"] in text
    assert "| temperature | 4 |" in text and "`identity`: 1 view(s) per image" in text
    own = torch.load(teacher, weights_only=True)["metrics"]["test_top1"]
    assert f"| resnet20 | last.pt | `{store.generator['teachers'][0]['checkpoint_sha256'][:16]}` | {own:.2f} | 2 |" in text
    command = text.split("```bash\n", 1)[1].split("\n```", 1)[0]
    args = shlex.split(command)
    assert args[:2] == ["labelopt", "generate-labels"] and "--logits" in args
    args[args.index("--out") + 1] = str(tmp_path / "again.h5")
    code, out = run_cli(*args[1:], "--device", "cpu")
    assert code == 0, out
    again = LabelStore.open(tmp_path / "again.h5")
    assert again.checksums["targets"] == store.checksums["targets"]  # the same labels, bit for bit
    code, out = run_cli("labels", "card", stores["identity"], "--out", card)
    assert code != 0 and "--overwrite" in out  # an existing card is kept


def test_identity_store_pairs_with_augmented_or_clean_images(stores, tiny_cifar_dir, tmp_path):
    out = train_student(student(tiny_cifar_dir, tmp_path / "aug", labels=str(stores["identity"]), epochs=1,
                                method="kd"), log=quiet)
    config = json.loads((out / "config.json").read_text())
    assert config["views"]["pairing"].startswith("images augmented independently")
    assert config["views"]["policy"] == "cifar-crop-flip"
    assert config["method_resolved"]["options"] == {"ce_weight": 0.1, "kd_weight": 0.9, "temperature": 4.0}
    clean = train_student(student(tiny_cifar_dir, tmp_path / "clean", labels=str(stores["identity"]), epochs=1,
                                  augment="identity"), log=quiet)
    assert json.loads((clean / "config.json").read_text())["views"]["policy"] == "identity"
    assert_last_checkpoint_matches_log(clean, tiny_cifar_dir)


@pytest.mark.slow
def test_resume_after_a_crash_equals_the_uninterrupted_run(stores, tiny_cifar_dir, tmp_path):
    opts = lambda out, **kw: student(tiny_cifar_dir, out, labels=str(stores["crop_flip"]), method="sl-kd",
                                     epochs=3, **kw)
    train_student(opts(tmp_path / "full"), log=quiet)

    with pytest.raises(Crash):
        train_student(opts(tmp_path / "crashed"), on_epoch_end=crash_after_first_epoch, log=quiet)
    train_student(opts(tmp_path / "crashed", resume=True), log=quiet)
    full = torch.load(tmp_path / "full" / "last.pt", weights_only=True)
    resumed = torch.load(tmp_path / "crashed" / "last.pt", weights_only=True)
    for key, value in full["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    with pytest.raises(UserError, match="with other options .*kd_weight"):
        train_student(opts(tmp_path / "full", resume=True, method_options={"kd_weight": 0.5}), log=quiet)


def test_a_contiguous_copy_of_a_store_trains_the_same_student(stores, tiny_cifar_dir, tmp_path):
    from labelopt.store.repack import repack

    inplace = repack(stores["crop_flip"], tmp_path / "contiguous.h5", "contiguous")
    assert LabelStore.open(inplace).layout == "contiguous"
    runs = [train_student(student(tiny_cifar_dir, tmp_path / name, labels=str(path), epochs=1), log=quiet)
            for name, path in (("compressed", stores["crop_flip"]), ("contiguous", inplace))]
    a, b = (torch.load(run / "last.pt", weights_only=True)["model"] for run in runs)
    assert all(torch.equal(a[key], b[key]) for key in a)


def run_cli(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


def test_refusals(stores, teacher, tiny_cifar_dir, tmp_path):
    test_split_store = tmp_path / "test-split.h5"
    generate_labels(GenerateOptions(data=str(tiny_cifar_dir), out=str(test_split_store), split="test",
                                    teachers=(str(teacher),), device="cpu"), log=quiet)
    mix_test_split = tmp_path / "mix-test-split.h5"
    generate_labels(GenerateOptions(data=str(tiny_cifar_dir), out=str(mix_test_split), split="test",
                                    views="mix:ricap:2", teachers=(str(teacher),), device="cpu"), log=quiet)
    c100 = tmp_path / "c100.pt"
    body = torch.load(teacher, weights_only=True)
    from labelopt.models import create_model
    from labelopt.pipeline.run.checkpoints import save_checkpoint
    save_checkpoint(c100, {k: v for k, v in body.items() if k not in ("format", "version", "training")}
                    | {"num_classes": 100, "model": create_model("resnet20", 100).state_dict()})
    base = ["train-student", "--data", tiny_cifar_dir, "--student", "resnet20", "--epochs", "1", "--device", "cpu"]
    crop_flip, identity = stores["crop_flip"], stores["identity"]
    cases = [
        (["--labels", test_split_store], "split is 'test' in the store but 'train' for the data"),
        (["--labels", crop_flip, "--method", "kd"], "has no logits"),
        (["--labels", crop_flip, "--method", "kd"], "generate-labels ... --logits"),
        (["--labels", crop_flip, "--method", "crd"], "generate-labels ... --features pool"),
        (["--labels", crop_flip, "--method", "at"], "run its teacher online with --teacher CKPT"),
        (["--teacher", c100], "trained for 100 classes but the data has 10"),
        (["--labels", crop_flip, "--teacher", teacher], "either --labels STORE or --teacher CKPT"),
        (["--method", "sl"], "pass --labels STORE"),
        (["--method", "vanilla", "--labels", crop_flip], "uses no teacher"),
        (["--method", "fancy", "--labels", crop_flip], "'fancy' is not one of 'vanilla', 'ls', 'sl'"),
        (["--labels", crop_flip, "--temperature", "2"], "temperature 4, fixed when it was made"),
        (["--labels", crop_flip, "--augment", "identity"], "define the augmentation"),
        (["--labels", crop_flip, "--ce-weight", "0.5"], "--ce-weight does not apply to --method sl"),
        (["--method", "vanilla", "--label-smoothing", "0.1"], "--label-smoothing does not apply"),
        (["--labels", crop_flip, "--method-option", "fitnet_weight=3"], "--method-option fitnet_weight does not"),
        (["--labels", tmp_path / "missing.h5"], "does not exist"),
        (["--labels", crop_flip, "--mix", "cutmix"], "--method sl does not train on mixed images"),
        (["--method", "vanilla", "--mix-alpha", "0.5"], "--mix-alpha sets the Beta parameter"),
        (["--method", "aug-sl", "--teacher", teacher], "pass --mix mixup, cutmix or ricap"),
        (["--method", "aug-sl", "--labels", identity, "--mix", "cutmix"], "mixes included, are fixed"),
        (["--method", "aug-sl", "--labels", identity], "holds labels of unmixed images"),
        (["--method", "sl", "--labels", stores["mix"]], "holds the teacher's labels of mixed images"),
        (["--method", "aug-sl", "--labels", mix_test_split], "split is 'test' in the store but 'train'"),
        (["--method", "vanilla", "--mix", "mixup", "--mix-alpha", "0"], "--mix-alpha"),
        (["--method", "vanilla", "--mix", "mixup", "--mix-alpha", "nan"], "--mix-alpha"),
        (["--method", "vanilla", "--mix", "cutout"], "'cutout' is not one of 'mixup', 'cutmix', 'ricap'"),
    ]
    for i, (args, message) in enumerate(cases):
        code, out = run_cli(*base, *args, "--out", tmp_path / f"run{i}")
        assert code != 0 and message in out and "Traceback" not in out, (args, out)
        assert not (tmp_path / f"run{i}" / "config.json").exists()


def test_aug_sl_online_labels_each_mixed_image_with_the_teacher(teacher, tiny_cifar_dir, tmp_path, monkeypatch):
    """aug-sl's target is the teacher's own label of the pixels the student sees (the mixed image), and aug-sl-kd's
    hard part is the parts' classes by share."""
    from labelopt.pipeline.data.datasets import open_dataset
    from labelopt.pipeline.run.checkpoints import load_teachers
    from labelopt.stages.distillers.aug_sl import AugSoftLabelsKD

    seen = []
    real = SoftLabels.forward

    def forward(self, logits, student_feats, teacher_signals, batch):
        seen.append((batch.images.clone(), teacher_signals["targets"].detach().clone(), batch.mix_labels.clone(),
                     batch.mix_weights.clone()))
        return real(self, logits, student_feats, teacher_signals, batch)

    monkeypatch.setattr(SoftLabels, "forward", forward)
    out = train_student(student(tiny_cifar_dir, tmp_path / "aug-sl", method="aug-sl", teachers=(str(teacher),),
                                mix="cutmix", epochs=1), log=quiet)
    net = load_teachers([str(teacher)], open_dataset(tiny_cifar_dir), torch.device("cpu"))[0]
    assert len(seen) == 96 // 32
    for images, targets, labels, weights in seen:
        logits, _ = net.outputs(images)
        assert torch.allclose(targets, torch.softmax(logits / 4.0, 1), atol=1e-5)
        assert labels.shape == (32, 2) and torch.allclose(weights.sum(1), torch.ones(32))
    assert any(0 < w < 1 for w in seen[0][3][:, 1].tolist())  # some images really are mixed
    config = json.loads((out / "config.json").read_text())
    assert config["mix"] == "cutmix" and config["views"]["mix"] == "cutmix" and config["views"]["alpha"] == 1.0

    parts = []
    monkeypatch.setattr(AugSoftLabelsKD, "ce_plus", lambda self, logits, batch, name, term: parts.append(
        (batch.mix_labels.clone(), batch.mix_weights.clone())) or {"loss": term, name: term})
    train_student(student(tiny_cifar_dir, tmp_path / "aug-sl-kd", method="aug-sl-kd", teachers=(str(teacher),),
                          mix="ricap", epochs=1), log=quiet)
    assert len(parts) == 3 and all(labels.shape == (32, 4) for labels, _ in parts)


def test_vanilla_with_each_mix_trains_and_records_it(tiny_cifar_dir, tmp_path):
    for mix in ("mixup", "ricap"):
        out = train_student(student(tiny_cifar_dir, tmp_path / mix, method="vanilla", mix=mix, mix_alpha=0.5,
                                    epochs=1), log=quiet)
        config = json.loads((out / "config.json").read_text())
        assert config["views"]["mix"] == mix and config["views"]["alpha"] == 0.5
        assert config["views"]["partners"] == "the same batch, drawn each step"
        assert_last_checkpoint_matches_log(out, tiny_cifar_dir)


@pytest.mark.slow
def test_torchrun_two_processes_train_one_student(stores, tiny_cifar_dir, tmp_path):
    labelopt = Path(sys.executable).with_name("labelopt")
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc-per-node", "2",
                          "--no-python", str(labelopt), "train-student", "--data", str(tiny_cifar_dir),
                          "--labels", str(stores["crop_flip"]), "--student", "resnet20", "--epochs", "2",
                          "--batch-size", "16", "--device", "cpu", "--val-fraction", "0.1", "--out", str(out)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    config = json.loads((out / "config.json").read_text())
    assert config["world_size"] == 2 and config["global_batch_size"] == 32
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2  # rank 0 alone writes
    assert run.stdout.count("run folder:") == 1  # and alone prints the result line
    # rank 0 alone scored the validation split (each rank drew only the kept images) and chose best.pt on it
    assert sorted(p.name for p in out.iterdir()) == ["best.json", "best.pt", "config.json", "last.pt",
                                                     "metrics.jsonl"]
    assert all("val_top1" in json.loads(line) for line in lines) and config["validation"]["count"] == 10
    assert_last_checkpoint_matches_log(out, tiny_cifar_dir)  # rank 0 saved the model it scored


@pytest.mark.slow
def test_two_nodes_train_one_student_and_resume_without_the_run_folder_on_the_second(stores, tiny_cifar_dir,
                                                                                      tmp_path):
    """Two torchrun agents as two nodes, one process each. The run folder is on the first node's disk alone (the
    second is given a folder that never appears): rank 0 writes every file, and --resume reads last.pt there and
    hands it to rank 1."""
    outs = [tmp_path / "node0" / "run", tmp_path / "node1" / "run"]

    def student_on(node, *extra):
        return ["train-student", "--data", tiny_cifar_dir, "--labels", stores["crop_flip"], "--student", "resnet20",
                "--epochs", "2", "--batch-size", "16", "--device", "cpu", "--out", outs[node], *extra]

    (code0, log0), (code1, log1) = run_two_nodes(student_on, tmp_path / "logs")
    assert code0 == 0 and code1 == 0, (log0[-3000:], log1[-3000:])
    assert "train-student: 2 processes on 2 nodes (gloo)" in log0 and "processes on" not in log1
    config = json.loads((outs[0] / "config.json").read_text())
    assert config["world_size"] == 2 and config["global_batch_size"] == 32
    assert len((outs[0] / "metrics.jsonl").read_text().splitlines()) == 2
    assert sorted(p.name for p in outs[0].iterdir()) == ["config.json", "last.pt", "metrics.jsonl"]
    assert not outs[1].parent.exists()  # rank 1 wrote nothing
    assert_last_checkpoint_matches_log(outs[0], tiny_cifar_dir)

    before = (outs[0] / "last.pt").read_bytes()
    (code0, log0), (code1, log1) = run_two_nodes(lambda node: student_on(node, "--resume"), tmp_path / "logs2")
    assert code0 == 0 and code1 == 0, (log0[-3000:], log1[-3000:])
    assert "already complete (2 epochs)" in log0 and (outs[0] / "last.pt").read_bytes() == before

def test_sampled_store_replays_each_samples_own_stored_boxes(teacher, tiny_cifar_dir, tmp_path, monkeypatch):
    from labelopt.pipeline.data.datasets import open_dataset
    from labelopt.pipeline.data.loading import make_loader
    from labelopt.pipeline.views.space import ViewSpace, sampler_for_store

    from labelopt.store.contiguous import DatasetRows

    path = tmp_path / "sampled.h5"
    generate_labels(GenerateOptions(data=str(tiny_cifar_dir), out=str(path), teachers=(str(teacher),),
                                    views="sampled:3", temperature=4.0, seed=11, device="cpu", layout="contiguous"),
                    log=quiet)
    store = LabelStore.open(path)
    assert store.layout == "contiguous"
    sampler = sampler_for_store(store, open_dataset(tiny_cifar_dir), None)
    assert isinstance(sampler, ViewSpace) and sampler.per_sample and sampler.num_views == 3
    assert isinstance(sampler.sample_params, DatasetRows)  # the boxes stay in the file, read per key
    data = open_dataset(tiny_cifar_dir)
    images, _, indices = next(iter(make_loader(data, "train", 32, shuffle=True, seed=0, drop_last=True).epoch(0)))
    viewed, views, _ = sampler.draw(images, indices, torch.Generator().manual_seed(0))
    params = torch.from_numpy(store.view_params(indices.numpy()))[torch.arange(32), views]  # [B, 5] boxes
    assert torch.equal(viewed, sampler.policy.apply(images, params))
    store.load()
    # The label gathered for (index, view) is the teacher's answer for these very pixels.
    from labelopt.pipeline.run.checkpoints import load_teachers
    logits, _ = load_teachers([str(teacher)], data, torch.device("cpu"))[0].outputs(viewed)
    assert torch.allclose(store.gather(indices, views), torch.softmax(logits / 4.0, 1), atol=2e-3)
    out = train_student(student(tiny_cifar_dir, tmp_path / "run", labels=str(path), epochs=1), log=quiet)
    config = json.loads((out / "config.json").read_text())
    assert config["views"] == {"draw": "store", "policy": "rrc-flip", "num_views": 3,
                               "pairing": "exact: each label is the teacher's answer for the pixels shown"}


def test_a_methods_warmup_phase_and_expanded_batches(tiny_cifar_dir, tmp_path, monkeypatch):
    from dataclasses import dataclass

    import torch.nn.functional as F

    from labelopt.stages import distillers
    from labelopt.stages.distillers.base import Distiller

    seen = []

    class Probe(Distiller):
        """Warm-up for one epoch; each step also shows the student its images flipped."""
        name = "probe"

        @dataclass(frozen=True)
        class Options:
            warmup_epochs: int = 1

        def __init__(self, context, **options):
            super().__init__(context, **options)
            self.scale = torch.nn.Parameter(torch.ones(()))

        def expand(self, inputs, batch):
            flipped = batch.images.flip(-1)
            doubled = type(batch)(torch.cat([batch.images, flipped]), batch.labels.repeat(2), batch.indices.repeat(2))
            return torch.cat([inputs, inputs.flip(-1)]), doubled

        def forward(self, logits, student, teacher, batch):
            seen.append((self.epoch, self.in_warmup, logits.shape[0], batch.labels.shape[0]))
            ce = F.cross_entropy(logits * self.scale, batch.labels)
            return {"loss": 2 * ce, "ce": ce, "not_a_scalar": logits}

    monkeypatch.setitem(distillers.DISTILLERS, "probe", Probe)
    out = train_student(student(tiny_cifar_dir, tmp_path / "probe", method="probe", epochs=1, lr=0.07), log=quiet)
    assert {(e, w) for e, w, _, _ in seen} == {(0, True), (1, False)}
    assert all(n_logits == n_labels == 64 for _, _, n_logits, n_labels in seen)  # 32 images + 32 flipped
    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [l["phase"] for l in lines] == ["warmup", "train"] and lines[0]["lr"] == 0.07
    for line in lines:  # each scalar loss term, averaged over the epoch like the loss
        assert set(line["train_loss_parts"]) == {"ce"}
        assert line["train_loss"] == pytest.approx(2 * line["train_loss_parts"]["ce"], rel=1e-5)
    last = torch.load(out / "last.pt", weights_only=True)
    assert last["epoch"] == 1 and last["training"]["extra"]["scale"] != 1.0  # trained, and saved for resume


@pytest.mark.parametrize("name", ["identity", "crop_flip", "mix"])
def test_the_batch_loader_hands_over_the_inline_batches_views_and_store_rows(stores, tiny_cifar_dir, name):
    """A thread ahead of the step, the loader gives exactly what reading the .beton, drawing the views and gathering
    the store's rows one after the other in the step gave: pixels, labels, indices, view keys, mixes and rows."""
    from labelopt.pipeline.data.datasets import open_dataset
    from labelopt.pipeline.data.loading import make_loader
    from labelopt.pipeline.jobs.student import open_store_source
    from labelopt.pipeline.run.batches import BatchLoader
    from labelopt.stages.distillers import get_distiller

    data = open_dataset(tiny_cifar_dir)
    options = student(tiny_cifar_dir, "unused", labels=str(stores[name]), method="aug-sl" if name == "mix" else "sl")
    source, sampler = open_store_source(options, get_distiller(options.method), data)
    loader = make_loader(data, "train", 32, shuffle=True, seed=3, drop_last=True)
    for epoch in (0, 1):
        inline_draws = torch.Generator().manual_seed(epoch)
        expected = []
        for images, labels, indices in loader.epoch(epoch):
            drawn = sampler.draw(images, indices, inline_draws)
            expected.append((drawn, labels, indices, source.store.gather(indices, drawn.views, "targets")))
        batches = BatchLoader(loader, sampler, torch.device("cpu"), source.rows, ahead=2)
        got = list(batches.epoch(epoch, torch.Generator().manual_seed(epoch)))
        assert len(got) == len(expected) == len(batches) == 3
        for batch, (drawn, labels, indices, rows) in zip(got, expected):
            assert torch.equal(batch.images, drawn.images) and torch.equal(batch.labels, labels)
            assert torch.equal(batch.indices, indices) and torch.equal(batch.views, drawn.views)
            assert torch.equal(batch.teacher["targets"], rows)
            if name == "mix":
                assert torch.equal(batch.mix_labels, drawn.mix.labels)
                assert torch.equal(batch.mix_weights, drawn.mix.weights)
            else:
                assert batch.mix_labels is None and drawn.mix is None
        if name == "crop_flip":  # the 162 views are drawn, not one
            assert len(torch.unique(torch.cat([b.views for b in got]))) > 20


def test_the_batch_loader_stops_its_thread_and_passes_on_its_errors(stores, tiny_cifar_dir):
    import threading

    from labelopt.pipeline.data.datasets import open_dataset
    from labelopt.pipeline.data.loading import make_loader
    from labelopt.pipeline.run.batches import BatchLoader
    from labelopt.pipeline.views.draws import AugmentViews
    from labelopt.pipeline.views.policies import PadCropFlipView

    data = open_dataset(tiny_cifar_dir)
    loader = make_loader(data, "train", 32, shuffle=True, seed=3, drop_last=True)
    batches = BatchLoader(loader, AugmentViews(PadCropFlipView()), torch.device("cpu"), ahead=1)
    for batch in batches.epoch(0, torch.Generator().manual_seed(0)):
        break  # a step that stops early (a diverged loss) leaves no thread behind
    assert not [t for t in threading.enumerate() if t.name.startswith("labelopt-batches")]

    def failing_rows(indices, views):
        raise UserError("store rows unreadable")

    failing = BatchLoader(loader, AugmentViews(PadCropFlipView()), torch.device("cpu"), failing_rows, ahead=2)
    with pytest.raises(UserError, match="store rows unreadable"):
        list(failing.epoch(0, torch.Generator().manual_seed(0)))
    assert not [t for t in threading.enumerate() if t.name.startswith("labelopt-batches")]
