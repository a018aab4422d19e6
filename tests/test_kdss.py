"""`kdss` (SSKD): the rotation layout, every loss term against numpy, the two phases' gradients, an end-to-end run."""
import json

import numpy as np
import pytest
import torch

import labelopt.stages.distillers
from labelopt.models import create_model
from labelopt.pipeline.run.runtime import seed_everything
from labelopt.pipeline.jobs.student import StudentOptions, train_student
from labelopt.pipeline.run.options import TrainOptions
from labelopt.pipeline.run.training import train
from labelopt.stages.distillers import DistillContext
from labelopt.stages.distillers.kdss import SelfSupervisedKD, kept_rows
from labelopt.stages.batch import ViewedBatch

B, CLASSES, S_DIM, T_DIM = 3, 5, 4, 6


def quiet(_):
    pass


def make(**options):
    context = DistillContext(CLASSES, student_shapes={"pool": (S_DIM,)}, teacher_shapes={"pool": (T_DIM,)})
    return SelfSupervisedKD(context, **options)


# ---- numpy references ----------------------------------------------------------------------------------------

def np_log_softmax(z):
    z = z - z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


def np_head(x, head):
    w1, b1, w2, b2 = (p.detach().numpy().astype(np.float64) for p in head.parameters())
    return np.maximum(x @ w1.T + b1, 0.0) @ w2.T + b2


def np_similarity(z):
    """S[r, j] = cos(rotated r, original j), rows in block order."""
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    return z[B:] @ z[:B].T


def np_kept(scores, targets, keep_wrong):
    """The selection rule written out: right rows, then the best-ranked share of the wrong ones."""
    ranks = [int((row > row[t]).sum()) for row, t in zip(scores, targets)]
    right = [r for r, k in enumerate(ranks) if k == 0]
    wrong = sorted((k, r) for r, k in enumerate(ranks) if k > 0)
    return sorted(right + [r for _, r in wrong[:int(len(wrong) * keep_wrong)]]), len(right)


def np_kd(student, teacher, temperature, rows):
    log_s, log_t = np_log_softmax(student[rows] / temperature), np_log_softmax(teacher[rows] / temperature)
    return (np.exp(log_t) * (log_t - log_s)).sum(1).mean() * temperature ** 2


def fixed_inputs(seed=0):
    rng = np.random.default_rng(seed)
    arrays = {"s_logits": rng.standard_normal((4 * B, CLASSES)), "t_logits": 2 * rng.standard_normal((4 * B, CLASSES)),
              "s_pool": rng.standard_normal((4 * B, S_DIM)), "t_pool": np.abs(rng.standard_normal((4 * B, T_DIM)))}
    labels = np.tile(np.array([1, 4, 0]), 4)
    return arrays, labels


def torch_inputs(arrays, labels):
    """Leaf tensors that all ask for gradients, so a test can see which of them get one."""
    t = {k: torch.tensor(v, dtype=torch.float32, requires_grad=True) for k, v in arrays.items()}
    batch = ViewedBatch(torch.zeros(4 * B, 3, 8, 8, dtype=torch.uint8), torch.tensor(labels),
                        torch.arange(B).repeat(4))
    return t, batch


def run(distiller, t, batch):
    return distiller(t["s_logits"], {"pool": t["s_pool"]},
                     {"logits": t["t_logits"], "features:pool": t["t_pool"]}, batch)


# ---- expand ------------------------------------------------------------------------------------------------------

def test_expand_appends_the_three_rotations_in_blocks():
    images = torch.arange(2 * 3 * 4 * 4, dtype=torch.uint8).reshape(2, 3, 4, 4)
    inputs = images.float() / 7.0
    batch = ViewedBatch(images, torch.tensor([5, 2]), torch.tensor([10, 11]), torch.tensor([0, 3]))
    out_inputs, out = make().expand(inputs, batch)
    assert out.images.shape == (8, 3, 4, 4) and out.images.dtype == torch.uint8
    for k in range(4):
        assert torch.equal(out.images[2 * k:2 * k + 2], torch.rot90(images, k, dims=(2, 3)))
        assert torch.equal(out_inputs[2 * k:2 * k + 2], torch.rot90(inputs, k, dims=(2, 3)))
        # the same turn as numpy's rot90 of an HWC image (what the authors' loader does)
        hwc = np.rot90(images[1].permute(1, 2, 0).numpy(), k)
        assert np.array_equal(out.images[2 * k + 1].permute(1, 2, 0).numpy(), hwc)
    assert out.images[2, 0, 0, 0] == images[0, 0, 0, 3]  # 90 degrees: the top row comes from the right column
    assert out.labels.tolist() == [5, 2] * 4 and out.indices.tolist() == [10, 11] * 4
    assert out.views.tolist() == [0, 3] * 4
    assert make().expand(inputs, ViewedBatch(images, batch.labels, batch.indices))[1].views is None


def test_expand_turns_block_k_of_four_views_by_k_quarter_turns():
    views = torch.arange(8 * 3 * 4 * 4, dtype=torch.uint8).reshape(8, 3, 4, 4)  # 4 copies of 2 images, in blocks
    batch = ViewedBatch(views, torch.tensor([5, 2]), torch.tensor([10, 11]))
    out_inputs, out = make().expand(views.float(), batch)
    for k in range(4):
        assert torch.equal(out.images[2 * k:2 * k + 2], torch.rot90(views[2 * k:2 * k + 2], k, dims=(2, 3)))
    assert torch.equal(out_inputs, out.images.float())
    assert out.labels.tolist() == [5, 2] * 4 and out.indices.tolist() == [10, 11] * 4
    with pytest.raises(ValueError, match="expects 2 or 8 views"):
        make().expand(views[:6].float(), ViewedBatch(views[:6], batch.labels, batch.indices))


def copies_of(sampler, images, seed):
    """The sampler's viewed rows for `images`, as [copy, image, ...]."""
    viewed = sampler.draw(images, torch.arange(len(images)), torch.Generator().manual_seed(seed)).images
    return viewed.reshape(-1, *images.shape)


def np_pad_crop(image, dy, dx, flip):
    """A CHW image zero-padded by 4, the 8 x 8 window at (dy, dx), mirrored left-right when `flip`."""
    window = np.pad(image, ((0, 0), (4, 4), (4, 4)))[:, dy:dy + 8, dx:dx + 8]
    return window[:, :, ::-1] if flip else window


def test_each_rotated_copy_gets_its_own_crop_and_the_image_s_one_flip():
    """crop_each_rotation 1 (default): the sampler draws four views per image, each a pad-4 crop of its own and
    all with one flip (the authors' loader); 0: one view, the same crop in all four blocks."""
    from labelopt.pipeline.views.draws import AugmentViews, CopiedViews, with_copies
    from labelopt.pipeline.views.policies import PadCropFlipView

    images = torch.tensor(np.random.default_rng(0).integers(1, 255, (16, 3, 8, 8)), dtype=torch.uint8)
    plain = AugmentViews(PadCropFlipView(pad=4))
    assert make().views_per_sample == 4 and make(crop_each_rotation=0).views_per_sample == 1
    per_copy = with_copies(plain, make().views_per_sample)
    assert isinstance(per_copy, CopiedViews)
    assert with_copies(plain, make(crop_each_rotation=0).views_per_sample) is plain
    viewed = copies_of(per_copy, images, seed=4).numpy()
    windows = {(dy, dx, f) for dy in range(9) for dx in range(9) for f in (0, 1)}
    differ, flips = 0, set()
    for i, image in enumerate(images.numpy()):
        found = [{w for w in windows if np.array_equal(np_pad_crop(image, *w), viewed[k, i])} for k in range(4)]
        assert all(len(f) == 1 for f in found), i  # every copy is one pad-4 crop (+ flip) of its own image
        first, *rest = [f.pop() for f in found]
        assert all(w[2] == first[2] for w in rest)  # one flip for all copies of an image
        differ += sum(w[:2] != first[:2] for w in rest)
        flips.add(first[2])
    assert differ >= 40  # of 48 copies after the first: independent offsets, 1 in 81 equal by chance
    assert flips == {0, 1}  # the flip itself is drawn per image
    assert np.array_equal(copies_of(per_copy, images, seed=4), viewed)  # a pure function of the view generator

    one_view = plain.draw(images, torch.arange(16), torch.Generator().manual_seed(4)).images
    out_inputs, out = make(crop_each_rotation=0).expand(one_view.float(), ViewedBatch(one_view, torch.zeros(16),
                                                                                       torch.arange(16)))
    for k in range(4):  # the old option: the one view, turned
        assert torch.equal(out.images[16 * k:16 * (k + 1)], torch.rot90(one_view, k, dims=(2, 3)))


def test_copies_need_freshly_drawn_views():
    from labelopt.pipeline.errors import UserError
    from labelopt.pipeline.views.draws import AugmentViews, with_copies
    from labelopt.pipeline.views.policies import IdentityView

    with pytest.raises(UserError, match="freshly drawn views"):
        with_copies(AugmentViews(IdentityView(), store_view=0), 4)


def test_expand_refuses_images_that_are_not_square():
    images = torch.zeros(1, 3, 4, 6, dtype=torch.uint8)
    with pytest.raises(ValueError, match="square"):
        make().expand(images.float(), ViewedBatch(images, torch.tensor([0]), torch.tensor([0])))


# ---- the selection rule ----------------------------------------------------------------------------------------

def test_selection_keeps_right_rows_and_the_best_ranked_share_of_wrong_ones():
    scores = torch.tensor([[3.0, 1.0, 2.0], [3.0, 1.0, 2.0], [3.0, 1.0, 2.0], [1.0, 2.0, 3.0], [2.0, 2.0, 1.0]])
    targets = torch.tensor([0, 1, 2, 0, 1])  # ranks 0, 2, 1, 2 and 0 (a tie for the top counts as right)
    assert kept_rows(scores, targets, 1.0).tolist() == [0, 1, 2, 3, 4]
    assert kept_rows(scores, targets, 0.75).tolist() == [0, 1, 2, 4]  # floor(2.25) = 2: rank 1, then row order
    assert kept_rows(scores, targets, 0.5).tolist() == [0, 2, 4]
    assert kept_rows(scores, targets, 0.0).tolist() == [0, 4]


# ---- the losses against numpy ------------------------------------------------------------------------------------

def test_student_phase_terms_match_numpy():
    arrays, labels = fixed_inputs()
    distiller = make(warmup_epochs=1, tf_keep_wrong=0.5)
    distiller.set_epoch(1)
    t, batch = torch_inputs(arrays, labels)
    parts = run(distiller, t, batch)

    s, tl = arrays["s_logits"], arrays["t_logits"]
    ce = -np_log_softmax(s[:B])[np.arange(B), labels[:B]].mean()
    kd = np_kd(s, tl, 4.0, list(range(B)))
    tf_rows, tf_right = np_kept(tl[B:], labels[B:], 0.5)
    assert tf_right < len(tf_rows) < 3 * B  # the rule drops some wrong rows here, and keeps some
    tf = np_kd(s[B:], tl[B:], 4.0, tf_rows)
    t_sim = np_similarity(np_head(arrays["t_pool"], distiller.teacher_head))
    s_sim = np_similarity(np_head(arrays["s_pool"], distiller.student_head))
    ss_rows, ss_right = np_kept(t_sim, np.arange(3 * B) % B, 0.75)
    assert ss_right < len(ss_rows) < 3 * B
    ss = np_kd(s_sim, t_sim, 0.5, ss_rows)

    for name, want in (("ce", ce), ("kd", kd), ("tf", tf), ("ss", ss)):
        assert parts[name].item() == pytest.approx(want, rel=1e-4), name
    assert parts["loss"].item() == pytest.approx(0.1 * ce + 0.9 * kd + 2.7 * tf + 10.0 * ss, rel=1e-4)


def test_options_reweight_the_terms():
    arrays, labels = fixed_inputs(1)
    base, custom = make(warmup_epochs=0), make(warmup_epochs=0, ce_weight=1.0, kd_weight=0.0, tf_weight=0.5,
                                               ss_weight=2.0, tf_temperature=2.0, ss_temperature=1.0)
    custom.load_state_dict(base.state_dict())
    t, batch = torch_inputs(arrays, labels)
    parts = run(custom, t, batch)
    tl = arrays["t_logits"]
    tf = np_kd(arrays["s_logits"][B:], tl[B:], 2.0, np_kept(tl[B:], labels[B:], 1.0)[0])
    t_sim = np_similarity(np_head(arrays["t_pool"], custom.teacher_head))
    s_sim = np_similarity(np_head(arrays["s_pool"], custom.student_head))
    ss = np_kd(s_sim, t_sim, 1.0, np_kept(t_sim, np.arange(3 * B) % B, 0.75)[0])
    assert parts["tf"].item() == pytest.approx(tf, rel=1e-4) and parts["ss"].item() == pytest.approx(ss, rel=1e-4)
    assert parts["loss"].item() == pytest.approx(parts["ce"].item() + 0.5 * tf + 2.0 * ss, rel=1e-4)


@pytest.mark.parametrize("options, temperature", [({}, 1.0), ({"head_temperature": 0.5}, 0.5)])
def test_warmup_phase_is_the_teacher_heads_contrastive_loss(options, temperature):
    """Default: CE over the plain cosines (the authors' code); head_temperature 0.5 divides them (the paper's)."""
    arrays, labels = fixed_inputs()
    distiller = make(warmup_epochs=2, **options)
    distiller.set_epoch(1)
    t, batch = torch_inputs(arrays, labels)
    parts = run(distiller, t, batch)
    sim = np_similarity(np_head(arrays["t_pool"], distiller.teacher_head)) / temperature
    want = -np_log_softmax(sim)[np.arange(3 * B), np.arange(3 * B) % B].mean()
    assert set(parts) == {"loss", "head"}  # no student term
    assert parts["loss"].item() == pytest.approx(want, rel=1e-4)


def test_warmup_lr_follows_the_authors_head_schedule():
    assert make().warmup_milestones == (30, 45)  # 60 epochs: x gamma at 30 and 45
    assert make(warmup_epochs=8).warmup_milestones == (4, 6)
    assert make(warmup_epochs=1).warmup_milestones == () and make(warmup_epochs=0).warmup_milestones == ()


def test_refuses_bad_options_and_missing_shapes():
    for bad in ({"ss_keep_wrong": 1.5}, {"tf_temperature": 0.0}, {"warmup_epochs": 1.5}, {"warmup_epochs": -1},
                {"crop_each_rotation": 0.5}):
        with pytest.raises(ValueError):
            make(**bad)
    with pytest.raises(ValueError, match="pool"):
        SelfSupervisedKD(DistillContext(CLASSES, student_shapes={"pool": (S_DIM,)}))


# ---- which tensors get gradients in each phase ----------------------------------------------------------------------

def grads(module):
    return [p.grad for p in module.parameters()]


@pytest.mark.parametrize("warmup", [True, False])
def test_gradients_reach_only_the_phase_s_trainables(warmup):
    arrays, labels = fixed_inputs()
    distiller = make(warmup_epochs=1)
    distiller.set_epoch(0 if warmup else 1)
    assert distiller.in_warmup == warmup
    t, batch = torch_inputs(arrays, labels)
    run(distiller, t, batch)["loss"].backward()
    assert t["t_logits"].grad is None and t["t_pool"].grad is None  # the teacher's tensors, in both phases
    if warmup:
        assert all(g is not None and g.abs().sum() > 0 for g in grads(distiller.teacher_head))
        assert all(g is None for g in grads(distiller.student_head))
        assert t["s_logits"].grad is None and t["s_pool"].grad is None
    else:
        assert all(g is None for g in grads(distiller.teacher_head))  # frozen: SGD skips it
        assert all(g is not None and g.abs().sum() > 0 for g in grads(distiller.student_head))
        assert t["s_logits"].grad.abs().sum() > 0 and t["s_pool"].grad.abs().sum() > 0
        assert t["s_logits"].grad[B:].abs().sum() > 0  # the rotated rows train the student too


# ---- end to end ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def teacher(tiny_cifar_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("kdss-teacher") / "run"
    train(TrainOptions(data=str(tiny_cifar_dir), arch="resnet20", out=str(out), epochs=1, batch_size=32,
                       device="cpu"), log=quiet)
    return out / "last.pt"


def params(state, prefix=""):
    return {k: v.clone() for k, v in state.items() if k.startswith(prefix)}


@pytest.mark.slow
def test_train_student_runs_the_warmup_then_the_student(teacher, tiny_cifar_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(labelopt.stages.distillers.DISTILLERS, SelfSupervisedKD.name, SelfSupervisedKD)
    heads_at_start = {}
    real_set_epoch = SelfSupervisedKD.set_epoch

    def set_epoch(self, epoch):
        heads_at_start[epoch] = params(self.state_dict())
        real_set_epoch(self, epoch)

    monkeypatch.setattr(SelfSupervisedKD, "set_epoch", set_epoch)
    out = tmp_path / "kdss"
    after_warmup = {}

    def on_epoch_end(epoch):
        if epoch == 0:
            after_warmup.update(torch.load(out / "last.pt", weights_only=True))

    options = StudentOptions(data=str(tiny_cifar_dir), arch="resnet20", out=str(out), epochs=1, batch_size=32,
                             seed=3, device="cpu", method="kdss", teachers=(str(teacher),),
                             method_options={"warmup_epochs": 1})
    train_student(options, on_epoch_end=on_epoch_end, log=quiet)

    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["phase"] for line in lines] == ["warmup", "train"]
    assert json.loads((out / "config.json").read_text())["views"]["copies"] == 4  # a crop per rotated copy
    last = torch.load(out / "last.pt", weights_only=True)
    extra = last["training"]["extra"]
    assert any(k.startswith("teacher_head.") for k in extra) and any(k.startswith("student_head.") for k in extra)

    def same(a, b):
        return all(torch.equal(a[k], b[k]) for k in a)

    warm_extra, start = after_warmup["training"]["extra"], heads_at_start[0]
    assert not same(params(warm_extra, "teacher_head."), params(start, "teacher_head."))  # warm-up trains it
    assert same(params(warm_extra, "student_head."), params(start, "student_head."))
    assert same(params(extra, "teacher_head."), params(warm_extra, "teacher_head."))  # then it is frozen
    assert not same(params(extra, "student_head."), params(warm_extra, "student_head."))

    seed_everything(3)  # the student's initial weights, as train_student draws them
    model = create_model("resnet20", 10)
    names, initial = {name for name, _ in model.named_parameters()}, model.state_dict()
    assert same(initial, after_warmup["model"])  # untouched in warm-up, BatchNorm statistics included
    assert not same({k: last["model"][k] for k in names}, {k: initial[k] for k in names})
