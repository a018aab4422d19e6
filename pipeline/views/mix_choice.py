"""Which mixed images a student run trains on: `--mix` checked against the method and the label source."""
from __future__ import annotations

import torch

from ...stages.distillers import DISTILLERS, Distiller
from ..data.datasets import PreparedDataset
from .mixed import FreshMixes
from .mixes import get_mix_policy
from .draws import AugmentViews, ViewSampler
from .space import ViewSpace
from .policies import get_view_policy
from ..errors import UserError


def methods_taking_mixes() -> str:
    return ", ".join(name for name, cls in DISTILLERS.items() if cls.mixes != "no")


def check_mix_choice(options, method: type[Distiller]) -> None:
    """Refuse, before anything loads, a mix the method or the label source cannot take."""
    if options.mix_alpha is not None and options.mix is None:
        raise UserError("--mix-alpha sets the Beta parameter of a mix: pass --mix mixup, cutmix or ricap too")
    if options.mix is None:
        if method.mixes == "required" and not options.labels:
            raise UserError(f"--method {method.name} trains on mixed images: pass --mix mixup, cutmix or ricap "
                            f"with --teacher CKPT, or --labels of a store made with --views mix:POLICY:K")
        return
    if method.mixes == "no":
        raise UserError(f"--mix {options.mix}: --method {method.name} does not train on mixed images; the methods "
                        f"that do: {methods_taking_mixes()}")
    if options.labels:
        raise UserError(f"--mix {options.mix} with --labels: a store's views, mixes included, are fixed when it is "
                        f"made; drop --mix and pass a store made with generate-labels --views "
                        f"mix:{options.mix}:K, or run the teacher online (--teacher CKPT --mix {options.mix})")
    get_mix_policy(options.mix, options.mix_alpha)  # the alpha's range


def check_store_mixes(store, sampler: ViewSampler, method: type[Distiller]) -> None:
    """A store of mixed images' labels serves the methods that train on mixed images, and only those."""
    mixed = isinstance(sampler, ViewSpace) and sampler.mixed
    if mixed and method.mixes == "no":
        raise UserError(f"label store {store.path} holds the teacher's labels of mixed images "
                        f"({sampler.policy.mix.name}, {sampler.num_views} per image): train from it with "
                        f"--method {', '.join(n for n, c in DISTILLERS.items() if c.mixes == 'required')}")
    if not mixed and method.mixes == "required":
        raise UserError(f"--method {method.name} trains on mixed images, but label store {store.path} holds labels "
                        f"of unmixed images; make one with generate-labels --views mix:cutmix:K (or mixup, ricap), "
                        f"or run the teacher online (--teacher CKPT --mix cutmix)")


def mixed_sampler(options, data: PreparedDataset, sampler: ViewSampler | None) -> ViewSampler | None:
    """The run's sampler, mixed when `--mix` asks (after check_mix_choice)."""
    if options.mix is None:
        return sampler
    mix = get_mix_policy(options.mix, options.mix_alpha)
    base = sampler if sampler is not None else AugmentViews(get_view_policy(options.augment, data.input_size))
    return FreshMixes(base, mix, torch.from_numpy(data.labels("train")).long())
