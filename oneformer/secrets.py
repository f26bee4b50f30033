"""Secrets stay in memory: copies of a spec (or any dumped data, or a log line) with TAO's `encryption_key` and every
password inside a URL masked, for each file, param, tag, status line and message the project writes."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "***"  # what SQLAlchemy's hide_password writes too
SECRET_KEYS = frozenset({"encryption_key"})  # spec keys whose value is a secret as a whole
PASSWORD_QUERY = frozenset({"password", "sslpassword"})  # libpq connection URIs also take the password this way
# Schemes parsed with urllib (netloc + path); any other (postgresql+psycopg, mysql, ...) is a SQLAlchemy URL.
WEB_SCHEMES = frozenset({"http", "https", "s3", "s3a", "gs", "gcs", "az", "abfs", "ftp", "sftp", "ssh", "file"})
KEY_SCHEMES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs"})  # fsspec reads key:secret@bucket: both are masked
URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"`<>]+")


def _web(url: str) -> str:
    """urllib for URLs with a path (user:password@host, s3://key:secret@bucket), everything else kept verbatim."""
    parts = urlsplit(url)
    netloc, query = parts.netloc, parts.query
    userinfo, at, host = netloc.rpartition("@")
    if at and parts.scheme.lower() in KEY_SCHEMES:
        netloc = f"{MASK}@{host}"
    elif parts.password:
        netloc = f"{userinfo.partition(':')[0]}:{MASK}@{host}"
    pairs = parse_qsl(query, keep_blank_values=True)
    if any(k.lower() in PASSWORD_QUERY for k, _ in pairs):
        query = urlencode([(k, MASK if k.lower() in PASSWORD_QUERY else v) for k, v in pairs], safe="*")
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def _database(url: str) -> str:
    """SQLAlchemy's own parser and hide_password: it reads passwords a generic URL parser splits wrongly (a '/')."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:  # not a URL SQLAlchemy knows: the generic parser decides
        return _web(url)
    hidden = [k for k in parsed.query if k.lower() in PASSWORD_QUERY]
    if not parsed.password and not hidden:
        return url
    if hidden:
        parsed = parsed.update_query_dict({k: MASK for k in hidden})
    return parsed.render_as_string(hide_password=True)


def redact_url(url: str) -> str:
    """`url` with its password (user:password@, ?password=) masked; a URL without one comes back unchanged."""
    scheme, sep, _ = url.partition("://")
    if not sep or "@" not in url and "password" not in url.lower():
        return url
    try:
        return _web(url) if scheme.lower() in WEB_SCHEMES else _database(url)
    except ValueError:  # unparseable (a bad port, a broken IPv6 host): nothing of it is shown
        return f"{scheme}://{MASK}"


def redact_text(text: str) -> str:
    """Free text (a log line, an error message) with the password of every URL in it masked."""
    return URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text) if "://" in text else text


def _secret_key(key: Any) -> bool:
    """`encryption_key`, also as the last part of a dotted override key."""
    return str(key).rpartition(".")[2] in SECRET_KEYS


def redact(data: Any) -> Any:
    """A copy of dumped data (dicts, lists, strings) with secret keys and URL passwords masked, at any depth."""
    if isinstance(data, dict):
        return {k: MASK if _secret_key(k) and v not in (None, "") else redact(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [redact(v) for v in data]
    return redact_text(data) if isinstance(data, str) else data


def secrets_in(data: Any, prefix: str = "") -> list[str]:
    """Dotted keys of `data` whose values hold a secret (a set `encryption_key`, a URL with a password)."""
    if isinstance(data, dict):
        out = []
        for k, v in data.items():
            key = f"{prefix}{k}"
            out += [key] if _secret_key(k) and v not in (None, "") else secrets_in(v, key + ".")
        return out
    if isinstance(data, list | tuple):
        return [k for i, v in enumerate(data) for k in secrets_in(v, f"{prefix}{i}.")]
    return [prefix.rstrip(".")] if isinstance(data, str) and redact_text(data) != data else []
