"""`rkd`: relational knowledge distillation (Park et al., CVPR 2019), on the pooled embedding [B, D].

Distance-wise: d_ij = ||e_i - e_j||_2 divided by the mean of the B(B-1) off-diagonal distances, for the
student and the teacher; dist = mean over the B x B pairs of smooth_L1(d_s, d_t) (beta 1).
Angle-wise: for each ordered triplet (i, j, k), cos of the angle at e_i between e_j and e_k,
<(e_j - e_i)/||.||, (e_k - e_i)/||.||>; angle = mean over the B^3 triplets of smooth_L1(cos_s, cos_t).
Total = ce_weight * CE + rkd_weight * (distance_weight * dist + angle_weight * angle), weights 1, 1, 25, 50
(the paper's and the CRD benchmark's).

Readings of ours: as in the benchmark's reduction, the means run over every pair and triplet, the diagonal
and the degenerate triplets (a repeated point) included; they are 0 for both networks, so they only dilute.
The distance normaliser is the mean over i != j (the benchmark averages the positive distances: the same
unless two embeddings coincide).
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...store.schema import FEATURE_PREFIX
from .base import Distiller
from .registry import register_method

TAP = "pool"


def relations(e):
    """Mean-normalised pairwise distances [B, B] and triplet-angle cosines [B, B, B], in float32
    (even under bf16 autocast, whose matmul would blur the cosines)."""
    with torch.autocast(e.device.type, enabled=False):
        e = e.float().flatten(1)
        diff = e.unsqueeze(0) - e.unsqueeze(1)  # diff[i, j] = e_j - e_i
        off = 1.0 - torch.eye(e.shape[0], device=e.device)
        # The clamp keeps sqrt differentiable on the zero diagonal; the mask then zeroes it.
        dist = diff.pow(2).sum(2).clamp_min(1e-12).sqrt() * off
        dist = dist / (dist.sum() / off.sum().clamp_min(1.0)).clamp_min(1e-12)
        unit = F.normalize(diff, dim=2)
        return dist, unit @ unit.transpose(1, 2)


@register_method
class RelationalKD(Distiller):
    name = "rkd"
    summary = ("ce_weight 1 * CE + rkd_weight 1 * (distance_weight 25 * distance + angle_weight 50 * angle), "
               "smooth L1 on pooled-embedding relations")
    teacher_signals = (FEATURE_PREFIX + TAP,)
    student_taps = (TAP,)

    @dataclass(frozen=True)
    class Options:
        ce_weight: float = 1.0
        rkd_weight: float = 1.0
        distance_weight: float = 25.0
        angle_weight: float = 50.0

    def forward(self, logits, student, teacher, batch):
        d_s, a_s = relations(student[TAP])
        with torch.no_grad():
            d_t, a_t = relations(teacher[FEATURE_PREFIX + TAP])
        dist, angle = F.smooth_l1_loss(d_s, d_t), F.smooth_l1_loss(a_s, a_t)
        rkd = self.options.distance_weight * dist + self.options.angle_weight * angle
        return {**self.ce_plus(logits, batch, "rkd", rkd), "distance": dist, "angle": angle}
