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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import fsspec

from oneformer.artifacts import atomic_path
from oneformer.data import cache
from oneformer.data.cache import OBJECTS, cache_root
from oneformer.errors import DataError, OneFormerError, StorageError

log = logging.getLogger(__name__)

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


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
    # a server that accepts the connection and then says nothing would otherwise hold a run for botocore's default
    # 60 s per attempt, times every retry; a stalled read now fails (and is retried) after this many seconds
    config = {"connect_timeout": _seconds("ONEFORMER_S3_CONNECT_TIMEOUT", 10.0),
              "read_timeout": _seconds("ONEFORMER_S3_READ_TIMEOUT", 30.0), **given.pop("config_kwargs", {})}
    return {"default_block_size": 32 * 2**20, **given, "client_kwargs": client, "config_kwargs": config}


def _seconds(name: str, default: float) -> float:
    """A positive number of seconds from the environment variable `name`; anything else is a clear error."""
    text = os.environ.get(name, "")
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise DataError(f"environment variable {name}={text!r} must be a positive number of seconds")
    return value


def _digest_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(2**22), b""):
            h.update(chunk)
    return h.hexdigest()[:20]


def _fingerprint_remote(fs: fsspec.AbstractFileSystem, uri: str, info: dict | None = None) -> str:
    info = info or fs.info(uri)
    if info.get("type") == "directory":  # a prefix (SegFormer's images/<split>): the listing of its objects
        listing = sorted(f"{k}|{_fingerprint_remote(fs, k, v)}" for k, v in fs.find(uri, detail=True).items())
        return hashlib.sha256("\n".join(listing).encode()).hexdigest()[:20]
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


REBUILD = "rebuild it from the folder that holds the images, e.g. `tar czf images.tar.gz -C <folder> .`"


def _refused(what: str, label: str, member: str, why: str) -> DataError:
    """The error for a member staging will not write, naming what a user needs to find and fix it."""
    return DataError(f"{what}: cannot extract {label}: its member {member!r} {why}; staging refuses such archives "
                     f"instead of guessing where the file belongs: {REBUILD}")


def _member_filter(what: str, label: str) -> Callable[[tarfile.TarInfo, str], tarfile.TarInfo | None]:
    """tarfile's `data` filter (no `..` escapes, no links out, no devices), except that an absolute member path is
    refused: the `data` filter would silently re-root `/etc/x.jpg` inside the target, where no reader expects it."""

    def check(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
        if member.name.startswith("/"):
            raise _refused(what, label, member.name, "has an absolute path")
        try:
            return tarfile.data_filter(member, dest)
        except (tarfile.AbsoluteLinkError, tarfile.LinkOutsideDestinationError):
            raise _refused(what, label, member.name, f"is a link to {member.linkname!r}, outside the archive") from None
        except tarfile.OutsideDestinationError:
            raise _refused(what, label, member.name, "points outside the extraction folder ('..')") from None
        except tarfile.FilterError as exc:  # a device, a FIFO, ...
            raise _refused(what, label, member.name, f"is not a plain file, folder or link ({exc})") from None

    return check


def _empty(what: str, label: str) -> DataError:
    """The error for an archive with nothing to stage (it would otherwise become an empty 'complete' entry)."""
    return DataError(f"{what}: {label} is an empty archive (no files in it, at most folders); check that it was "
                     f"uploaded whole and built from the right folder: {REBUILD}")


def _whole(dest: Path) -> bool:
    """A reusable extraction: marked complete and holding files (an entry an older version marked complete while
    empty is not reused, so its archive is looked at again)."""
    return cache.complete(dest) and cache.has_files(dest / "data")


def _clear_leftovers(key: str) -> None:
    """Remove what killed runs left for `key` (extraction folders, an entry without its marker); the caller holds the
    build lock, so none of it is being written."""
    root = cache_root()
    for old in root.glob(f".{key}.*"):
        log.info("staging: removing %s, an extraction that never finished", old.name)
        shutil.rmtree(old, ignore_errors=True)
    dest = root / key
    if dest.exists() and not _whole(dest):
        log.warning("staging: %s is incomplete or empty; extracting again", dest)
        (dest / cache.MARKER).unlink(missing_ok=True)
        shutil.rmtree(dest, ignore_errors=True)


def _extract_once(key: str, what: str, label: str, open_tar: Callable[[], tarfile.TarFile]) -> Path:
    """Extract into the cache under `key` once; the entry counts only when whole (see cache's layout)."""
    dest = cache_root() / key
    cache.use(key)  # from here until this process exits, no prune or eviction removes it
    if _whole(dest):
        log.info("staging: reusing %s extracted at %s", label, dest)
        cache.touch(dest)
        return unwrap(dest / "data")
    with cache.building(key):  # another process extracting the same archive finishes first; we then reuse it
        if _whole(dest):
            log.info("staging: reusing %s, extracted meanwhile at %s", label, dest)
            cache.touch(dest)
            return unwrap(dest / "data")
        _clear_leftovers(key)
        # A fresh hidden folder, renamed into place only after the marker is in it: a process killed at any point
        # leaves `.<key>.<random>` without a marker, which the next run removes (SIGKILL keeps the page cache, so
        # no fsync is needed for that; a power cut is not covered).
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=cache_root()))
        try:
            log.info("staging: extracting %s", label)
            with open_tar() as tar:
                tar.extractall(tmp / "data", filter=_member_filter(what, label))
            if not cache.has_files(tmp / "data"):
                raise _empty(what, label)
            cache.write_marker(tmp, label)
            tmp.rename(dest)
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise DataError(f"{what}: cannot extract {label}: {exc}") from exc
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    cache.evict(keep=dest)
    return unwrap(dest / "data")


def extract(archive: Path, key: str, what: str = "data path") -> Path:
    """A local tarball extracted once into the cache."""
    if archive.stat().st_size == 0:
        raise _empty(what, str(archive))
    return _extract_once(key, what, str(archive), lambda: tarfile.open(archive))


def _remote(uri: str, what: str, options: dict | None) -> tuple[fsspec.AbstractFileSystem, str, dict]:
    """The filesystem, path and metadata (one HEAD) of a remote object; missing is a clear error."""
    fs, path = fsspec.core.url_to_fs(uri, **storage_options(uri, options))
    try:
        return fs, path, fs.info(path)
    except FileNotFoundError:
        raise DataError(f"{what}: {uri} does not exist (check the URI, or the bucket and prefix it names)") from None
    except PermissionError as exc:
        raise DataError(f"{what}: access to {uri} denied ({exc}); check the S3 credentials (AWS_* environment or "
                        f"the s3_secret_block) and the bucket's policy") from None
    except Exception as exc:  # botocore, aiohttp and OS errors of an unreachable endpoint alike
        raise unreachable(what, uri, exc) from exc


CREDENTIAL_ERRORS = ("NoCredentialsError", "PartialCredentialsError", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                     "ExpiredToken", "InvalidToken")


def unreachable(what: str, uri: str, exc: BaseException) -> OneFormerError:
    """A storage failure as a clear error naming the key and the URI (not the client's traceback): retryable
    (StorageError) when the endpoint failed, final (DataError) when the credentials are missing or refused."""
    text = " ".join(str(exc).split())[:300] or type(exc).__name__
    if any(name in f"{type(exc).__name__} {text}" for name in CREDENTIAL_ERRORS):
        return DataError(f"{what}: reading {uri} failed: no valid S3 credentials ({type(exc).__name__}: {text}). "
                         "Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) in the environment, or "
                         "name a Prefect AwsCredentials block as s3_secret_block")
    return StorageError(f"{what}: reading {uri} failed ({type(exc).__name__}: {text}). The storage endpoint did "
                        f"not answer or broke off after the client's retries; nothing partial was kept. Check the "
                        f"endpoint (AWS_ENDPOINT_URL) and the network, and run again")


@contextmanager
def transfer(what: str, uri: str) -> Iterator[None]:
    """Storage errors inside the block as `unreachable` errors; our own errors pass as they are."""
    try:
        yield
    except OneFormerError:
        raise
    except Exception as exc:  # whatever the storage stack raises mid-transfer
        raise unreachable(what, uri, exc) from exc


def stream_extract(uri: str, what: str = "data path", options: dict | None = None) -> Path:
    """A remote tarball extracted while it downloads (no archive copy on disk), keyed by its ETag."""
    fs, path, info = _remote(uri, what, options)
    key = "x" + _fingerprint_remote(fs, path, info)
    if not info.get("size"):
        raise _empty(what, uri)

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

    with transfer(what, uri):
        return _extract_once(key, what, uri, open_tar)


def download(uri: str, what: str = "data path", options: dict | None = None) -> Path:
    """Copy a remote object (or every object under a prefix: a folder) into the cache, keyed by its ETag/size, and
    reuse it while unchanged."""
    fs, path, info = _remote(uri, what, options)
    key = _fingerprint_remote(fs, path, info)
    if info.get("type") == "directory":
        return _download_folder(fs, uri, path, key, what)
    name, entry = f"{OBJECTS}/{key}", cache_root() / OBJECTS / key
    target = entry / Path(path).name
    cache.use(name)
    if cache.complete(entry) and target.exists():
        log.info("staging: reusing %s (unchanged)", uri)
        cache.touch(entry)
        return target
    with cache.building(name):
        if target.exists():  # finished meanwhile, or left by a version without markers (atomic_path wrote it whole)
            if not cache.complete(entry):
                cache.write_marker(entry, uri)
            log.info("staging: reusing %s (unchanged)", uri)
            cache.touch(entry)
            return target
        for partial in entry.glob(".*.partial"):  # a download a killed run left half-written
            partial.unlink()
        entry.mkdir(parents=True, exist_ok=True)
        log.info("staging: downloading %s", uri)
        with transfer(what, uri), atomic_path(target) as part:
            if info.get("size", 0) <= 32 * 2**20:
                part.write_bytes(fs.cat_file(path))  # one GET; get_file asks for the object's details again first
            else:
                fs.get_file(path, str(part))
        cache.write_marker(entry, uri)
    cache.evict(keep=entry)
    return target


def _download_folder(fs: fsspec.AbstractFileSystem, uri: str, path: str, key: str, what: str) -> Path:
    """A remote prefix copied object by object into its cache entry, under the entry's lock (so eviction leaves it
    alone); the marker is written after the last object, so an entry a killed run left is never reused."""
    name, entry = f"{OBJECTS}/{key}", cache_root() / OBJECTS / key
    target = entry / Path(path).name
    cache.use(name)
    with cache.building(name):
        if cache.complete(entry) and target.is_dir():
            log.info("staging: reusing %s (unchanged)", uri)
            cache.touch(entry)
            return target
        shutil.rmtree(entry, ignore_errors=True)  # what a stopped run left half-copied
        objects = sorted(fs.find(path))
        if not objects:
            raise _empty(what, uri)
        log.info("staging: downloading %d objects under %s", len(objects), uri)
        with transfer(what, uri):
            for n, obj in enumerate(objects, start=1):
                local = target / Path(obj).relative_to(path.rstrip("/"))
                local.parent.mkdir(parents=True, exist_ok=True)
                with atomic_path(local) as part:
                    part.write_bytes(fs.cat_file(obj))
                if n % 500 == 0:
                    log.info("staging: %d/%d objects of %s", n, len(objects), uri)
        if sum(1 for p in target.rglob("*") if p.is_file()) != len(objects):
            raise DataError(f"{what}: {uri}: {len(objects)} objects listed but not all were copied; run again")
        cache.write_marker(entry, uri)
    cache.evict(keep=entry)
    return target


def stage(uri: str | os.PathLike | None, what: str = "data path", options: dict | None = None) -> Path:
    """Local path for a folder, file, archive or URL; archives become their (unwrapped) folder. `options` are
    storage settings for remote URLs (see storage_options)."""
    if uri is None or str(uri).strip() == "":
        raise DataError(f"{what} is not set")
    text = str(uri)
    cache.max_bytes()  # a bad ONEFORMER_CACHE_MAX_GB fails before any work, not after the download
    cache_root().mkdir(parents=True, exist_ok=True)
    if is_remote(text):
        return stream_extract(text, what, options) if is_archive(text) else download(text, what, options)
    local = Path(text.removeprefix("file://")).expanduser()
    if not local.exists():
        raise DataError(f"{what}: {local} does not exist")
    if local.is_file() and is_archive(local.name):
        return extract(local, _digest_file(local), what)
    return local


def stage_all(uris: dict[str, str], workers: int = 4, options: dict | None = None) -> dict[str, Path]:
    """Stage several data paths at once (spec key -> URI): objects download and extract side by side, and a URI
    named by two keys is staged once. The first error is raised after the others finish."""
    from concurrent.futures import ThreadPoolExecutor

    first_key = {uri: key for key, uri in reversed(list(uris.items()))}
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(first_key))), thread_name_prefix="stage") as pool:
        staged = {uri: pool.submit(stage, uri, key, options) for uri, key in first_key.items()}
        return {key: staged[uri].result() for key, uri in uris.items()}
