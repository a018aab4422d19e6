"""A store argument made into a local, checked file: a plain path comes back untouched; a URL (https://, s3://,
gs://, hf://: any scheme fsspec knows) is fetched once into a cache folder.

The transfer goes into `<name>.part` beside the final name and resumes from the part's length when it was cut
(ranged reads through fsspec). The whole file is checked with the store's own checks (verification.verify:
structure, root digest, every dataset's sha256) before it takes its final name, so a copy that is not the store it
claims to be is deleted and refused. A lock beside the cached name (files.exclusive_lock) lets one process (one
torchrun rank) download while the others wait and reuse its copy. fsspec, and tqdm for the progress bar, are
imported only for URLs.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from pathlib import Path
from urllib.parse import urlsplit

from .files import exclusive_lock, lock_path, write_bytes_atomic
from .schema import StoreError

CHUNK_BYTES = 4 << 20  # one ranged read per chunk: a cut transfer loses at most this much
MIB = float(1 << 20)
URL_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
# The package each scheme's fsspec filesystem needs beyond fsspec itself.
EXTRA_PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "hf": "huggingface_hub",
                  "http": "aiohttp", "https": "aiohttp"}


def is_url(spec) -> bool:
    return isinstance(spec, str) and bool(URL_PATTERN.match(spec))


def default_cache_dir() -> Path:
    """$LABELOPT_CACHE_DIR, else $XDG_CACHE_HOME/labelopt/stores, else ~/.cache/labelopt/stores."""
    if os.environ.get("LABELOPT_CACHE_DIR"):
        return Path(os.environ["LABELOPT_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "labelopt" / "stores"


def cached_name(url: str) -> str:
    """Unique per URL (two stores called labels.h5 on two servers never share a file) and still readable."""
    base = Path(urlsplit(url).path).name or "store.h5"
    base = re.sub(r"[^A-Za-z0-9._-]", "_", base)[-80:]
    return f"{hashlib.sha256(url.encode()).hexdigest()[:16]}-{base}"


def stderr_line(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def local_store(spec, cache_dir=None, progress: bool | None = None, log=stderr_line) -> Path:
    """The local file of a store argument; a URL is fetched (or resumed) and checked first, or reused from the
    cache when it is the remote's current version: the same size and the same ETag or Last-Modified (size alone
    where the server gives neither). progress: a bar on stderr (None: only when stderr is a terminal)."""
    if not is_url(spec):
        return Path(spec)
    url = spec
    folder = cache_folder(cache_dir)
    final = folder / cached_name(url)
    with exclusive_lock(lock_path(final)):  # one process fetches; the others wait, then reuse its copy
        fs, path = remote_filesystem(url)
        try:
            size, tag = remote_info(fs, path, url)
        except Unreachable as exc:
            if not final.is_file():
                raise
            log(f"note: {url} cannot be reached ({exc.reason}); using the copy cached at {final}")
            return final
        record = {"url": url, "size": size, "tag": tag}
        if final.is_file() and final.stat().st_size == size and cached_record(final) == record:
            return final
        part = download(fs, path, url, final, size, tag, progress)
        check_download(part, url)
        os.replace(part, final)
        write_record(final, record)
        Path(f"{part}.json").unlink(missing_ok=True)
    return final


def write_record(final: Path, record: dict) -> None:
    """Beside the copy, the version of the remote file it is (a crash before this only costs a new fetch)."""
    write_bytes_atomic(Path(f"{final}.json"), json.dumps(record).encode(), error=StoreError,
                       then="fetch the store again")


def cached_record(final: Path) -> dict | None:
    """What a cached copy was fetched from ({url, size, tag}); None for a copy without one (made by an older
    labelopt, or its record lost): it is fetched again rather than trusted to be the current version."""
    try:
        record = json.loads(Path(f"{final}.json").read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def cache_folder(cache_dir) -> Path:
    folder = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create the store cache {folder} ({exc.strerror or exc}); pass a --cache-dir "
                         f"you can write or set LABELOPT_CACHE_DIR") from None
    if not os.access(folder, os.W_OK):
        raise StoreError(f"cannot write to the store cache {folder}; pass a --cache-dir you can write or set "
                         f"LABELOPT_CACHE_DIR")
    return folder


def remote_filesystem(url: str):
    """(fsspec filesystem, path in it); a scheme whose filesystem needs a missing package names that package."""
    scheme = url.split("://", 1)[0].lower()
    try:
        import fsspec
    except ImportError:
        raise StoreError(f"{url}: fetching stores by URL needs fsspec: pip install fsspec") from None
    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as exc:
        package = EXTRA_PACKAGES.get(scheme)
        need = f"the package {package}: pip install {package}" if package else f"another package ({exc})"
        raise StoreError(f"{url}: {scheme}:// URLs need {need} (or pip install 'labelopt[remote]')") from None
    except ValueError as exc:
        raise StoreError(f"{url}: unknown URL scheme {scheme}:// ({exc}); pass a local path or an https://, "
                         f"s3://, gs:// or hf:// URL") from None


class Unreachable(StoreError):
    """The remote file cannot be read now; `reason` says why (a cached copy may stand in)."""

    def __init__(self, url: str, reason: str):
        super().__init__(f"cannot fetch {url}: {reason}; check the URL and the network")
        self.reason = reason


def failure_reason(exc: BaseException) -> str:
    """The most telling words of a failure: an HTTP status where the chain has one, else its innermost message."""
    seen, inner = exc, exc
    while seen is not None:
        status = getattr(seen, "status", None)
        if isinstance(status, int) and not isinstance(status, bool):
            return "not found (HTTP 404)" if status == 404 else f"HTTP {status} {getattr(seen, 'message', '')}".strip()
        inner, seen = seen, seen.__cause__ or seen.__context__
    if isinstance(inner, FileNotFoundError) and inner is exc:
        return "not found"
    text = getattr(inner, "message", None)  # aiohttp's errors: the words without their code prefix
    text = text if isinstance(text, str) and text else str(inner)
    return " ".join(text.split())[:200] or type(inner).__name__


def remote_info(fs, path: str, url: str) -> tuple[int, str | None]:
    """(size in bytes, a version tag: ETag or Last-Modified where the server gives one)."""
    try:
        info = fs.info(path)
    except Exception as exc:  # any backend's failure (HTTP status, DNS, refused connection, credentials)
        raise Unreachable(url, failure_reason(exc)) from None
    size = info.get("size")
    if not isinstance(size, int) or size <= 0:
        raise StoreError(f"{url}: the server does not give the file's size, which resuming and the checks need; "
                         f"download it yourself and pass the local path")
    lowered = {str(k).lower(): v for k, v in info.items()}
    tag = lowered.get("etag") or lowered.get("last-modified") or lowered.get("mtime")
    return size, None if tag is None else str(tag)


def resume_offset(part: Path, record: dict) -> int:
    """Bytes already fetched of this very file; a part of another size or version starts again."""
    meta = Path(f"{part}.json")
    try:
        same = json.loads(meta.read_text()) == record
    except (OSError, ValueError):
        same = False
    offset = part.stat().st_size if same and part.is_file() else 0
    if offset > record["size"] or not same:
        part.unlink(missing_ok=True)
        meta.write_text(json.dumps(record))
        return 0
    return offset


def stopped(url: str, done: int, size: int, why: str) -> StoreError:
    return StoreError(f"download of {url} stopped at {done / MIB:.2f} of {size / MIB:.2f} MiB ({why}); run the "
                      f"same command again to resume it")


def download(fs, path: str, url: str, final: Path, size: int, tag, progress) -> Path:
    """`final`.part holding all `size` bytes, appended from where an earlier transfer stopped."""
    from tqdm import tqdm

    part = final.with_name(final.name + ".part")
    done = resume_offset(part, {"url": url, "size": size, "tag": tag})
    show = sys.stderr.isatty() if progress is None else progress
    with open(part, "ab") as out, tqdm(total=size, initial=done, unit="B", unit_scale=True, unit_divisor=1024,
                                       desc=final.name, disable=not show, leave=False) as bar:
        try:
            source = fs.open(path, "rb", block_size=CHUNK_BYTES, cache_type="none")
        except Exception as exc:
            raise stopped(url, done, size, failure_reason(exc)) from None
        with source:
            source.seek(done)
            while done < size:
                try:
                    chunk = source.read(min(CHUNK_BYTES, size - done))
                except Exception as exc:  # the transport's own errors differ per backend; the file so far is kept
                    raise stopped(url, done, size, failure_reason(exc)) from None
                if not chunk:
                    raise stopped(url, done, size, "the server sent less than the size it gave")
                out.write(chunk)
                done += len(chunk)
                bar.update(len(chunk))
    return part


def check_download(part: Path, url: str) -> None:
    """Every check `labels verify` makes, on the whole download; a failure deletes it and refuses the URL."""
    from .verification import verify

    result = verify(part)
    if result["ok"]:
        return
    bad = next(c for c in result["checks"] if not c["ok"])
    part.unlink(missing_ok=True)
    Path(f"{part}.json").unlink(missing_ok=True)
    detail = " ".join(str(bad["detail"]).replace(str(part), "the download").split())[:240]
    raise StoreError(f"{url} fails the store's own checks ({bad['name']}: {detail}): the remote file is not the "
                     f"label store it claims to be; the download was deleted: ask its publisher for an intact copy "
                     f"(labelopt labels verify on theirs) and fetch it again")
