"""ImageNet ResNets from torchvision, always randomly initialised.

`weights=None` means torchvision never downloads anything; trained weights come only from the
project's own local checkpoints.
"""
from __future__ import annotations

from torchvision import models as tv


def resnet18(num_classes: int) -> tv.ResNet:
    return tv.resnet18(weights=None, num_classes=num_classes)


def resnet34(num_classes: int) -> tv.ResNet:
    return tv.resnet34(weights=None, num_classes=num_classes)


def resnet50(num_classes: int) -> tv.ResNet:
    return tv.resnet50(weights=None, num_classes=num_classes)


def resnet101(num_classes: int) -> tv.ResNet:
    return tv.resnet101(weights=None, num_classes=num_classes)


def resnet152(num_classes: int) -> tv.ResNet:
    return tv.resnet152(weights=None, num_classes=num_classes)
