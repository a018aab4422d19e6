"""Which mixed images a student run trains on: `--mix` checked against the method and the label source."""
from __future__ import annotations

import torch

from ...stages.distillers import DISTILLERS, Distiller
from ..data.datasets import PreparedDataset
from ..data.mix_views import FreshMixes
from ..data.mixes import get_mix_policy
from ..data.view_sampling import AugmentViews, ViewSampler
from ..data.views import get_view_policy
from ..errors import UserError


def methods_taking_mixes() -> str:
    return ", ".join(name for name, cls in DISTILLERS.items() if cls.mixes != "no")


def check_mix_choice(options, method: type[Distiller]) -> None:
    """Refuse, before anything loads, a mix the method or the label source cannot take."""
    if options.mix_alpha is not None and options.mix is None:
        raise UserError("--mix-alpha sets the Beta parameter of a mix: pass --mix mixup, cutmix or ricap too")
    if options.mix is None:
        if method.mixes == "required":
            raise UserError(f"--method {method.name} trains on mixed images: pass --mix mixup, cutmix or ricap "
                            f"with --teacher CKPT")
        return
    if method.mixes == "no":
        raise UserError(f"--mix {options.mix}: --method {method.name} does not train on mixed images; the methods "
                        f"that do: {methods_taking_mixes()}")
    if options.labels:
        raise UserError(f"--mix {options.mix} with --labels: the store's labels belong to unmixed images, and "
                        f"Aug-SL needs the teacher's label of each mixed image; run the teacher online "
                        f"(--teacher CKPT --mix {options.mix})")
    get_mix_policy(options.mix, options.mix_alpha)  # the alpha's range


def mixed_sampler(options, data: PreparedDataset, sampler: ViewSampler | None) -> ViewSampler | None:
    """The run's sampler, mixed when `--mix` asks (after check_mix_choice)."""
    if options.mix is None:
        return sampler
    mix = get_mix_policy(options.mix, options.mix_alpha)
    base = sampler if sampler is not None else AugmentViews(get_view_policy(options.augment, data.input_size))
    return FreshMixes(base, mix, torch.from_numpy(data.labels("train")).long())
