"""Turn a data path (folder, file, .tar.gz, or fsspec URL) into a local path, extracting archives once."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import queue
import shutil
import tarfile
import tempfile
import threading
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import fsspec

from oneformer.artifacts import atomic_path
from oneformer.errors import DataError

log = logging.getLogger(__name__)

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def cache_root() -> Path:
    """Where staged downloads and extracted archives live; ONEFORMER_CACHE overrides it."""
    return Path(os.environ.get("ONEFORMER_CACHE", Path.home() / ".cache" / "oneformer")) / "staging"


def is_archive(name: str) -> bool:
    """True for the tarball kinds TAO buckets hold."""
    return name.lower().endswith(ARCHIVE_SUFFIXES)


def is_remote(uri: str) -> bool:
    """True for URLs that need fsspec (s3://, gs://, http://...), False for local and file://."""
    return "://" in uri and not uri.startswith("file://")


def storage_options(uri: str, given: dict | None = None) -> dict:
    """fsspec options for a URL, never from the spec: the S3 endpoint and region in the environment, overridden by
    `given` (s3fs keys such as key, secret, token and client_kwargs, e.g. from a secret store)."""
    if not uri.startswith("s3://"):
        return {}
    client: dict = {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        client["endpoint_url"] = endpoint
    if os.environ.get("AWS_DEFAULT_REGION"):
        client["region_name"] = os.environ["AWS_DEFAULT_REGION"]
    given = dict(given or {})
    client.update(given.pop("client_kwargs", {}))
    return {"default_block_size": 32 * 2**20, **given, "client_kwargs": client}


def _digest_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(2**22), b""):
            h.update(chunk)
    return h.hexdigest()[:20]


def _fingerprint_remote(fs: fsspec.AbstractFileSystem, uri: str, info: dict | None = None) -> str:
    info = info or fs.info(uri)
    tag = info.get("ETag") or info.get("etag") or info.get("md5") or ""
    raw = f"{uri}|{tag}|{info.get('size')}|{info.get('LastModified', info.get('mtime', ''))}"
    return hashlib.sha256(raw.encode()).hexdigest()[:20]


def fingerprint(uri: str | os.PathLike, options: dict | None = None) -> str:
    """A short digest that changes when the data changes: ETag for objects, content for files, listing for folders."""
    text = str(uri)
    if is_remote(text):
        fs, path = fsspec.core.url_to_fs(text, **storage_options(text, options))
        return _fingerprint_remote(fs, path)
    local = Path(text.removeprefix("file://")).expanduser()
    if local.is_file():
        return _digest_file(local)
    listing = sorted(f"{p.relative_to(local)}|{p.stat().st_size}" for p in local.rglob("*") if p.is_file())
    return hashlib.sha256("\n".join(listing).encode()).hexdigest()[:20]


def unwrap(folder: Path) -> Path:
    """Descend through wrapper folders (a folder holding exactly one folder and no files)."""
    while True:
        entries = [e for e in folder.iterdir() if not e.name.startswith((".", "__MACOSX"))]
        if len(entries) == 1 and entries[0].is_dir():
            log.info("staging: %s only wraps %s; using the inner folder", folder, entries[0].name)
            folder = entries[0]
        else:
            return folder


class Prefetch(io.RawIOBase):
    """A read-only stream that fetches (and gunzips) the next chunks in a thread, so download, decompression
    and extraction overlap on separate cores, as `tar xzf` does with its gzip process."""

    def __init__(self, source: BinaryIO, gunzip: bool = False, chunk: int = 8 * 2**20, depth: int = 8) -> None:
        self.source, self.chunk = source, chunk
        self.gunzip = zlib.decompressobj(wbits=31) if gunzip else None  # zlib releases the GIL while inflating
        self.queue: queue.Queue[bytes | BaseException | None] = queue.Queue(depth)
        self.buffer, self.done = memoryview(b""), False
        threading.Thread(target=self._fill, daemon=True).start()

    def _fill(self) -> None:
        try:
            while data := self.source.read(self.chunk):
                if self.gunzip is not None:
                    data = self.gunzip.decompress(data)
                    while self.gunzip.unused_data:  # a multi-member gzip file
                        rest, self.gunzip = self.gunzip.unused_data, zlib.decompressobj(wbits=31)
                        data += self.gunzip.decompress(rest)
                if data:
                    self.queue.put(data)
            if self.gunzip is not None:
                if not self.gunzip.eof:
                    raise EOFError("the gzip stream ended early (truncated archive)")
                if tail := self.gunzip.flush():
                    self.queue.put(tail)
            self.queue.put(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the reader, raised there
            self.queue.put(exc)

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        if not self.buffer:
            if self.done:
                return 0
            item = self.queue.get()
            if isinstance(item, BaseException):
                raise item
            if item is None:
                self.done = True
                return 0
            self.buffer = memoryview(item)
        n = min(len(b), len(self.buffer))
        b[:n] = self.buffer[:n]
        self.buffer = self.buffer[n:]
        return n


def _extract_once(key: str, label: str, open_tar: Callable[[], tarfile.TarFile]) -> Path:
    """Extract into the cache under `key` once (member paths and links may not escape the target)."""
    dest = cache_root() / key
    if (dest / ".complete").exists():
        log.info("staging: reusing %s extracted at %s", label, dest)
        return unwrap(dest / "data")
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=cache_root()))
    try:
        log.info("staging: extracting %s", label)
        with open_tar() as tar:
            tar.extractall(tmp / "data", filter="data")
        (tmp / ".complete").write_text(label)
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"cannot extract {label}: {exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return unwrap(dest / "data")


def extract(archive: Path, key: str) -> Path:
    """A local tarball extracted once into the cache."""
    return _extract_once(key, str(archive), lambda: tarfile.open(archive))


def _remote(uri: str, what: str, options: dict | None) -> tuple[fsspec.AbstractFileSystem, str, dict]:
    """The filesystem, path and metadata (one HEAD) of a remote object; missing is a clear error."""
    fs, path = fsspec.core.url_to_fs(uri, **storage_options(uri, options))
    try:
        return fs, path, fs.info(path)
    except FileNotFoundError:
        raise DataError(f"{what}: {uri} does not exist (check the URI, or the bucket and prefix it names)") from None


def stream_extract(uri: str, what: str = "data path", options: dict | None = None) -> Path:
    """A remote tarball extracted while it downloads (no archive copy on disk), keyed by its ETag."""
    fs, path, info = _remote(uri, what, options)
    key = "x" + _fingerprint_remote(fs, path, info)

    def open_tar() -> tarfile.TarFile:
        if not (cache_root() / key / ".complete").exists():
            log.info("staging: downloading %s", uri)
        raw = fs.open(path, "rb", block_size=32 * 2**20, cache_type="none", size=info["size"])  # no second HEAD
        gz = path.lower().endswith((".gz", ".tgz"))
        stream = io.BufferedReader(Prefetch(raw, gunzip=gz), buffer_size=2**20)
        tar = tarfile.open(fileobj=stream, mode="r|" if gz else "r|*")
        closing = tar.close

        def close() -> None:
            closing()
            raw.close()

        tar.close = close  # type: ignore[method-assign]
        return tar

    return _extract_once(key, uri, open_tar)


def download(uri: str, what: str = "data path", options: dict | None = None) -> Path:
    """Copy a remote object into the cache, keyed by its ETag/size, and reuse it while unchanged."""
    fs, path, info = _remote(uri, what, options)
    key = _fingerprint_remote(fs, path, info)
    target = cache_root() / "objects" / key / Path(path).name
    if target.exists():
        log.info("staging: reusing %s (unchanged)", uri)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("staging: downloading %s", uri)
    with atomic_path(target) as part:
        if info.get("size", 0) <= 32 * 2**20:
            part.write_bytes(fs.cat_file(path))  # one GET; get_file asks for the object's details again first
        else:
            fs.get_file(path, str(part))
    return target


def stage(uri: str | os.PathLike | None, what: str = "data path", options: dict | None = None) -> Path:
    """Local path for a folder, file, archive or URL; archives become their (unwrapped) folder. `options` are
    storage settings for remote URLs (see storage_options)."""
    if uri is None or str(uri).strip() == "":
        raise DataError(f"{what} is not set")
    text = str(uri)
    cache_root().mkdir(parents=True, exist_ok=True)
    if is_remote(text):
        return stream_extract(text, what, options) if is_archive(text) else download(text, what, options)
    local = Path(text.removeprefix("file://")).expanduser()
    if not local.exists():
        raise DataError(f"{what}: {local} does not exist")
    if local.is_file() and is_archive(local.name):
        return extract(local, _digest_file(local))
    return local


def stage_all(uris: dict[str, str], workers: int = 4, options: dict | None = None) -> dict[str, Path]:
    """Stage several data paths at once (spec key -> URI): objects download and extract side by side, and a URI
    named by two keys is staged once. The first error is raised after the others finish."""
    from concurrent.futures import ThreadPoolExecutor

    first_key = {uri: key for key, uri in reversed(list(uris.items()))}
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(first_key))), thread_name_prefix="stage") as pool:
        staged = {uri: pool.submit(stage, uri, key, options) for uri, key in first_key.items()}
        return {key: staged[uri].result() for key, uri in uris.items()}
