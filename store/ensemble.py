"""`labels combine`: a store whose soft labels are the weighted mean of other stores' (an ensemble of teachers)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from . import schema as S
from .checksums import file_sha256
from .layout import compression_for
from .reader import LabelStore
from .schema import StoreError
from .writer import StoreLayout, StoreWriter


def _same_source(stores: list[LabelStore]) -> None:
    first = stores[0]
    for other in stores[1:]:
        for key in ("name", "split", "num_samples", "num_classes", "fingerprint"):
            if first.dataset.get(key) != other.dataset.get(key):
                raise StoreError(f"cannot combine {first.path} and {other.path}: dataset {key} differs "
                                 f"({first.dataset.get(key)!r} vs {other.dataset.get(key)!r}); "
                                 f"combine only stores made from the same data")
        for key in ("policy", "num_views"):
            if first.views.get(key) != other.views.get(key):
                raise StoreError(f"cannot combine {first.path} and {other.path}: views {key} differs "
                                 f"({first.views.get(key)!r} vs {other.views.get(key)!r}); "
                                 f"combine only stores generated with the same views")
        if other.temperature != first.temperature:
            raise StoreError(f"cannot combine {first.path} (temperature {first.temperature:g}) and {other.path} "
                             f"(temperature {other.temperature:g}): labels made at different temperatures do not "
                             f"average into one store; regenerate one of them at the other's --temperature")
        a, b = first.view_params(), other.view_params()
        if first.per_sample_params != other.per_sample_params or a.shape != b.shape or not np.array_equal(a, b):
            raise StoreError(f"cannot combine {first.path} and {other.path}: their view parameters differ; "
                             f"combine only stores generated with the same views and seed")
        if not np.array_equal(first.labels(), other.labels()):
            raise StoreError(f"cannot combine {first.path} and {other.path}: their ground-truth labels differ")


def combine(paths: list[Path], out: Path, weights: list[float] | None = None, *, overwrite: bool = False,
            labelopt_version: str = "", layout: str = "auto", expect_digests: list | None = None) -> Path:
    """A new store whose soft labels are the weighted mean of the members' (made at one temperature).

    It holds no logits: the mean of the members' logits is not the ensemble's label (softmax of a mean is
    not the mean of softmaxes), so a kd student would learn from a distribution no member nor the mean gave.
    Top-k members are read densified (values.densify_topk) before averaging. `expect_digests`: a pin per member,
    in order (None: that member unpinned)."""
    if len(paths) < 2:
        raise StoreError("combine needs at least two label stores")
    weights = [1.0] * len(paths) if weights is None else [float(w) for w in weights]
    if len(weights) != len(paths) or any(not np.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
        raise StoreError(f"combine weights must be {len(paths)} non-negative numbers with a positive sum, "
                         f"got {weights}")
    weights = [w / sum(weights) for w in weights]
    pins = [None] * len(paths) if expect_digests is None else list(expect_digests)
    if len(pins) != len(paths):
        raise StoreError(f"combine takes one --expect-digest per store, in their order: {len(paths)} stores, "
                         f"{len(pins)} digests")
    stores = [LabelStore.open(p, expect_digest=pin) for p, pin in zip(paths, pins)]
    _same_source(stores)
    for store in stores:
        store.check(S.SIGNAL_TARGETS)  # every member proved whole before the new store's first byte
    first = stores[0]

    ks = {s.topk for s in stores}
    topk = ks.pop() if len(ks) == 1 else None  # all top-k with one k: stay top-k; otherwise dense
    per_sample = first.per_sample_params
    params = first.view_params()
    shape = StoreLayout(num_samples=first.num_samples, num_views=first.num_views, num_classes=first.num_classes,
                        topk=topk, logits=False, param_size=params.shape[-1], per_sample_params=per_sample)
    header = {
        "labelopt_version": labelopt_version,
        "dataset": first.dataset,
        "views": first.views,
        "generator": {
            "method": "combine",
            "temperature": first.temperature,
            "members": [{"path": str(s.path), "file_sha256": file_sha256(s.path), "generator": s.generator}
                        for s in stores],
            "weights": weights,
        },
    }
    writer = StoreWriter(out, header, shape, overwrite=overwrite, compression=compression_for(layout, shape),
                         shared_view_params=None if per_sample else params)
    labels = first.labels()
    for b in writer.pending_blocks():
        start, stop = shape.block_range(b)
        targets = sum(w * s.rows(S.SIGNAL_TARGETS, start, stop) for w, s in zip(weights, stores))
        writer.write_block(b, targets=targets, labels=labels[start:stop],
                           view_params=params[start:stop] if per_sample else None)
    return writer.finish()
