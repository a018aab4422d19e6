"""The view sets `generate-labels --views` can store, by name: each builds the `ViewSpace` of the views a store
will hold (one shared [V, P] table when the views are enumerated, parameters drawn per sample when sampled)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..errors import UserError
from ..limits import BOUNDS
from ..data.datasets import PreparedDataset
from .mixed import MixedView
from .mixes import MIX_POLICIES, get_mix_policy
from .space import ViewSpace
from .policies import IdentityView, PadCropFlipView, ResizedCropFlipView, default_augment, get_view_policy


@dataclass(frozen=True)
class ViewRequest:
    """What `--views` and its companions ask for."""

    spec: str
    seed: int = 0  # draws sampled views and mix records, per sample
    split: str = "train"
    k: int | None = None  # the K of NAME:K
    mix_alpha: float | None = None  # mixes: the Beta parameter (None: the policy's usual one)


def identity_views(data: PreparedDataset, request: ViewRequest) -> ViewSpace:
    return ViewSpace(IdentityView(), 1, torch.zeros(1, 1, dtype=torch.long), spec=request.spec)


def crop_flip_views(data: PreparedDataset, request: ViewRequest) -> ViewSpace:
    policy = PadCropFlipView()
    # Position v holds view id v: stage two's uniform draw of positions is the policy's own draw.
    return ViewSpace(policy, policy.num_views, torch.arange(policy.num_views)[:, None], spec=request.spec)


def sampled_views(data: PreparedDataset, request: ViewRequest) -> ViewSpace:
    return ViewSpace(ResizedCropFlipView(size=data.input_size), request.k, None, seed=request.seed, spec=request.spec)


def mix_views(mix_name: str) -> Callable[[PreparedDataset, ViewRequest], ViewSpace]:
    def build(data: PreparedDataset, request: ViewRequest) -> ViewSpace:
        base = get_view_policy(default_augment(data), data.input_size)  # the view each part gets, as in training
        policy = MixedView(base, get_mix_policy(mix_name, request.mix_alpha), data.num_samples(request.split))
        return ViewSpace(policy, request.k, None, seed=request.seed, spec=request.spec)
    return build


# name -> (builder, takes ":K"); the CLI lists these as identity, cifar-crop-flip, sampled:K, mix:POLICY:K
STORE_VIEW_SETS: dict[str, tuple[Callable[[PreparedDataset, ViewRequest], ViewSpace], bool]] = {
    "identity": (identity_views, False),
    "cifar-crop-flip": (crop_flip_views, False),
    "sampled": (sampled_views, True),
    **{f"mix:{name}": (mix_views(name), True) for name in MIX_POLICIES},
}


def store_view_specs() -> list[str]:
    return [f"{name}:K" if counted else name for name, (_, counted) in STORE_VIEW_SETS.items()]


def store_views(spec: str, data: PreparedDataset, seed: int, split: str = "train",
                mix_alpha: float | None = None) -> ViewSpace:
    """The view space of `--views spec` for this split (`seed` draws sampled views and mixes)."""
    name, count = (spec, "") if spec in STORE_VIEW_SETS else spec.rpartition(":")[::2]
    builder, counted = STORE_VIEW_SETS.get(name, (None, False))
    if builder is None or counted != bool(count):
        raise UserError(f"unknown --views '{spec}'; use {', '.join(store_view_specs())}")
    k = None
    if counted:
        k = int(count) if count.isdigit() else 0
        if not BOUNDS["views"].accepts(k):
            raise UserError(f"--views {spec}: K must be {BOUNDS['views'].describe()}, e.g. {name}:10")
    if mix_alpha is not None and not name.startswith("mix:"):
        raise UserError(f"--mix-alpha sets the Beta parameter of mixed views; --views {spec} mixes nothing")
    return builder(data, ViewRequest(spec, seed, split, k, mix_alpha))
