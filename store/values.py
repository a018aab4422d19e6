"""How stored numbers become float32 soft labels: exact float16 widening, and what a top-k row means.

A top-k store keeps each row's k largest probabilities; the mass they leave, 1 - sum(top-k), is spread
uniformly over the C - k classes not stored (clamped at 0). Every densified row then sums to 1, the k
stored values come back exactly, and a loss sees a full distribution instead of one scaled by the mass
it kept. One function serves the training gather and the tools' row reads so both agree.
"""
from __future__ import annotations

import numpy as np

# float16 -> float32 by table lookup: exact, single-threaded, and as fast for subnormals as for normal numbers.
# Soft labels are full of subnormals (a third of a 100-class softmax's entries), and numpy's astype runs about
# three times slower on them.
_FLOAT16_TO_32 = np.arange(2 ** 16, dtype=np.uint16).view(np.float16).astype(np.float32)


def as_float32(values: np.ndarray) -> np.ndarray:
    if values.dtype == np.float16:
        return _FLOAT16_TO_32.take(values.view(np.uint16))
    return values.astype(np.float32, copy=False)


def densify_topk(indices: np.ndarray, values: np.ndarray, num_classes: int) -> np.ndarray:
    """float32 [..., C] rows from top-k [..., k] indices and values: stored values exact, the rest uniform."""
    values = as_float32(values)
    k = values.shape[-1]
    out = np.empty(values.shape[:-1] + (num_classes,), dtype=np.float32)
    if num_classes > k:
        # float16 rounding can make the kept mass exceed 1 by a hair: clamp, never a negative probability.
        missing = np.maximum(np.float32(1.0) - values.sum(axis=-1, dtype=np.float32), np.float32(0.0))
        out[...] = (missing / np.float32(num_classes - k))[..., None]
    else:
        out.fill(0.0)
    np.put_along_axis(out, indices, values, axis=-1)
    return out
