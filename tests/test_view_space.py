"""The view space: its store record rebuilds it exactly, a key gives the same pixels in both stages, and the store
draw of an enumerated space is the policy's own online draw."""
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from labelopt.pipeline.views.store_sets import store_views
from labelopt.pipeline.views.draws import AugmentViews
from labelopt.pipeline.views.space import ViewSpace, sampler_for_store
from labelopt.pipeline.views.policies import PadCropFlipView, ResizedCropFlipView
from labelopt.pipeline.errors import UserError


@dataclass
class StoreOf:
    """What a LabelStore shows of its views, as stage one would have written them for `num_samples` samples."""

    space: ViewSpace
    num_samples: int
    size: int = 32
    path: Path = Path("fake.h5")
    dataset: dict = None

    def __post_init__(self):
        self.dataset = {"split": "train"}
        self.views = self.space.record()
        self.num_views = self.space.num_views
        self.per_sample_params = self.space.per_sample
        self.table = self.space.views_of(np.arange(self.num_samples), self.size, self.size)

    def view_param_table(self):
        return self.table if self.per_sample_params else self.table[0]


def images(n=8, side=32, seed=0):
    return torch.randint(0, 256, (n, 3, side, side), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


@pytest.mark.parametrize("spec", ["identity", "cifar-crop-flip", "sampled:5"])
def test_a_store_record_rebuilds_the_space_and_every_key_gives_stage_ones_pixels(spec):
    written = store_views(spec, SimpleNamespace(input_size=32), seed=7)
    store = StoreOf(written, num_samples=8)
    read = ViewSpace.from_store(store)
    assert read.policy == written.policy and read.num_views == written.num_views and read.spec == spec
    assert read.record() == written.record()
    x = images()
    indices = torch.arange(8)
    for position in range(read.num_views):
        positions = torch.full((8,), position)
        # Stage one labelled pixels(images, views_of(...)[:, v]); stage two shows pixels(images, params(index, v)).
        labelled = written.pixels(x, torch.from_numpy(store.table[:, position]))
        shown = read.pixels(x, read.params(indices, positions))
        assert torch.equal(labelled, shown), (spec, position)


def test_the_store_draw_of_an_enumerated_space_is_the_policys_online_draw():
    space = ViewSpace.from_store(StoreOf(store_views("cifar-crop-flip", None, seed=0), num_samples=8))
    x = images()
    online = AugmentViews(PadCropFlipView())
    for seed in range(5):
        shown, positions, _ = space.draw(x, torch.arange(8), torch.Generator().manual_seed(seed))
        fresh = online.draw(x, torch.arange(8), torch.Generator().manual_seed(seed)).images
        assert torch.equal(shown, fresh), seed
        assert positions.device.type == "cpu" and positions.dtype == torch.long


def test_sampled_views_are_per_sample_seeded_and_read_back_by_index():
    space = store_views("sampled:4", SimpleNamespace(input_size=32), seed=3)
    a = space.views_of(np.array([5, 2]), 32, 32)
    b = space.views_of(np.array([2]), 32, 32)
    assert a.shape == (2, 4, 5) and np.array_equal(a[1], b[0])  # a sample's views do not depend on its block
    assert not np.array_equal(a[0], a[1])
    read = ViewSpace.from_store(StoreOf(space, num_samples=6))
    assert read.per_sample and read.seed == 3 and read.record()["seed"] == 3
    params = read.params(torch.tensor([5, 2, 5]), torch.tensor([0, 3, 1]))
    assert torch.equal(params, torch.from_numpy(np.stack([a[0, 0], a[1, 3], a[0, 1]])))


def test_store_pairing_and_refusals():
    identity = StoreOf(store_views("identity", None, seed=0), num_samples=4)
    paired = sampler_for_store(identity, SimpleNamespace(input_size=32), PadCropFlipView())
    assert isinstance(paired, AugmentViews) and paired.store_view == 0
    crop_flip = StoreOf(store_views("cifar-crop-flip", None, seed=0), num_samples=4)
    with pytest.raises(UserError, match="drop --augment"):
        sampler_for_store(crop_flip, SimpleNamespace(input_size=32), PadCropFlipView())
    sampled = StoreOf(store_views("sampled:2", SimpleNamespace(input_size=24), seed=0), num_samples=4, size=24)
    with pytest.raises(UserError, match="24-pixel views but the data is 32"):
        sampler_for_store(sampled, SimpleNamespace(input_size=32), None)
    unknown = StoreOf(store_views("identity", None, seed=0), num_samples=4)
    unknown.views = {**unknown.views, "policy": "warp"}
    with pytest.raises(UserError, match="policy 'warp'"):
        ViewSpace.from_store(unknown)


def test_the_cifar_pad_is_recorded_and_rebuilt():
    record = PadCropFlipView().describe()
    assert record["pad"] == 4 and record["num_views"] == 162
    assert PadCropFlipView.from_record({"pad": 2}).num_views == 50
    rrc = ResizedCropFlipView(size=24, scale=(0.2, 1.0))
    assert ResizedCropFlipView.from_record(rrc.describe()) == rrc


def mixed_space(spec, n=10, seed=5):
    from labelopt.pipeline.data.pixel_bank import PixelBank

    data = SimpleNamespace(input_size=32, fixed_size=True, num_samples=lambda split: n)
    space = store_views(spec, data, seed=seed)
    space.policy.bank = PixelBank(images(n, seed=9), torch.arange(n) % 3)
    return space


@pytest.mark.parametrize("spec", ["mix:mixup:3", "mix:cutmix:3", "mix:ricap:2"])
def test_a_mixed_view_is_its_parts_views_mixed_with_partners_from_the_bank(spec):
    space = mixed_space(spec)
    policy, bank = space.policy, space.policy.bank
    parts = policy.mix.parts
    table = torch.from_numpy(space.views_of(np.arange(10), 32, 32))  # [N, K, P], drawn per sample from the seed
    assert table.shape == (10, space.num_views, len(policy.param_names))
    assert torch.equal(table[4], torch.from_numpy(space.views_of(np.array([4]), 32, 32))[0])
    indices, positions = torch.tensor([1, 4, 7]), torch.tensor([0, 1, 1])
    params = table[indices, positions]
    shown = policy.apply(bank.images[indices], params)
    width = len(policy.base.param_names)
    by_hand = []
    for k in range(parts):
        samples = indices if k == 0 else params[:, k - 1]
        view = params[:, parts - 1 + k * width: parts - 1 + (k + 1) * width]
        by_hand.append(policy.base.apply(bank.images[samples], view))
    assert torch.equal(shown, policy.mix.compose(by_hand, params[:, parts - 1 + parts * width:]))
    labels, weights = policy.mix_parts(indices, params, 32, 32)
    assert torch.equal(labels[:, 0], bank.labels[indices]) and labels.shape == weights.shape == (3, parts)
    read = ViewSpace.from_store(StoreOf(space, num_samples=10))  # the record rebuilds the same mix
    assert read.policy == policy and read.mixed and read.record() == space.record()
    read.policy.bank = bank
    drawn = read.draw(bank.images[indices], indices, torch.Generator().manual_seed(0))
    again = policy.apply(bank.images[indices], table[indices, drawn.views])
    assert torch.equal(drawn.images, again) and torch.equal(drawn.mix.labels, mix_labels(read, indices, drawn.views))


def mix_labels(space, indices, positions):
    params = space.params(indices, positions)
    return space.policy.mix_parts(indices, params, 32, 32)[0]


def test_mixed_views_need_their_bank_and_an_alpha_only_for_mixes():
    space = mixed_space("mix:cutmix:2")
    space.policy.bank = None
    with pytest.raises(ValueError, match="PixelBank"):
        space.policy.apply(images(2), torch.from_numpy(space.views_of(np.arange(2), 32, 32))[:, 0])
    with pytest.raises(UserError, match="mixes nothing"):
        store_views("sampled:2", SimpleNamespace(input_size=32), seed=0, mix_alpha=0.5)
    for absurd in ("mix:cutmix:0", "sampled:10001", "sampled:99999999999"):
        with pytest.raises(UserError, match=r"K must be an integer in \[1, 10,000\]"):
            store_views(absurd, SimpleNamespace(input_size=32), seed=0)
    with pytest.raises(UserError, match="unknown --views 'mix:cutout:3'"):
        store_views("mix:cutout:3", SimpleNamespace(input_size=32), seed=0)
