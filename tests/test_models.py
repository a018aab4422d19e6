"""Models, registry and feature taps: shapes, exact parameter counts, and taps checked by hand."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from labelopt.models import (
    FeatureTaps,
    ModelSpec,
    UnknownModelError,
    UnknownTapError,
    create_model,
    feature_shapes,
    get_spec,
    model_names,
    parameter_count,
    tap_names,
)

CIFAR = ["resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet8x4", "resnet32x4"]
IMAGENET = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]

# (10 classes, 100 classes).  With 1x1-conv projection shortcuts these match the CRD benchmark's
# CIFAR ResNets (resnet20 0.28M, resnet56 0.86M, resnet110 1.7M, resnet8x4 1.2M, resnet32x4 7.4M).
CIFAR_PARAMS = {
    "resnet20": (272_474, 278_324),
    "resnet32": (466_906, 472_756),
    "resnet44": (661_338, 667_188),
    "resnet56": (855_770, 861_620),
    "resnet110": (1_730_714, 1_736_564),
    "resnet8x4": (1_210_410, 1_233_540),
    "resnet32x4": (7_410_730, 7_433_860),
}


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


def _no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


# ---------------------------------------------------------------- registry


def test_registry_lists_all_models():
    assert model_names() == CIFAR + IMAGENET
    for name in CIFAR:
        spec = get_spec(name)
        assert isinstance(spec, ModelSpec)
        assert (spec.name, spec.family, spec.input_size) == (name, "cifar", 32)
        assert spec.stages == ("layer1", "layer2", "layer3")
    for name in IMAGENET:
        spec = get_spec(name)
        assert (spec.name, spec.family, spec.input_size) == (name, "imagenet", 224)
        assert spec.stages == ("layer1", "layer2", "layer3", "layer4")


def test_unknown_model_lists_known_names():
    with pytest.raises(UnknownModelError) as info:
        create_model("resnet9000", 10)
    message = str(info.value)
    assert message.startswith("unknown model 'resnet9000'; known models: ")
    assert all(name in message for name in CIFAR + IMAGENET)
    assert isinstance(info.value, ValueError)


def test_bad_class_count():
    with pytest.raises(ValueError):
        create_model("resnet20", 0)


@pytest.mark.parametrize("name", CIFAR)
def test_cifar_output_shape_and_parameters(name):
    model = create_model(name, 100)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)
    assert parameter_count(model) == CIFAR_PARAMS[name][1]
    assert parameter_count(create_model(name, 10)) == CIFAR_PARAMS[name][0]


def test_cifar_structure_mirrors_torchvision():
    model = create_model("resnet20", 10)
    assert [n for n, _ in model.named_children()] == [
        "conv1", "bn1", "relu", "layer1", "layer2", "layer3", "avgpool", "fc"]
    assert isinstance(model.avgpool, nn.AdaptiveAvgPool2d)
    assert [len(getattr(model, s)) for s in ("layer1", "layer2", "layer3")] == [3, 3, 3]
    # Shape-preserving blocks have no shortcut projection; stage-entry blocks that downsample do.
    assert model.layer1[0].downsample is None
    assert isinstance(model.layer2[0].downsample, nn.Sequential)
    assert not model.layer1[0].relu.inplace
    # The x4 variants project already in layer1: stem width 32 -> 64 channels.
    wide = create_model("resnet8x4", 10)
    assert (wide.conv1.out_channels, wide.fc.in_features) == (32, 256)
    assert wide.layer1[0].downsample is not None


def test_cifar_init():
    model = create_model("resnet20", 10)
    assert torch.equal(model.bn1.weight, torch.ones(16)) and torch.equal(model.bn1.bias, torch.zeros(16))
    # Kaiming fan-out for a 3x3 conv with 32 outputs: std = sqrt(2 / (32 * 9)) ~ 0.083.
    std = model.layer2[1].conv1.weight.std().item()
    assert 0.07 < std < 0.10


def test_imagenet_parameters():
    assert parameter_count(create_model("resnet18", 1000)) == 11_689_512
    assert parameter_count(create_model("resnet50", 1000)) == 25_557_032
    assert create_model("resnet18", 7).fc.out_features == 7


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_imagenet_forward_small_input(name):
    model = create_model(name, 5)
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 5)


# ---------------------------------------------------------------- taps


def test_tap_names():
    assert tap_names("resnet20") == ["stem", "stage1.pre", "stage1", "stage2.pre", "stage2",
                                     "stage3.pre", "stage3", "pool", "logits"]
    names = tap_names("resnet50")
    assert names[-4:] == ["stage4.pre", "stage4", "pool", "logits"] and len(names) == 11


def test_unknown_tap_lists_valid_taps():
    model = create_model("resnet20", 10)
    with pytest.raises(UnknownTapError) as info:
        FeatureTaps(model, "resnet20", ["stage4"])
    message = str(info.value)
    assert "'stage4'" in message and "resnet20" in message
    assert all(name in message for name in tap_names("resnet20"))
    with pytest.raises(UnknownTapError):
        feature_shapes("resnet20", 10, ["pool", "fc"])


def test_resnet20_tap_shapes():
    model = create_model("resnet20", 10)
    with FeatureTaps(model, "resnet20", tap_names("resnet20")) as taps:
        out = model(torch.randn(2, 3, 32, 32))
    shapes = {name: tuple(t.shape) for name, t in taps.features.items()}
    assert shapes == {
        "stem": (2, 16, 32, 32),
        "stage1.pre": (2, 16, 32, 32), "stage1": (2, 16, 32, 32),
        "stage2.pre": (2, 32, 16, 16), "stage2": (2, 32, 16, 16),
        "stage3.pre": (2, 64, 8, 8), "stage3": (2, 64, 8, 8),
        "pool": (2, 64),
        "logits": (2, 10),
    }
    assert taps.features["logits"] is out


def test_feature_shapes():
    assert feature_shapes("resnet20", 10, ["stage3", "pool", "logits"]) == {
        "stage3": (64, 8, 8), "pool": (64,), "logits": (10,)}
    assert feature_shapes("resnet8x4", 100, ["stem", "pool"]) == {"stem": (32, 32, 32), "pool": (256,)}
    # A small input for speed: spatial sizes shrink, channel counts do not.
    assert feature_shapes("resnet50", 1000, ["stage4", "pool"], input_size=64) == {
        "stage4": (2048, 2, 2), "pool": (2048,)}


def _residual_sum(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Run a block by hand up to (not including) its final ReLU."""
    relu = nn.ReLU()  # out-of-place, so nothing computed here is overwritten
    out = relu(block.bn1(block.conv1(x)))
    out = block.bn2(block.conv2(out))
    if hasattr(block, "conv3"):  # torchvision Bottleneck
        out = block.bn3(block.conv3(relu(out)))
    shortcut = x if block.downsample is None else block.downsample(x)
    return out + shortcut


@pytest.mark.parametrize("arch,side", [("resnet20", 32), ("resnet8x4", 32), ("resnet18", 64), ("resnet50", 64)])
def test_stage_taps_match_hand_computation(arch, side):
    model = create_model(arch, 10).eval()
    stages = get_spec(arch).stages
    # The last block's input, seen by a hook of the test's own (cloned: later in-place ops are harmless).
    block_inputs = {}
    handles = [
        getattr(model, s)[-1].register_forward_pre_hook(
            lambda m, args, s=s: block_inputs.__setitem__(s, args[0].detach().clone()))
        for s in stages
    ]
    x = torch.randn(2, 3, side, side)
    with torch.no_grad():
        plain = model(x)
        with FeatureTaps(model, arch, tap_names(arch)) as taps:
            tapped = model(x)
    for h in handles:
        h.remove()
    # Tapping changes nothing about the forward (the clone before an in-place ReLU is invisible).
    torch.testing.assert_close(tapped, plain, rtol=0, atol=0)
    features = taps.features
    with torch.no_grad():
        for i, s in enumerate(stages, start=1):
            pre, post = features[f"stage{i}.pre"], features[f"stage{i}"]
            torch.testing.assert_close(pre, _residual_sum(getattr(model, s)[-1], block_inputs[s]))
            assert torch.equal(post, torch.relu(pre))
            assert pre.min() < 0  # taken before the ReLU: a tap of the block's output would have no negatives
        # the stem tap is the stem's own output: ReLU(BN(conv(x))), the same in both families
        torch.testing.assert_close(features["stem"], torch.relu(model.bn1(model.conv1(x))), rtol=0, atol=0)
    assert torch.equal(features["pool"], features[f"stage{len(stages)}"].mean(dim=(2, 3)))


@pytest.mark.parametrize("arch,side", [("resnet20", 32), ("resnet18", 64)])
def test_hooks_removed_after_block(arch, side):
    model = create_model(arch, 10)
    with FeatureTaps(model, arch, tap_names(arch)):
        assert not _no_hooks(model)
    assert _no_hooks(model)
    # And after an exception inside the block.
    with pytest.raises(RuntimeError):
        with FeatureTaps(model, arch, ["stage1.pre"]):
            raise RuntimeError("boom")
    assert _no_hooks(model)


def test_only_requested_hooks_are_registered():
    model = create_model("resnet20", 10)
    with FeatureTaps(model, "resnet20", ["stage2.pre"]) as taps:
        hooked = [n for n, m in model.named_modules() if m._forward_hooks or m._forward_pre_hooks]
        model(torch.randn(2, 3, 32, 32))
    # The model itself (resets features each forward) and the last block's relu of stage 2.
    assert hooked == ["", "layer2.2.relu"]
    assert list(taps.features) == ["stage2.pre"]


def test_features_reset_each_forward():
    model = create_model("resnet20", 10)
    with FeatureTaps(model, "resnet20", ["pool"]) as taps:
        model(torch.randn(2, 3, 32, 32))
        first = taps.features
        model(torch.randn(3, 3, 32, 32))
    assert taps.features is not first
    assert first["pool"].shape == (2, 64) and taps.features["pool"].shape == (3, 64)


@pytest.mark.parametrize("arch,tap,side", [("resnet20", "stage2", 32), ("resnet20", "stage2.pre", 32),
                                           ("resnet18", "stage2.pre", 64)])
def test_gradients_flow_through_taps(arch, tap, side):
    model = create_model(arch, 10)
    with FeatureTaps(model, arch, [tap]) as taps:
        model(torch.randn(2, 3, side, side))
    taps.features[tap].pow(2).sum().backward()
    assert model.conv1.weight.grad is not None and model.conv1.weight.grad.abs().sum() > 0
    assert model.layer2[-1].conv2.weight.grad.abs().sum() > 0
    # Parts after the tap are untouched by its gradient.
    assert model.layer3[0].conv1.weight.grad is None and model.fc.weight.grad is None


def test_taps_cannot_be_entered_twice():
    model = create_model("resnet20", 10)
    taps = FeatureTaps(model, "resnet20", ["pool"])
    with taps:
        with pytest.raises(RuntimeError):
            taps.__enter__()
    assert _no_hooks(model)
