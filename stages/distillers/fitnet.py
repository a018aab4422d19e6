"""`fitnet`: FitNets hints (Romero et al., ICLR 2015), as run in the CRD CIFAR-100 benchmark.

A trainable regressor maps the student's stage-2 output to the teacher's stage-2 channels and the hint is
the MSE to the teacher's map: mean over batch, channels and positions of (r(f_s) - f_t)^2.
Total = ce_weight * CE + fitnet_weight * hint (benchmark weights 1 and 100), trained jointly from the first
step (the benchmark's reading; the paper's separate hint-training stage is not run).

Readings of ours: the regressor is 1x1 conv (no bias) -> BatchNorm -> ReLU. The benchmark's regressor ends in
BN + ReLU too (the teacher's target is a post-ReLU map); its 1x1 conv becomes a strided or larger kernel when
the sizes differ, where we instead average-pool the larger of the two maps to the smaller's size.
"""
from dataclasses import dataclass

import torch.nn.functional as F
from torch import nn

from ...store.schema import FEATURE_PREFIX
from .base import Distiller
from .maps import map_shapes, match_spatial
from .registry import register_method

TAP = "stage2"


@register_method
class FitNet(Distiller):
    name = "fitnet"
    summary = "ce_weight 1 * CE + fitnet_weight 100 * MSE(regressor(student stage2), teacher stage2)"
    teacher_signals = (FEATURE_PREFIX + TAP,)
    student_taps = (TAP,)

    @dataclass(frozen=True)
    class Options:
        ce_weight: float = 1.0
        fitnet_weight: float = 100.0

    def __init__(self, context, **options):
        super().__init__(context, **options)
        [(s, t)] = map_shapes(context, self.name, (TAP,))
        self.regressor = nn.Sequential(nn.Conv2d(s[0], t[0], kernel_size=1, bias=False),
                                       nn.BatchNorm2d(t[0]), nn.ReLU())

    def forward(self, logits, student, teacher, batch):
        f_s, f_t = match_spatial(student[TAP], teacher[FEATURE_PREFIX + TAP].detach())
        hint = F.mse_loss(self.regressor(f_s).float(), f_t.float())
        return self.ce_plus(logits, batch, "fitnet", hint)
