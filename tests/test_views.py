"""Views: the same parameters always give the same pixels, and they match the standard augmentation."""
import torch
import torch.nn.functional as F

from labelopt.pipeline.views.policies import (IdentityView, PadCropFlipView, ResizedCropFlipView,
                                     get_view_policy)
from labelopt.pipeline.data.normalize import Normalizer
from labelopt.pipeline.errors import UserError

import pytest


def images(n=6, h=32, w=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, h, w), generator=g, dtype=torch.uint8)


def test_crop_flip_has_162_views_matching_pad_crop_flip_by_hand():
    policy = PadCropFlipView(pad=4)
    assert policy.num_views == 162
    x = images(n=1)
    padded = F.pad(x, (4, 4, 4, 4))
    seen = set()
    for v in range(162):
        out = policy.apply(x, torch.tensor([[v]]))
        dy, dx, flip = (int(t) for t in policy.decode(torch.tensor(v)))
        expected = padded[:, :, dy:dy + 32, dx:dx + 32]
        if flip:
            expected = expected.flip(-1)
        assert torch.equal(out, expected), v
        seen.add((dy, dx, flip))
    assert len(seen) == 162


def test_crop_flip_batched_equals_per_sample_and_is_deterministic():
    policy = PadCropFlipView(pad=4)
    x = images(n=8)
    params = policy.sample(8, 32, 32, torch.Generator().manual_seed(3))
    batched = policy.apply(x, params)
    for i in range(8):
        assert torch.equal(batched[i:i + 1], policy.apply(x[i:i + 1], params[i:i + 1]))
    again = policy.apply(x.clone(), params.clone())
    assert torch.equal(batched, again)
    assert batched.dtype == torch.uint8 and batched.shape == x.shape


def test_crop_flip_rows_of_a_batch_match_the_views_by_hand_on_any_shape():
    """apply_rows (a pack's members, stage one's block) reads view i of images[rows[i]], whatever the images' shape
    and pad; its table of offsets is made once per shape and device."""
    policy = PadCropFlipView(pad=2)
    x = images(n=3, h=7, w=11, seed=4)
    views = torch.arange(policy.num_views)[:, None]  # all 50 views
    rows = torch.arange(policy.num_views) % 3
    out = policy.apply_rows(x, views, rows)
    padded = F.pad(x, (2, 2, 2, 2))
    for v in range(policy.num_views):
        dy, dx, flip = (int(t) for t in policy.decode(torch.tensor(v)))
        expected = padded[rows[v], :, dy:dy + 7, dx:dx + 11]
        assert torch.equal(out[v], expected.flip(-1) if flip else expected), v
    assert out.shape == (50, 3, 7, 11) and out.is_contiguous()
    table = policy.offsets(7, 11, x.device)
    assert policy.offsets(7, 11, x.device) is table and table.shape == (50, 77)


def test_sampling_is_seeded_and_uniform_over_the_view_space():
    policy = PadCropFlipView(pad=4)
    a = policy.sample(20000, 32, 32, torch.Generator().manual_seed(1))
    b = policy.sample(20000, 32, 32, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    counts = torch.bincount(a[:, 0], minlength=162).float()
    assert counts.min() > 0 and counts.max() / counts.mean() < 1.5


def test_rrc_flip_boxes_fit_and_apply_is_deterministic():
    policy = ResizedCropFlipView(size=24)
    x = images(n=16, h=40, w=48)
    params = policy.sample(16, 40, 48, torch.Generator().manual_seed(0))
    top, left, h, w, flip = params.unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 40).all() and (left + w <= 48).all()
    assert (h >= 1).all() and (w >= 1).all() and set(flip.tolist()) <= {0, 1}
    out = policy.apply(x, params)
    assert out.shape == (16, 3, 24, 24) and out.dtype == torch.uint8
    assert torch.equal(out, policy.apply(x.clone(), params.clone()))


def test_rrc_full_box_without_flip_is_a_plain_resize():
    policy = ResizedCropFlipView(size=32)
    x = images(n=2, h=32, w=32)
    params = torch.tensor([[0, 0, 32, 32, 0], [0, 0, 32, 32, 1]])
    out = policy.apply(x, params)
    assert torch.equal(out[0], x[0])
    assert torch.equal(out[1], x[1].flip(-1))


def test_identity_and_registry():
    x = images(n=2)
    assert torch.equal(IdentityView().apply(x, IdentityView().sample(2, 32, 32, torch.Generator())), x)
    assert get_view_policy("cifar-crop-flip", 32).num_views == 162
    with pytest.raises(UserError, match="known: cifar-crop-flip, identity, rrc-flip"):
        get_view_policy("mixup", 32)


def test_normalizer():
    norm = Normalizer([0.5, 0.5, 0.5], [0.25, 0.5, 1.0], "cpu")
    x = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    out = norm(x)
    assert torch.allclose(out[0, :, 0, 0], torch.tensor([2.0, 1.0, 0.5]))
