"""Store maintenance: prove a store intact (`verify`), average stores into an ensemble (`combine`)."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from . import validation as R
from . import schema as S
from .reader import LabelStore
from .integrity import check_finite, check_pin, scan_dataset
from .schema import StoreError
from .layout import compression_for
from .writer import StoreLayout, StoreWriter


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# -- verify -----------------------------------------------------------------------------------

def verify(path, identity: dict | None = None, expect_digest: str | None = None) -> dict:
    """Every check as {"name", "ok", "detail"}; never raises on a bad file, it reports. `expect_digest`: a pin of
    the store's root digest (64 hex digits), checked as "pin"."""
    path = Path(path)
    checks: list[dict] = []

    def run(name, fn):
        try:
            detail = fn()
        except Exception as exc:  # a corrupt file can make h5py raise anything: report, never crash
            checks.append({"name": name, "ok": False, "detail": " ".join(str(exc).split()) or type(exc).__name__})
            return False, None
        checks.append({"name": name, "ok": True, "detail": detail if isinstance(detail, str) else "ok"})
        return True, detail

    if not run("file", lambda: R.check_file(path))[0]:
        return {"ok": False, "checks": checks}
    ok, f = run("open", lambda: R.open_h5(path))
    if not ok:
        return {"ok": False, "checks": checks}
    with f:
        run("format", lambda: R.check_format(f))
        run("complete", lambda: R.check_complete(f))
        digest_ok, digest = run("digest", lambda: R.check_digest(f))
        if expect_digest is not None:
            run("pin", lambda: _check_pin(f.filename, digest if digest_ok else None, expect_digest))
        attrs_ok, meta = run("attributes", lambda: R.parse_attrs(f))
        if attrs_ok:
            run("temperature", lambda: f"{R.check_temperature(f, meta):g}")
        objects_ok, _ = run("objects", lambda: R.check_objects(f))
        # Storage is looked at only once every object is known to be one of the schema's, under its one name.
        storage_ok = objects_ok and run("storage", lambda: R.check_storage(f))[0]
        if attrs_ok:
            run("shapes", lambda: R.check_shapes(f, meta))
        # Reading a dataset that is virtual, external, never written or of an odd dtype is what we refuse to do.
        if storage_ok:
            _check_contents(f, meta if attrs_ok else None, run)
        if identity is not None and attrs_ok:
            run("identity", lambda: _check_identity(meta[S.ATTR_DATASET], identity))
    return {"ok": all(c["ok"] for c in checks), "checks": checks}


def _check_pin(filename, digest: str | None, expected: str) -> str:
    if digest is None:
        raise StoreError("the store's root digest does not hold (see digest), so it matches no pin")
    check_pin(filename, digest, expected)
    return f"root digest {digest} as pinned"


def _check_contents(f, meta, run) -> None:
    expected = dict(meta[S.ATTR_CHECKSUMS]) if meta else {}
    bad_rows: dict[str, int | None] = {}  # per dataset: its first row holding NaN or inf, found by the same pass

    def scan(dset, name):
        digest, bad_rows[name] = scan_dataset(dset)
        return digest

    for name, dset in sorted(R.all_datasets(f).items()):
        ok, digest = run(f"chunks:{name}", lambda d=dset, name=name: scan(d, name))
        if not ok:
            continue
        if dset.dtype.kind == "f" or dset.dtype.fields is not None:
            run(f"finite:{name}", lambda name=name: check_finite(f.filename, name, bad_rows[name]))
        if meta is None:
            continue
        want = expected.pop(name, None)

        def compare(digest=digest, want=want, name=name):
            if want is None:
                raise StoreError(f"dataset /{name} has no entry in the checksums attribute")
            if digest != want:
                raise StoreError(f"dataset /{name} sha256 {digest[:16]}... differs from the recorded {want[:16]}...; "
                                 f"the content changed: regenerate the store")
            return want
        run(f"sha256:{name}", compare)
    present = R.all_datasets(f)
    for name in expected:
        if name not in present:
            def missing(name=name):
                raise StoreError(f"checksums lists /{name} but the file has no such dataset; regenerate the store")
            run(f"sha256:{name}", missing)


def _check_identity(dataset: dict, identity: dict) -> str:
    bad = R.identity_mismatches(dataset, identity)
    if bad:
        raise StoreError("; ".join(f"{k}: store {a!r} != data {b!r}" for k, a, b in bad))
    return "matches " + ", ".join(k for k in S.IDENTITY_FIELDS if k in identity)


# -- combine ----------------------------------------------------------------------------------

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
        raise StoreError(f"combine weights must be {len(paths)} non-negative numbers with a positive sum, got {weights}")
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
