"""`pkt`: probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018), on the pooled embedding [B, D].

The kernel is the cosine similarity mapped to [0, 1], K_ij = (1 + cos(e_i, e_j)) / 2 (self-pairs included);
each row is normalised into conditional probabilities P_ij = K_ij / sum_k K_ik, for the student (p) and the
teacher (q). pkt = mean over the B x B entries of q_ij * log((q_ij + eps) / (p_ij + eps)), eps = 1e-7, i.e.
the rows' KL(q || p) summed and divided by B^2. Total = ce_weight * CE + pkt_weight * pkt (weights 1 and
30000; the CRD benchmark's weight goes with this B^2 mean, hence its size).

Reading of ours: embeddings are divided by (norm + eps) as in the benchmark, so an all-zero one gives zero
similarities instead of NaN.
"""
from dataclasses import dataclass

import torch

from ...store.schema import FEATURE_PREFIX
from .base import Distiller
from .registry import register_method

TAP = "pool"
EPS = 1e-7


def conditional_probabilities(e):
    # float32 even under bf16 autocast: the KL is tiny (hence the weight) and bf16 cosines would swamp it.
    with torch.autocast(e.device.type, enabled=False):
        e = e.float().flatten(1)
        e = e / (e.norm(dim=1, keepdim=True) + EPS)
        kernel = (e @ e.t() + 1.0) / 2.0
        return kernel / kernel.sum(1, keepdim=True)


@register_method
class ProbabilisticKT(Distiller):
    name = "pkt"
    summary = "ce_weight 1 * CE + pkt_weight 30000 * KL(teacher || student) of cosine-kernel pool probabilities"
    teacher_signals = (FEATURE_PREFIX + TAP,)
    student_taps = (TAP,)

    @dataclass(frozen=True)
    class Options:
        ce_weight: float = 1.0
        pkt_weight: float = 30000.0

    def forward(self, logits, student, teacher, batch):
        p = conditional_probabilities(student[TAP])
        with torch.no_grad():
            q = conditional_probabilities(teacher[FEATURE_PREFIX + TAP])
        pkt = (q * torch.log((q + EPS) / (p + EPS))).mean()
        return self.ce_plus(logits, batch, "pkt", pkt)
