"""The view sets `generate-labels --views` can store, by name: each builds the `ViewSpace` of the views a store
will hold (one shared [V, P] table when the views are enumerated, parameters drawn per sample when sampled)."""
from __future__ import annotations

from typing import Callable

import torch

from ..errors import UserError
from .datasets import PreparedDataset
from .view_space import ViewSpace
from .views import IdentityView, PadCropFlipView, ResizedCropFlipView


def identity_views(spec: str, data: PreparedDataset, seed: int, k: int | None) -> ViewSpace:
    return ViewSpace(IdentityView(), 1, torch.zeros(1, 1, dtype=torch.long), spec=spec)


def crop_flip_views(spec: str, data: PreparedDataset, seed: int, k: int | None) -> ViewSpace:
    policy = PadCropFlipView()
    # Position v holds view id v: stage two's uniform draw of positions is the policy's own draw.
    return ViewSpace(policy, policy.num_views, torch.arange(policy.num_views)[:, None], spec=spec)


def sampled_views(spec: str, data: PreparedDataset, seed: int, k: int | None) -> ViewSpace:
    return ViewSpace(ResizedCropFlipView(size=data.input_size), k, None, seed=seed, spec=spec)


# name -> (builder, takes ":K"); the CLI lists these as identity, cifar-crop-flip, sampled:K
STORE_VIEW_SETS: dict[str, tuple[Callable[..., ViewSpace], bool]] = {
    "identity": (identity_views, False),
    "cifar-crop-flip": (crop_flip_views, False),
    "sampled": (sampled_views, True),
}


def store_view_specs() -> list[str]:
    return [f"{name}:K" if counted else name for name, (_, counted) in STORE_VIEW_SETS.items()]


def store_views(spec: str, data: PreparedDataset, seed: int) -> ViewSpace:
    """The view space of `--views spec` for this dataset (`seed` draws sampled views)."""
    name, sep, count = spec.partition(":")
    builder, counted = STORE_VIEW_SETS.get(name, (None, False))
    if builder is None or counted != bool(sep):
        raise UserError(f"unknown --views '{spec}'; use {', '.join(store_view_specs())}")
    k = None
    if counted:
        k = int(count) if count.isdigit() else 0
        if k < 1:
            raise UserError(f"--views {spec}: K must be a positive integer, e.g. {name}:10")
    return builder(spec, data, seed, k)
