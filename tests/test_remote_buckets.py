"""Stores pulled by object-store URL, each from a real server of that store's HTTP API on 127.0.0.1: s3:// through
s3fs from moto's S3 server (found through AWS_ENDPOINT_URL, as MinIO or AWS would be), gs:// through gcsfs from
gcp-storage-emulator (found through STORAGE_EMULATOR_HOST). For each: fetched, checked and cached with the object's
ETag; a cut transfer resumed with a ranged read; a replaced object fetched again; a tampered one refused."""
import json
import socket
import urllib.parse
import urllib.request

import fsspec
import h5py
import pytest

from labelopt.store import StoreError, remote
from labelopt.tests.store_fakes import build, make_data, make_layout

BUCKET = "team-labels"


class S3Bucket:
    scheme = "s3"

    def __init__(self, monkeypatch):
        moto_server = pytest.importorskip("moto.server")
        self.boto3, self.s3fs = pytest.importorskip("boto3"), pytest.importorskip("s3fs")
        self.server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        host, port = self.server.get_host_and_port()
        for name, value in {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
                            "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
            monkeypatch.setenv(name, value)
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
            monkeypatch.delenv(name, raising=False)
        self.client = self.boto3.client("s3")
        self.client.create_bucket(Bucket=BUCKET)

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=BUCKET, Key=key, Body=data)
        self.s3fs.S3FileSystem.clear_instance_cache()  # s3fs caches what it has seen of a bucket

    def etag(self, key: str) -> str:
        return self.client.head_object(Bucket=BUCKET, Key=key)["ETag"]

    def stop(self) -> None:
        self.s3fs.S3FileSystem.clear_instance_cache()
        self.server.stop()


class GcsBucket:
    """Written and asked through the emulator's JSON API with urllib, so the expected ETag is not gcsfs's word."""
    scheme = "gs"

    def __init__(self, monkeypatch):
        server_module = pytest.importorskip("gcp_storage_emulator.server")
        self.gcsfs = pytest.importorskip("gcsfs")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.server = server_module.create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
        self.server.start()
        self.base = f"http://127.0.0.1:{port}"
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", self.base)
        # gcsfs's default class first asks a gRPC control API for the bucket's layout, which the emulator lacks (a
        # minute's timeout, then it falls back to this class): use this class from the start.
        fsspec.register_implementation("gs", self.gcsfs.core.GCSFileSystem, clobber=True)

    def put(self, key: str, data: bytes) -> None:
        name = urllib.parse.quote(key, safe="")
        request = urllib.request.Request(f"{self.base}/upload/storage/v1/b/{BUCKET}/o?uploadType=media&name={name}",
                                         data=data, method="POST")
        urllib.request.urlopen(request).close()
        self.gcsfs.GCSFileSystem.clear_instance_cache()

    def etag(self, key: str) -> str:
        with urllib.request.urlopen(f"{self.base}/storage/v1/b/{BUCKET}/o/{urllib.parse.quote(key, safe='')}") as r:
            return json.load(r)["etag"]

    def stop(self) -> None:
        self.gcsfs.GCSFileSystem.clear_instance_cache()
        self.server.stop()


@pytest.fixture(scope="module", params=[S3Bucket, GcsBucket], ids=["s3", "gs"])
def bucket(request):
    with pytest.MonkeyPatch.context() as env:
        store = request.param(env)
        yield store
        store.stop()


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(remote, "CHUNK_BYTES", 16 << 10)


def upload(bucket, tmp_path, key, seed=0):
    """A real store (about 200 KB; its numbers drawn from `seed`) put at <scheme>://BUCKET/key; its URL and bytes."""
    layout = make_layout(num_samples=400, num_classes=40)
    path, _ = build(tmp_path / f"upload-{seed}.h5", layout, data=make_data(layout, seed))
    data = path.read_bytes()
    bucket.put(key, data)
    return f"{bucket.scheme}://{BUCKET}/{key}", data


def record(local):
    return json.loads(local.with_name(local.name + ".json").read_text())


def test_a_store_in_a_bucket_is_fetched_checked_and_cached_with_its_etag(bucket, tmp_path, small_chunks):
    url, original = upload(bucket, tmp_path, "cifar/labels.h5")
    cache = tmp_path / "cache"
    local = remote.local_store(url, cache, progress=False)
    assert local.read_bytes() == original and local.name.endswith("-labels.h5")
    assert record(local) == {"url": url, "size": len(original), "tag": bucket.etag("cifar/labels.h5")}
    assert not list(cache.glob("*.part*"))
    assert remote.local_store(url, cache, progress=False) == local  # the current version: reused


def test_a_cut_transfer_resumes_with_a_ranged_read(bucket, tmp_path, small_chunks, monkeypatch):
    url, original = upload(bucket, tmp_path, "resume/labels.h5")
    cache = tmp_path / "cache"
    cache.mkdir()
    fs, path = remote.remote_filesystem(url)
    size, tag = remote.remote_info(fs, path, url)
    part = cache / (remote.cached_name(url) + ".part")  # what a cut transfer leaves: the bytes so far, its record
    kept = len(original) // 3
    part.write_bytes(original[:kept])
    part.with_name(part.name + ".json").write_text(json.dumps({"url": url, "size": size, "tag": tag}))
    starts = []
    real_open = type(fs).open

    def open_and_watch(self, *args, **kwargs):
        source = real_open(self, *args, **kwargs)
        real_read = source.read
        source.read = lambda n=-1: (starts.append(source.tell()), real_read(n))[1]
        return source

    monkeypatch.setattr(type(fs), "open", open_and_watch)
    local = remote.local_store(url, cache, progress=False)
    assert starts[0] == kept and 0 not in starts  # it went on from the part's end, not from the start
    assert local.read_bytes() == original and not part.exists()


def test_a_replaced_object_is_fetched_again_and_a_tampered_one_refused(bucket, tmp_path, small_chunks):
    url, first = upload(bucket, tmp_path, "team/labels.h5", seed=0)
    cache = tmp_path / "cache"
    local = remote.local_store(url, cache, progress=False)
    _, second = upload(bucket, tmp_path, "team/labels.h5", seed=1)  # a new version under the same key
    assert second != first and remote.local_store(url, cache, progress=False).read_bytes() == second
    with h5py.File(local, "r") as f:  # one flipped byte inside the targets' first stored chunk
        info = f["targets"].id.get_chunk_info(0)
    raw = bytearray(second)
    raw[info.byte_offset + info.size // 2] ^= 0xFF
    bucket.put("team/labels.h5", bytes(raw))
    with pytest.raises(StoreError, match="not the label store it claims to be"):
        remote.local_store(url, cache, progress=False)
    assert not list(cache.glob("*.part*"))
    assert local.read_bytes() == second  # the copy of the last good version is left as it was
