"""Stage two's view draw: which view of each sample the student sees at a step.

`AugmentViews` draws fresh views from a policy (vanilla training, online teachers,
identity stores paired with separately augmented images); `CopiedViews` several per
image. A store's own views are drawn by its `ViewSpace` (space.py), which pairs
each view with the key of its label. Draws use a CPU generator: a seed gives the same
views anywhere.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import NamedTuple

import torch

from ..errors import UserError
from .policies import ViewPolicy


class MixParts(NamedTuple):
    """What a mixed image is made of, for the mixed ground truth: each part's class and its share."""

    labels: torch.Tensor  # int64 [B, parts], part 0 the row's own sample
    weights: torch.Tensor  # float32 [B, parts], rows summing to 1


class Drawn(NamedTuple):
    images: torch.Tensor  # uint8 [B, 3, H, W]: what the student (and an online teacher) sees
    views: torch.Tensor | None = None  # int64 [B] on the CPU: positions on a store's view axis, the labels' keys
    mix: MixParts | None = None  # for mixed images


class Chosen(NamedTuple):
    """A step's views drawn but not yet made: `policy.apply(images, params)` makes their pixels."""

    policy: ViewPolicy
    params: torch.Tensor  # int64 [B, P] on the CPU
    views: torch.Tensor | None = None  # as Drawn.views

    def made(self, pixels: torch.Tensor, indices: torch.Tensor) -> Drawn:
        """The draw, once its pixels are made: with a mixed view's parts (their classes and shares)."""
        parts = self.policy.mix_parts(indices, self.params, pixels.shape[2], pixels.shape[3])
        return Drawn(pixels, self.views, None if parts is None else MixParts(*parts))


class ViewSampler(ABC):
    @abstractmethod
    def draw(self, images: torch.Tensor, indices: torch.Tensor, generator: torch.Generator) -> Drawn:
        """The step's views of a batch (indices: int64 [B] sample indices, on the CPU)."""

    @abstractmethod
    def describe(self) -> dict:
        """What the run's config records about the views."""

    def mixed_parts(self) -> int:
        """The images each drawn image mixes (Drawn.mix has that many parts); 0 for views of one image."""
        return 0


class ChoosingSampler(ViewSampler):
    """A sampler whose draw is a choice of one policy's parameters, the pixels that policy's: a pack makes all its
    members' pixels in one call (a pack's members whose samplers make pixels as they draw, fresh mixes, draw
    alone)."""

    @abstractmethod
    def choose(self, images: torch.Tensor, indices: torch.Tensor, generator: torch.Generator) -> Chosen:
        """The draw of `draw` (the same generator calls), its pixels left to make."""

    def draw(self, images, indices, generator):
        chosen = self.choose(images, indices, generator)
        return chosen.made(chosen.policy.apply(images, chosen.params), indices)


class AugmentViews(ChoosingSampler):
    """Fresh views from `policy`; `store_view` pins the store position (identity stores: 0)."""

    def __init__(self, policy: ViewPolicy, store_view: int | None = None):
        self.policy, self.store_view = policy, store_view

    def choose(self, images, indices, generator):
        params = self.policy.sample(images.shape[0], images.shape[2], images.shape[3], generator)
        views = None if self.store_view is None else torch.full((images.shape[0],), self.store_view, dtype=torch.long)
        return Chosen(self.policy, params, views)

    def describe(self):
        pairing = "images augmented independently of the stored view" if self.store_view is not None else "drawn"
        return {"draw": "augment", "policy": self.policy.name, "pairing": pairing}


def same_flip_pad_crop(params: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
    return params - params % 2 + first % 2  # a cifar-crop-flip view id's flip is its lowest bit


def same_flip_resized_crop(params: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
    return torch.cat([params[:, :4], first[:, 4:]], dim=1)  # (top, left, height, width, flip)


# How a policy's parameters take another view's flip (identity: nothing to flip).
SAME_FLIP = {"cifar-crop-flip": same_flip_pad_crop, "rrc-flip": same_flip_resized_crop,
             "identity": lambda params, first: params}


class CopiedViews(ViewSampler):
    """`copies` views of every image per step, in blocks: rows [kB, (k+1)B) hold copy k of the B images. Each copy
    has its own crop and all copies of an image the flip of copy 0, as SSKD's loader draws its rotated copies
    (one flip per image, then a crop per copy)."""

    def __init__(self, policy: ViewPolicy, copies: int):
        self.policy, self.copies = policy, copies

    def draw(self, images, indices, generator):
        n = images.shape[0]
        params = self.policy.sample(n * self.copies, images.shape[2], images.shape[3], generator)
        params = SAME_FLIP[self.policy.name](params, params[:n].repeat(self.copies, 1))
        return Drawn(self.policy.apply(images.repeat(self.copies, 1, 1, 1), params))

    def describe(self):
        return {"draw": "augment", "policy": self.policy.name, "copies": self.copies,
                "pairing": "drawn: a crop per copy, one flip per image"}


def with_copies(sampler: ViewSampler, copies: int) -> ViewSampler:
    """The sampler a method that sees `copies` views of every image per step draws from."""
    if copies == 1:
        return sampler
    if not isinstance(sampler, AugmentViews) or sampler.store_view is not None:
        raise UserError(f"{copies} views of every image per step need freshly drawn views (an online --teacher)")
    return CopiedViews(sampler.policy, copies)
