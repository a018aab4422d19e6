"""Validation of a label store on open, step by step (tools.verify runs the steps one by one): the file, its format,
digest and attributes, its links, storage and shapes, and each dataset's checksum as it is read.

Nothing is ever unpickled: only plain numeric dtypes are accepted and read."""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from . import integrity
from . import schema as S
from .schema import StoreError


def check_file(path: Path) -> None:
    if not path.is_file():
        raise StoreError(f"label store {path} does not exist; check the path or run labelopt generate-labels")
    if not h5py.is_hdf5(path):
        raise StoreError(f"{path} is not an HDF5 file (truncated or not a label store); regenerate it")


def open_h5(path: Path) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise StoreError(f"cannot open label store {path} ({exc}); the file is truncated or corrupt: regenerate it")


def _attr_int(f: h5py.File, name: str):
    value = f.attrs.get(name)
    try:
        return int(np.asarray(value).item())
    except (TypeError, ValueError):
        return None


def check_format(f: h5py.File) -> int:
    """The schema version, when this labelopt reads it."""
    name = f.filename
    if f.attrs.get(S.ATTR_FORMAT) != S.FORMAT:
        raise StoreError(f"{name} is not a labelopt label store (format attribute is not {S.FORMAT!r})")
    version = _attr_int(f, S.ATTR_SCHEMA_VERSION)
    if version is not None and version < min(S.READS_VERSIONS):
        raise StoreError(f"{name} is a schema {version} label store, older than this labelopt reads "
                         f"({min(S.READS_VERSIONS)}: its attributes carry a digest); regenerate it with labelopt "
                         f"generate-labels")
    if version not in S.READS_VERSIONS:
        raise StoreError(f"{name}: schema version {version} is not supported by this labelopt "
                         f"(reads {', '.join(map(str, S.READS_VERSIONS))}): upgrade labelopt")
    return version


def root_attrs(f: h5py.File) -> dict:
    """Every root attribute as h5py returns it; one that cannot be read at all makes the file unusable."""
    try:
        return {name: f.attrs[name] for name in f.attrs.keys()}
    except (OSError, TypeError, ValueError) as exc:
        raise StoreError(f"{f.filename}: a root attribute cannot be read ({exc}); regenerate the store")


def check_digest(f: h5py.File) -> str:
    return integrity.check_root_digest(f.filename, root_attrs(f))


def check_complete(f: h5py.File) -> None:
    if _attr_int(f, S.ATTR_COMPLETE) != 1:
        raise StoreError(f"incomplete store {f.filename}: it was not finished (writer crashed or was stopped); "
                         f"regenerate it")


def check_attrs(f: h5py.File) -> dict:
    """Format, version, completeness, the digest and the JSON attributes; returns them parsed."""
    check_format(f)
    check_complete(f)
    check_digest(f)
    return parse_attrs(f)


def check_temperature(f: h5py.File, meta: dict) -> float:
    try:
        return S.generator_temperature(meta[S.ATTR_GENERATOR])
    except ValueError as exc:
        raise StoreError(f"{f.filename}: {exc}; soft labels need the temperature they were made at: "
                         f"regenerate the store")


def check_listing(f: h5py.File, meta: dict) -> None:
    """The checksums attribute names exactly the datasets in the file (none added, none deleted)."""
    listed, present = set(meta[S.ATTR_CHECKSUMS]), set(all_datasets(f))
    unlisted, gone = sorted(present - listed), sorted(listed - present)
    if unlisted:
        raise StoreError(f"{f.filename}: dataset /{unlisted[0]} has no entry in the checksums attribute; "
                         f"re-fetch the store or regenerate it")
    if gone:
        raise StoreError(f"{f.filename}: checksums list /{gone[0]} but the file has no such dataset (deleted?); "
                         f"re-fetch the store or regenerate it")


def parse_attrs(f: h5py.File) -> dict:
    name = f.filename
    meta = {}
    for key in (*S.JSON_ATTRS, S.ATTR_CHECKSUMS):
        raw = f.attrs.get(key)
        try:
            meta[key] = json.loads(raw) if isinstance(raw, str) else None
        except ValueError:
            meta[key] = None
        if not isinstance(meta[key], dict):
            raise StoreError(f"{name}: attribute {key!r} is missing or not a JSON object; regenerate the store")
    for key in (S.ATTR_CREATED_UTC, S.ATTR_LABELOPT_VERSION):
        value = f.attrs.get(key, "")
        meta[key] = value if isinstance(value, str) else ""
    meta[S.ATTR_SCHEMA_VERSION] = _attr_int(f, S.ATTR_SCHEMA_VERSION)  # which top-k datasets to expect
    return meta


def check_links(f: h5py.File) -> None:
    """Refuse links that leave the file (external, user-defined) or that do not resolve."""
    external, soft = [], []

    def visit(link_name, link):
        if isinstance(link, h5py.SoftLink):
            soft.append(link_name)
        elif not isinstance(link, h5py.HardLink):
            external.append(link_name)

    f.visititems_links(visit)
    if external:
        raise StoreError(f"{f.filename} has an external link at /{external[0]}; refusing to follow links "
                         f"out of a label store: regenerate it")
    for link_name in soft:
        # Safe to resolve now: with no external links, a soft link can only land inside this file.
        if f.get(link_name) is None:
            raise StoreError(f"{f.filename} has a dangling soft link at /{link_name}; regenerate the store")


def all_datasets(f: h5py.File) -> dict[str, h5py.Dataset]:
    found = {}

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            found[name] = obj

    f.visititems(visit)
    return found


def check_storage(f: h5py.File) -> None:
    """Only plain numeric, in-file datasets: no external raw storage, no object/vlen dtypes, and no compound dtype
    but the top-k entry's (class ids and values side by side)."""
    for name, dset in all_datasets(f).items():
        if dset.external:
            raise StoreError(f"{f.filename}: dataset /{name} uses external storage; refusing it: regenerate the store")
        dtype = dset.dtype
        if name == S.TOPK_ENTRIES and S.topk_entry_width(dtype) is not None:
            continue
        if dtype.kind not in "fiub" or dtype.fields is not None or h5py.check_vlen_dtype(dtype) is not None:
            raise StoreError(f"{f.filename}: dataset /{name} has non-numeric dtype {dtype}; refusing it "
                             f"(label stores hold plain numbers only): regenerate the store")


def check_shapes(f: h5py.File, meta: dict) -> dict:
    """Required datasets present with shapes agreeing with the attrs; returns the derived facts."""
    name = f.filename

    def size(holder, key):
        value = meta[holder].get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise StoreError(f"{name}: attribute {holder}.{key} is missing or not a positive int; regenerate")
        return value

    n, c, v = size(S.ATTR_DATASET, "num_samples"), size(S.ATTR_DATASET, "num_classes"), size(S.ATTR_VIEWS, "num_views")
    dsets = all_datasets(f)

    def expect(path, shape_ok, what):
        dset = dsets.get(path)
        if dset is None:
            raise StoreError(f"{name}: required dataset /{path} is missing; regenerate the store")
        if not shape_ok(dset.shape):
            raise StoreError(f"{name}: dataset /{path} has shape {dset.shape}, expected {what}; regenerate")
        return dset

    facts = {"num_samples": n, "num_views": v, "num_classes": c}
    packed = (meta.get(S.ATTR_SCHEMA_VERSION) or 0) >= 3  # top-k entries in one dataset (v3) or two (v2)
    expect(S.LABELS, lambda s: s == (n,), f"({n},)")
    if S.TARGETS in dsets:
        expect(S.TARGETS, lambda s: s == (n, v, c), f"({n}, {v}, {c})")
        facts["topk"] = None
    elif packed:
        k = S.topk_entry_width(expect(S.TOPK_ENTRIES, lambda s: s == (n, v), f"({n}, {v})").dtype)
        if k is None or k > c:
            raise StoreError(f"{name}: dataset /{S.TOPK_ENTRIES} is not K class ids and K values per entry with "
                             f"K <= {c}; regenerate the store")
        facts["topk"] = k
    else:
        idx = expect(S.TOPK_INDICES, lambda s: len(s) == 3 and s[:2] == (n, v) and 1 <= s[2] <= c,
                     f"({n}, {v}, K<={c})")
        k = idx.shape[2]
        expect(S.TOPK_VALUES, lambda s: s == (n, v, k), f"({n}, {v}, {k})")
        facts["topk"] = k
    facts["topk_packed"] = facts["topk"] is not None and packed
    facts["has_logits"] = S.LOGITS in dsets
    if facts["has_logits"]:
        expect(S.LOGITS, lambda s: s == (n, v, c), f"({n}, {v}, {c})")
    params = expect(S.VIEW_PARAMS, lambda s: (len(s) == 2 and s[0] == v) or (len(s) == 3 and s[:2] == (n, v)),
                    f"({v}, P) or ({n}, {v}, P)")
    facts["per_sample_params"] = params.ndim == 3
    taps = {}
    prefix = S.FEATURES_GROUP + "/"
    for path, dset in dsets.items():
        if path.startswith(prefix):
            expect(path, lambda s: len(s) == 3 and s[:2] == (n, v), f"({n}, {v}, D)")
            taps[path[len(prefix):]] = dset.shape[2]
    facts["features"] = dict(sorted(taps.items()))
    return facts


def validate(f: h5py.File) -> tuple[dict, dict]:
    meta = check_attrs(f)
    check_links(f)
    check_storage(f)
    check_listing(f, meta)
    facts = check_shapes(f, meta)
    facts["temperature"] = check_temperature(f, meta)
    return meta, facts


def read_dataset(f: h5py.File, path: str, checksums: dict) -> np.ndarray:
    """Whole dataset as numpy, its sha256 checked against `checksums`; a failure is a StoreError naming it."""
    try:
        array = f[path][()]
    except OSError as exc:
        raise StoreError(f"{f.filename}: dataset /{path} failed to read ({exc}); the file is corrupt: "
                         f"run labelopt labels verify and regenerate it")
    return integrity.check_array(f.filename, path, array, checksums)


def stream_check(f: h5py.File, path: str, checksums: dict) -> None:
    """Check a dataset's sha256 chunk by chunk, keeping none of it (for readers of slices)."""
    try:
        digest = integrity.dataset_sha256(f[path])
    except OSError as exc:
        raise StoreError(f"{f.filename}: dataset /{path} failed to read ({exc}); the file is corrupt: "
                         f"run labelopt labels verify and regenerate it")
    integrity.check_digest_of(f.filename, path, digest, checksums)


def identity_mismatches(dataset: dict, identity: dict) -> list[tuple[str, object, object]]:
    """(field, store value, given value) for each identity field that differs."""
    return [(key, dataset.get(key), identity[key]) for key in S.IDENTITY_FIELDS
            if key in identity and dataset.get(key) != identity[key]]
