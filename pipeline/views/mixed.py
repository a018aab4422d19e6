"""Mixed images as views. `FreshMixes` draws them each step (`--mix` with an online teacher, or none): the usual
view of every image first, then each row mixed with partners from the same batch (one random permutation per extra
part, as the mixup, CutMix and RICAP papers' code pairs images). `MixedView` is a stored mix: a view policy whose
parameters are a mix record with partners anywhere in the split, so a store can hold K of them per sample
(`--views mix:POLICY:K`) and stage two rebuilds exactly the pixels the teacher labelled.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .mixes import MIX_POLICIES, MixPolicy, numpy_rng
from ..data.pixel_bank import PixelBank
from .draws import Drawn, MixParts, ViewSampler
from .policies import VIEW_POLICY_CLASSES, ViewPolicy


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

    def mixed_parts(self):
        return self.mix.parts


@dataclass
class MixedView(ViewPolicy):
    """A stored mix as one view: a record of `parts` sample indices (the row's own first, partners anywhere in the
    split), each part's view parameters under `base`, and the mix's parameters. Partners' pixels come from a
    PixelBank; the record is [partner indices (parts - 1), base parameters of each part, mix parameters]."""

    base: ViewPolicy
    mix: MixPolicy
    num_samples: int  # the split's size: partners are drawn from all of it
    bank: PixelBank | None = field(default=None, compare=False, repr=False)  # attached before pixels are made
    name = "mix"
    num_views = None

    @property
    def param_names(self) -> tuple[str, ...]:  # type: ignore[override]
        parts = self.mix.parts
        return (tuple(f"partner{k}" for k in range(1, parts))
                + tuple(f"part{k}.{p}" for k in range(parts) for p in self.base.param_names)
                + tuple(self.mix.param_names))

    def _base_params(self, params: torch.Tensor, part: int) -> torch.Tensor:
        width = len(self.base.param_names)
        start = self.mix.parts - 1 + part * width
        return params[:, start:start + width]

    def _mix_params(self, params: torch.Tensor) -> torch.Tensor:
        return params[:, self.mix.parts - 1 + self.mix.parts * len(self.base.param_names):]

    def sample(self, n, height, width, generator):
        parts = self.mix.parts
        partners = torch.randint(0, self.num_samples, (n, parts - 1), generator=generator)
        base = self.base.sample(n * parts, height, width, generator).reshape(n, -1)  # part k of record i: row i*parts+k
        mix = torch.from_numpy(self.mix.sample(n, height, width, numpy_rng(generator)))
        return torch.cat([partners, base, mix], dim=1)

    def apply(self, images, params):
        if self.bank is None:
            raise ValueError("a mixed view needs its partners' pixels: attach a PixelBank first")
        parts = []
        for k in range(self.mix.parts):
            source = images if k == 0 else self.bank.take(params[:, k - 1], images.device)
            parts.append(self.base.apply(source, self._base_params(params, k)))
        return self.mix.compose(parts, self._mix_params(params))

    def mix_parts(self, indices, params, height, width):
        """(int64 [B, parts] classes, float32 [B, parts] shares) of the mixed images these records make."""
        samples = torch.cat([indices.cpu()[:, None], params[:, :self.mix.parts - 1]], dim=1)
        return self.bank.labels[samples], self.mix.weights(self._mix_params(params), height, width)

    def describe(self):
        return {**super().describe(), **self.mix.describe(), "base": self.base.describe(),
                "num_samples": self.num_samples}

    @classmethod
    def from_record(cls, record):
        base_record = record["base"]
        base_cls = VIEW_POLICY_CLASSES.get(base_record.get("policy"))
        mix_cls = MIX_POLICIES.get(record.get("mix"))
        if base_cls is None or mix_cls is None or base_cls is cls:
            raise ValueError(f"mixed views of {record.get('mix')!r} over {base_record.get('policy')!r}")
        return cls(base_cls.from_record(base_record), mix_cls(float(record["alpha"])), int(record["num_samples"]))


VIEW_POLICY_CLASSES[MixedView.name] = MixedView  # a store's record of mixed views rebuilds through the registry
