"""Feature-based distillers (FitNet, AT, SP, VID, RKD, PKT): losses against numpy, gradients, end-to-end runs."""
import json
import math

import numpy as np
import pytest
import torch

from labelopt.pipeline.errors import UserError
from labelopt.pipeline.jobs.labeling import GenerateOptions, generate_labels
from labelopt.pipeline.jobs.student import StudentOptions, train_student
from labelopt.stages.distillers import FEATURE_PREFIX, DistillContext, get_distiller
from labelopt.stages.batch import ViewedBatch
from labelopt.tests.distill_fakes import term_trace
from labelopt.tests.run_checks import assert_last_checkpoint_matches_log

METHODS = ("fitnet", "at", "sp", "vid", "rkd", "pkt")
B = 4


def quiet(_):
    pass


# ---- small fixed inputs and numpy references -------------------------------------------------------------------

def maps(rng, shapes, positive=False):
    out = {}
    for tap, shape in shapes.items():
        x = rng.standard_normal((B, *shape)).astype(np.float32)
        out[tap] = np.abs(x) if positive else x
    return out


def build(method, s_np, t_np, **options):
    """The distiller with a context holding these shapes, and torch copies of the inputs (teacher keyed as signals)."""
    context = DistillContext(10, student_shapes={k: v.shape[1:] for k, v in s_np.items()},
                             teacher_shapes={k: v.shape[1:] for k, v in t_np.items()})
    distiller = get_distiller(method)(context, **options)
    student = {k: torch.tensor(v, requires_grad=True) for k, v in s_np.items()}
    teacher = {FEATURE_PREFIX + k: torch.tensor(v, requires_grad=True) for k, v in t_np.items()}
    return distiller, student, teacher


def batch_and_logits(rng):
    logits = rng.standard_normal((B, 10)).astype(np.float32)
    labels = np.array([1, 0, 7, 3])
    batch = ViewedBatch(torch.zeros(B, 3, 8, 8, dtype=torch.uint8), torch.tensor(labels), torch.arange(B))
    return torch.tensor(logits, requires_grad=True), batch, np_ce(logits, labels)


def np_ce(logits, labels):
    z = logits - logits.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    return -logp[np.arange(len(labels)), labels].mean()


def np_pool_to(x, h):
    """Average-pool [B, C, H, W] by an integer factor to side h."""
    f = x.shape[-1] // h
    return x.reshape(*x.shape[:2], h, f, h, f).mean((3, 5))


def np_match(s, t):
    h = min(s.shape[-1], t.shape[-1])
    return np_pool_to(s, h), np_pool_to(t, h)


def np_conv1x1(w, x):
    return np.einsum("oc,bchw->bohw", w[:, :, 0, 0], x)


def np_smooth_l1(x):
    a = np.abs(x)
    return np.where(a < 1, 0.5 * x ** 2, a - 0.5).mean()


def np_fitnet(regressor, s, t):
    conv, bn = regressor[0], regressor[1]
    s, t = np_match(s, t)
    y = np_conv1x1(conv.weight.detach().numpy(), s)
    mean, var = y.mean((0, 2, 3), keepdims=True), y.var((0, 2, 3), keepdims=True)  # train-mode BatchNorm
    y = (y - mean) / np.sqrt(var + bn.eps) * bn.weight.detach().numpy()[:, None, None] \
        + bn.bias.detach().numpy()[:, None, None]
    return ((np.maximum(y, 0) - t) ** 2).mean()


def np_attention(f):
    a = (f ** 2).mean(1).reshape(len(f), -1)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def np_at(s, t):
    total = 0.0
    for tap in s:
        fs, ft = np_match(s[tap], t[tap])
        total += ((np_attention(fs) - np_attention(ft)) ** 2).mean()
    return total


def np_sp(s, t):
    def gram(f):
        q = f.reshape(len(f), -1).astype(np.float64)
        g = q @ q.T
        return g / np.linalg.norm(g, axis=1, keepdims=True)
    return ((gram(s) - gram(t)) ** 2).sum() / len(s) ** 2


def np_vid(heads, s, t):
    total = 0.0
    for tap, head in zip(s, heads):
        fs, ft = np_match(s[tap], t[tap])
        w = [m.weight.detach().numpy() for m in head.regressor if isinstance(m, torch.nn.Conv2d)]
        mu = np_conv1x1(w[2], np.maximum(np_conv1x1(w[1], np.maximum(np_conv1x1(w[0], fs), 0)), 0))
        var = (np.log1p(np.exp(head.alpha.detach().numpy().astype(np.float64))) + 1e-5)[:, None, None]
        total += (0.5 * ((mu - ft) ** 2 / var + np.log(var))).mean()
    return total


def np_rkd(s, t):
    def relations(e):
        e = e.astype(np.float64)
        n = len(e)
        d = np.sqrt(((e[:, None] - e[None]) ** 2).sum(-1))
        d = d / d[~np.eye(n, dtype=bool)].mean()
        cos = np.zeros((n, n, n))
        for i in range(n):
            for j in range(n):
                for k in range(n):
                    if j != i and k != i:
                        u, v = e[j] - e[i], e[k] - e[i]
                        cos[i, j, k] = u @ v / (np.linalg.norm(u) * np.linalg.norm(v))
        return d, cos
    (ds, cs), (dt, ct) = relations(s), relations(t)
    return np_smooth_l1(ds - dt), np_smooth_l1(cs - ct)


def np_pkt(s, t):
    def probs(e):
        e = e.astype(np.float64)
        e = e / (np.linalg.norm(e, axis=1, keepdims=True) + 1e-7)
        k = (e @ e.T + 1) / 2
        return k / k.sum(1, keepdims=True)
    p, q = probs(s), probs(t)
    return (q * np.log((q + 1e-7) / (p + 1e-7))).mean()


# Per method: student / teacher tap shapes for the fixed tests (unequal channels, one spatial mismatch).
STAGES_S = {"stage1": (3, 8, 8), "stage2": (4, 4, 4), "stage3": (5, 2, 2)}
STAGES_T = {"stage1": (2, 4, 4), "stage2": (6, 4, 4), "stage3": (7, 2, 2)}
SHAPES = {
    "fitnet": ({"stage2": (3, 8, 8)}, {"stage2": (5, 4, 4)}),
    "at": (STAGES_S, STAGES_T),
    "sp": ({"stage3": (5, 2, 2)}, {"stage3": (7, 3, 3)}),
    "vid": (STAGES_S, STAGES_T),
    "rkd": ({"pool": (6,)}, {"pool": (9,)}),
    "pkt": ({"pool": (6,)}, {"pool": (9,)}),
}


def fixed_case(method, seed=0, **options):
    rng = np.random.default_rng(seed)
    s_shapes, t_shapes = SHAPES[method]
    positive = method not in ("rkd", "pkt")  # stage outputs are post-ReLU
    s_np, t_np = maps(rng, s_shapes, positive), maps(rng, t_shapes, positive)
    distiller, student, teacher = build(method, s_np, t_np, **options)
    # Known, non-default values for the extra modules' parameters.
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in distiller.parameters():
            p.copy_(torch.rand(p.shape, generator=gen) * 0.8 + 0.2)
    logits, batch, ce = batch_and_logits(rng)
    return distiller, student, teacher, s_np, t_np, logits, batch, ce


# ---- 1. values ----------------------------------------------------------------------------------------------------

def test_fitnet_value():
    d, student, teacher, s, t, logits, batch, ce = fixed_case("fitnet")
    parts = d(logits, student, teacher, batch)
    hint = np_fitnet(d.regressor, s["stage2"], t["stage2"])
    assert parts["fitnet"].item() == pytest.approx(hint, rel=1e-4)
    assert parts["loss"].item() == pytest.approx(ce + 100 * hint, rel=1e-4)


def test_at_value():
    d, student, teacher, s, t, logits, batch, ce = fixed_case("at")
    parts = d(logits, student, teacher, batch)
    at = np_at(s, t)
    assert parts["at"].item() == pytest.approx(at, rel=1e-4)
    assert parts["loss"].item() == pytest.approx(ce + 1000 * at, rel=1e-4)


def test_sp_value():
    d, student, teacher, s, t, logits, batch, ce = fixed_case("sp")
    parts = d(logits, student, teacher, batch)
    sp = np_sp(s["stage3"], t["stage3"])
    assert parts["sp"].item() == pytest.approx(sp, rel=1e-4)
    assert parts["loss"].item() == pytest.approx(ce + 3000 * sp, rel=1e-4)


def test_vid_value_and_initial_variance():
    fresh, *_ = fixed_case("vid")
    fresh = type(fresh)(fresh.context)
    for head in fresh.heads:
        assert torch.allclose(head.variance(), torch.full_like(head.alpha, 5.0))
    d, student, teacher, s, t, logits, batch, ce = fixed_case("vid")
    with torch.no_grad():  # a per-channel variance that is not constant
        for head in d.heads:
            head.alpha.copy_(torch.linspace(-1.0, 2.0, head.alpha.numel()))
    parts = d(logits, student, teacher, batch)
    vid = np_vid(d.heads, s, t)
    assert parts["vid"].item() == pytest.approx(vid, rel=1e-4)
    assert parts["loss"].item() == pytest.approx(ce + vid, rel=1e-4)


def test_rkd_value():
    d, student, teacher, s, t, logits, batch, ce = fixed_case("rkd")
    parts = d(logits, student, teacher, batch)
    dist, angle = np_rkd(s["pool"], t["pool"])
    assert parts["distance"].item() == pytest.approx(dist, rel=1e-4)
    assert parts["angle"].item() == pytest.approx(angle, rel=1e-4)
    assert parts["loss"].item() == pytest.approx(ce + 25 * dist + 50 * angle, rel=1e-4)
    d2, *_ = fixed_case("rkd", distance_weight=1.0, angle_weight=0.0, rkd_weight=2.0)
    assert d2(logits, student, teacher, batch)["rkd"].item() == pytest.approx(dist, rel=1e-4)


def test_pkt_value():
    d, student, teacher, s, t, logits, batch, ce = fixed_case("pkt")
    parts = d(logits, student, teacher, batch)
    pkt = np_pkt(s["pool"], t["pool"])
    assert parts["pkt"].item() == pytest.approx(pkt, rel=1e-4)
    assert parts["loss"].item() == pytest.approx(ce + 30000 * pkt, rel=1e-3)


@pytest.mark.parametrize("method", ("sp", "rkd", "pkt"))
def test_relation_terms_stay_float32_under_bf16_autocast(method):
    d, student, teacher, *_, logits, batch, _ = fixed_case(method)
    plain = d(logits, student, teacher, batch)[method].item()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert d(logits, student, teacher, batch)[method].item() == pytest.approx(plain, rel=1e-5)


def test_map_methods_refuse_without_map_shapes():
    for method in ("fitnet", "vid"):
        with pytest.raises(ValueError, match="needs the \\[C, H, W\\] shapes"):
            get_distiller(method)(DistillContext(10, teacher_shapes={"stage2": (64,)}))


# ---- 2. gradients -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", METHODS)
def test_gradients_reach_student_and_modules_not_teacher(method):
    d, student, teacher, *_, logits, batch, _ = fixed_case(method)
    d(logits, student, teacher, batch)[method].backward()
    for tap, x in student.items():
        assert x.grad is not None and x.grad.abs().sum() > 0, tap
    for name, p in d.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(x.grad is None for x in teacher.values())
    assert any(True for _ in d.parameters()) == (method in ("fitnet", "vid"))


# ---- 3. end to end ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def teacher_ckpt(tiny_teacher):
    return tiny_teacher


def student_options(data, out, **kw):
    return StudentOptions(**{**dict(data=str(data), out=str(out), arch="resnet20", epochs=2, batch_size=32,
                                    device="cpu"), **kw})


@pytest.mark.parametrize("method", METHODS)
def test_online_teacher_end_to_end(method, teacher_ckpt, tiny_cifar_dir, tmp_path):
    out = train_student(student_options(tiny_cifar_dir, tmp_path / method, method=method,
                                        teachers=(str(teacher_ckpt),)), log=quiet)
    config = json.loads((out / "config.json").read_text())
    assert config["method_resolved"]["name"] == method
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and all(math.isfinite(line["train_loss"]) for line in lines)
    last = torch.load(out / "last.pt", weights_only=True)
    extra = last["training"].get("extra", {})
    assert bool(extra) == (method in ("fitnet", "vid"))  # the trainable modules are saved for resume
    assert_last_checkpoint_matches_log(out, tiny_cifar_dir)


def test_pool_methods_run_from_a_store_and_map_methods_refuse_it(teacher_ckpt, tiny_cifar_dir, tmp_path):
    store = tmp_path / "pool.h5"
    generate_labels(GenerateOptions(data=str(tiny_cifar_dir), out=str(store), teachers=(str(teacher_ckpt),),
                                    views="identity", features=("pool",), device="cpu"), log=quiet)
    out = train_student(student_options(tiny_cifar_dir, tmp_path / "pkt", method="pkt", labels=str(store),
                                        epochs=1), log=quiet)
    assert (out / "last.pt").exists()
    with pytest.raises(UserError, match="features:stage2"):
        train_student(student_options(tiny_cifar_dir, tmp_path / "fitnet", method="fitnet", labels=str(store)),
                      log=quiet)


# ---- 4. the method's own term goes down ---------------------------------------------------------------------------

# VID's term carries a floor of 0.5 * log(variance) per layer (3 x 0.5 log 5 = 2.4 at the start) that the slow
# softplus variance barely moves in 20 steps; only the rest of it can fall fast.
FALLS_TO = {"fitnet": 0.5, "at": 0.5, "sp": 0.5, "vid": 0.97, "rkd": 0.5, "pkt": 0.5}


@pytest.mark.parametrize("method", METHODS)
def test_the_methods_term_decreases(method):
    terms = term_trace(get_distiller(method), method, 20, ce_weight=0.0)
    assert all(math.isfinite(x) for x in terms)
    assert terms[-1] < FALLS_TO[method] * terms[0], terms
