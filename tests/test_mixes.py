"""Mixed images: each policy's pixels against a by-hand reference, its weights against the pixels' shares, seeded
draws, the mixed ground-truth loss, and the refusals."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from labelopt.pipeline.views.mixed import FreshMixes
from labelopt.pipeline.views.mixes import MIX_SCALE, CutMix, Mixup, Ricap, get_mix_policy, numpy_rng
from labelopt.pipeline.views.draws import AugmentViews
from labelopt.pipeline.views.policies import IdentityView
from labelopt.pipeline.errors import UserError
from labelopt.stages.batch import ViewedBatch
from labelopt.stages.losses import batch_cross_entropy


def random_images(n, seed, side=12):
    return torch.randint(0, 256, (n, 3, side, side), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def constant_images(values, n, side=12):
    return [torch.full((n, 3, side, side), v, dtype=torch.uint8) for v in values]


def params_of(policy, n, side=12, seed=0):
    return torch.from_numpy(policy.sample(n, side, side, np.random.default_rng(seed)))


def test_mixup_is_the_integer_blend_of_its_weight():
    a, b = random_images(16, 0), random_images(16, 1)
    params = params_of(Mixup(1.0), 16)
    out = Mixup(1.0).compose([a, b], params)
    for i in range(16):
        w = int(params[i, 0])
        expected = (w * a[i].long() + (MIX_SCALE - w) * b[i].long() + MIX_SCALE // 2) // MIX_SCALE
        assert torch.equal(out[i], expected.to(torch.uint8)), i
        exact = w / MIX_SCALE * a[i].double() + (1 - w / MIX_SCALE) * b[i].double()
        assert (out[i].double() - exact).abs().max() <= 0.5 + 1e-9  # rounded, never further
    assert torch.allclose(Mixup(1.0).weights(params, 12, 12).sum(1), torch.ones(16))


def test_cutmix_pastes_part_ones_box_and_weighs_by_area():
    a, b = random_images(32, 0), random_images(32, 1)
    policy = CutMix(1.0)
    params = params_of(policy, 32)
    out = policy.compose([a, b], params)
    for i in range(32):
        top, left, bottom, right = (int(v) for v in params[i])
        expected = a[i].clone()
        expected[:, top:bottom, left:right] = b[i][:, top:bottom, left:right]
        assert torch.equal(out[i], expected), i
    zero, full = constant_images((0, 255), 32)
    shares = (policy.compose([zero, full], params)[:, 0] == 255).float().mean((1, 2))
    assert torch.allclose(policy.weights(params, 12, 12)[:, 1], shares)


def test_ricap_tiles_four_crops_and_weighs_by_area():
    parts = [random_images(24, seed) for seed in range(4)]
    policy = Ricap(0.3)
    params = params_of(policy, 24)
    out = policy.compose(parts, params)
    for i in range(24):
        h, w = int(params[i, 0]), int(params[i, 1])
        regions = [(0, 0, h, w), (0, w, h, 12 - w), (h, 0, 12 - h, w), (h, w, 12 - h, 12 - w)]
        for k, (r0, c0, rows, cols) in enumerate(regions):
            y, x = int(params[i, 2 + 2 * k]), int(params[i, 3 + 2 * k])
            assert 0 <= y <= 12 - rows and 0 <= x <= 12 - cols
            assert torch.equal(out[i][:, r0:r0 + rows, c0:c0 + cols], parts[k][i][:, y:y + rows, x:x + cols]), (i, k)
    tiles = constant_images((0, 85, 170, 255), 24)
    composed = policy.compose(tiles, params)[:, 0]
    shares = torch.stack([(composed == v).float().mean((1, 2)) for v in (0, 85, 170, 255)], dim=1)
    assert torch.allclose(policy.weights(params, 12, 12), shares)


def test_draws_are_seeded_and_follow_their_beta():
    for policy in (Mixup(1.0), CutMix(1.0), Ricap(0.3)):
        assert np.array_equal(policy.sample(50, 32, 32, np.random.default_rng(3)),
                              policy.sample(50, 32, 32, np.random.default_rng(3)))
    weights = Mixup(1.0).weights(params_of(Mixup(1.0), 20000, side=32), 32, 32)[:, 0]
    assert abs(float(weights.mean()) - 0.5) < 0.01 and abs(float(weights.var()) - 1 / 12) < 0.005  # Beta(1, 1)
    boundary = params_of(Ricap(0.3), 20000, side=32)[:, 0].float() / 32
    # Beta(0.3, 0.3) piles its mass near 0 and 1: far more than a uniform's 20 % lies in the outer tenths.
    assert float(((boundary < 0.1) | (boundary > 0.9)).float().mean()) > 0.45
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert numpy_rng(g1).integers(0, 1 << 30) == numpy_rng(g2).integers(0, 1 << 30)


def test_fresh_mixes_take_partners_from_the_batch_with_their_classes():
    images = random_images(8, 0)
    indices = torch.tensor([10, 11, 12, 13, 14, 15, 16, 17])
    train_labels = torch.arange(20) % 7
    sampler = FreshMixes(AugmentViews(IdentityView()), CutMix(1.0), train_labels)
    drawn = sampler.draw(images, indices, torch.Generator().manual_seed(2))
    assert drawn.views is None and drawn.mix.labels.shape == (8, 2) and drawn.mix.weights.shape == (8, 2)
    assert torch.equal(drawn.mix.labels[:, 0], train_labels[indices])
    for i in range(8):  # the pasted box is some batch image's pixels, and its class is that image's
        partner = int(drawn.mix.labels[i, 1])
        assert partner in train_labels[indices].tolist()
    again = sampler.draw(images, indices, torch.Generator().manual_seed(2))
    assert torch.equal(again.images, drawn.images) and torch.equal(again.mix.weights, drawn.mix.weights)


def test_the_mixed_ground_truth_loss():
    logits = torch.randn(6, 5, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    plain = ViewedBatch(torch.zeros(6, 3, 4, 4, dtype=torch.uint8), labels, torch.arange(6))
    assert torch.allclose(batch_cross_entropy(logits, plain), F.cross_entropy(logits, labels))
    partners = torch.tensor([4, 3, 2, 1, 0, 1])
    weights = torch.tensor([[0.7, 0.3]] * 6)
    mixed = ViewedBatch(plain.images, labels, torch.arange(6), None, torch.stack([labels, partners], 1), weights)
    by_hand = 0.7 * F.cross_entropy(logits, labels) + 0.3 * F.cross_entropy(logits, partners)
    assert torch.allclose(batch_cross_entropy(logits, mixed), by_hand)
    whole = ViewedBatch(plain.images, labels, torch.arange(6), None, torch.stack([labels, partners], 1),
                        torch.tensor([[1.0, 0.0]] * 6))
    assert torch.allclose(batch_cross_entropy(logits, whole), F.cross_entropy(logits, labels))


@pytest.mark.parametrize("alpha", [0.0, -1.0, math.nan, math.inf, 1000.0])
def test_absurd_alphas_are_refused(alpha):
    with pytest.raises(UserError, match="Beta parameter"):
        get_mix_policy("cutmix", alpha)


def test_defaults_and_unknown_names():
    assert get_mix_policy("mixup").alpha == 1.0 and get_mix_policy("cutmix").alpha == 1.0
    assert get_mix_policy("ricap").alpha == 0.3 and get_mix_policy("ricap", 0.5).alpha == 0.5
    with pytest.raises(UserError, match="unknown --mix 'cutout'"):
        get_mix_policy("cutout")
