"""Turn a data path (folder, file, .tar.gz, or fsspec URL) into a local path, extracting archives once."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

import fsspec

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


def storage_options(uri: str) -> dict:
    """fsspec options from the environment only (never from the spec): S3 endpoint URL and region."""
    if not uri.startswith("s3://"):
        return {}
    client: dict = {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        client["endpoint_url"] = endpoint
    if os.environ.get("AWS_DEFAULT_REGION"):
        client["region_name"] = os.environ["AWS_DEFAULT_REGION"]
    return {"client_kwargs": client, "default_block_size": 32 * 2**20}


def _digest_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(2**22), b""):
            h.update(chunk)
    return h.hexdigest()[:20]


def _fingerprint_remote(fs: fsspec.AbstractFileSystem, uri: str) -> str:
    info = fs.info(uri)
    tag = info.get("ETag") or info.get("etag") or info.get("md5") or ""
    raw = f"{uri}|{tag}|{info.get('size')}|{info.get('LastModified', info.get('mtime', ''))}"
    return hashlib.sha256(raw.encode()).hexdigest()[:20]


def fingerprint(uri: str | os.PathLike) -> str:
    """A short digest that changes when the data changes: ETag for objects, content for files, listing for folders."""
    text = str(uri)
    if is_remote(text):
        fs, path = fsspec.core.url_to_fs(text, **storage_options(text))
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


def extract(archive: Path, key: str) -> Path:
    """Extract a tarball once into the cache (member paths and links may not escape the target)."""
    dest = cache_root() / key
    done = dest / ".complete"
    if done.exists():
        log.info("staging: reusing %s extracted at %s", archive.name, dest)
        return unwrap(dest / "data")
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=cache_root()))
    try:
        log.info("staging: extracting %s", archive)
        with tarfile.open(archive) as tar:
            tar.extractall(tmp / "data", filter="data")
        (tmp / ".complete").write_text(archive.name)
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    except (tarfile.TarError, OSError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(f"cannot extract {archive}: {exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return unwrap(dest / "data")


def download(uri: str, what: str = "data path") -> Path:
    """Copy a remote object into the cache, keyed by its ETag/size, and reuse it while unchanged."""
    fs, path = fsspec.core.url_to_fs(uri, **storage_options(uri))
    try:
        key = _fingerprint_remote(fs, path)
    except FileNotFoundError:
        raise DataError(f"{what}: {uri} does not exist (check the URI, or the bucket and prefix it names)") from None
    target = cache_root() / "objects" / key / Path(path).name
    if target.exists():
        log.info("staging: reusing %s (unchanged)", uri)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    log.info("staging: downloading %s", uri)
    fs.get_file(path, str(part))
    part.rename(target)
    return target


def stage(uri: str | os.PathLike | None, what: str = "data path") -> Path:
    """Local path for a folder, file, archive or URL; archives become their (unwrapped) folder."""
    if uri is None or str(uri).strip() == "":
        raise DataError(f"{what} is not set")
    text = str(uri)
    cache_root().mkdir(parents=True, exist_ok=True)
    if is_remote(text):
        local = download(text, what)
        return extract(local, "x" + local.parent.name) if is_archive(local.name) else local
    local = Path(text.removeprefix("file://")).expanduser()
    if not local.exists():
        raise DataError(f"{what}: {local} does not exist")
    if local.is_file() and is_archive(local.name):
        return extract(local, _digest_file(local))
    return local
