"""The logit methods sl, sl-kd and kd (and the teacher-free vanilla, ls) against their formulas written out in numpy.

Each case uses fixed random logits at T = 1 and T = 4, so a lost T^2, a swapped KL direction or a swapped weight
changes the value far beyond the tolerance.
"""
import numpy as np
import pytest
import torch

from labelopt.stages.distillers import SIGNAL_LOGITS, SIGNAL_TARGETS, DistillContext, get_distiller
from labelopt.stages.batch import ViewedBatch

B, C = 6, 10
LABELS = np.array([3, 0, 9, 3, 5, 1])


# ---- the formulas -------------------------------------------------------------------------------------------------

def np_log_softmax(z):
    z = z.astype(np.float64)
    shifted = z - z.max(1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(1, keepdims=True))


def np_ce(logits, labels, smoothing=0.0):
    """Cross-entropy against the one-hot label mixed with the uniform distribution (weight `smoothing`)."""
    target = np.full((len(labels), C), smoothing / C)
    target[np.arange(len(labels)), labels] += 1.0 - smoothing
    return -(target * np_log_softmax(logits)).sum(1).mean()


def np_soft_ce(logits, q, t):
    """T^2 * batch mean of -sum_c q_c log softmax(z / T)_c."""
    return t ** 2 * -(q * np_log_softmax(logits / t)).sum(1).mean()


def np_kl(logits, q, t):
    """T^2 * KL(q || softmax(z / T)) summed over classes, averaged over the batch (0 log 0 = 0)."""
    q = q.astype(np.float64)
    q_log_q = np.where(q > 0, q * np.log(np.where(q > 0, q, 1.0)), 0.0)
    return t ** 2 * (q_log_q - q * np_log_softmax(logits / t)).sum(1).mean()


def np_softmax(z, t):
    return np.exp(np_log_softmax(z / t))


# ---- fixed inputs ------------------------------------------------------------------------------------------------

def fixed(seed=0):
    rng = np.random.default_rng(seed)
    student = (rng.standard_normal((B, C)) * 3).astype(np.float32)
    teacher = (rng.standard_normal((B, C)) * 3).astype(np.float32)
    return student, teacher


def stored_targets(teacher, t):
    """Soft labels as a store holds them; the last row keeps its top 3 only (a --topk store), zeros elsewhere."""
    q = np_softmax(teacher, t).astype(np.float32)
    top = np.argsort(q[-1])[-3:]
    q[-1] = 0.0
    q[-1, top] = np_softmax(teacher[-1:, top], t)[0]
    return q


def parts_of(method, logits, teacher, *, target_temperature=None, **options):
    distiller = get_distiller(method)(DistillContext(C, target_temperature=target_temperature), **options)
    batch = ViewedBatch(torch.zeros(B, 3, 4, 4, dtype=torch.uint8), torch.tensor(LABELS), torch.arange(B))
    parts = distiller(torch.tensor(logits), {}, {k: torch.tensor(v) for k, v in teacher.items()}, batch)
    return {k: v.item() for k, v in parts.items()}


# ---- the methods -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("t", [1.0, 4.0])
def test_sl_is_t_squared_soft_cross_entropy(t):
    student, teacher = fixed()
    q = stored_targets(teacher, t)
    parts = parts_of("sl", student, {SIGNAL_TARGETS: q}, target_temperature=t)
    want = np_soft_ce(student, q, t)
    assert parts["loss"] == pytest.approx(want, rel=1e-5) and parts["soft"] == parts["loss"]


@pytest.mark.parametrize("t", [1.0, 4.0])
def test_sl_kd_is_weighted_ce_plus_t_squared_kl_from_the_stored_labels(t):
    student, teacher = fixed(1)
    q = stored_targets(teacher, t)
    ce, kd = np_ce(student, LABELS), np_kl(student, q, t)
    parts = parts_of("sl-kd", student, {SIGNAL_TARGETS: q}, target_temperature=t)
    assert parts["ce"] == pytest.approx(ce, rel=1e-5) and parts["kd"] == pytest.approx(kd, rel=1e-5)
    assert parts["loss"] == pytest.approx(0.1 * ce + 0.9 * kd, rel=1e-5)
    custom = parts_of("sl-kd", student, {SIGNAL_TARGETS: q}, target_temperature=t, ce_weight=0.7, kd_weight=2.5)
    assert custom["loss"] == pytest.approx(0.7 * ce + 2.5 * kd, rel=1e-5)


@pytest.mark.parametrize("t", [1.0, 4.0])
def test_kd_is_weighted_ce_plus_t_squared_kl_from_the_teachers_logits(t):
    student, teacher = fixed(2)
    q = np_softmax(teacher, t)
    ce, kd = np_ce(student, LABELS), np_kl(student, q, t)
    parts = parts_of("kd", student, {SIGNAL_LOGITS: teacher}, temperature=t)
    assert parts["ce"] == pytest.approx(ce, rel=1e-5) and parts["kd"] == pytest.approx(kd, rel=1e-5)
    assert parts["loss"] == pytest.approx(0.1 * ce + 0.9 * kd, rel=1e-5)
    custom = parts_of("kd", student, {SIGNAL_LOGITS: teacher}, temperature=t, ce_weight=1.0, kd_weight=0.25)
    assert custom["loss"] == pytest.approx(ce + 0.25 * kd, rel=1e-5)


def test_kd_default_temperature_is_4():
    student, teacher = fixed(3)
    parts = parts_of("kd", student, {SIGNAL_LOGITS: teacher})
    assert parts["kd"] == pytest.approx(np_kl(student, np_softmax(teacher, 4.0), 4.0), rel=1e-5)


def test_the_inputs_tell_the_mistakes_apart():
    """Guards the cases above: on these inputs a dropped T^2 or a reversed KL is far from the formula."""
    student, teacher = fixed(2)
    q, p = np_softmax(teacher, 4.0), np_softmax(student, 4.0)
    kd = np_kl(student, q, 4.0)
    reversed_kl = 16 * (p * (np.log(p) - np.log(q))).sum(1).mean()
    assert abs(reversed_kl - kd) > 0.05 * kd and abs(kd / 16 - kd) > 0.5 * kd


@pytest.mark.parametrize("method, options, smoothing", [("vanilla", {}, 0.0), ("ls", {}, 0.1),
                                                        ("ls", {"label_smoothing": 0.3}, 0.3)])
def test_teacher_free_methods_are_plain_or_smoothed_cross_entropy(method, options, smoothing):
    student, _ = fixed(4)
    parts = parts_of(method, student, {}, **options)
    assert parts["loss"] == pytest.approx(np_ce(student, LABELS, smoothing), rel=1e-5)
