"""Tiny label stores written straight through the store writer, for tests of the store and its tools."""
import hashlib
import json

import h5py
import numpy as np

from labelopt.store import StoreLayout, StoreWriter

N, V, C = 10, 3, 7


def make_header(fingerprint="fp-0", split="train", policy="cifar-crop-flip", name="tiny"):
    return {
        "labelopt_version": "test",
        "dataset": {"name": name, "split": split, "fingerprint": fingerprint, "class_names": list("abcdefg")},
        "generator": {"method": "teacher", "temperature": 1.0, "options": {},
                      "teachers": [{"arch": "resnet", "checkpoint_sha256": "00"}]},
        "views": {"policy": policy, "param_names": ["view_id"]},
    }


def make_layout(**kw):
    base = dict(num_samples=N, num_views=V, num_classes=C, block_rows=4)
    base.update(kw)
    return StoreLayout(**base)


def make_data(layout, seed=0):
    rng = np.random.default_rng(seed)
    n, v, c = layout.num_samples, layout.num_views, layout.num_classes
    logits = rng.normal(size=(n, v, c)).astype(np.float32) * 3
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    return {
        "targets": probs.astype(np.float32),
        "labels": rng.integers(0, c, size=n),
        "logits": logits if layout.logits else None,
        "features": {tap: rng.normal(size=(n, v, d)).astype(np.float32) for tap, d in layout.features.items()},
        "view_params": (rng.integers(0, 100, size=(n, v, layout.param_size)) if layout.per_sample_params else None),
    }


def write_blocks(writer, data, blocks):
    for b in blocks:
        s, e = writer.layout.block_range(b)
        writer.write_block(
            b, targets=data["targets"][s:e], labels=data["labels"][s:e],
            logits=None if data["logits"] is None else data["logits"][s:e],
            features={t: a[s:e] for t, a in data["features"].items()},
            view_params=None if data["view_params"] is None else data["view_params"][s:e])


def build(path, layout=None, data=None, header=None, **kw):
    layout = layout or make_layout()
    data = data if data is not None else make_data(layout)
    writer = StoreWriter(path, header or make_header(), layout, **kw)
    write_blocks(writer, data, writer.pending_blocks())
    return writer.finish(), data


def independent_digest(f: h5py.File) -> str:
    """docs/label-store.md's recipe, written out: names in UTF-8 byte order, everything length-prefixed."""
    out = b""
    for name in sorted((k for k in f.attrs if k != "digest"), key=lambda k: k.encode()):
        value = f.attrs[name]
        out += len(name.encode()).to_bytes(8, "little") + name.encode()
        if isinstance(value, str):
            out += b"s" + len(value.encode()).to_bytes(8, "little") + value.encode()
        else:
            out += b"i" + int(value).to_bytes(8, "little", signed=True)
    return hashlib.sha256(out).hexdigest()


def forge(path, edit):
    """Edit a store the way a careful forger would: checksums and digest recomputed to match."""
    with h5py.File(path, "r+") as f:
        edit(f)
        sums = {}
        f.visititems(lambda name, obj: sums.__setitem__(name, hashlib.sha256(obj[()].tobytes()).hexdigest())
                     if isinstance(obj, h5py.Dataset) else None)
        f.attrs["checksums"] = json.dumps(sums)
        f.attrs["digest"] = independent_digest(f)


def as_schema_v2(path, out, piece_rows=65536):
    """A copy of a (v3) top-k store written as schema 2 wrote one: /topk/indices and /topk/values apart, in the
    same storage (gzip chunks, or contiguous at page-aligned offsets), checksums and digest recomputed. Copied
    in pieces of rows, so a store larger than memory converts too (benchmarks/store_scale.py --v2)."""
    with h5py.File(path, "r") as src:
        compressed = src["labels"].chunks is not None
        names = []
        src.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
        with h5py.File(out, "w", **({} if compressed else {"alignment_threshold": 1, "alignment_interval": 4096})) \
                as dst:
            for name in src.attrs:
                dst.attrs[name] = src.attrs[name]
            sums = {}
            for name in sorted(names):
                dset = src[name]
                parts = ({"topk/indices": "index", "topk/values": "value"} if name == "topk/entries"
                         else {name: None})
                for part, field in parts.items():
                    base = dset.dtype if field is None else dset.dtype.fields[field][0]
                    shape = dset.shape + base.shape
                    storage = {"chunks": (dset.chunks[0], *shape[1:]), "compression": "gzip",
                               "compression_opts": 4, "fletcher32": True} if compressed else {}
                    copy, digest = dst.create_dataset(part, shape=shape, dtype=base.base, **storage), hashlib.sha256()
                    for lo in range(0, len(dset), piece_rows):
                        rows = dset[lo:lo + piece_rows]
                        rows = np.ascontiguousarray(rows if field is None else rows[field])
                        copy[lo:lo + len(rows)] = rows
                        digest.update(rows.tobytes())
                    sums[part] = digest.hexdigest()
            dst.attrs["schema_version"] = np.int64(2)
            dst.attrs["checksums"] = json.dumps(dict(sorted(sums.items())))
            dst.attrs["digest"] = independent_digest(dst)
    return out
