"""Mixed images (mixup, CutMix, RICAP) as exact compositions of already-viewed images.

A mix combines `parts` viewed images of the same size (part 0 is the sample the row belongs to, the others its
partners) under a few integer mix parameters, so like a view it is a pure function of integers: the same parts and
parameters give the same uint8 pixels on every device. mixup's weight is an integer out of MIX_SCALE and the blend
is integer arithmetic; CutMix and RICAP copy pixels. `weights` gives each part's share of the mixed image (its
blend weight or its area), the weights of the mixed ground truth.

Draws take a numpy generator seeded from the caller's torch generator (numpy has Beta; torch's takes no generator).
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from ..errors import UserError

MIX_SCALE = 1024  # mixup weights are integers out of 1024


def numpy_rng(generator: torch.Generator) -> np.random.Generator:
    """A numpy generator whose seed is the torch generator's next draw: reproducible from the torch seed."""
    return np.random.default_rng(int(torch.randint(0, 2 ** 62, (1,), generator=generator)))


@dataclass(frozen=True)
class MixPolicy(ABC):
    alpha: float  # the Beta(alpha, alpha) parameter of the policy's draw
    name: ClassVar[str]
    parts: ClassVar[int]
    param_names: ClassVar[tuple[str, ...]]
    default_alpha: ClassVar[float]

    @abstractmethod
    def sample(self, n: int, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
        """int64 [n, len(param_names)]: the mix parameters of n mixed images."""

    @abstractmethod
    def compose(self, parts: list[torch.Tensor], params: torch.Tensor) -> torch.Tensor:
        """uint8 [B, 3, H, W] from `parts` uint8 [B, 3, H, W] images (part 0 first) and int64 [B, Q] parameters."""

    @abstractmethod
    def weights(self, params: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """float32 [B, parts]: each part's share of each mixed image (rows sum to 1)."""

    def describe(self) -> dict:
        return {"mix": self.name, "alpha": self.alpha, "parts": self.parts, "mix_param_names": list(self.param_names)}


@dataclass(frozen=True)
class Mixup(MixPolicy):
    """Zhang et al. 2018: w * a + (1 - w) * b, w ~ Beta(alpha, alpha), here rounded to a multiple of 1 / 1024."""

    name = "mixup"
    parts = 2
    param_names = ("weight_of_1024",)
    default_alpha = 1.0

    def sample(self, n, height, width, rng):
        return np.rint(rng.beta(self.alpha, self.alpha, n) * MIX_SCALE).astype(np.int64)[:, None]

    def compose(self, parts, params):
        w = params[:, 0].to(parts[0].device, torch.int32).view(-1, 1, 1, 1)
        blend = w * parts[0].to(torch.int32) + (MIX_SCALE - w) * parts[1].to(torch.int32) + MIX_SCALE // 2
        return torch.div(blend, MIX_SCALE, rounding_mode="floor").to(torch.uint8)

    def weights(self, params, height, width):
        w = params[:, 0].float() / MIX_SCALE
        return torch.stack([w, 1.0 - w], dim=1)


@dataclass(frozen=True)
class CutMix(MixPolicy):
    """Yun et al. 2019: a box of part 1 pasted over part 0; lambda ~ Beta(alpha, alpha), box sides
    sqrt(1 - lambda) of the image's, centre uniform, clipped to the image; weights by area."""

    name = "cutmix"
    parts = 2
    param_names = ("top", "left", "bottom", "right")
    default_alpha = 1.0

    def sample(self, n, height, width, rng):
        lam = rng.beta(self.alpha, self.alpha, n)
        ratio = np.sqrt(1.0 - lam)
        cut_h, cut_w = (height * ratio).astype(np.int64), (width * ratio).astype(np.int64)
        cy, cx = rng.integers(0, height, n), rng.integers(0, width, n)
        top, bottom = np.clip(cy - cut_h // 2, 0, height), np.clip(cy + cut_h // 2, 0, height)
        left, right = np.clip(cx - cut_w // 2, 0, width), np.clip(cx + cut_w // 2, 0, width)
        return np.stack([top, left, bottom, right], axis=1).astype(np.int64)

    def compose(self, parts, params):
        b, _, h, w = parts[0].shape
        top, left, bottom, right = params.to(parts[0].device).unbind(1)
        rows = torch.arange(h, device=parts[0].device)[None, :]
        cols = torch.arange(w, device=parts[0].device)[None, :]
        inside_rows = (rows >= top[:, None]) & (rows < bottom[:, None])  # [B, H]
        inside_cols = (cols >= left[:, None]) & (cols < right[:, None])  # [B, W]
        inside = (inside_rows[:, :, None] & inside_cols[:, None, :])[:, None]  # [B, 1, H, W]
        return torch.where(inside, parts[1], parts[0])

    def weights(self, params, height, width):
        top, left, bottom, right = params.float().unbind(1)
        pasted = (bottom - top) * (right - left) / (height * width)
        return torch.stack([1.0 - pasted, pasted], dim=1)


@dataclass(frozen=True)
class Ricap(MixPolicy):
    """Takahashi et al. 2018: a boundary point (w, h) with w / W, h / H ~ Beta(beta, beta) splits the image into
    four regions; region k (top-left, top-right, bottom-left, bottom-right) is a crop of part k's image of the
    region's size at a uniform offset; weights by area."""

    name = "ricap"
    parts = 4
    param_names = ("boundary_h", "boundary_w", "y0", "x0", "y1", "x1", "y2", "x2", "y3", "x3")
    default_alpha = 0.3

    @staticmethod
    def region_sizes(h, w, height: int, width: int):
        """[(rows, cols)] of the four regions, as tensors or arrays like h and w."""
        return [(h, w), (h, width - w), (height - h, w), (height - h, width - w)]

    def sample(self, n, height, width, rng):
        h = np.rint(height * rng.beta(self.alpha, self.alpha, n)).astype(np.int64)
        w = np.rint(width * rng.beta(self.alpha, self.alpha, n)).astype(np.int64)
        offsets = []
        for rows, cols in self.region_sizes(h, w, height, width):
            offsets += [rng.integers(0, height - rows + 1), rng.integers(0, width - cols + 1)]
        return np.stack([h, w, *offsets], axis=1).astype(np.int64)

    def compose(self, parts, params):
        b, c, height, width = parts[0].shape
        device = parts[0].device
        params = params.to(device)
        h, w = params[:, 0:1, None], params[:, 1:2, None]  # [B, 1, 1]
        rows = torch.arange(height, device=device)[None, :, None]
        cols = torch.arange(width, device=device)[None, None, :]
        below, right = rows >= h, cols >= w  # [B, H, 1], [B, 1, W]
        region = below.long() * 2 + right.long()  # [B, H, W]: which part each output pixel comes from
        offset_y = params[:, 2::2].gather(1, region.flatten(1)).view(b, height, width)
        offset_x = params[:, 3::2].gather(1, region.flatten(1)).view(b, height, width)
        src_rows = rows - torch.where(below, h, 0) + offset_y
        src_cols = cols - torch.where(right, w, 0) + offset_x
        stacked = torch.stack(parts, dim=1).permute(0, 1, 3, 4, 2)  # [B, 4, H, W, C]
        batch = torch.arange(b, device=device)[:, None, None]
        return stacked[batch, region, src_rows, src_cols].permute(0, 3, 1, 2).contiguous()

    def weights(self, params, height, width):
        h, w = params[:, 0].float(), params[:, 1].float()
        areas = [rows * cols for rows, cols in self.region_sizes(h, w, height, width)]
        return torch.stack(areas, dim=1) / (height * width)


MIX_POLICIES: dict[str, type[MixPolicy]] = {cls.name: cls for cls in (Mixup, CutMix, Ricap)}


def mix_policy_names() -> list[str]:
    return list(MIX_POLICIES)


def get_mix_policy(name: str, alpha: float | None = None) -> MixPolicy:
    """The named mix with its usual alpha (mixup, CutMix 1.0; RICAP's beta 0.3) unless one is given."""
    cls = MIX_POLICIES.get(name)
    if cls is None:
        raise UserError(f"unknown --mix '{name}'; known: {', '.join(mix_policy_names())}")
    alpha = cls.default_alpha if alpha is None else float(alpha)
    if not (math.isfinite(alpha) and 0 < alpha <= 100):
        raise UserError(f"--mix-alpha {alpha!r}: the Beta parameter must be in (0, 100]")
    return cls(alpha)
