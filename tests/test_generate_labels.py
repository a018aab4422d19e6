"""generate-labels: stored labels are the teacher's answers for exactly the stored views; resume; refusals."""
from dataclasses import replace
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from labelopt.cli import main
from labelopt.models import create_model
from labelopt.pipeline.run.checkpoints import save_checkpoint
from labelopt.pipeline.data.datasets import open_dataset
from labelopt.pipeline.jobs.labeling import GenerateOptions, generate_labels
from labelopt.pipeline.data.loading import make_loader
from labelopt.pipeline.views.policies import PadCropFlipView
from labelopt.pipeline.data.normalize import Normalizer
from labelopt.store import LabelStore
from labelopt.tests.two_nodes import run_two_nodes


def quiet(_):
    pass


@pytest.fixture(scope="module")
def teacher(tiny_teacher):
    return tiny_teacher


def direct_probs(teacher, data, images, temperature):
    body = torch.load(teacher, weights_only=True)
    model = create_model("resnet20", 10).eval()
    model.load_state_dict(body["model"])
    with torch.no_grad():
        return torch.softmax(model(Normalizer(data.mean, data.std, "cpu")(images)) / temperature, 1)


@pytest.mark.slow
def test_crop_flip_store_holds_the_teachers_answer_for_every_view(teacher, tiny_cifar_dir, tmp_path):
    out = tmp_path / "cf.h5"
    generate_labels(GenerateOptions(data=str(tiny_cifar_dir), out=str(out), teachers=(str(teacher),), split="test",
                                    views="cifar-crop-flip", temperature=4.0, logits=True, device="cpu",
                                    block_rows=16), log=quiet)
    store = LabelStore.open(out)
    assert store.num_views == 162 and store.num_samples == 40 and store.has_logits
    data = open_dataset(tiny_cifar_dir)
    images = torch.cat([x for x, _, _ in make_loader(data, "test", 64, shuffle=False).epoch(0)])
    rows = torch.tensor([0, 5, 17, 39, 39])
    views = torch.tensor([0, 161, 80, 7, 100])
    viewed = PadCropFlipView(4).apply(images[rows], views[:, None])
    expected = direct_probs(teacher, data, viewed, 4.0)
    got = store.gather(rows, views)
    assert torch.allclose(got, expected, atol=2e-3)
    assert store.generator["method"] == "sl" and store.generator["teachers"][0]["arch"] == "resnet20"
    assert store.dataset["fingerprint"] == data.fingerprint("test")


@pytest.mark.slow
def test_crash_then_same_command_resumes_to_the_same_store(teacher, tiny_cifar_dir, tmp_path, monkeypatch):
    opts = lambda out: GenerateOptions(data=str(tiny_cifar_dir), out=str(out), teachers=(str(teacher),),
                                       views="identity", temperature=2.0, device="cpu", block_rows=16,
                                       features=("pool",))
    generate_labels(opts(tmp_path / "ref.h5"), log=quiet)
    import labelopt.store.writer as writer_module
    real = writer_module.StoreWriter.write_block
    calls = []

    def crash_on_third(self, b, **kw):
        calls.append(b)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, b, **kw)

    monkeypatch.setattr(writer_module.StoreWriter, "write_block", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        generate_labels(opts(tmp_path / "crashed.h5"), log=quiet)
    monkeypatch.setattr(writer_module.StoreWriter, "write_block", real)
    assert not (tmp_path / "crashed.h5").exists()
    messages = []
    # Without --block-rows the default would be 1,024 samples: the stopped run's 16 are kept, and it resumes.
    generate_labels(replace(opts(tmp_path / "crashed.h5"), block_rows=None), log=messages.append)
    assert any("resuming, 4 of 6 blocks left" in m for m in messages)
    a, b = LabelStore.open(tmp_path / "ref.h5"), LabelStore.open(tmp_path / "crashed.h5")
    for signal in ("targets", "features:pool"):
        a.load((signal,)), b.load((signal,))
        idx = torch.arange(96)
        assert torch.equal(a.gather(idx, None, signal), b.gather(idx, None, signal))


@pytest.mark.slow
def test_identity_store_batches_whole_blocks_and_equals_block_sized_batches(teacher, tiny_cifar_dir, tmp_path,
                                                                           monkeypatch):
    # 40 test rows in blocks of 16: one loader batch of 2 full blocks and the short last one (--batch-size 48),
    # against one block per batch (--batch-size 16).
    opts = lambda out, batch: GenerateOptions(data=str(tiny_cifar_dir), out=str(out), teachers=(str(teacher),),
                                              split="test", views="identity", temperature=2.0, device="cpu",
                                              block_rows=16, batch_size=batch, logits=True, features=("pool",))
    import labelopt.pipeline.jobs.labeling as labeling
    real, seen = labeling.label_block, []
    monkeypatch.setattr(labeling, "label_block", lambda *a: seen.append(a[4].shape[0]) or real(*a))
    generate_labels(opts(tmp_path / "wide.h5", 48), log=quiet)
    assert seen == [40]
    generate_labels(opts(tmp_path / "narrow.h5", 16), log=quiet)
    assert seen == [40, 16, 16, 8]
    wide, narrow = LabelStore.open(tmp_path / "wide.h5"), LabelStore.open(tmp_path / "narrow.h5")
    idx = torch.arange(40)
    for signal in ("targets", "logits", "features:pool"):
        wide.load((signal,)), narrow.load((signal,))
        assert torch.allclose(wide.gather(idx, None, signal), narrow.gather(idx, None, signal), atol=2e-3), signal
    with h5py.File(tmp_path / "wide.h5") as f, h5py.File(tmp_path / "narrow.h5") as g:
        assert np.array_equal(f["labels"][:], g["labels"][:])
    data = open_dataset(tiny_cifar_dir)
    images = torch.cat([x for x, _, _ in make_loader(data, "test", 64, shuffle=False).epoch(0)])
    assert torch.allclose(wide.gather(idx, None), direct_probs(teacher, data, images, 2.0), atol=2e-3)


def test_blocks_of_few_views_hold_at_least_1024_rows_unless_given(teacher, tiny_cifar_dir, tmp_path):
    from labelopt.pipeline.jobs.labeling import default_block_rows

    assert [default_block_rows(v) for v in (1, 2, 3, 4, 5, 162)] == [1024, 512, 512, 256, 256, 256]
    for given, recorded in ((None, "--block-rows 1024"), (8, "--block-rows 8")):
        out = tmp_path / f"blocks-{given}.h5"
        generate_labels(GenerateOptions(data=str(tiny_cifar_dir), out=str(out), teachers=(str(teacher),),
                                        split="test", device="cpu", block_rows=given), log=quiet)
        assert recorded in LabelStore.open(out).generator["command"]
        with h5py.File(out) as f:  # a block is a chunk: the 40 rows in one, or in 8-row chunks
            assert f["targets"].chunks[0] == (40 if given is None else 8)


@pytest.mark.slow
def test_random_and_ensemble_methods(teacher, tiny_cifar_dir, tmp_path):
    generate_labels(GenerateOptions(data=str(tiny_cifar_dir), out=str(tmp_path / "r.h5"), method="random",
                                    seed=3, device="cpu"), log=quiet)
    store = LabelStore.open(tmp_path / "r.h5")
    probs = store.gather(torch.arange(96), None)
    assert torch.allclose(probs.sum(1), torch.ones(96), atol=1e-2) and probs.std(0).mean() > 0.01
    generate_labels(GenerateOptions(data=str(tiny_cifar_dir), out=str(tmp_path / "e.h5"), method="sl-ens",
                                    teachers=(str(teacher), str(teacher)), device="cpu"), log=quiet)
    single = tmp_path / "s.h5"
    generate_labels(GenerateOptions(data=str(tiny_cifar_dir), out=str(single), teachers=(str(teacher),),
                                    device="cpu"), log=quiet)
    ens, one = LabelStore.open(tmp_path / "e.h5"), LabelStore.open(single)
    assert len(ens.generator["teachers"]) == 2
    assert torch.allclose(ens.gather(torch.arange(96), None), one.gather(torch.arange(96), None), atol=1e-3)


@pytest.mark.slow
def test_sl_enc_labels_follow_prototypes_as_confident_as_the_teacher(teacher, tiny_cifar_dir, tmp_path):
    from labelopt.pipeline.data.datasets import open_dataset
    from labelopt.pipeline.data.loading import make_loader
    from labelopt.pipeline.run.checkpoints import load_teachers
    from labelopt.stages.labelers import mean_confidence

    generate_labels(GenerateOptions(data=str(tiny_cifar_dir), out=str(tmp_path / "enc.h5"), method="sl-enc",
                                    teachers=(str(teacher),), temperature=2.0, logits=True, device="cpu"), log=quiet)
    store = LabelStore.open(tmp_path / "enc.h5")
    scale = store.generator["options"]["cosine_scale"]
    logits = store.gather(torch.arange(96), None, "logits")
    spread = (logits * scale).amax(1) - (logits * scale).amin(1)
    assert spread.max() <= 2.0 + 1e-2 and logits.mean(1).abs().max() < 1e-2  # centred cosines, on a new scale
    probs = store.gather(torch.arange(96), None)
    assert torch.allclose(probs, torch.softmax(logits / 2.0, 1), atol=5e-3)
    # At T = 1 the encoder's classifier is as confident on the training split as the teacher's own classifier.
    data = open_dataset(tiny_cifar_dir)
    images, _, indices = next(iter(make_loader(data, "train", 96, shuffle=False).epoch(0)))
    teacher_logits, _ = load_teachers([str(teacher)], data, torch.device("cpu"))[0].outputs(images)
    assert mean_confidence(logits[indices]) == pytest.approx(mean_confidence(teacher_logits), abs=2e-3)


def test_the_scale_for_a_confidence_inverts_it():
    from labelopt.stages.labelers import mean_confidence, scale_for_confidence

    scores = torch.rand(500, 7, generator=torch.Generator().manual_seed(0)) * 2 - 1
    for target in (0.2, 0.5, 0.9, 0.999):
        assert mean_confidence(scores / scale_for_confidence(scores, target)) == pytest.approx(target, abs=1e-6)
    assert scale_for_confidence(scores, 1 / 7 - 0.01) == pytest.approx(100.0, rel=1e-6)  # below uniform: the bound


def test_a_mix_store_whose_partner_pixels_do_not_fit_in_memory_is_refused(teacher, tiny_cifar_dir, tmp_path,
                                                                          monkeypatch):
    from labelopt.pipeline.data import pixel_bank

    monkeypatch.setattr(pixel_bank, "available_memory_bytes", lambda: 100_000)  # the split needs 96 x 3 KiB
    code, out = run_cli("generate-labels", "--data", tiny_cifar_dir, "--device", "cpu", "--teacher", teacher,
                        "--views", "mix:cutmix:2", "--out", tmp_path / "mix.h5")
    assert code != 0 and "decoded pixels in memory" in out and "0.0 GiB is available" in out, out
    assert "Traceback" not in out and not (tmp_path / "mix.h5").exists()
    assert not any(tmp_path.iterdir())  # no partial store either


def run_cli(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


def test_refusals(teacher, tiny_cifar_dir, tmp_path):
    body = torch.load(teacher, weights_only=True)
    other = tmp_path / "c100.pt"
    save_checkpoint(other, {k: v for k, v in body.items() if k not in ("format", "version")} | {
        "num_classes": 100, "model": create_model("resnet20", 100).state_dict()})
    base = ["generate-labels", "--data", tiny_cifar_dir, "--device", "cpu"]
    cases = [
        (["--teacher", other, "--out", tmp_path / "a.h5"], "trained for 100 classes but the data has 10"),
        (["--method", "sl-ens", "--teacher", teacher, "--out", tmp_path / "b.h5"], "two or more --teacher"),
        (["--teacher", teacher, "--features", "stage2", "--out", tmp_path / "c.h5"], "only 1-D embeddings"),
        (["--teacher", teacher, "--method", "distill", "--out", tmp_path / "d.h5"],
         "'distill' is not one of 'sl', 'sl-ens', 'sl-enc', 'random'"),
        (["--teacher", teacher, "--views", "sampled:x", "--out", tmp_path / "e.h5"], "K must be an integer in [1, 10,000]"),
        (["--teacher", teacher, "--views", "sampled:99999999999", "--out", tmp_path / "e.h5"],
         "'sampled:99999999999': K must be an integer in [1, 10,000]"),
        (["--teacher", teacher, "--batch-size", "0", "--out", tmp_path / "f.h5"], "'--batch-size': '0' is out of range"),
        (["--teacher", teacher, "--views", "mix:cutmix:0", "--out", tmp_path / "g.h5"], "K must be an integer in [1, 10,000]"),
        (["--teacher", teacher, "--views", "mix:cutout:3", "--out", tmp_path / "h.h5"], "'mix:cutout:3' is not one of"),
        (["--teacher", teacher, "--views", "mix:mixup:2", "--mix-alpha", "0", "--out", tmp_path / "i.h5"],
         "'--mix-alpha': '0' is out of range"),
        (["--teacher", teacher, "--views", "mix:mixup:2", "--mix-alpha", "-1", "--out", tmp_path / "i.h5"],
         "'--mix-alpha': '-1' is out of range"),
        (["--teacher", teacher, "--views", "identity", "--mix-alpha", "0.5", "--out", tmp_path / "j.h5"],
         "--views identity mixes nothing"),
    ]
    for args, message in cases:
        code, out = run_cli(*base, *args)
        assert code != 0 and message in out and "Traceback" not in out, (args, out)
    code, out = run_cli(*base, "--teacher", teacher, "--out", tmp_path / "ok.h5")
    assert code == 0, out
    before = (tmp_path / "ok.h5").read_bytes()
    code, out = run_cli(*base, "--teacher", teacher, "--out", tmp_path / "ok.h5")
    assert code != 0 and "--overwrite" in out and (tmp_path / "ok.h5").read_bytes() == before


def store_datasets(path):
    with h5py.File(path, "r") as f:
        out = {}
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
        return out, {k: f.attrs[k] for k in f.attrs if k not in ("created_utc", "digest")}  # the digest covers the time


def torchrun_labelling(teacher, data) -> list[str]:
    """The generate-labels command the torchrun tests run (less --out): several blocks, views, logits, features."""
    return ["generate-labels", "--data", str(data), "--split", "test", "--teacher", str(teacher),
            "--views", "sampled:3", "--seed", "5", "--temperature", "2", "--features", "pool", "--logits",
            "--device", "cpu", "--batch-size", "32", "--block-rows", "8"]


@pytest.fixture(scope="module")
def one_process_store(teacher, tiny_cifar_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("one-process") / "one.h5"
    labelopt = Path(sys.executable).with_name("labelopt")
    one = subprocess.run([str(labelopt), *torchrun_labelling(teacher, tiny_cifar_dir), "--out", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    return out


def assert_same_store(path_a, path_b):
    (a, attrs_a), (b, attrs_b) = store_datasets(path_a), store_datasets(path_b)
    assert sorted(a) == sorted(b) and attrs_a == attrs_b
    for name in a:
        assert np.array_equal(a[name], b[name]), name


@pytest.mark.slow
def test_torchrun_two_processes_write_the_same_store_as_one(teacher, tiny_cifar_dir, one_process_store, tmp_path):
    labelopt = Path(sys.executable).with_name("labelopt")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = subprocess.run([str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc-per-node", "2",
                          "--no-python", str(labelopt), *torchrun_labelling(teacher, tiny_cifar_dir),
                          "--out", str(tmp_path / "two.h5")], capture_output=True, text=True, env=env, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    assert_same_store(one_process_store, tmp_path / "two.h5")
    assert not list(tmp_path.glob(".*partial*"))


@pytest.mark.slow
def test_torchrun_sl_enc_shares_the_prototype_pass_and_labels_as_one_process(teacher, tiny_cifar_dir, tmp_path):
    """Each rank embeds its share of the training split; the summed prototypes and rank 0's fitted scale label
    as one process does (to float16, the sums' order aside)."""
    command = ["generate-labels", "--data", str(tiny_cifar_dir), "--teacher", str(teacher), "--method", "sl-enc",
               "--device", "cpu", "--batch-size", "16", "--block-rows", "16"]
    labelopt = Path(sys.executable).with_name("labelopt")
    one = subprocess.run([str(labelopt), *command, "--out", str(tmp_path / "one.h5")], capture_output=True,
                         text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc-per-node", "2",
                          "--no-python", str(labelopt), *command, "--out", str(tmp_path / "two.h5")],
                         capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stderr.count("sl-enc cosine scale") == 1  # fitted once, on rank 0
    a, b = LabelStore.open(tmp_path / "one.h5"), LabelStore.open(tmp_path / "two.h5")
    assert a.generator["options"]["cosine_scale"] == b.generator["options"]["cosine_scale"]
    rows = torch.arange(a.num_samples)
    assert torch.allclose(a.gather(rows), b.gather(rows), atol=1e-3)


@pytest.mark.slow
def test_two_nodes_write_the_same_store_as_one_process(teacher, tiny_cifar_dir, one_process_store, tmp_path):
    """Two torchrun agents as two nodes (one process each) on one shared filesystem: one store, rank 0's."""
    out = tmp_path / "store" / "two.h5"
    (code0, log0), (code1, log1) = run_two_nodes(lambda node: [*torchrun_labelling(teacher, tiny_cifar_dir),
                                                               "--out", out], tmp_path / "logs")
    assert code0 == 0 and code1 == 0, (log0[-3000:], log1[-3000:])
    assert "generate-labels: 2 processes on 2 nodes (gloo), 5 blocks split between them" in log0
    assert "blocks split" not in log1  # rank 1, the second node's, logs nothing of its own
    assert_same_store(one_process_store, out)
    assert sorted(p.name for p in out.parent.iterdir()) == ["two.h5"]  # no partial folder, mark or lock left


@pytest.mark.slow
def test_two_nodes_that_do_not_share_the_stores_folder_are_refused_before_labelling(teacher, tiny_cifar_dir,
                                                                                   tmp_path):
    """Each node with its own disk at --out (simulated: two folders) would write blocks rank 0 never sees."""
    outs = [tmp_path / f"node{node}" / "s.h5" for node in (0, 1)]
    results = run_two_nodes(lambda node: [*torchrun_labelling(teacher, tiny_cifar_dir), "--out", outs[node]],
                            tmp_path / "logs", timeout=120)
    for code, log in results:
        assert code != 0 and "rank 1 (node 1, " in log and "must be on a filesystem every node shares" in log, log
    assert [list(out.parent.iterdir()) for out in outs] == [[], []]  # nothing written on either "node"

@pytest.mark.slow
def test_channels_last_and_a_compiled_teacher_label_as_the_eager_one(teacher, tiny_cifar_dir, tmp_path):
    """--channels-last and --compile change how the teacher runs, not its answers (float rounding aside); the card's
    command names them; with --features the teacher stays eager and says so."""
    made = {}
    for name, extra in (("eager", {}), ("fast", {"channels_last": True, "compile": True})):
        made[name] = tmp_path / f"{name}.h5"
        generate_labels(GenerateOptions(data=str(tiny_cifar_dir), out=str(made[name]), teachers=(str(teacher),),
                                        split="test", views="identity", logits=True, device="cpu", **extra),
                        log=quiet)
    eager, fast = (LabelStore.open(made[k]) for k in ("eager", "fast"))
    rows = torch.arange(eager.num_samples)
    for signal in ("targets", "logits"):
        assert torch.allclose(eager.gather(rows, None, signal), fast.gather(rows, None, signal), atol=2e-3, rtol=0)
    assert "--channels-last --compile" in fast.generator["command"]
    assert fast.generator["options"]["channels_last"] and fast.generator["options"]["compile"]
    lines = []
    generate_labels(GenerateOptions(data=str(tiny_cifar_dir), out=str(tmp_path / "taps.h5"), teachers=(str(teacher),),
                                    split="test", features=("pool",), compile=True, device="cpu"), log=lines.append)
    assert any("the teacher runs eager" in line for line in lines)


def test_a_compiled_teacher_sees_one_batch_shape_and_short_slices_come_back_whole():
    """--compile feeds the teacher --batch-size rows at every call (one compile, one CUDA graph): a short slice is
    padded with zeros, keeps its memory layout, and only its own rows come back."""
    from labelopt.pipeline.jobs.labeling import FixedRows

    seen = []
    conv = torch.nn.Conv2d(3, 4, 3)

    def teacher(images):
        seen.append((images.shape[0], images.is_contiguous(memory_format=torch.channels_last)))
        return conv(images).mean((2, 3))

    wrapped = FixedRows(teacher, rows=8)
    images = torch.randn(3, 3, 6, 6).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert torch.allclose(wrapped(images), conv(images).mean((2, 3)), atol=1e-6)
        assert wrapped(torch.randn(8, 3, 6, 6)).shape == (8, 4)
    assert seen == [(8, True), (8, False)]
