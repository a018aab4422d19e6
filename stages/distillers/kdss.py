"""`kdss`: self-supervised knowledge distillation, our reading of SSKD (Xu et al., "Knowledge Distillation Meets
Self-Supervision", ECCV 2020).

Every step shows the student and the (online) teacher each image in four rotations. With `crop_each_rotation` 1
(the default, the authors' loader) the view sampler draws four views of every image, each with its own crop and
all with the image's one flip (`pipeline.views.draws.CopiedViews`, from the run's view generator, so a resumed
run draws the same ones), in blocks: rows [kB, (k+1)B) hold copy k. With 0, one view per image is drawn and
copied four times (one crop for all rotations). `expand` rotates block k by k * 90 degrees, k = 0..3 (block 0 is
not turned), `torch.rot90(x, k, dims=(H, W))` (from the H axis towards the W axis, which is numpy's `np.rot90`
on an HWC image, as the public code does). Labels, sample indices and views repeat in the same blocks. Below,
"original" means block 0 and "rotated" the 3B rows after it; rotated row r belongs to sample r mod B.

Self-supervision heads (trainable submodules): the teacher's and the student's, each Linear(D, D) -> ReLU ->
Linear(D, D) on its own network's pooled feature (D the feature width), as in the authors' code. From a head's
embeddings z, the similarity matrix S is [3B, B]: S[r, j] = cos(z_rotated[r], z_original[j]); the "right answer"
of row r is column r mod B (its own original).

Phase 1, the `warmup_epochs` warm-up epochs (default 60: the authors' code fine-tunes the teacher's SS head for 60
epochs before the student starts): only the teacher head trains, on the teacher's detached pooled features:
    loss = mean over the 3B rotated rows r of CE(S_t[r] / head_temperature, r mod B)
with head_temperature 1 (the authors' code: plain cosines).
The student gets no loss term (its parameters and its head receive no gradient).

Phase 2, the recipe's epochs: the teacher head is frozen (run without autograd, so SGD skips it: no decay, no
momentum); the student and its head train on
    loss = ce_weight * CE(student logits, label) over the B originals, batch mean
         + kd_weight * T_kd^2 * KL(softmax(t / T_kd) || softmax(s / T_kd)) over the B originals, batch mean
         + tf_weight * T_tf^2 * KL(...) the same on the kept rotated rows, mean over the kept rows
         + ss_weight * T_ss^2 * KL(softmax(S_t / T_ss) || softmax(S_s / T_ss)) row-wise, mean over the kept rows
with defaults 0.1 / 0.9 / 2.7 / 10.0 and T_kd = T_tf = 4, T_ss = 0.5 (the paper's values).

Selection ("error-level ranking", the paper's selective transfer): for a rotated row, the rank of its right answer
is the number of entries the teacher scores strictly higher (0: the teacher is right). All rows with rank 0 are
kept; of the W wrong rows, the floor(W * keep_wrong) with the best (smallest) rank are kept, ties by row order.
The transformation term ranks the label among the teacher's logits on the rotated image (`tf_keep_wrong`, default
1.0: keep all, as the authors' code); the self-supervision term ranks the own original among the teacher's
similarities S_t[r] (`ss_keep_wrong`, default 0.75). With nothing kept a term is 0.

Readings of ours:
- Block layout instead of the authors' per-sample interleaving (the original rows come first, as `expand` must);
  the losses do not depend on the row order except for which wrong rows tie at the selection's cut.
- Crops: the authors' loader flips an image (p 0.5), turns it, then pad-4-crops each turned copy on its own; we
  crop and flip, then turn. A pad-crop of a turned image is the turn of a pad-crop of the image at a permuted
  offset, and uniform offsets stay uniform under that permutation, so each copy has the authors' distribution.
- The warm-up starts at the recipe's base lr and multiplies it by the recipe's gamma at 1/2 and 3/4 of its
  epochs: with the defaults, the authors' 0.05 with x0.1 at epochs 30 and 45 of 60.
- The paper writes the head's contrastive loss with a temperature tau (0.5); its authors' code has none:
  head_temperature=0.5 gives the paper's form (our default before), 1 the code's.
- Rank ties count in the teacher's favour (the authors' descending argsort breaks them arbitrarily); ranks are
  taken on the logits rather than on softmax(logits / T_tf), which orders them the same.
- With warmup_epochs 0 the teacher head is never trained: the SS term then distils a random projection.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..losses import kd_divergence
from ...store.schema import FEATURE_PREFIX, SIGNAL_LOGITS
from .base import Distiller
from .registry import register_method

TAP = "pool"
ROTATIONS = 4
TEACHER_POOL = FEATURE_PREFIX + TAP


def rotate_blocks(x: torch.Tensor, originals: int) -> torch.Tensor:
    """[B or 4B, C, H, W] -> [4B, C, H, W]: block k is block k of x (B rows: x itself) rotated by k * 90 degrees."""
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"--method kdss rotates its images, which must be square (got {tuple(x.shape[-2:])})")
    if x.shape[0] not in (originals, ROTATIONS * originals):
        raise ValueError(f"--method kdss expects {originals} or {ROTATIONS * originals} views, got {x.shape[0]}")
    blocks = x.split(originals) if x.shape[0] > originals else (x,) * ROTATIONS
    return torch.cat([torch.rot90(block, k, dims=(-2, -1)) for k, block in enumerate(blocks)])


def projection_head(dim: int) -> nn.Sequential:
    """The SS module of the authors' code: a width-preserving two-layer MLP."""
    return nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))


def rotation_similarity(embeddings: torch.Tensor, originals: int) -> torch.Tensor:
    """[3B, B] cosines: rotated row r against every original."""
    z = F.normalize(embeddings.float(), dim=1)
    return z[originals:] @ z[:originals].T


def own_original(originals: int, device) -> torch.Tensor:
    """The right column of each rotated row: its sample's original."""
    return torch.arange((ROTATIONS - 1) * originals, device=device) % originals


def kept_rows(scores: torch.Tensor, targets: torch.Tensor, keep_wrong: float) -> torch.Tensor:
    """Rows (ascending) the teacher gets right, plus the floor(W * keep_wrong) of its W wrong rows whose target
    ranks best."""
    target_score = scores.gather(1, targets[:, None])
    rank = (scores > target_score).sum(1)
    wrong = int((rank > 0).sum())
    keep = rank.numel() - wrong + int(wrong * keep_wrong)
    by_rank = torch.sort(rank, stable=True).indices  # right rows (rank 0) first, then wrong ones by rank
    return by_rank[:keep].sort().values


def kd_on_rows(student: torch.Tensor, teacher: torch.Tensor, temperature: float, rows: torch.Tensor) -> torch.Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), mean over the chosen rows (0 when none is)."""
    if rows.numel() == 0:
        return student.sum() * 0.0  # keeps the graph, so backward still works
    targets = torch.softmax(teacher[rows] / temperature, dim=1)
    return kd_divergence(student[rows], targets, temperature)


@register_method
class SelfSupervisedKD(Distiller):
    name = "kdss"
    summary = ("SSKD: each image in 4 rotations, a crop each; teacher SS head fine-tuned in warm-up, then "
               "ce 0.1 * CE + 0.9 * KD + 2.7 * KD on rotations + 10 * KL of rotation-similarity matrices "
               "(selected rows)")
    teacher_signals = (SIGNAL_LOGITS, TEACHER_POOL)
    student_taps = (TAP,)
    store_refusal = "a label store holds no rotated views"
    student_learns_in_warmup = False  # the warm-up trains a teacher-side module only
    warmup_lr_decay_at = (0.5, 0.75)  # the authors' head training: x0.1 at epochs 30 and 45 of 60


    @dataclass(frozen=True)
    class Options:  # temperatures > 0, keep_wrong in [0, 1], warmup_epochs >= 0: OPTION_RULES check them
        ce_weight: float = 0.1
        kd_weight: float = 0.9
        tf_weight: float = 2.7
        ss_weight: float = 10.0
        kd_temperature: float = 4.0
        tf_temperature: float = 4.0
        ss_temperature: float = 0.5
        head_temperature: float = 1.0
        tf_keep_wrong: float = 1.0
        ss_keep_wrong: float = 0.75
        warmup_epochs: int = 60
        crop_each_rotation: bool = True

    def __init__(self, context, **options):
        super().__init__(context, **options)
        s, t = context.student_shapes.get(TAP), context.teacher_shapes.get(TAP)
        if s is None or t is None or len(s) != 1 or len(t) != 1:
            raise ValueError(f"--method {self.name} needs the [D] shapes of the student's and the teacher's "
                             f"{TAP} feature (got {s} and {t})")
        self.teacher_head = projection_head(t[0])
        self.student_head = projection_head(s[0])

    @property
    def views_per_sample(self) -> int:
        """A crop per rotated copy (the authors' loader) or one view rotated four times."""
        return ROTATIONS if self.options.crop_each_rotation else 1

    def expand(self, inputs, batch):
        b = batch.labels.shape[0]
        views = batch.views if batch.views is None or batch.views.shape[0] > b else batch.views.repeat(ROTATIONS)
        rotated = dataclasses.replace(batch, images=rotate_blocks(batch.images, b),
                                      labels=batch.labels.repeat(ROTATIONS),
                                      indices=batch.indices.repeat(ROTATIONS), views=views)
        return rotate_blocks(inputs, b), rotated

    def forward(self, logits, student, teacher, batch):
        if logits.shape[0] % ROTATIONS:
            raise ValueError(f"--method {self.name} expects {ROTATIONS} rotation blocks, got {logits.shape[0]} rows")
        originals = logits.shape[0] // ROTATIONS
        t_pool = teacher[TEACHER_POOL].detach().float()
        if self.in_warmup:
            return self.head_phase(t_pool, originals)
        return self.student_phase(logits.float(), student[TAP], teacher[SIGNAL_LOGITS].detach().float(), t_pool,
                                  batch.labels, originals)

    def head_phase(self, t_pool, originals):
        """The teacher head learns which original each rotated copy comes from."""
        similarity = rotation_similarity(self.teacher_head(t_pool), originals)
        head = F.cross_entropy(similarity / self.options.head_temperature, own_original(originals, t_pool.device))
        return {"loss": head, "head": head.detach()}

    def student_phase(self, s_logits, s_pool, t_logits, t_pool, labels, originals):
        o, b = self.options, originals
        ce = F.cross_entropy(s_logits[:b], labels[:b])
        kd = kd_divergence(s_logits[:b], torch.softmax(t_logits[:b] / o.kd_temperature, dim=1), o.kd_temperature)
        tf_rows = kept_rows(t_logits[b:], labels[b:], o.tf_keep_wrong)
        tf = kd_on_rows(s_logits[b:], t_logits[b:], o.tf_temperature, tf_rows)
        with torch.no_grad():  # the teacher head is frozen once the student trains
            t_similarity = rotation_similarity(self.teacher_head(t_pool), b)
        s_similarity = rotation_similarity(self.student_head(s_pool), b)
        ss_rows = kept_rows(t_similarity, own_original(b, t_similarity.device), o.ss_keep_wrong)
        ss = kd_on_rows(s_similarity, t_similarity, o.ss_temperature, ss_rows)
        loss = o.ce_weight * ce + o.kd_weight * kd + o.tf_weight * tf + o.ss_weight * ss
        return {"loss": loss, "ce": ce, "kd": kd, "tf": tf, "ss": ss}
