"""`ft`: factor transfer (Kim et al., NeurIPS 2018), on the last stage output, as in the CRD CIFAR-100 benchmark.

Two phases. Warm-up (`warmup_epochs`, 30): a paraphraser, a convolutional autoencoder on the teacher's `stage3`
map t [B, C, H, W], learns to reconstruct it: rec = mean over batch, channels and positions of (P(t) - t)^2 (the
paper's L2 reconstruction loss; the benchmark's MSE). The student is not trained: the loss does not touch it.
Afterwards the paraphraser is frozen: its encoder output on t, computed without gradient, is the teacher factor
F_t; a trainable translator maps the student's `stage3` to the student factor F_s, and
  loss = ce_weight * CE + ft_weight * mean over batch and elements of |F_s / ||F_s||_2 - F_t / ||F_t||_2|
with each factor flattened per sample and L2-normalised (the paper's p = 1; the mean is its authors' L1Loss).
Weights 1 and 200 (the benchmark's).

Modules (3x3 convs, stride 1, padding 1, each followed by BatchNorm and LeakyReLU 0.1; factor channels k * C_t,
k = `rate` 0.5): paraphraser encoder C_t -> C_t -> kC_t -> kC_t, decoder kC_t -> kC_t -> C_t -> C_t (transposed
convs); translator C_s -> C_s -> kC_t -> kC_t. After the warm-up the paraphraser stays in eval mode: its
BatchNorm uses, and keeps, the running statistics of the warm-up.

Readings of ours: the factor is the whole flattened factor map, as in the paper and its authors' code; the
benchmark instead normalises the channel mean of the squared factor (an attention map over positions) before
the L1, so its weight 200 met a shorter vector. Factors of different spatial sizes are average-pooled to the
smaller one (as the benchmark does). The benchmark's paraphraser has no BatchNorm and is trained at lr 0.01;
ours trains at the recipe's base rate (0.05), where in our trials a paraphraser without BatchNorm diverged once
the teacher map's RMS was about 2 (at 0.01, about 3) and one with BatchNorm converged for RMS 0.5 to 10.
"""
import torch
import torch.nn.functional as F
from torch import nn

from .ab import check_warmup
from .base import FEATURE_PREFIX, Distiller
from .fitnet import map_shapes, match_spatial

TAP = "stage3"
SLOPE = 0.1  # LeakyReLU negative slope


def conv_stack(channels, transposed: bool = False) -> nn.Sequential:
    """3x3, stride-1 convs through `channels` (c0 -> c1 -> ...), each followed by BatchNorm and LeakyReLU."""
    conv = nn.ConvTranspose2d if transposed else nn.Conv2d
    layers = []
    for c_in, c_out in zip(channels[:-1], channels[1:]):
        # No conv bias: BatchNorm has its own shift.
        layers += [conv(c_in, c_out, kernel_size=3, stride=1, padding=1, bias=False), nn.BatchNorm2d(c_out),
                   nn.LeakyReLU(SLOPE)]
    return nn.Sequential(*layers)


class Paraphraser(nn.Module):
    """An autoencoder that keeps the spatial size: the encoder's output is the teacher factor."""

    def __init__(self, channels: int, factor_channels: int):
        super().__init__()
        self.encoder = conv_stack((channels, channels, factor_channels, factor_channels))
        self.decoder = conv_stack((factor_channels, factor_channels, channels, channels), transposed=True)

    def forward(self, x):
        return self.decoder(self.encoder(x))


def factor_distance(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of the per-sample L2-normalised flattened factors (float32)."""
    f_s, f_t = match_spatial(f_s.float(), f_t.float())
    return (F.normalize(f_s.flatten(1), dim=1) - F.normalize(f_t.flatten(1), dim=1)).abs().mean()


class FactorTransfer(Distiller):
    name = "ft"
    summary = ("warm-up (30 epochs): the paraphraser learns to reconstruct the teacher's stage3 (MSE), student "
               "untouched; then ce_weight 1 * CE + ft_weight 200 * L1 between L2-normalised factors")
    teacher_signals = (FEATURE_PREFIX + TAP,)
    student_taps = (TAP,)
    defaults = {"warmup_epochs": 30.0, "ce_weight": 1.0, "ft_weight": 200.0, "rate": 0.5}
    store_servable = False  # stores hold 1-D features only
    student_learns_in_warmup = False  # the warm-up trains a teacher-side module only

    def __init__(self, context, **options):
        super().__init__(context, **options)
        check_warmup(self.options, self.name, "the paraphraser is trained in it")
        [(s, t)] = map_shapes(context, self.name, (TAP,))
        rate = self.options["rate"]
        if rate <= 0:
            raise ValueError(f"rate (the paraphrase rate k) must be positive, got {rate:g}")
        factor_channels = max(1, round(rate * t[0]))
        self.paraphraser = Paraphraser(t[0], factor_channels)
        self.translator = conv_stack((s[0], s[0], factor_channels, factor_channels))

    def train(self, mode: bool = True):
        super().train(mode)
        if not self.in_warmup:
            self.paraphraser.eval()  # frozen: BatchNorm keeps the warm-up's running statistics
        return self

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.train(self.training)  # whichever of set_epoch and train() the loop calls first

    def forward(self, logits, student, teacher, batch):
        f_t = teacher[FEATURE_PREFIX + TAP].detach()
        if self.in_warmup:
            rec = F.mse_loss(self.paraphraser(f_t).float(), f_t.float())
            return {"loss": rec, "rec": rec}
        with torch.no_grad():
            factor_t = self.paraphraser.encoder(f_t)
        ft = factor_distance(self.translator(student[TAP]), factor_t)
        return self.ce_plus(logits, batch.labels, "ft", ft)
