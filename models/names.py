"""Every architecture's name, without importing torch: `--arch` and `--student` list and check these before
anything heavy loads (registry.py builds its specs from the same tuples)."""
from __future__ import annotations

CIFAR_NAMES = ("resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet8x4", "resnet32x4")
IMAGENET_NAMES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")

# How a pack lays out its members (models/packing.py's PACK_LAYOUTS, which must name the same).
PACK_LAYOUT_NAMES = ("grouped", "stacked")


def model_names() -> list[str]:
    """The listing order: CIFAR models first, then ImageNet, each by size."""
    return [*CIFAR_NAMES, *IMAGENET_NAMES]
