"""CIFAR and ImageNet ResNets, a registry by name, and named feature taps read through hooks."""
from .registry import ModelSpec, UnknownModelError, create_model, get_spec, model_names, parameter_count
from .taps import FeatureTaps, UnknownTapError, feature_shapes, tap_names

__all__ = [
    "ModelSpec",
    "UnknownModelError",
    "create_model",
    "get_spec",
    "model_names",
    "parameter_count",
    "FeatureTaps",
    "UnknownTapError",
    "feature_shapes",
    "tap_names",
]
