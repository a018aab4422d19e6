"""Augmentation as *views*: deterministic transforms with explicit integer parameters.

FFCV only decodes; augmentation runs here as batched torch ops after the loader,
so stage one can label exactly the pixels stage two will show a student: the same
`apply(images, params)` gives the same pixels, always.

Images are uint8 tensors [B, 3, H, W]; params are int64 tensors [B, P].
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..errors import UserError

CIFAR_PAD = 4  # the standard CIFAR augmentation's zero padding: 9 x 9 crop offsets x 2 flips = 162 views


def uniform_view_ids(n: int, num_views: int, generator: torch.Generator) -> torch.Tensor:
    """int64 [n] view ids, uniform: an enumerated policy's training draw, and stage two's draw of a store's views
    (whose position v holds view id v). One call for both, so a seed shows a student the same pixels whether its
    labels come from a store or from a teacher run online."""
    return torch.randint(0, num_views, (n, 1), generator=generator)[:, 0]


class ViewPolicy(ABC):
    """A family of views. `num_views` is the size of an enumerable view space, or None."""

    name: str
    num_views: int | None
    param_names: tuple[str, ...]

    @abstractmethod
    def sample(self, n: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
        """Draw parameters for n images of height x width (the training-time distribution).

        Draws on a CPU generator so a seed gives the same views on every device.
        """

    @abstractmethod
    def apply(self, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """The viewed images, uint8 [B, 3, H', W']."""

    def apply_rows(self, images: torch.Tensor, params: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """uint8 [N, 3, H', W']: view i is images[rows[i]] under params[i] (rows: int64 [N] on the images' device),
        each the pixels `apply` makes of it: a pack's members view one batch in one call."""
        return self.apply(images[rows], params)

    def describe(self) -> dict:
        """The policy as a store records it: enough for `from_record` to rebuild it exactly."""
        return {"policy": self.name, "num_views": self.num_views, "param_names": list(self.param_names)}

    @classmethod
    def from_record(cls, record: dict) -> "ViewPolicy":
        """The policy `describe` wrote (a store's `views` attribute)."""
        return cls()

    def mix_parts(self, indices: torch.Tensor, params: torch.Tensor, height: int, width: int):
        """For views that mix several images: (each part's class int64 [B, parts], its share float32 [B, parts]).
        None for views of one image."""
        return None


@dataclass
class IdentityView(ViewPolicy):
    name = "identity"
    num_views = 1
    param_names = ("view",)

    def sample(self, n, height, width, generator):
        return torch.zeros(n, 1, dtype=torch.long)

    def apply(self, images, params):
        return images


@dataclass
class PadCropFlipView(ViewPolicy):
    """Zero-pad by `pad`, crop back to the input size, optionally flip horizontally.

    With pad 4 there are 9 x 9 x 2 = 162 views; view id v encodes
    (dy, dx, flip) = (v // (2 * side), (v // 2) % side, v % 2) with side = 2 * pad + 1.
    Uniform view ids are exactly the standard CIFAR crop + flip distribution.
    """

    pad: int = CIFAR_PAD
    name = "cifar-crop-flip"
    param_names = ("view",)
    # (height, width, device) -> int64 [num_views, H*W]: where each view reads each of its pixels in the padded plane
    _offsets: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def side(self) -> int:
        return 2 * self.pad + 1

    @property
    def num_views(self) -> int:  # type: ignore[override]
        return self.side * self.side * 2

    def decode(self, view_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        dy = view_ids // (2 * self.side)
        dx = (view_ids // 2) % self.side
        flip = view_ids % 2
        return dy, dx, flip

    def sample(self, n, height, width, generator):
        return uniform_view_ids(n, self.num_views, generator)[:, None]

    def describe(self):
        side = self.side
        return {**super().describe(), "pad": self.pad,
                "view_id": f"v = dy * {2 * side} + dx * 2 + flip (dy, dx in 0..{side - 1})"}

    @classmethod
    def from_record(cls, record):
        return cls(pad=int(record.get("pad", CIFAR_PAD)))

    def apply(self, images, params):
        return self._viewed(images, params, None)

    def apply_rows(self, images, params, rows):
        return self._viewed(images, params, rows)

    def _viewed(self, images: torch.Tensor, params: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        # One gather through a table of every view's pixel offsets: a few operators whatever the batch (a GPU
        # launches each from the loader's thread, which holds the GIL the step's thread needs).
        _, c, h, w = images.shape
        n = params.shape[0]
        offsets = self.offsets(h, w, images.device)[params[:, 0].to(images.device)]  # [N, H*W]
        planes = F.pad(images, (self.pad,) * 4).flatten(2)  # [B, C, (H + 2 pad) * (W + 2 pad)]
        if rows is not None:  # view i of images[rows[i]]
            planes = planes[rows]
        return planes.gather(2, offsets[:, None, :].expand(n, c, h * w)).view(n, c, h, w)

    def offsets(self, h: int, w: int, device: torch.device) -> torch.Tensor:
        """int64 [num_views, H*W]: view v's pixel (y, x) is the padded plane's pixel offsets[v, y * W + x]."""
        key = (h, w, str(device))
        if key not in self._offsets:
            dy, dx, flip = self.decode(torch.arange(self.num_views))
            xs = torch.arange(w).expand(self.num_views, w)
            xs = torch.where(flip[:, None].bool(), w - 1 - xs, xs) + dx[:, None]  # a flipped view reads right to left
            ys = dy[:, None] + torch.arange(h)
            self._offsets[key] = (ys[:, :, None] * (w + 2 * self.pad) + xs[:, None, :]).flatten(1).to(device)
        return self._offsets[key]


@dataclass
class ResizedCropFlipView(ViewPolicy):
    """Random-resized-crop + horizontal flip, parameters (top, left, height, width, flip).

    The crop is resampled to `size` x `size` with RoIAlign (bilinear, batched; adaptive
    sampling averages several points per output pixel when shrinking), so
    every view is a pure function of its integer box.
    """

    size: int
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    name = "rrc-flip"
    num_views = None
    param_names = ("top", "left", "height", "width", "flip")

    def sample(self, n, height, width, generator):
        # Ten proposals per sample, vectorised; the first that fits wins, else the whole image.
        tries = 10
        area = height * width
        target = area * torch.empty(n, tries).uniform_(*self.scale, generator=generator)
        log_r = torch.empty(n, tries).uniform_(math.log(self.ratio[0]), math.log(self.ratio[1]), generator=generator)
        aspect = torch.exp(log_r)
        w = torch.round(torch.sqrt(target * aspect)).long()
        h = torch.round(torch.sqrt(target / aspect)).long()
        fits = (w >= 1) & (h >= 1) & (w <= width) & (h <= height)
        first = torch.where(fits.any(1), fits.float().argmax(1), torch.full((n,), -1))
        u_top = torch.rand(n, generator=generator)
        u_left = torch.rand(n, generator=generator)
        flip = torch.randint(0, 2, (n,), generator=generator)
        pick = first.clamp(min=0)
        hh = torch.where(first >= 0, h[torch.arange(n), pick], torch.full((n,), height))
        ww = torch.where(first >= 0, w[torch.arange(n), pick], torch.full((n,), width))
        top = torch.floor(u_top * (height - hh + 1)).long()
        left = torch.floor(u_left * (width - ww + 1)).long()
        return torch.stack([top, left, hh, ww, flip], dim=1)

    def describe(self):
        return {**super().describe(), "size": self.size, "scale": list(self.scale), "ratio": list(self.ratio)}

    @classmethod
    def from_record(cls, record):
        return cls(size=int(record["size"]), scale=tuple(record["scale"]), ratio=tuple(record["ratio"]))

    def apply(self, images, params):
        return self.apply_rows(images, params, torch.arange(images.shape[0], device=images.device))

    def apply_rows(self, images, params, rows):
        from torchvision.ops import roi_align  # imported here: torchvision takes about a second to import

        params = params.to(images.device)
        top, left, h, w, flip = params.unbind(1)
        boxes = torch.stack([rows.float(), left.float(), top.float(), (left + w).float(), (top + h).float()], dim=1)
        crops = roi_align(images.float(), boxes, output_size=(self.size, self.size), spatial_scale=1.0,
                          sampling_ratio=-1, aligned=True)
        crops = torch.where(flip.bool()[:, None, None, None], crops.flip(-1), crops)
        return crops.round_().clamp_(0, 255).to(torch.uint8)


# name -> the policy's class; `--augment` builds one for the loader's image side, a store rebuilds its own.
VIEW_POLICY_CLASSES: dict[str, type[ViewPolicy]] = {
    cls.name: cls for cls in (IdentityView, PadCropFlipView, ResizedCropFlipView)}

VIEW_POLICIES = {
    "identity": lambda size: IdentityView(),
    "cifar-crop-flip": lambda size: PadCropFlipView(),
    "rrc-flip": lambda size: ResizedCropFlipView(size=size),
}


def default_augment(data) -> str:
    """Crop + flip for small fixed-size images (CIFAR recipe), random-resized-crop + flip otherwise."""
    return "cifar-crop-flip" if data.fixed_size and data.input_size <= 64 else "rrc-flip"


def view_policy_names() -> list[str]:
    return sorted(VIEW_POLICIES)


def get_view_policy(name: str, image_size: int) -> ViewPolicy:
    """The named policy for square images of side `image_size` (the loader's output)."""
    try:
        factory = VIEW_POLICIES[name]
    except KeyError:
        raise UserError(f"unknown view policy '{name}'; known: {', '.join(view_policy_names())}") from None
    return factory(image_size)
