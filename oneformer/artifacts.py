"""Files an action leaves behind: written whole or not at all, hashed, never silently replaced; and status.json."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from oneformer.errors import ConversionError
from oneformer.secrets import redact


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A hidden temporary sibling of `path` to write; it replaces `path` only if the block finishes.

    Readers (a UI tailing a folder, a later run) never see a half-written file, and a failure leaves the previous
    file, or nothing, in place.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.partial")  # two writers never share one
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> Path:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_bytes(path: Path, data: bytes) -> Path:
    """Write a binary file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_json(path: Path, data: Any, indent: int | None = 1) -> Path:
    """Write a JSON file atomically."""
    return write_text(path, json.dumps(data, indent=indent))


def link(path: Path, target: str) -> Path:
    """Point the symlink `path` at `target` (relative to its folder), replacing any old link in one step."""
    with atomic_path(path) as tmp:
        tmp.symlink_to(target)
    return Path(path)


def sha256(path: Path) -> str:
    """Content digest, so an artifact names exactly what it came from."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def unwritable(path: Path, key: str) -> str | None:
    """Why the folder `path` cannot be created or written (None when it can), without creating anything."""
    probe = Path(path).expanduser().absolute()
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        return f"{key}: {path} cannot be created: {probe} is a file, not a folder; choose another {key}"
    if not os.access(probe, os.W_OK | os.X_OK):
        return (f"{key}: {path} cannot be created or written: {probe} is not writable by this user; choose another "
                f"{key} or fix the folder's permissions")
    return None


def output_path(value: str | None, default: Path, overwrite: bool, key: str, flag: str) -> Path:
    """The file an action will write, checked before any work: not a folder, its folder writable, and an existing
    file an error unless the overwrite flag is set."""
    path = Path(value) if value else Path(default)
    if path.is_dir():
        raise ConversionError(f"{key}: {path} is a folder; name the file to write (e.g. {path / default.name}) or "
                              f"leave {key} unset for {default}")
    if path.exists() and not overwrite:
        raise ConversionError(f"{key}: {path} already exists; set {flag}=true to replace it, or choose another path")
    problem = unwritable(path.parent, key)
    try:
        if problem is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            probe = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.probe")
            probe.touch()  # os.access says yes on some file systems that refuse writes (/proc, read-only mounts)
            probe.unlink()
    except OSError as exc:
        problem = f"{key}: {path} cannot be written ({exc.strerror or exc}); choose another path"
    if problem:
        raise ConversionError(problem)
    return path


class StatusWriter:
    """Appends TAO's status.json lines ({date, time, status, verbosity, message, ...}) to <action dir>/status.json."""

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / "status.json"

    def write(self, status: str, message: str, **fields: Any) -> None:
        """One line; `kpi` and other fields pass through as given (None values are left out), URL passwords in a
        message (an error's text) masked."""
        now = datetime.now()
        line = redact({"date": now.strftime("%-m/%-d/%Y"), "time": now.strftime("%H:%M:%S"), "status": status,
                       "verbosity": "ERROR" if status == "FAILURE" else "INFO", "message": message,
                       **{k: v for k, v in fields.items() if v is not None}})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:  # appended, not replaced: tools tail this file while the action runs
            f.write(json.dumps(line) + "\n")


def read_status(folder: Path) -> list[dict]:
    """All lines of a status.json."""
    p = Path(folder) / "status.json"
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()] if p.is_file() else []
