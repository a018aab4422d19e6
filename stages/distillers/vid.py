"""`vid`: variational information distillation (Ahn et al., CVPR 2019), on the three stage outputs.

Per layer, the teacher's map t [B, C_t, H, W] is modelled as a Gaussian with mean mu = r(f_s), a trainable
regressor conv1x1 -> ReLU -> conv1x1 -> ReLU -> conv1x1 (no biases, hidden width C_t, as in the CRD
benchmark), and a per-channel variance sigma_c^2 = softplus(alpha_c) + eps, eps = 1e-5, alpha initialised so
that sigma^2 = 5.0. The layer's term is the negative log-likelihood without its constant,
0.5 * ((t - mu)^2 / sigma^2 + log sigma^2), averaged over batch, channels and positions.
Total = ce_weight * CE + vid_weight * sum over layers (weights 1 and 1).

Reading of ours: when the spatial sizes differ, the larger map is average-pooled to the smaller's size
(what the benchmark does too).
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...store.schema import FEATURE_PREFIX
from .base import Distiller
from .maps import map_shapes, match_spatial
from .registry import register_method

TAPS = ("stage1", "stage2", "stage3")
INIT_VARIANCE = 5.0
EPS = 1e-5


class GaussianHead(nn.Module):
    """The predicted mean (a regressor of the student's map) and the per-channel variance of one layer."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        mid = out_channels
        self.regressor = nn.Sequential(
            nn.Conv2d(in_channels, mid, 1, bias=False), nn.ReLU(),
            nn.Conv2d(mid, mid, 1, bias=False), nn.ReLU(),
            nn.Conv2d(mid, out_channels, 1, bias=False))
        # softplus^-1(5 - eps): the variance starts at 5.0.
        alpha = math.log(math.expm1(INIT_VARIANCE - EPS))
        self.alpha = nn.Parameter(torch.full((out_channels,), alpha))

    def variance(self):
        return F.softplus(self.alpha) + EPS

    def forward(self, f_s, f_t):
        mean = self.regressor(f_s).float()
        var = self.variance().view(1, -1, 1, 1)
        return (0.5 * ((mean - f_t.float()).pow(2) / var + var.log())).mean()


@register_method
class VariationalInformation(Distiller):
    name = "vid"
    summary = ("ce_weight 1 * CE + vid_weight 1 * sum over stage1-3 of Gaussian NLL of the teacher map "
               "(regressed mean, per-channel variance, init 5)")
    teacher_signals = tuple(FEATURE_PREFIX + tap for tap in TAPS)
    student_taps = TAPS

    @dataclass(frozen=True)
    class Options:
        ce_weight: float = 1.0
        vid_weight: float = 1.0

    def __init__(self, context, **options):
        super().__init__(context, **options)
        self.heads = nn.ModuleList(GaussianHead(s[0], t[0]) for s, t in map_shapes(context, self.name, TAPS))

    def forward(self, logits, student, teacher, batch):
        vid = 0.0
        for tap, head in zip(TAPS, self.heads):
            vid = vid + head(*match_spatial(student[tap], teacher[FEATURE_PREFIX + tap].detach()))
        return self.ce_plus(logits, batch, "vid", vid)
