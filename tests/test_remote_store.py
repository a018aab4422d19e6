"""Stores pulled by URL (store/remote.py): a real HTTP server on 127.0.0.1 that honours Range requests and can cut
a transfer midway; fetch, resume, refusal of a tampered copy, cache reuse, one-line errors."""
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import h5py
import pytest
from click.testing import CliRunner

from labelopt.cli import main
from labelopt.pipeline.data.datasets import open_dataset
from labelopt.store import StoreError
from labelopt.store import remote
from labelopt.tests.store_fakes import build, make_data, make_header, make_layout


class RangeHandler(BaseHTTPRequestHandler):
    """Serves server.root; answers `Range: bytes=a-` and `bytes=a-b` with 206, HEAD with the length; records each
    request; with server.cut_at set, a body that would pass that file offset stops there and the connection
    closes (a transfer cut midway); with server.down set, every request gets a 503; with server.etags set (the
    default), an ETag made from the file's modification time."""

    def log_message(self, *args):
        pass

    def do_HEAD(self):
        self.answer(send_body=False)

    def do_GET(self):
        self.answer(send_body=True)

    def answer(self, send_body):
        wanted = self.headers.get("Range")
        self.server.requests.append((self.command, self.path, wanted))
        if self.server.down:
            return self.send_error(503)
        path = self.server.root / self.path.lstrip("/")
        if not path.is_file():
            return self.send_error(404)
        data = path.read_bytes()
        start, stop = 0, len(data)
        if wanted:
            first, _, last = wanted.removeprefix("bytes=").partition("-")
            start, stop = int(first), min(len(data), int(last) + 1 if last else len(data))
            if start >= len(data):
                return self.send_error(416)
        self.send_response(206 if wanted else 200)
        if wanted:
            self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{len(data)}")
        self.send_header("Content-Length", str(stop - start))
        self.send_header("Accept-Ranges", "bytes")
        if self.server.etags:  # a version tag as real servers make one: from the file's modification time
            self.send_header("ETag", f'"{path.stat().st_mtime_ns:x}-{len(data):x}"')
        self.end_headers()
        if send_body:
            cut = self.server.cut_at
            self.wfile.write(data[start:stop] if cut is None or stop <= cut else data[start:max(start, cut)])
            self.wfile.flush()


@pytest.fixture
def server(tmp_path):
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    httpd.root = tmp_path / "served"
    httpd.root.mkdir()
    httpd.requests, httpd.cut_at, httpd.down, httpd.etags = [], None, False, True
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(remote, "CHUNK_BYTES", 16 << 10)  # a ~200 KB store moves in a dozen ranged reads


def publish(server, name="labels.h5", **layout):
    """A real store (about 200 KB) written into the served folder; its URL and bytes."""
    path, _ = build(server.root / name, make_layout(**{"num_samples": 400, "num_classes": 40, **layout}))
    return f"{server.url}/{name}", path.read_bytes()


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(result):
    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, result.output
    return lines[0]


def gets(server):
    return [r for r in server.requests if r[0] == "GET"]


def test_a_store_fetched_by_url_is_the_same_bytes_and_inspect_reads_it(server, tmp_path, small_chunks):
    url, original = publish(server)
    cache = tmp_path / "cache"
    local = remote.local_store(url, cache, progress=False)
    assert local.parent == cache and local.name.endswith("-labels.h5")
    assert local.read_bytes() == original
    assert not list(cache.glob("*.part*"))
    result = run("labels", "inspect", url, "--json", "--cache-dir", cache)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["url"] == url and report["path"] == str(local)
    assert report["shapes"]["targets"] == [400, 3, 40]
    card = run("labels", "card", url, "--cache-dir", cache)
    assert card.exit_code == 0, card.output
    assert f"Fetched from <{url}>" in card.output and "# Label store `labels.h5`" in card.output


def test_a_plain_path_comes_back_untouched(tmp_path):
    assert remote.local_store(str(tmp_path / "x.h5"), tmp_path / "cache") == tmp_path / "x.h5"
    assert not (tmp_path / "cache").exists()


def test_a_cut_transfer_stops_with_one_line_and_the_next_call_resumes(server, tmp_path, small_chunks):
    url, original = publish(server)
    cache = tmp_path / "cache"
    server.cut_at = len(original) // 2
    first = run("labels", "inspect", url, "--cache-dir", cache)
    line = one_line_error(first)
    assert "stopped at" in line and "MiB" in line and "again to resume" in line
    [part] = cache.glob("*.part")
    kept = part.stat().st_size
    assert 0 < kept <= server.cut_at and original.startswith(part.read_bytes())
    assert not (cache / part.name.removesuffix(".part")).exists()
    server.cut_at, server.requests[:] = None, []
    local = remote.local_store(url, cache, progress=False)
    ranges = [r[2] for r in gets(server)]
    assert ranges[0].startswith(f"bytes={kept}-"), ranges  # resumed where the part ends, not from 0
    assert not any(r.startswith("bytes=0-") for r in ranges)
    assert local.read_bytes() == original and not part.exists()


def tamper(path):
    """Flip a byte inside the targets' stored data (a chunk's bytes, or the contiguous block), not the header."""
    with h5py.File(path, "r") as f:
        dset = f["targets"].id
        if f["targets"].chunks:
            info = dset.get_chunk_info(0)
            offset, size = info.byte_offset, info.size
        else:
            offset, size = dset.get_offset(), dset.get_storage_size()
    raw = bytearray(path.read_bytes())
    raw[offset + size // 2] ^= 0xFF
    path.write_bytes(bytes(raw))


def test_a_tampered_copy_is_refused_and_nothing_is_cached(server, tmp_path, small_chunks):
    url, _ = publish(server)
    tamper(server.root / "labels.h5")
    cache = tmp_path / "cache"
    line = one_line_error(run("labels", "verify", url, "--cache-dir", cache))
    assert "not the label store it claims to be" in line and "targets" in line and "deleted" in line
    assert not (cache / remote.cached_name(url)).exists()
    assert [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == []
    with pytest.raises(StoreError, match="claims to be"):
        remote.local_store(url, cache, progress=False)


def test_the_cache_is_reused_without_a_second_download(server, tmp_path, small_chunks):
    url, original = publish(server)
    cache = tmp_path / "cache"
    first = remote.local_store(url, cache, progress=False)
    server.requests[:] = []
    assert remote.local_store(url, cache, progress=False) == first
    assert gets(server) == [] and [r[0] for r in server.requests] == ["HEAD"]
    server.down = True  # the server is unreachable: the cached copy is used, and said so once
    notes = []
    assert remote.local_store(url, cache, progress=False, log=notes.append) == first
    assert len(notes) == 1 and "HTTP 503" in notes[0] and "cached" in notes[0]
    server.down = False
    (server.root / "labels.h5").unlink()  # the publisher replaced the store: a new size is fetched again
    url2, newer = publish(server, num_samples=300)
    assert url2 == url and remote.local_store(url, cache, progress=False).read_bytes() == newer != original


@pytest.mark.parametrize("etags", [True, False], ids=["etag", "no version tag"])
def test_a_store_replaced_by_one_of_the_same_size_is_fetched_again_where_the_server_tags_versions(
        server, tmp_path, small_chunks, etags):
    server.etags = etags
    layout = make_layout(num_samples=400, num_classes=40)
    served = server.root / "labels.h5"
    build(served, layout, make_data(layout, seed=1), compression="none")  # uncompressed: size set by the layout
    url, cache = f"{server.url}/labels.h5", tmp_path / "cache"
    first = remote.local_store(url, cache, progress=False).read_bytes()
    build(served, layout, make_data(layout, seed=2), compression="none", overwrite=True)
    newer = served.read_bytes()
    assert len(newer) == len(first) and newer != first
    again = remote.local_store(url, cache, progress=False).read_bytes()
    # With a version tag the new store is fetched; without one, size is all there is to compare (documented).
    assert again == (newer if etags else first)


def test_ranks_asking_at_once_download_once(server, tmp_path, small_chunks):
    url, original = publish(server)
    cache, results = tmp_path / "cache", []
    threads = [threading.Thread(target=lambda: results.append(remote.local_store(url, cache, progress=False)))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 3 and len(set(results)) == 1 and results[0].read_bytes() == original
    assert sum(1 for r in gets(server) if r[2].startswith("bytes=0-")) == 1


def test_a_missing_file_is_one_line(server, tmp_path):
    line = one_line_error(run("labels", "inspect", f"{server.url}/nothing.h5", "--cache-dir", tmp_path / "c"))
    assert "not found (HTTP 404)" in line and "nothing.h5" in line


def test_a_scheme_whose_package_is_missing_names_it(tmp_path, monkeypatch):
    import fsspec.core

    def without_s3fs(url, **_):  # what fsspec raises where s3fs is not installed
        raise ImportError("Install s3fs to access S3")

    monkeypatch.setattr(fsspec.core, "url_to_fs", without_s3fs)
    line = one_line_error(run("labels", "inspect", "s3://bucket/x.h5", "--cache-dir", tmp_path / "c"))
    assert "pip install s3fs" in line


def test_an_unknown_scheme_is_one_line(tmp_path):
    line = one_line_error(run("labels", "inspect", "nosuch://bucket/x.h5", "--cache-dir", tmp_path / "c"))
    assert "unknown URL scheme nosuch://" in line


def test_the_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("LABELOPT_CACHE_DIR", str(tmp_path / "a"))
    assert remote.default_cache_dir() == tmp_path / "a"
    monkeypatch.delenv("LABELOPT_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert remote.default_cache_dir() == tmp_path / "x" / "labelopt" / "stores"
    assert remote.cached_name("https://a/labels.h5") != remote.cached_name("https://b/labels.h5")


def test_train_student_takes_labels_by_url(server, tmp_path, tiny_cifar_dir):
    data = open_dataset(tiny_cifar_dir)
    identity = data.identity("train")
    header = make_header(policy="identity")
    header["dataset"] = {**identity, "class_names": data.class_names}
    build(server.root / "tiny.h5", make_layout(num_samples=identity["num_samples"], num_views=1, num_classes=10),
          header=header)
    url, out = f"{server.url}/tiny.h5", tmp_path / "run"
    result = run("train-student", "--data", tiny_cifar_dir, "--labels", url, "--cache-dir", tmp_path / "cache",
                 "--student", "resnet20", "--epochs", 1, "--batch-size", 32, "--device", "cpu", "--out", out)
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["labels"] == url and config["teacher_source"]["path"] == url
