"""Stage two's mixed views drawn fresh each step (`--mix` with an online teacher, or none): the usual view of every
image first, then each row mixed with partners from the same batch (one random permutation per extra part, as
the mixup, CutMix and RICAP papers' code pairs images)."""
from __future__ import annotations

import torch

from .mixes import MixPolicy, numpy_rng
from .view_sampling import Drawn, MixParts, ViewSampler


class FreshMixes(ViewSampler):
    def __init__(self, base: ViewSampler, mix: MixPolicy, train_labels: torch.Tensor):
        self.base, self.mix = base, mix
        self.train_labels = train_labels  # int64 [N]: the class of every sample, for the parts' ground truth

    def draw(self, images, indices, generator):
        viewed = self.base.draw(images, indices, generator).images
        b, _, height, width = viewed.shape
        rows = [torch.arange(b)] + [torch.randperm(b, generator=generator) for _ in range(self.mix.parts - 1)]
        params = torch.from_numpy(self.mix.sample(b, height, width, numpy_rng(generator)))
        pixels = self.mix.compose([viewed[r.to(viewed.device)] for r in rows], params)
        part_indices = torch.stack([indices[r] for r in rows], dim=1)  # [B, parts] sample indices, on the CPU
        return Drawn(pixels, None, MixParts(self.train_labels[part_indices], self.mix.weights(params, height, width)))

    def describe(self):
        return {**self.base.describe(), **self.mix.describe(), "partners": "the same batch, drawn each step"}
