"""`sp`: similarity-preserving KD (Tung & Mori, ICCV 2019), on stage3 (the last stage of the CIFAR ResNets).

Each map is flattened to Q = [B, C*H*W]; G = row-wise L2 normalisation of Q Q^T (B x B), for the student
and the teacher; sp = ||G_s - G_t||_F^2 / B^2. Total = ce_weight * CE + sp_weight * sp (weights 1 and 3000,
the CRD benchmark's, which also applies it to the last stage output only).
Only the batch-by-batch similarities are compared, so the two maps' shapes need not match.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...store.schema import FEATURE_PREFIX
from .base import Distiller
from .registry import register_method

TAP = "stage3"


def similarity(f):
    # float32 even under bf16 autocast: the loss is a small difference of near-equal similarities.
    with torch.autocast(f.device.type, enabled=False):
        q = f.float().flatten(1)
        return F.normalize(q @ q.t(), dim=1)


@register_method
class SimilarityPreserving(Distiller):
    name = "sp"
    summary = "ce_weight 1 * CE + sp_weight 3000 * ||G_s - G_t||_F^2 / B^2, G = row-normalised stage3 Gram (B x B)"
    teacher_signals = (FEATURE_PREFIX + TAP,)
    student_taps = (TAP,)

    @dataclass(frozen=True)
    class Options:
        ce_weight: float = 1.0
        sp_weight: float = 3000.0

    def forward(self, logits, student, teacher, batch):
        g_s, g_t = similarity(student[TAP]), similarity(teacher[FEATURE_PREFIX + TAP].detach())
        sp = (g_s - g_t).pow(2).sum() / g_s.shape[0] ** 2
        return self.ce_plus(logits, batch, "sp", sp)
