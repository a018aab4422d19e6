"""`labels verify`: every check of a store, one by one, reported rather than raised.

The checks are those every open makes (validation.py: the file, its format and attributes, its objects, storage
and shapes; checksums.py: the root digest, a pin of it, each dataset's sha256 and finite values), run here each on
its own so that one failure does not hide the others. A fetched URL goes through the same list (remote.py) before
it is used, and `labels verify --teacher` adds the re-labelled rows (pipeline/jobs/store_relabel.py).
"""
from __future__ import annotations

from pathlib import Path

from . import validation as R
from . import schema as S
from .checksums import check_finite, check_pin, scan_dataset
from .schema import StoreError


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
