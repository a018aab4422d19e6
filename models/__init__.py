"""CIFAR and ImageNet ResNets, a registry by name, and named feature taps read through hooks.

`model_names` comes from names.py, which imports nothing, so the CLI lists and checks models without torch; every
other name here is imported from its module (and torch with it) when it is first used.
"""
from importlib import import_module

from .names import model_names

_LAZY = {
    "ModelSpec": "registry",
    "UnknownModelError": "registry",
    "create_model": "registry",
    "get_spec": "registry",
    "parameter_count": "registry",
    "FeatureTaps": "taps",
    "UnknownTapError": "taps",
    "feature_shapes": "taps",
    "tap_names": "taps",
}

__all__ = ["model_names", *_LAZY]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value
