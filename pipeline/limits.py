"""The accepted range of every numeric option: one table read by the CLI (at parse time) and the library.

A value outside its range is a user's mistake: 0 epochs, a negative learning rate, nan or inf anywhere, or a
size so large it would exhaust memory. Each bound names why, so the message tells the user what to pass instead.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import UserError


@dataclass(frozen=True)
class Bound:
    kind: type  # int or float
    low: float
    high: float
    low_open: bool = False  # True: the value must be strictly greater than `low`
    high_open: bool = False

    def accepts(self, value) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind is int and not float(value).is_integer():
            return False
        if not math.isfinite(value):
            return False
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def describe(self) -> str:
        left = "(" if self.low_open else "["
        right = ")" if self.high_open else "]"
        fmt = (lambda v: f"{int(v):,}") if self.kind is int else (lambda v: f"{v:g}")
        what = "an integer" if self.kind is int else "a finite number"
        return f"{what} in {left}{fmt(self.low)}, {fmt(self.high)}{right}"


def int_range(low: int, high: int) -> Bound:
    return Bound(int, low, high)


def positive(high: float) -> Bound:
    return Bound(float, 0.0, high, low_open=True)


def fraction(*, high_open: bool = False) -> Bound:
    return Bound(float, 0.0, 1.0, high_open=high_open)


SEED_MAX = 2 ** 32 - 1  # numpy's generators take seeds below 2**32
BOUNDS: dict[str, Bound] = {
    "epochs": int_range(1, 100_000),
    "batch_size": int_range(1, 65_536),
    "lr": positive(10.0),
    "momentum": fraction(high_open=True),
    "weight_decay": Bound(float, 0.0, 1.0),
    "gamma": Bound(float, 0.0, 1.0, low_open=True),  # a decay factor: above 1 the lr would grow at each milestone
    "seed": int_range(0, SEED_MAX),
    "order_seed": int_range(0, SEED_MAX),  # the data order's seed (a pack's members share one)
    "num_workers": int_range(1, 256),
    "label_smoothing": fraction(high_open=True),
    # The share of each class held out of training to choose best.pt on (0: none); half or more would leave the
    # training split smaller than its validation split.
    "val_fraction": Bound(float, 0.0, 0.5, high_open=True),
    "temperature": positive(1000.0),
    "ce_weight": Bound(float, 0.0, 1e6),
    "kd_weight": Bound(float, 0.0, 1e6),
    "mix_gt": fraction(),
    "mix_alpha": positive(100.0),
    "topk": int_range(1, 100_000),
    # K of --views NAME:K, the views stored per sample (CIFAR's every crop-flip is 162; ImageNet stores use ~10-100)
    "views": int_range(1, 10_000),
    "block_rows": int_range(1, 1_000_000),
    "bins": int_range(1, 1000),
    "max_side": int_range(8, 16_384),
    "resolution": int_range(16, 4096),  # JPEG datasets: the side models see
    "jpeg_quality": int_range(1, 100),
    "classes": int_range(1, 100_000),
    "milestone": int_range(1, 100_000),
    "combine_weight": Bound(float, 0.0, 1e6),
    "sample": int_range(1, 10_000_000),
    "method_option": Bound(float, -1e9, 1e9),
    "jobs": int_range(1, 64),  # labelopt table: steps run at once, each its own process
    "max_pack": int_range(1, 1024),  # labelopt table: students per pack (1: none packed, one process each)
}


def check(name: str, value, *, flag: str | None = None):
    """Return `value` (ints as int) or raise UserError naming the flag and its accepted range."""
    bound = BOUNDS[name]
    if value is None:
        return None
    if not bound.accepts(value):
        flag = flag or "--" + name.replace("_", "-")
        raise UserError(f"{flag} {value!r} is out of range: pass {bound.describe()}")
    return int(value) if bound.kind is int else float(value)


def check_all(options, names) -> None:
    """Check the named attributes of an options object (the library path, for callers that bypass the CLI)."""
    for name in names:
        check(name, getattr(options, name))
