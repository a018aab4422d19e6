"""`crd` and `crd+kd`: Contrastive Representation Distillation (Tian, Krishnan and Isola, ICLR 2020).

The student's and the teacher's pooled embeddings go through a trainable linear head each to `feat_dim`
dimensions and are L2-normalised: s_i, t_i. Two memory banks of N rows (one per side) hold a momentum
average of every training sample's normalised embedding. For a sample i of the batch, j_0 = i is the
positive and j_1..j_K are K negatives drawn uniformly and without replacement (K distinct indices per row)
from the samples of the other classes, K = min(nce_k, N - 1): the benchmark's default (its dataset samples
the other classes' indices without replacement, and with replacement only where that pool is smaller than K,
as we do). Options: `negatives_other_class=0` draws from all other N - 1 indices;
`negatives_replace=1` draws with replacement (about 15 % repeats per row of 16,384 among 49,500). A row's
distinct negatives are the head of a random permutation of its pool: for 50,000 samples in 100 classes, B 64
and K 16,384, about 22 ms per step on one CPU thread, as much as the draw with replacement (18 to 26 ms). With
tau = nce_t, each anchor side is scored against the other side's memory:

    student anchor   P_s(i, j) = exp(<s_i, M_teacher[j]> / tau) / Z_s
    teacher anchor   P_t(i, j) = exp(<t_i, M_student[j]> / tau) / Z_t

Z_s and Z_t are set once, on the first batch, to N * mean(exp(score / tau)) over all B x (K + 1) scores of
that side (mean over ranks under torchrun), then kept fixed. The NCE loss of one side, with c = K / N and
h = P / (P + c) the probability that a pair comes from the data rather than from the noise, is

    L = -(1 / B) * sum_i [ log h(i, i) + sum_{k=1..K} log(1 - h(i, j_k)) ]

i.e. summed over the K negatives and averaged over the batch, as in the paper's code; it is computed in
log space (log h = log P - logaddexp(log P, log c), log(1 - h) = log c - logaddexp(log P, log c)), so no
epsilon is added. The step's loss is

    crd:     ce_weight * CE + crd_weight * (L_student_anchor + L_teacher_anchor)
    crd+kd:  the same + kd_weight * T^2 * KL(softmax(teacher / T) || softmax(student / T))   (batch-mean)

After the loss, with no gradient, each batch sample's memory rows become
normalise(momentum * M[i] + (1 - momentum) * embedding_i) on both sides. The banks start uniform in
[-a, a], a = sqrt(3 / feat_dim) (unit expected norm), as in the paper's code; a row is normalised once
it is first written.

The negatives of a step are a pure function of (a draw seed taken from torch's global generator when the
distiller is built, the training-step counter, the rank); seed, counter, banks and Z are buffers, so a
resumed run draws the same negatives and uses the same Z as an uninterrupted one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..losses import kd_divergence
from ...store.schema import FEATURE_PREFIX, SIGNAL_LOGITS
from .base import DistillContext, Distiller
from .registry import register_method

TAP = "pool"
TEACHER_POOL = FEATURE_PREFIX + TAP


def distributed_world() -> int:
    """The number of ranks when torch.distributed runs with more than one, else 1."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def gather_rows(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Every rank's rows of each tensor, concatenated in rank order (unchanged in a single process).

    Ranks may hold different row counts: rows are padded to the largest count for the collective and trimmed.
    """
    world = distributed_world()
    if world == 1:
        return tensors
    device = tensors[0].device
    count = torch.tensor([tensors[0].shape[0]], device=device)
    counts = [torch.empty_like(count) for _ in range(world)]
    dist.all_gather(counts, count)
    counts = [int(c) for c in counts]
    most = max(counts)
    gathered = []
    for tensor in tensors:
        padded = torch.zeros((most,) + tuple(tensor.shape[1:]), dtype=tensor.dtype, device=device)
        padded[:tensor.shape[0]] = tensor
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded.contiguous())
        gathered.append(torch.cat([part[:n] for part, n in zip(parts, counts)]))
    return tuple(gathered)


def first_occurrences(indices: torch.Tensor) -> torch.Tensor:
    """Positions of the first row of each distinct index (a padded distributed sampler may repeat samples):
    a memory row is then written once per step, deterministically."""
    distinct, inverse = torch.unique(indices, return_inverse=True)
    positions = torch.arange(indices.shape[0], device=indices.device)
    first = torch.full((distinct.shape[0],), indices.shape[0], device=indices.device)
    return first.scatter_reduce_(0, inverse, positions, reduce="amin")


def uniform_positions(sizes: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """[R, k] positions drawn uniformly, with replacement, from [0, sizes[r]) for row r."""
    u = torch.rand((sizes.shape[0], k), generator=generator, device=sizes.device, dtype=torch.float64)
    return torch.minimum((u * sizes[:, None]).long(), sizes[:, None] - 1)


def pool_positions(sizes: torch.Tensor, k: int, generator: torch.Generator, replace: bool) -> torch.Tensor:
    """[R, k] uniform positions in [0, sizes[r]): k distinct ones per row (the first k of a random permutation)
    unless `replace`, or unless the row's pool is smaller than k (then with replacement, as the benchmark)."""
    if replace:
        return uniform_positions(sizes, k, generator)
    rows = [torch.randperm(size, generator=generator, device=sizes.device)[:k] if size >= k
            else uniform_positions(sizes[r:r + 1], k, generator)[0] for r, size in enumerate(sizes.tolist())]
    return torch.stack(rows)


class ContrastMemory(nn.Module):
    """The two memory banks, the fixed normalisation constants and the state the negative draws depend on."""

    def __init__(self, num_samples: int, feat_dim: int, num_negatives: int, momentum: float,
                 labels: torch.Tensor | None = None, replace: bool = False, pool: torch.Tensor | None = None):
        super().__init__()
        # The samples negatives are drawn from: every index, or those training draws from when a validation split
        # is held out (its rows would never be updated). The banks keep a row per index either way.
        pool = torch.arange(num_samples) if pool is None else torch.as_tensor(pool, dtype=torch.long)
        if pool.numel() < 2:
            raise ValueError(f"CRD needs at least 2 training samples to draw negatives, got {pool.numel()}")
        self.pool_size = pool.numel()
        self.num_negatives = min(num_negatives, self.pool_size - 1)
        self.replace = replace
        self.by_class = labels is not None
        if self.by_class:
            self.register_class_layout(labels, num_samples, pool)
        else:
            self.register_buffer("pool", pool, persistent=False)
            position = torch.full((num_samples,), -1, dtype=torch.long)
            self.register_buffer("pool_position", position.index_copy_(0, pool, torch.arange(pool.numel())),
                                 persistent=False)
        self.momentum = momentum
        bound = math.sqrt(3.0 / feat_dim)
        self.register_buffer("student", torch.empty(num_samples, feat_dim).uniform_(-bound, bound))
        self.register_buffer("teacher", torch.empty(num_samples, feat_dim).uniform_(-bound, bound))
        self.register_buffer("z", torch.full((2,), -1.0))  # (student anchor, teacher anchor); < 0: not yet set
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))
        self.register_buffer("draw_seed", torch.randint(0, 2 ** 62, (), dtype=torch.int64))

    def register_class_layout(self, labels: torch.Tensor, num_samples: int, pool: torch.Tensor) -> None:
        """The pool's indices sorted by class and each class's [start, start + count) in that order; derived from
        the data, so not saved in checkpoints."""
        labels = torch.as_tensor(labels, dtype=torch.long)
        if labels.shape != (num_samples,) or bool((labels < 0).any()):
            raise ValueError("CRD's other-class negatives need a class for every training sample "
                             "(set negatives_other_class=0 to draw among all samples)")
        counts = torch.bincount(labels[pool], minlength=int(labels.max()) + 1)
        if int(counts.max()) == pool.numel():
            raise ValueError("CRD's other-class negatives need two or more classes in the training split")
        self.register_buffer("labels", labels, persistent=False)
        self.register_buffer("by_class_order", pool[torch.argsort(labels[pool], stable=True)], persistent=False)
        self.register_buffer("class_count", counts, persistent=False)
        self.register_buffer("class_start", torch.cumsum(counts, 0) - counts, persistent=False)

    @property
    def num_samples(self) -> int:
        return self.student.shape[0]

    def draw_negatives(self, indices: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """[B, K] negative indices: uniform positions in each row's pool, mapped to samples. A pool is a sorted
        list with one run left out: the other classes' samples (class order, the row's class run left out) or
        all samples but the row's own."""
        if self.by_class:
            classes = self.labels[indices]
            skip_start, skip_count = self.class_start[classes], self.class_count[classes]
        else:
            skip_start, skip_count = self.pool_position[indices], torch.ones_like(indices)
        positions = pool_positions(self.pool_size - skip_count, self.num_negatives, generator, self.replace)
        positions = positions + (positions >= skip_start[:, None]).long() * skip_count[:, None]
        return self.by_class_order[positions] if self.by_class else self.pool[positions]

    def contrast_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """[B, 1 + K]: each row's own index (the positive), then its K negatives."""
        rank = dist.get_rank() if distributed_world() > 1 else 0
        seed = (int(self.draw_seed) + int(self.steps) * 1_000_003 + rank * 7919) % 2 ** 63
        device = self.student.device
        generator = torch.Generator(device=device).manual_seed(seed)
        indices = indices.to(device)
        return torch.cat([indices[:, None], self.draw_negatives(indices, generator)], dim=1)

    def fix_normalisers(self, student_scores: torch.Tensor, teacher_scores: torch.Tensor, tau: float) -> None:
        """Set Z once, from the first batch: N * mean exp(score / tau), averaged over ranks."""
        if bool((self.z >= 0).all()):
            return
        estimate = torch.stack([torch.exp(s.detach().float() / tau).mean() * self.pool_size
                                for s in (student_scores, teacher_scores)])
        world = distributed_world()
        if world > 1:
            dist.all_reduce(estimate)
            estimate = estimate / world
        self.z.copy_(torch.where(self.z < 0, estimate, self.z))

    @torch.no_grad()
    def update(self, indices: torch.Tensor, student: torch.Tensor, teacher: torch.Tensor) -> None:
        """Momentum-average the samples' rows towards the new embeddings, then re-normalise (every rank alike)."""
        indices, student, teacher = gather_rows(indices.to(self.student.device), student.detach(), teacher.detach())
        keep = first_occurrences(indices)
        indices, student, teacher = indices[keep], student[keep], teacher[keep]
        for bank, new in ((self.student, student), (self.teacher, teacher)):
            mixed = bank[indices] * self.momentum + new.to(bank.dtype) * (1.0 - self.momentum)
            bank[indices] = F.normalize(mixed, dim=1)
        self.steps += 1


def nce_loss(scores: torch.Tensor, z: torch.Tensor, tau: float, num_samples: int) -> torch.Tensor:
    """The NCE loss of one anchor side; scores [B, 1 + K], the positive in column 0 (see the module doc)."""
    num_negatives = scores.shape[1] - 1
    log_p = scores / tau - torch.log(z)
    log_c = torch.full_like(log_p, math.log(num_negatives / num_samples))
    log_denominator = torch.logaddexp(log_p, log_c)
    log_h_positive = (log_p - log_denominator)[:, 0]
    log_not_h_negatives = (log_c - log_denominator)[:, 1:]
    return -(log_h_positive.sum() + log_not_h_negatives.sum()) / scores.shape[0]


@register_method
class ContrastiveRepresentation(Distiller):
    name = "crd"
    summary = ("ce_weight * CE + crd_weight * (NCE loss, student anchor + teacher anchor) on the pooled embeddings; "
               "nce_k distinct negatives per sample from the other classes")
    teacher_signals = (TEACHER_POOL,)
    student_taps = (TAP,)
    needs_train_labels = True

    @dataclass(frozen=True)
    class Options:
        ce_weight: float = 1.0
        crd_weight: float = 0.8
        feat_dim: int = 128
        nce_k: int = 16384
        nce_t: float = 0.07
        nce_momentum: float = 0.5
        negatives_other_class: bool = True
        negatives_replace: bool = False

    def __init__(self, context: DistillContext, **options):
        super().__init__(context, **options)
        if TAP not in context.student_shapes or TAP not in context.teacher_shapes:
            raise ValueError(f"--method {self.name} needs the student's and the teacher's '{TAP}' shapes")
        o = self.options
        self.embed_student = nn.Linear(math.prod(context.student_shapes[TAP]), o.feat_dim)
        self.embed_teacher = nn.Linear(math.prod(context.teacher_shapes[TAP]), o.feat_dim)
        if o.negatives_other_class and context.train_labels is None:
            raise ValueError(f"--method {self.name} draws negatives from other classes and needs the training "
                             f"labels (or negatives_other_class=0)")
        self.memory = ContrastMemory(context.num_samples, o.feat_dim, o.nce_k, o.nce_momentum,
                                     context.train_labels if o.negatives_other_class else None,
                                     replace=o.negatives_replace, pool=context.train_indices)

    def crd_terms(self, student_pool: torch.Tensor, teacher_pool: torch.Tensor, indices: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """(L_student_anchor, L_teacher_anchor); updates the memory when training."""
        tau = self.options.nce_t
        s = F.normalize(self.embed_student(student_pool.float().flatten(1)), dim=1)
        t = F.normalize(self.embed_teacher(teacher_pool.detach().float().flatten(1)), dim=1)
        contrast = self.memory.contrast_indices(indices)  # [B, 1 + K]
        # Score all N memory rows, then pick the drawn ones: B x N scores plus an N x D copy of each bank (the
        # update below is in place and the backward needs the old rows), where gathering the rows first would
        # keep B x (1 + K) x D floats: 14 times more for N = 50,000, B = 64, K = 16384, D = 128.
        student_scores = (s @ self.memory.teacher.detach().clone().T).gather(1, contrast)
        teacher_scores = (t @ self.memory.student.detach().clone().T).gather(1, contrast)
        self.memory.fix_normalisers(student_scores, teacher_scores, tau)
        n = self.memory.pool_size  # the samples a negative is drawn from
        student_loss = nce_loss(student_scores, self.memory.z[0], tau, n)
        teacher_loss = nce_loss(teacher_scores, self.memory.z[1], tau, n)
        if self.training:
            self.memory.update(indices, s, t)
        return student_loss, teacher_loss

    def forward(self, logits, student, teacher, batch):
        with torch.autocast(device_type=logits.device.type, enabled=False):  # the NCE terms need float32
            student_loss, teacher_loss = self.crd_terms(student[TAP], teacher[TEACHER_POOL], batch.indices)
            parts = self.ce_plus(logits, batch, "crd", student_loss + teacher_loss)
        return {**parts, "crd_student_anchor": student_loss, "crd_teacher_anchor": teacher_loss}


@register_method
class CRDWithKD(ContrastiveRepresentation):
    name = "crd+kd"
    summary = "crd plus kd_weight * T^2 KL(softmax(teacher/T) || softmax(student/T))"
    teacher_signals = (TEACHER_POOL, SIGNAL_LOGITS)

    @dataclass(frozen=True)
    class Options(ContrastiveRepresentation.Options):
        kd_weight: float = 1.0
        temperature: float = 4.0

    def forward(self, logits, student, teacher, batch):
        parts = super().forward(logits, student, teacher, batch)
        t = self.options.temperature
        with torch.autocast(device_type=logits.device.type, enabled=False):
            targets = torch.softmax(teacher[SIGNAL_LOGITS].detach().float() / t, dim=1)
            kd = kd_divergence(logits, targets, t)
        return {**parts, "loss": parts["loss"] + self.options.kd_weight * kd, "kd": kd}
