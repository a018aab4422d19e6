"""Stores pulled by s3:// URL, through s3fs, from moto's S3 server on 127.0.0.1 (the S3 HTTP API, as MinIO or AWS
answer it; found through AWS_ENDPOINT_URL like any S3-compatible endpoint): fetched, checked and cached with the
object's ETag; a cut transfer resumed with a ranged read; a replaced object fetched again; a tampered one refused."""
import json

import h5py
import pytest

from labelopt.store import StoreError, remote
from labelopt.tests.store_fakes import build, make_data, make_layout

moto_server = pytest.importorskip("moto.server")
boto3 = pytest.importorskip("boto3")
s3fs = pytest.importorskip("s3fs")

BUCKET = "team-labels"


@pytest.fixture(scope="module")
def s3():
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    with pytest.MonkeyPatch.context() as env:
        for name, value in {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
                            "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
            env.setenv(name, value)
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
            env.delenv(name, raising=False)
        client = boto3.client("s3")
        client.create_bucket(Bucket=BUCKET)
        s3fs.S3FileSystem.clear_instance_cache()
        yield client
        s3fs.S3FileSystem.clear_instance_cache()
    server.stop()


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(remote, "CHUNK_BYTES", 16 << 10)


def upload(client, tmp_path, key, seed=0):
    """A real store (about 200 KB; its numbers drawn from `seed`) put at s3://BUCKET/key; its URL and bytes."""
    layout = make_layout(num_samples=400, num_classes=40)
    path, _ = build(tmp_path / f"upload-{seed}.h5", layout, data=make_data(layout, seed))
    data = path.read_bytes()
    client.put_object(Bucket=BUCKET, Key=key, Body=data)
    s3fs.S3FileSystem.clear_instance_cache()  # s3fs caches what it has seen of a bucket; look the object up afresh
    return f"s3://{BUCKET}/{key}", data


def record(local):
    return json.loads(local.with_name(local.name + ".json").read_text())


def test_a_store_on_s3_is_fetched_checked_and_cached_with_its_etag(s3, tmp_path, small_chunks):
    url, original = upload(s3, tmp_path, "cifar/labels.h5")
    cache = tmp_path / "cache"
    local = remote.local_store(url, cache, progress=False)
    assert local.read_bytes() == original and local.name.endswith("-labels.h5")
    etag = s3.head_object(Bucket=BUCKET, Key="cifar/labels.h5")["ETag"]
    assert record(local) == {"url": url, "size": len(original), "tag": etag}
    assert not list(cache.glob("*.part*"))
    assert remote.local_store(url, cache, progress=False) == local  # the current version: reused


def test_a_cut_s3_transfer_resumes_with_a_ranged_read(s3, tmp_path, small_chunks, monkeypatch):
    url, original = upload(s3, tmp_path, "resume/labels.h5")
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


def test_a_replaced_object_is_fetched_again_and_a_tampered_one_refused(s3, tmp_path, small_chunks):
    url, first = upload(s3, tmp_path, "team/labels.h5", seed=0)
    cache = tmp_path / "cache"
    local = remote.local_store(url, cache, progress=False)
    _, second = upload(s3, tmp_path, "team/labels.h5", seed=1)  # a new version under the same key
    assert second != first and remote.local_store(url, cache, progress=False).read_bytes() == second
    with h5py.File(local, "r") as f:  # one flipped byte inside the targets' first stored chunk
        info = f["targets"].id.get_chunk_info(0)
    raw = bytearray(second)
    raw[info.byte_offset + info.size // 2] ^= 0xFF
    s3.put_object(Bucket=BUCKET, Key="team/labels.h5", Body=bytes(raw))
    s3fs.S3FileSystem.clear_instance_cache()
    with pytest.raises(StoreError, match="not the label store it claims to be"):
        remote.local_store(url, cache, progress=False)
    assert not list(cache.glob("*.part*"))
    assert local.read_bytes() == second  # the copy of the last good version is left as it was
