"""`ab`: activation-boundary distillation (Heo et al., AAAI 2019), as run in the CRD CIFAR-100 benchmark.

Two phases. Warm-up (`warmup_epochs`, 30): the student's body and the connectors learn where the teacher's
neurons switch on, from the pre-ReLU outputs of the three stages (taps `stage{i}.pre`); no CE. Afterwards:
CE only (`ce_weight` 1), the connectors idle.

The alternative (hinge-type) loss, margin m, per element, for teacher pre-activation t and connector output s:
  t > 0:   relu(m - s)^2   ((s - m)^2 where s < m)
  t <= 0:  relu(m + s)^2   ((s + m)^2 where s > -m)
Per layer: the sum over channels and positions, averaged over the batch. Over layers: weights 1/4, 1/2, 1 for
stage1..3 (halving towards the input) and a factor 3/1000 on the sum, as in the AB authors' CIFAR code and the
benchmark. Warm-up loss = ab_weight * that.

Readings of ours: a connector is a 1x1 conv (no bias) + BatchNorm to the teacher's channel count where the
widths differ and the identity where they match, as the authors' code and the benchmark do
(`always_connect` 1 puts a conv + BN connector on every layer). Maps of different spatial sizes are refused:
the loss compares neuron by neuron, and a pooled pre-activation is not any neuron's boundary. The warm-up
runs at the recipe's base learning rate, as the benchmark's (0.05).
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...store.schema import FEATURE_PREFIX
from .base import Distiller
from .maps import map_shapes
from .registry import register_method

TAPS = ("stage1.pre", "stage2.pre", "stage3.pre")
LAYER_WEIGHTS = (0.25, 0.5, 1.0)  # 2^(i - n + 1): the deepest layer counts most
SCALE = 3.0 / 1000.0  # the authors' normalisation of the summed loss


def alternative_loss(s: torch.Tensor, t: torch.Tensor, margin: float) -> torch.Tensor:
    """Sum over [C, H, W] of the margin hinge, squared, averaged over the batch (float32)."""
    s, active = s.float(), t > 0
    hinge = torch.where(active, F.relu(margin - s), F.relu(margin + s))
    return hinge.pow(2).sum() / s.shape[0]


def connector(in_channels: int, out_channels: int) -> nn.Module:
    conv = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")  # the authors' N(0, 2 / fan_out)
    return nn.Sequential(conv, nn.BatchNorm2d(out_channels))


def layer_shapes(context, method: str):
    """(student, teacher) [C, H, W] per tap; refuses missing shapes and different spatial sizes."""
    pairs = map_shapes(context, method, TAPS)
    for tap, (s, t) in zip(TAPS, pairs):
        if s[1:] != t[1:]:
            raise ValueError(f"--method {method} compares the student's and the teacher's {tap} neuron by neuron, "
                             f"but their spatial sizes differ ({s[1:]} vs {t[1:]})")
    return pairs


@register_method
class ActivationBoundaries(Distiller):
    name = "ab"
    summary = ("warm-up (30 epochs): ab_weight * 3/1000 * sum over stage1-3.pre (weights 1/4, 1/2, 1) of the "
               "margin-1 boundary hinge; then ce_weight 1 * CE only")
    teacher_signals = tuple(FEATURE_PREFIX + tap for tap in TAPS)
    student_taps = TAPS

    @dataclass(frozen=True)
    class Options:
        warmup_epochs: int = 30
        ab_weight: float = 1.0
        margin: float = 1.0
        ce_weight: float = 1.0
        always_connect: bool = False

    def __init__(self, context, **options):
        super().__init__(context, **options)
        self.require_warmup("after it, the loss is plain CE")
        self.connectors = nn.ModuleList(
            connector(s[0], t[0]) if self.options.always_connect or s[0] != t[0] else nn.Identity()
            for s, t in layer_shapes(context, self.name))

    def boundary_loss(self, student, teacher):
        total = 0.0
        for tap, weight, connect in zip(TAPS, LAYER_WEIGHTS, self.connectors):
            s = connect(student[tap])
            total = total + weight * alternative_loss(s, teacher[FEATURE_PREFIX + tap].detach(),
                                                      self.options.margin)
        return SCALE * total

    def forward(self, logits, student, teacher, batch):
        if self.in_warmup:
            ab = self.boundary_loss(student, teacher)
            return {"loss": self.options.ab_weight * ab, "ab": ab}
        ce = F.cross_entropy(logits.float(), batch.labels)
        return {"loss": self.options.ce_weight * ce, "ce": ce}
