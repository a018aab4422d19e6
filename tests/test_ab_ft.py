"""AB and FT, the two-phase distillers: losses against numpy, what each phase trains, end-to-end runs."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import labelopt.stages.distillers
from labelopt.models import FeatureTaps, create_model, feature_shapes
from labelopt.pipeline.run.runtime import seed_everything
from labelopt.pipeline.run.schedules import Schedule
from labelopt.pipeline.jobs.student import StudentOptions, train_student
from labelopt.pipeline.run.options import TrainOptions
from labelopt.pipeline.run.training import train
from labelopt.stages.distillers import FEATURE_PREFIX, DistillContext
from labelopt.stages.distillers.ab import ActivationBoundaries
from labelopt.stages.distillers.ft import FactorTransfer
from labelopt.stages.batch import ViewedBatch
from labelopt.tests.distill_fakes import term_trace

B = 4
SEED = 3


def quiet(_):
    pass


@pytest.fixture(autouse=True)
def registered(monkeypatch):
    for cls in (ActivationBoundaries, FactorTransfer):
        monkeypatch.setitem(labelopt.stages.distillers.DISTILLERS, cls.name, cls)


# ---- small fixed inputs and numpy references -------------------------------------------------------------------

def build(cls, s_shapes, t_shapes, seed=0, **options):
    """The distiller with known parameter values, torch inputs (teacher keyed as signals) and their numpy copies."""
    rng = np.random.default_rng(seed)
    s_np = {k: (1.5 * rng.standard_normal((B, *v))).astype(np.float32) for k, v in s_shapes.items()}
    t_np = {k: (1.5 * rng.standard_normal((B, *v))).astype(np.float32) for k, v in t_shapes.items()}
    distiller = cls(DistillContext(10, student_shapes=s_shapes, teacher_shapes=t_shapes), **options)
    with torch.no_grad():
        for p in distiller.parameters():
            p.copy_(torch.tensor(rng.uniform(-0.6, 0.6, p.shape), dtype=torch.float32))
    student = {k: torch.tensor(v, requires_grad=True) for k, v in s_np.items()}
    teacher = {FEATURE_PREFIX + k: torch.tensor(v, requires_grad=True) for k, v in t_np.items()}
    logits = torch.tensor(rng.standard_normal((B, 10)).astype(np.float32), requires_grad=True)
    batch = ViewedBatch(torch.zeros(B, 3, 8, 8, dtype=torch.uint8), torch.tensor([1, 0, 7, 3]), torch.arange(B))
    return distiller, student, teacher, s_np, t_np, logits, batch


def np_ce_grad(logits, labels):
    """d CE / d logits, written out: (softmax - one-hot) / batch."""
    z = logits.detach().numpy().astype(np.float64)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(len(z)), labels.numpy()] -= 1.0
    return torch.tensor(p / len(z), dtype=torch.float32)


def params(module):
    return {k: v.detach().numpy().astype(np.float64) for k, v in module.state_dict().items()}


def np_batchnorm(y, w, b, eps=1e-5):
    """Train-mode BatchNorm: batch statistics, biased variance."""
    mean, var = y.mean((0, 2, 3), keepdims=True), y.var((0, 2, 3), keepdims=True)
    return (y - mean) / np.sqrt(var + eps) * w[:, None, None] + b[:, None, None]


def np_batchnorm_eval(y, p, prefix, eps=1e-5):
    """Eval-mode BatchNorm: the running statistics."""
    mean, var = p[prefix + "running_mean"][:, None, None], p[prefix + "running_var"][:, None, None]
    return (y - mean) / np.sqrt(var + eps) * p[prefix + "weight"][:, None, None] + p[prefix + "bias"][:, None, None]


def np_conv3x3(x, w, bias=None):
    """Stride 1, zero padding 1: out[o, i, j] = sum_c,a,b xpad[c, i + a, j + b] w[o, c, a, b] (+ bias[o])."""
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    h, wd = x.shape[-2:]
    out = np.zeros((len(x), w.shape[0], h, wd))
    for a in range(3):
        for c in range(3):
            out += np.einsum("bkhw,ok->bohw", xp[:, :, a:a + h, c:c + wd], w[:, :, a, c])
    return out if bias is None else out + bias[:, None, None]


def np_conv_transpose3x3(x, w, bias=None):
    """Stride 1, padding 1, by scattering: input (p, q) adds x * w[c, o, a, b] to output (p + a - 1, q + b - 1)."""
    h, wd = x.shape[-2:]
    full = np.zeros((len(x), w.shape[1], h + 2, wd + 2))
    for a in range(3):
        for c in range(3):
            full[:, :, a:a + h, c:c + wd] += np.einsum("bkhw,ko->bohw", x, w[:, :, a, c])
    out = full[:, :, 1:-1, 1:-1]
    return out if bias is None else out + bias[:, None, None]


def leaky(x):
    return np.where(x > 0, x, 0.1 * x)


def np_ce(logits, labels):
    z = logits - logits.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    return -logp[np.arange(len(labels)), labels].mean()


def np_alternative(s, t, m):
    """(s + m)^2 where the teacher is off (t <= 0) and s > -m; (s - m)^2 where it is on and s < m; sum / B."""
    off = (t <= 0) & (s > -m)
    on = (t > 0) & (s < m)
    return (((s + m) ** 2) * off + ((s - m) ** 2) * on).sum() / len(s)


def np_ab(distiller, s, t, margin):
    total = 0.0
    for i, (tap, weight) in enumerate(zip(("stage1.pre", "stage2.pre", "stage3.pre"), (0.25, 0.5, 1.0))):
        x = s[tap].astype(np.float64)
        p = params(distiller.connectors[i])
        if p:  # 1x1 conv + BN
            x = np_batchnorm(np.einsum("oc,bchw->bohw", p["0.weight"][:, :, 0, 0], x), p["1.weight"], p["1.bias"])
        total += weight * np_alternative(x, t[tap], margin)
    return 3 / 1000 * total


def np_stack(p, prefix, x, conv, bn):
    """Three layers of a Sequential: (conv, BatchNorm, LeakyReLU) at 0-2, 3-5, 6-8 with bn "train" or "eval",
    or (conv with bias, LeakyReLU) at 0-1, 2-3, 4-5 with bn None."""
    for i in ((0, 3, 6) if bn else (0, 2, 4)):
        y = conv(x, p[f"{prefix}{i}.weight"], None if bn else p[f"{prefix}{i}.bias"])
        if bn == "train":
            y = np_batchnorm(y, p[f"{prefix}{i + 1}.weight"], p[f"{prefix}{i + 1}.bias"])
        elif bn == "eval":
            y = np_batchnorm_eval(y, p, f"{prefix}{i + 1}.")
        x = leaky(y)
    return x


def np_paraphrase(p, x, bn=None):
    """(factor, reconstruction) of the paraphraser with parameters and buffers p."""
    factor = np_stack(p, "encoder.", x, np_conv3x3, bn)
    return factor, np_stack(p, "decoder.", factor, np_conv_transpose3x3, bn)


def np_translate(p, x):
    return np_stack(p, "", x, np_conv3x3, bn="train")


def np_pool_to(x, h):
    f = x.shape[-1] // h
    return x.reshape(*x.shape[:2], h, f, h, f).mean((3, 5))


def np_unit(v):
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def np_attention(f):
    """The benchmark's factor: per sample, the mean over channels of f^2 at each position, unit length."""
    return np_unit((f ** 2).mean(1).reshape(len(f), -1))


def np_flat(f):
    """The paper's factor: per sample, all of f flattened, unit length."""
    return np_unit(f.reshape(len(f), -1))


def np_factor_distance(fs, ft, factor=np_attention):
    h = min(fs.shape[-1], ft.shape[-1])
    return np.abs(factor(np_pool_to(fs, h)) - factor(np_pool_to(ft, h))).mean()


AB_S = {"stage1.pre": (3, 4, 4), "stage2.pre": (4, 2, 2), "stage3.pre": (5, 2, 2)}
AB_T = {"stage1.pre": (2, 4, 4), "stage2.pre": (4, 2, 2), "stage3.pre": (6, 2, 2)}  # stage2: equal widths
FT_S = {"stage3": (3, 3, 3)}
FT_T = {"stage3": (4, 3, 3)}


# ---- 1. values ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("options", [{}, {"margin": 0.5, "ab_weight": 2.0, "always_connect": 1.0}])
def test_ab_warmup_loss_against_numpy(options):
    d, student, teacher, s, t, logits, batch = build(ActivationBoundaries, AB_S, AB_T, **options)
    t["stage1.pre"][0, 0, 0, 0] = 0.0  # t = 0 counts as "off"
    teacher[FEATURE_PREFIX + "stage1.pre"].data[0, 0, 0, 0] = 0.0
    assert isinstance(d.connectors[1], torch.nn.Identity) == (not options)  # equal widths: no connector
    parts = d(logits, student, teacher, batch)
    ab = np_ab(d, s, t, options.get("margin", 1.0))
    assert parts["ab"].item() == pytest.approx(ab, rel=1e-5)
    assert parts["loss"].item() == pytest.approx(options.get("ab_weight", 1.0) * ab, rel=1e-5)


FT_VARIANTS = [  # options, paraphraser BatchNorm, factor, weight
    ({}, False, np_attention, 200.0),  # the benchmark's
    ({"paper_factor": 1.0}, False, np_flat, 4400.0),  # the paper's factor at its own weight
    ({"paper_factor": 1.0, "ft_weight": 500.0}, False, np_flat, 500.0),
    ({"paper_factor": 1.0, "paraphraser_bn": 1.0, "warmup_lr": 0.05, "ft_weight": 200.0}, True, np_flat, 200.0),
]


@pytest.mark.parametrize("options, bn, factor, weight", FT_VARIANTS)
def test_ft_losses_against_numpy(options, bn, factor, weight):
    d, student, teacher, s, t, logits, batch = build(FactorTransfer, FT_S, FT_T, **options)
    assert d.paraphraser.encoder[-2 if not bn else -3].out_channels == 2  # k = 0.5 of 4 teacher channels
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in d.paraphraser.modules()) == bn
    assert d.options.ft_weight == weight and d.warmup_lr == options.get("warmup_lr", 0.01)
    _, rec_t = np_paraphrase(params(d.paraphraser), t["stage3"].astype(np.float64), "train" if bn else None)
    parts = d(logits, student, teacher, batch)
    assert set(parts) == {"loss", "rec"}
    assert parts["rec"].item() == pytest.approx(((rec_t - t["stage3"]) ** 2).mean(), rel=1e-5)
    assert parts["loss"].item() == pytest.approx(parts["rec"].item())

    d.set_epoch(30)  # frozen: a BatchNorm in the paraphraser uses the running statistics the warm-up step left
    assert d.training and d.translator.training and not d.paraphraser.training
    factor_t, _ = np_paraphrase(params(d.paraphraser), t["stage3"].astype(np.float64), "eval" if bn else None)
    parts = d(logits, student, teacher, batch)
    factor_s = np_translate(params(d.translator), s["stage3"].astype(np.float64))
    ft = np_factor_distance(factor_s, factor_t, factor)
    ce = np_ce(logits.detach().numpy().astype(np.float64), batch.labels.numpy())
    assert parts["ft"].item() == pytest.approx(ft, rel=1e-5)
    assert parts["ce"].item() == pytest.approx(ce, rel=1e-5)
    assert parts["loss"].item() == pytest.approx(ce + weight * ft, rel=1e-5)


def test_ft_pools_factors_of_different_sizes_and_takes_its_rate():
    t_shape = {"stage3": (4, 4, 4)}
    d, student, teacher, s, t, logits, batch = build(FactorTransfer, {"stage3": (3, 2, 2)}, t_shape, rate=0.75)
    assert d.paraphraser.encoder[-2].out_channels == 3
    d.set_epoch(30)
    factor_t, _ = np_paraphrase(params(d.paraphraser), t["stage3"].astype(np.float64))
    factor_s = np_translate(params(d.translator), s["stage3"].astype(np.float64))
    assert d(logits, student, teacher, batch)["ft"].item() == pytest.approx(np_factor_distance(factor_s, factor_t),
                                                                            rel=1e-5)


def test_paper_factor_weight_gives_the_benchmark_s_gradient_scale():
    """On the same tensors (resnet56 -> resnet20 stage3, untrained, train mode), the student's gradient from
    4400 * the paper term is within 25 % of the one from 200 * the benchmark term (ft.py's measurement), and
    nearly orthogonal to it."""
    torch.manual_seed(0)
    images = torch.randn(32, 3, 32, 32)
    taps = {}
    for arch in ("resnet56", "resnet20"):
        model = create_model(arch, 100).train()
        with torch.no_grad(), FeatureTaps(model, arch, ["stage3"]) as tapped:
            model(images)
            taps[arch] = tapped.features["stage3"].clone()
    shapes = {"stage3": tuple(taps["resnet20"].shape[1:])}
    benchmark = FactorTransfer(DistillContext(100, student_shapes=shapes, teacher_shapes=shapes), warmup_epochs=1)
    paper = FactorTransfer(DistillContext(100, student_shapes=shapes, teacher_shapes=shapes), warmup_epochs=1,
                           paper_factor=1.0)
    paper.load_state_dict(benchmark.state_dict())  # the same paraphraser and translator
    batch = ViewedBatch(images, torch.zeros(32, dtype=torch.long), torch.arange(32))
    grads = []
    for d in (benchmark, paper):
        d.set_epoch(1)
        student = taps["resnet20"].clone().requires_grad_(True)
        parts = d(torch.zeros(32, 100), {"stage3": student}, {FEATURE_PREFIX + "stage3": taps["resnet56"]}, batch)
        (d.options.ft_weight * parts["ft"]).backward()
        grads.append(student.grad.flatten())
    assert 0.8 < (grads[1].norm() / grads[0].norm()).item() < 1.25
    assert abs(F.cosine_similarity(grads[0], grads[1], dim=0).item()) < 0.2


def test_ft_warmup_runs_at_its_own_lr():
    """The warm-up's lr is warmup_lr (the benchmark's 0.01); the recipe then starts at its own base lr."""
    d = FactorTransfer(DistillContext(10, student_shapes=FT_S, teacher_shapes=FT_T), warmup_epochs=2)
    schedule = Schedule("step", 0.05, 4, 10, (2, 3), 0.1, hold_epochs=2, hold_lr=d.warmup_lr)
    assert [schedule.lr(e, 0) for e in range(6)] == pytest.approx([0.01, 0.01, 0.05, 0.05, 0.005, 0.0005])
    assert Schedule("step", 0.05, 4, 10, (2, 3), 0.1, hold_epochs=2).lr(0, 0) == 0.05  # no warmup_lr: the recipe's


def test_refusals():
    with pytest.raises(ValueError, match="spatial sizes differ"):
        ActivationBoundaries(DistillContext(10, student_shapes=AB_S, teacher_shapes={**AB_T,
                                                                                     "stage3.pre": (6, 4, 4)}))
    with pytest.raises(ValueError, match="needs the \\[C, H, W\\] shapes"):
        ActivationBoundaries(DistillContext(10, student_shapes=AB_S, teacher_shapes={"stage1.pre": (64,)}))
    for cls, s, t in ((ActivationBoundaries, AB_S, AB_T), (FactorTransfer, FT_S, FT_T)):
        for n in (0, 1.5):
            with pytest.raises(ValueError, match="warmup_epochs (must be )?a whole number"):
                cls(DistillContext(10, student_shapes=s, teacher_shapes=t), warmup_epochs=n)
    for bad, message in (({"rate": 0.0}, "rate"), ({"warmup_lr": 0.0}, "warmup_lr must be (positive|a number in \\(0)"),
                         ({"paper_factor": 0.5}, "paper_factor is 0 or 1"),
                         ({"paraphraser_bn": 2.0}, "paraphraser_bn is 0 or 1")):
        with pytest.raises(ValueError, match=message):
            FactorTransfer(DistillContext(10, student_shapes=FT_S, teacher_shapes=FT_T), **bad)


# ---- 2. what each phase trains ------------------------------------------------------------------------------------

def grads(named):
    """name -> whether a non-zero gradient arrived."""
    return {k: v.grad is not None and bool(v.grad.abs().sum() > 0) for k, v in named}


def test_ab_phases():
    d, student, teacher, _, _, logits, batch = build(ActivationBoundaries, AB_S, AB_T, warmup_epochs=2.0)
    d.set_epoch(1)
    parts = d(logits, student, teacher, batch)
    assert set(parts) == {"loss", "ab"}  # no CE in the warm-up
    parts["loss"].backward()
    assert all(grads(student.items()).values()) and all(grads(d.named_parameters()).values())
    assert logits.grad is None and all(x.grad is None for x in teacher.values())

    d, student, teacher, _, _, logits, batch = build(ActivationBoundaries, AB_S, AB_T, warmup_epochs=2.0)
    d.set_epoch(2)
    parts = d(logits, student, teacher, batch)
    assert set(parts) == {"loss", "ce"}
    assert torch.equal(parts["loss"], F.cross_entropy(logits, batch.labels))  # plain CE
    parts["loss"].backward()
    torch.testing.assert_close(logits.grad, np_ce_grad(logits, batch.labels))  # CE's gradient, nothing else
    assert not any(grads(student.items()).values()) and not any(grads(d.named_parameters()).values())
    assert all(x.grad is None for x in teacher.values())


def test_ft_phases():
    d, student, teacher, _, _, logits, batch = build(FactorTransfer, FT_S, FT_T, warmup_epochs=1.0)
    d.set_epoch(0)
    d(logits, student, teacher, batch)["loss"].backward()
    got = grads(d.named_parameters())
    assert all(v for k, v in got.items() if k.startswith("paraphraser."))  # encoder and decoder
    assert not any(v for k, v in got.items() if k.startswith("translator."))
    assert student["stage3"].grad is None and logits.grad is None
    assert teacher[FEATURE_PREFIX + "stage3"].grad is None

    d, student, teacher, _, _, logits, batch = build(FactorTransfer, FT_S, FT_T, warmup_epochs=1.0)
    d.set_epoch(1)
    d.train()  # as the loop does every epoch: the paraphraser stays in eval mode
    frozen = {k: v.clone() for k, v in d.paraphraser.state_dict().items()}
    d(logits, student, teacher, batch)["loss"].backward()
    assert all(torch.equal(v, d.paraphraser.state_dict()[k]) for k, v in frozen.items())  # running stats too
    got = grads(d.named_parameters())
    assert all(v for k, v in got.items() if k.startswith("translator."))
    assert not any(v for k, v in got.items() if k.startswith("paraphraser."))
    assert all(grads(student.items()).values())
    torch.testing.assert_close(logits.grad, np_ce_grad(logits, batch.labels))  # ce_weight 1; the FT term ignores logits
    assert teacher[FEATURE_PREFIX + "stage3"].grad is None


FALLS_TO = {"ab": 0.6, "rec": 0.8}  # observed after 15 steps: about 0.44 and 0.65


@pytest.mark.slow
def test_warmup_terms_decrease_on_a_real_network():
    """AB's boundary term (student body + connectors) and, with a BatchNorm paraphraser at lr 0.05, FT's
    reconstruction fall in 15 steps."""
    for cls, part, options in ((ActivationBoundaries, "ab", {"always_connect": 1.0}),
                               (FactorTransfer, "rec", {"paraphraser_bn": 1.0})):
        # Train-mode BatchNorm gives the untrained teacher maps of a trained network's scale (RMS about 1).
        terms = term_trace(cls, part, 15, teacher_train_mode=True, **options)
        assert all(math.isfinite(x) for x in terms)
        assert terms[-1] < FALLS_TO[part] * terms[0], (part, terms)


def test_benchmark_paraphraser_learns_at_its_warmup_lr():
    """The default paraphraser (no BatchNorm) at warmup_lr 0.01 on a resnet20's stage3 maps (RMS about 1): the
    reconstruction falls below 0.8 of its start within 80 steps (observed: about 0.6; it starts slowly)."""
    torch.manual_seed(0)
    images = torch.randn(16, 3, 32, 32)
    teacher_model = create_model("resnet20", 10).train()
    with torch.no_grad(), FeatureTaps(teacher_model, "resnet20", ["stage3"]) as tapped:
        teacher_model(images)
        maps = {FEATURE_PREFIX + "stage3": tapped.features["stage3"].clone()}
    shapes = feature_shapes("resnet20", 10, ["stage3"])
    d = FactorTransfer(DistillContext(10, student_shapes=shapes, teacher_shapes=shapes))
    optimizer = torch.optim.SGD(d.paraphraser.parameters(), lr=d.warmup_lr, momentum=0.9, weight_decay=5e-4)
    batch = ViewedBatch(torch.zeros(16, 3, 32, 32, dtype=torch.uint8), torch.zeros(16, dtype=torch.long),
                        torch.arange(16))
    terms = []
    for _ in range(80):
        rec = d(None, {}, maps, batch)["rec"]
        optimizer.zero_grad()
        rec.backward()
        optimizer.step()
        terms.append(rec.item())
    assert all(math.isfinite(x) for x in terms) and terms[-1] < 0.8 * terms[0], terms


# ---- 3. end to end ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def teacher_ckpt(tiny_cifar_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ab-ft-teacher") / "run"
    train(TrainOptions(data=str(tiny_cifar_dir), arch="resnet20", out=str(out), epochs=1, batch_size=32,
                       device="cpu"), log=quiet)
    return out / "last.pt"


def run_two_phases(method, options, teacher_ckpt, data, out):
    """One warm-up epoch and one recipe epoch; returns (metrics lines, last.pt after the warm-up, final last.pt)."""
    after_warmup = {}

    def keep_warmup_checkpoint(epoch):
        if epoch == 0:
            after_warmup.update(torch.load(out / "last.pt", weights_only=True))

    train_student(StudentOptions(data=str(data), out=str(out), arch="resnet20", epochs=1, batch_size=32, seed=SEED,
                                 device="cpu", method=method, teachers=(str(teacher_ckpt),),
                                 method_options={"warmup_epochs": 1, **options}),
                  on_epoch_end=keep_warmup_checkpoint, log=quiet)
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["phase"] for line in lines] == ["warmup", "train"]
    assert all(math.isfinite(line["train_loss"]) for line in lines)
    return lines, after_warmup, torch.load(out / "last.pt", weights_only=True)


def initial_student():
    seed_everything(SEED)  # train_student seeds the same way right before it creates the student
    return create_model("resnet20", 10).state_dict()


def same(a, b, prefix):
    keys = [k for k in a if k.startswith(prefix)]
    assert keys, prefix
    return all(torch.equal(a[k], b[k]) for k in keys)


@pytest.mark.slow
def test_ab_end_to_end(teacher_ckpt, tiny_cifar_dir, tmp_path):
    _, warm, last = run_two_phases("ab", {"always_connect": 1.0}, teacher_ckpt, tiny_cifar_dir, tmp_path / "ab")
    config = json.loads((tmp_path / "ab" / "config.json").read_text())
    options = config["method_resolved"]["options"]
    assert options["warmup_epochs"] == 1 and type(options["warmup_epochs"]) is int and options["always_connect"] is True
    extra = last["training"]["extra"]
    assert {k.split(".")[1] for k in extra if k.startswith("connectors.")} == {"0", "1", "2"}
    init = initial_student()
    # Warm-up: the body learns the boundaries, the classifier (no CE) does not move.
    assert same(warm["model"], init, "fc.") and not same(warm["model"], init, "conv1.")
    # Then CE only: the classifier moves, the connectors idle.
    assert not same(last["model"], warm["model"], "fc.")
    assert same(extra, warm["training"]["extra"], "connectors.")


def test_ft_end_to_end(teacher_ckpt, tiny_cifar_dir, tmp_path):
    lines, warm, last = run_two_phases("ft", {}, teacher_ckpt, tiny_cifar_dir, tmp_path / "ft")
    assert [line["lr"] for line in lines] == pytest.approx([0.01, 0.05])  # the warm-up's own lr, then the recipe's
    extra = last["training"]["extra"]
    assert any(k.startswith("paraphraser.encoder.") for k in extra)
    assert any(k.startswith("paraphraser.decoder.") for k in extra)
    assert any(k.startswith("translator.") for k in extra)
    # Warm-up: only the paraphraser learns; the student is as initialised, BatchNorm statistics included.
    init = initial_student()
    assert warm["model"].keys() == init.keys()
    assert all(torch.equal(warm["model"][k], init[k]) for k in init)
    # Then the paraphraser is frozen while the translator and the student learn.
    assert same(extra, warm["training"]["extra"], "paraphraser.")
    assert not same(extra, warm["training"]["extra"], "translator.")
    assert not same(last["model"], warm["model"], "conv1.")
