"""Dataset fingerprints: what stage one and stage two check before they join anything."""
from __future__ import annotations

import hashlib

import numpy as np

FINGERPRINT_VERSION = b"labelopt-fingerprint-v1"


def split_fingerprint(split, progress=None) -> str:
    """sha256 over every sample's image bytes and the labels, in index order.

    Each image's bytes are length-prefixed so no two different splits can hash alike
    by shifting bytes between samples. `progress`, if given, is called with a count.
    """
    digest = hashlib.sha256(FINGERPRINT_VERSION)
    digest.update(np.int64(len(split)).tobytes())
    for i in range(len(split)):
        data = split.read_fingerprint_bytes(i)
        digest.update(np.int64(len(data)).tobytes())
        digest.update(data)
        if progress is not None:
            progress(1)
    digest.update(np.asarray(split.labels, dtype="<i8").tobytes())
    return digest.hexdigest()


def channel_stats(split, max_samples: int = 20000, seed: int = 0) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of pixels / 255, over at most `max_samples` images (seeded subsample)."""
    n = len(split)
    order = np.arange(n)
    if n > max_samples:
        order = np.sort(np.random.default_rng(seed).choice(n, max_samples, replace=False))
    total = np.zeros(3, dtype=np.float64)
    total_sq = np.zeros(3, dtype=np.float64)
    count = 0
    for i in order:
        pixels = split.read_image(int(i)).reshape(-1, 3).astype(np.float64) / 255.0
        total += pixels.sum(0)
        total_sq += (pixels * pixels).sum(0)
        count += pixels.shape[0]
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean * mean, 0.0))
    return [round(float(m), 6) for m in mean], [round(float(s), 6) for s in std]
