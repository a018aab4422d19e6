"""Named intermediate features, read through forward hooks so the models stay unmodified.

Taps, for a model with S stages:
  stem          output of the stem's ReLU (the top-level `relu`, used once per forward)
  stage{i}.pre  the last block of stage i right before its final ReLU: the residual sum
  stage{i}      the output of stage i, i.e. relu(stage{i}.pre)
  pool          the globally average-pooled embedding, flattened to [B, D]
  logits        the model output

The last block's `relu` module is called several times per forward (twice in a BasicBlock, three
times in torchvision's Bottleneck); each call overwrites the stored value, so what remains after the
forward is the final call, which is the block's output.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from .registry import create_model, get_spec


class UnknownTapError(ValueError):
    """A tap name that the architecture does not have."""


def tap_names(arch: str) -> list[str]:
    stages = len(get_spec(arch).stages)
    names = ["stem"]
    for i in range(1, stages + 1):
        names += [f"stage{i}.pre", f"stage{i}"]
    return names + ["pool", "logits"]


def _check_names(arch: str, names: Sequence[str]) -> list[str]:
    if isinstance(names, str):
        # A lone string would otherwise be read as a list of one-letter taps.
        names = [names]
    valid = tap_names(arch)
    unknown = [n for n in names if n not in valid]
    if unknown:
        listed = ", ".join(repr(n) for n in unknown)
        raise UnknownTapError(f"unknown tap {listed} for model '{arch}'; valid taps: {', '.join(valid)}")
    return list(dict.fromkeys(names))  # drop repeats, keep order


class FeatureTaps:
    """Context manager: while active, every forward of `model` fills `features` with the named taps.

    `features` is replaced by a fresh dict at the start of each forward, so a dict taken from an
    earlier forward stays as it was. Captured tensors keep their autograd history: a loss on a tap
    back-propagates into the model.
    """

    def __init__(self, model: nn.Module, arch: str, names: Sequence[str]):
        self.model = model
        self.arch = arch
        self.names = _check_names(arch, names)
        self._stages = get_spec(arch).stages
        self.features: dict[str, Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> "FeatureTaps":
        if self._handles:
            raise RuntimeError("FeatureTaps is already active; use a separate instance per with-block")
        self.features = {}
        self._handles.append(self.model.register_forward_pre_hook(self._reset))
        for name in self.names:
            module, kind = self._site(name)
            self._handles.append(self._register(module, kind, name))
        return self

    def __exit__(self, *exc_info) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _reset(self, module: nn.Module, args) -> None:
        self.features = {}

    def _site(self, name: str) -> tuple[nn.Module, str]:
        """The module to hook for a tap and what to keep from it."""
        fixed = {
            "stem": (self.model.relu, "output"),
            "pool": (self.model.avgpool, "flat_output"),
            "logits": (self.model, "output"),
        }
        if name in fixed:
            return fixed[name]
        stage, _, part = name.partition(".")  # "stage2.pre" -> "stage2", "pre"
        last_block = getattr(self.model, self._stages[int(stage[len("stage"):]) - 1])[-1]
        return last_block.relu, ("input" if part == "pre" else "output")

    def _register(self, module: nn.Module, kind: str, name: str) -> torch.utils.hooks.RemovableHandle:
        if kind == "input":
            return module.register_forward_pre_hook(self._keep_input(name))
        flatten = kind == "flat_output"
        return module.register_forward_hook(self._keep_output(name, flatten))

    def _keep_input(self, name: str) -> Callable:
        def hook(module: nn.Module, args) -> None:
            x = args[0]
            # An in-place ReLU is about to overwrite its input; a clone keeps the pre-activation
            # values and, being an ordinary autograd op, still lets gradients reach the model.
            self.features[name] = x.clone() if getattr(module, "inplace", False) else x
        return hook

    def _keep_output(self, name: str, flatten: bool) -> Callable:
        def hook(module: nn.Module, args, output: Tensor) -> None:
            self.features[name] = output.flatten(1) if flatten else output
        return hook


@torch.no_grad()
def feature_shapes(arch: str, num_classes: int, names: Sequence[str],
                   input_size: int | None = None) -> dict[str, tuple[int, ...]]:
    """Per-sample shape of each tap, from one forward of a fresh model on CPU.

    `input_size` defaults to the architecture's natural side (32 for CIFAR, 224 for ImageNet); a
    smaller side is faster for ImageNet models but shrinks the spatial sizes of the stage taps.
    """
    names = _check_names(arch, names)
    side = input_size or get_spec(arch).input_size
    model = create_model(arch, num_classes).eval()  # eval: BatchNorm accepts a batch of one
    with FeatureTaps(model, arch, names) as taps:
        model(torch.zeros(1, 3, side, side))
    return {n: tuple(taps.features[n].shape[1:]) for n in names}
