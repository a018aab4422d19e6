"""How stored numbers become float32 soft labels: exact float16 widening, and what a top-k row means.

A top-k store keeps each row's k largest probabilities; the mass they leave, 1 - sum(top-k), is spread
uniformly over the C - k classes not stored (clamped at 0). Every densified row then sums to 1, the k
stored values come back exactly, and a loss sees a full distribution instead of one scaled by the mass
it kept. One function serves the training gather and the tools' row reads so both agree.
"""
from __future__ import annotations

import numpy as np
import torch

# float16 -> float32 through torch's conversion: exact (IEEE widening; subnormals included, as fast as normal
# numbers), vectorised with the CPU's half-precision instructions: ~5x faster than a table lookup and ~9x faster
# than numpy's astype (slow on subnormals, a third of a 100-class softmax's entries). Pieces of fewer elements
# than torch's parallel grain keep it on this thread: split across threads, a conversion this small waits for a
# time slice on cores busy with FFCV's loader threads.
SERIAL_ELEMENTS = 32768


def as_float32(values: np.ndarray) -> np.ndarray:
    if values.dtype != np.float16:
        return values.astype(np.float32, copy=False)
    # from_numpy needs a writable array (a caller's may be a read-only view of a buffer).
    source = torch.from_numpy(np.ascontiguousarray(values) if values.flags.writeable else values.copy()).reshape(-1)
    out = torch.empty(source.shape, dtype=torch.float32)
    for lo in range(0, source.numel(), SERIAL_ELEMENTS):
        out[lo:lo + SERIAL_ELEMENTS].copy_(source[lo:lo + SERIAL_ELEMENTS])
    return out.numpy().reshape(values.shape)


def densify_topk(indices: np.ndarray, values: np.ndarray, num_classes: int) -> np.ndarray:
    """float32 [..., C] rows from top-k [..., k] indices and values: stored values exact, the rest uniform."""
    values = as_float32(values)
    k = values.shape[-1]
    out = np.empty(values.shape[:-1] + (num_classes,), dtype=np.float32)
    if num_classes > k:
        # float16 rounding can make the kept mass exceed 1 by a hair: clamp, never a negative probability.
        kept = values[..., 0].copy()
        for j in range(1, k):  # left to right, one float32 add at a time: store/read_kernels.py adds the same way
            kept += values[..., j]
        missing = np.maximum(np.float32(1.0) - kept, np.float32(0.0))
        out[...] = (missing / np.float32(num_classes - k))[..., None]
    else:
        out.fill(0.0)
    np.put_along_axis(out, indices, values, axis=-1)
    return out
