"""A view space: which views of each sample a label store holds, and the one place a view key becomes pixels.

A store's labels are keyed by (sample index, view position). The `ViewSpace` owns that second axis in both stages:
- stage one (`views_of`) gives every position's parameters for a block of samples, the teacher labels the pixels
  `pixels(images, params)` makes of them, and the store records `record()` and, for sampled spaces, the parameters;
- stage two (`draw`) picks one position per sample per step and shows the student `pixels` of that position's
  stored parameters, returning the positions as the key of their labels.

The same parameters through the same policy give the same pixels (policies.py), so the label gathered for a key is the
teacher's answer for the pixels shown. For an enumerated space (cifar-crop-flip: position v holds view id v) the
draw is the policy's own training draw (`uniform_view_ids`), so a seed shows a student the same pixels whether its
labels come from the store or from the teacher run online: stored == online, step by step.

Sample indices and positions stay on the CPU (the parameter tables live there); only pixels go to the device.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..errors import UserError
from .mixed import MixedView  # registers the "mix" policy a store's record may name
from ..data.pixel_bank import PixelBank
from .draws import AugmentViews, Chosen, ChoosingSampler, ViewSampler
from .policies import VIEW_POLICY_CLASSES, IdentityView, ResizedCropFlipView, ViewPolicy, uniform_view_ids

if TYPE_CHECKING:  # annotations only: `labelopt train` draws views without importing the store (h5py)
    from ...store import LabelStore


@dataclass
class ViewSpace(ChoosingSampler):
    """`num_views` positions per sample: one [V, P] table for every sample (enumerated views), or [N, V, P]
    parameters per sample (sampled views: drawn at stage one from (seed, index), then read from the store)."""

    policy: ViewPolicy
    num_views: int
    shared_params: torch.Tensor | None  # int64 [V, P], or None for per-sample parameters
    sample_params: np.ndarray | None = None  # int64 [N, V, P]: a per-sample store's table (contiguous: read in place)
    seed: int = 0  # a per-sample space's draws at stage one
    spec: str = ""  # the `--views` that made it

    @property
    def per_sample(self) -> bool:
        return self.shared_params is None

    @property
    def mixed(self) -> bool:
        """Each view mixes the sample with partners from the split (`--views mix:POLICY:K`)."""
        return isinstance(self.policy, MixedView)

    def attach_bank(self, data, split: str) -> None:
        """Partners' pixels for mixed views (a no-op for views of one image); refused where they do not fit."""
        if self.mixed:
            self.policy.bank = PixelBank.load(data, split)

    # -- the record a store keeps ------------------------------------------------------------

    def record(self) -> dict:
        """The store's `views` attribute: the policy, the count, and how the views were made."""
        out = {**self.policy.describe(), "num_views": self.num_views, "spec": self.spec}
        if self.per_sample:
            out["seed"] = self.seed
        return out

    @classmethod
    def from_store(cls, store: LabelStore) -> "ViewSpace":
        """The space a store was generated in, its parameters read back (each table checked by its sha256)."""
        record = store.views
        policy_cls = VIEW_POLICY_CLASSES.get(record.get("policy"))
        if policy_cls is None:
            raise UserError(f"label store {store.path} has views of policy '{record.get('policy')}', which this "
                            f"labelopt cannot replay; regenerate it with --views identity, cifar-crop-flip or "
                            f"sampled:K")
        try:
            policy = policy_cls.from_record(record)
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"label store {store.path} records views this labelopt cannot rebuild ({exc}); "
                            f"regenerate it") from None
        # A contiguous store's per-sample table stays in the file and is read per key: it can outgrow memory.
        table = store.view_param_table()
        seed = int(record.get("seed", 0))
        if store.per_sample_params:
            return cls(policy, store.num_views, None, table, seed, record.get("spec", ""))
        return cls(policy, store.num_views, torch.from_numpy(np.array(table, dtype=np.int64)), None, seed,
                   record.get("spec", ""))

    def check_input_size(self, input_size: int, path) -> None:
        policy = self.policy.base if self.mixed else self.policy
        if isinstance(policy, ResizedCropFlipView) and policy.size != input_size:
            raise UserError(f"label store {path} has {policy.size}-pixel views but the data is {input_size} "
                            f"pixels; train at --resolution {policy.size} or generate labels for this data")

    # -- stage one: every position of a block of samples ---------------------------------------

    def views_of(self, indices: np.ndarray, height: int, width: int) -> np.ndarray:
        """int64 [rows, V, P]: the parameters of every position of these samples."""
        if self.shared_params is not None:
            table = self.shared_params.numpy()
            return np.broadcast_to(table, (len(indices),) + table.shape).copy()
        if self.sample_params is not None:
            return np.array(self.sample_params[np.asarray(indices, dtype=np.int64)], dtype=np.int64)
        # Each sample's views come from a generator seeded with (seed, index): independent of batching and ranks.
        return np.stack([self.policy.sample(self.num_views, height, width,
                                            torch.Generator().manual_seed(self.seed * 1_000_003 + int(i))).numpy()
                         for i in indices])

    # -- both stages: a key becomes pixels ---------------------------------------------------------

    def params(self, indices: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """int64 [B, P] for keys (indices[i], positions[i]), on the CPU (a per-sample space needs its table)."""
        positions = positions.cpu()
        if self.shared_params is not None:
            return self.shared_params[positions]
        if self.sample_params is None:
            raise ValueError("a per-sample view space has parameters only once generated or read from a store")
        return torch.from_numpy(np.array(self.sample_params[indices.cpu().numpy(), positions.numpy()], dtype=np.int64))

    def pixels(self, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """uint8 [B, 3, H', W']: the views these parameters describe (stage one labels them; stage two shows them)."""
        return self.policy.apply(images, params)

    # -- stage two: one position per sample per step -------------------------------------------------

    def choose(self, images, indices, generator):
        positions = uniform_view_ids(images.shape[0], self.num_views, generator)
        return Chosen(self.policy, self.params(indices, positions), positions)

    def mixed_parts(self):
        return self.policy.mix.parts if self.mixed else 0

    def describe(self):
        out = {"draw": "store", "policy": self.policy.name, "num_views": self.num_views,
               "pairing": "exact: each label is the teacher's answer for the pixels shown"}
        if self.mixed:  # the views of the parts, then how they are mixed
            out.update({"policy": self.policy.base.name, **self.policy.mix.describe(),
                        "partners": "stored: any sample of the split"})
        return out


def sampler_for_store(store: LabelStore, data, augment: ViewPolicy | None) -> ViewSampler:
    """A store's own views when it holds several per sample; identity stores pair with `augment` (or clean
    images), the store's one label per sample standing for every view."""
    space = ViewSpace.from_store(store)
    input_size = data.input_size
    if isinstance(space.policy, IdentityView):
        return AugmentViews(augment or IdentityView(), store_view=0)
    if augment is not None:
        raise UserError(f"label store {store.path} holds {store.num_views} {space.policy.name} views per sample, "
                        f"which define the augmentation; drop --augment (it applies to identity stores and online "
                        f"teachers)")
    space.check_input_size(input_size, store.path)
    space.attach_bank(data, store.dataset.get("split", "train"))
    return space
