"""The view sets `generate-labels --views` can store, by name: each builds the policy and the parameters of the
views a store holds (shared [V, P] when the views are enumerated, drawn per sample when they are sampled)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from ..errors import UserError
from .datasets import PreparedDataset
from .views import IdentityView, PadCropFlipView, ResizedCropFlipView, ViewPolicy


@dataclass
class StoreViews:
    """The views a store holds: a policy plus shared [V, P] or per-sample [N, V, P] parameters."""

    policy: ViewPolicy
    num_views: int
    shared_params: np.ndarray | None
    seed: int = 0
    description: dict = field(default_factory=dict)

    def params_for(self, indices: np.ndarray, height: int, width: int) -> np.ndarray:
        """[rows, V, P] parameters for these samples."""
        if self.shared_params is not None:
            return np.broadcast_to(self.shared_params, (len(indices),) + self.shared_params.shape).copy()
        # Each sample's views come from a generator seeded with (seed, index): independent of batching and ranks.
        out = [self.policy.sample(self.num_views, height, width,
                                  torch.Generator().manual_seed(self.seed * 1_000_003 + int(i))).numpy()
               for i in indices]
        return np.stack(out)


def identity_views(spec: str, data: PreparedDataset, seed: int, k: int | None) -> StoreViews:
    policy = IdentityView()
    return StoreViews(policy, 1, np.zeros((1, 1), np.int64), description={**policy.describe(), "spec": spec})


def crop_flip_views(spec: str, data: PreparedDataset, seed: int, k: int | None) -> StoreViews:
    policy = PadCropFlipView(pad=4)
    params = np.arange(policy.num_views, dtype=np.int64)[:, None]
    return StoreViews(policy, policy.num_views, params,
                      description={**policy.describe(), "spec": spec, "pad": 4,
                                   "view_id": "v = dy * 18 + dx * 2 + flip (dy, dx in 0..8)"})


def sampled_views(spec: str, data: PreparedDataset, seed: int, k: int | None) -> StoreViews:
    policy = ResizedCropFlipView(size=data.input_size)
    return StoreViews(policy, k, None, seed,
                      description={**policy.describe(), "spec": spec, "num_views": k, "size": data.input_size,
                                   "scale": list(policy.scale), "ratio": list(policy.ratio), "seed": seed})


# name -> (builder, takes ":K"); the CLI lists these as identity, cifar-crop-flip, sampled:K
STORE_VIEW_SETS: dict[str, tuple[Callable[..., StoreViews], bool]] = {
    "identity": (identity_views, False),
    "cifar-crop-flip": (crop_flip_views, False),
    "sampled": (sampled_views, True),
}


def store_view_specs() -> list[str]:
    return [f"{name}:K" if counted else name for name, (_, counted) in STORE_VIEW_SETS.items()]


def store_views(spec: str, data: PreparedDataset, seed: int) -> StoreViews:
    """The views of `--views spec` for this dataset (`seed` draws sampled views)."""
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
