"""Every architecture by name: how to build it, where its stages are, what input it expects."""
from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from typing import Callable

from torch import nn

from . import cifar_resnet
from .names import CIFAR_NAMES, IMAGENET_NAMES


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str  # "cifar" or "imagenet"
    build: Callable[[int], nn.Module]  # num_classes -> freshly initialised model
    stages: tuple[str, ...]  # attribute names of the stage containers, in forward order
    input_size: int  # natural input side in pixels


class UnknownModelError(ValueError):
    """A model name that is not in the registry."""


_CIFAR_STAGES = ("layer1", "layer2", "layer3")
_IMAGENET_STAGES = ("layer1", "layer2", "layer3", "layer4")


def _cifar(name: str) -> ModelSpec:
    return ModelSpec(name, "cifar", getattr(cifar_resnet, name), _CIFAR_STAGES, 32)


def _imagenet(name: str) -> ModelSpec:
    return ModelSpec(name, "imagenet", lambda num_classes: _imagenet_builder(name)(num_classes), _IMAGENET_STAGES,
                     224)


def _imagenet_builder(name: str) -> Callable[[int], nn.Module]:
    # torchvision's models, imported when one is built: importing torchvision takes about a second, which a CIFAR
    # run need not pay.
    return getattr(import_module(".imagenet_resnet", __package__), name)


# Insertion order is the listing order: CIFAR models first, then ImageNet, each by size.
_REGISTRY: dict[str, ModelSpec] = {
    **{n: _cifar(n) for n in CIFAR_NAMES},
    **{n: _imagenet(n) for n in IMAGENET_NAMES},
}


def model_names() -> list[str]:
    return list(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownModelError(f"unknown model '{name}'; known models: {', '.join(_REGISTRY)}") from None


def create_model(name: str, num_classes: int) -> nn.Module:
    spec = get_spec(name)
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    return spec.build(num_classes)


def parameter_count(model: nn.Module) -> int:
    """Number of parameters, trainable or frozen (buffers such as BN running stats excluded)."""
    return sum(p.numel() for p in model.parameters())
