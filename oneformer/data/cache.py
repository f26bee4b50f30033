"""The staging cache as entries: completion markers, cross-process locks, last-use times, a size cap with
least-recently-used eviction, and the listing and pruning behind `oneformer cache`.

Layout under `cache_root()`:
    <key>/.complete, <key>/data/...          an extracted archive (the marker is written last, then the folder is
                                             renamed into place, so an entry with a marker is whole)
    objects/<key>/.complete, objects/<key>/<name>   a downloaded object
    .<key>.<random>/                         an extraction under way, or left by a process that was killed
    .locks/<entry>.use, .locks/<entry>.build  flock files (see `use` and `building`)
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from oneformer.errors import DataError
from oneformer.secrets import redact_url

log = logging.getLogger(__name__)

MARKER = ".complete"  # JSON {source, size, created}; its mtime is the entry's last use
LOCKS = ".locks"
OBJECTS = "objects"
MAX_GB_ENV = "ONEFORMER_CACHE_MAX_GB"
DEFAULT_MAX_GB = 50.0
GB = 10**9  # decimal, as disks and `df -H` count

# Use locks this process holds (lock file -> fd), kept open for the life of the process: data staged by one stage
# of a flow run is read by later stages of the same process, and no one can say when the last read happens. The
# kernel drops them when the process exits, even on SIGKILL, so a crashed run never pins an entry for good.
_pins: dict[str, int] = {}
_pins_lock = threading.Lock()
_evicting = threading.Lock()  # one eviction at a time in a process: stage_all stages on several threads


def cache_root() -> Path:
    """Where staged downloads and extracted archives live; ONEFORMER_CACHE overrides it."""
    return Path(os.environ.get("ONEFORMER_CACHE", Path.home() / ".cache" / "oneformer")) / "staging"


def max_bytes() -> int | None:
    """The cap from ONEFORMER_CACHE_MAX_GB (default 50 GB; `none` for no cap), checked so a typo is not ignored."""
    raw = os.environ.get(MAX_GB_ENV, "").strip()
    if not raw:
        return int(DEFAULT_MAX_GB * GB)
    if raw.lower() in ("none", "off", "unlimited"):
        return None
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value < 0:
        raise DataError(f"{MAX_GB_ENV}={raw!r} is not a size: set it to a number of GB (e.g. 50), or to 'none' for "
                        f"no cap")
    return int(value * GB)


@dataclass
class Entry:
    """One cache entry as `oneformer cache list` shows it."""

    name: str  # path under the cache root: "<key>", "objects/<key>", or ".<key>.<random>" for a leftover
    path: Path
    complete: bool
    source: str  # the URI or path it was staged from ("" when unknown)
    size: int  # bytes of its files
    last_used: float  # epoch seconds
    in_use: bool = False  # held by a process now (being used, or being built)

    def row(self) -> dict:
        """A JSON-ready view for `--json` and tests."""
        out = asdict(self)
        out["path"] = str(self.path)
        return out


def tree_size(path: Path) -> int:
    """Bytes of the regular files under `path` (links not followed), so eviction counts what staging wrote."""
    total = 0
    try:
        with os.scandir(path) as it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    total += tree_size(Path(e.path))
                elif e.is_file(follow_symlinks=False):
                    total += e.stat(follow_symlinks=False).st_size
    except FileNotFoundError:  # removed by someone else meanwhile
        return total
    except NotADirectoryError:
        return path.stat().st_size
    return total


def has_files(path: Path) -> bool:
    """True when a regular file lies anywhere under `path`; stops at the first, so it is cheap on big folders."""
    if not path.is_dir():
        return False
    for _, _, files in os.walk(path):
        if files:
            return True
    return False


def _lock_file(name: str, kind: str) -> Path:
    return cache_root() / LOCKS / f"{name.replace('/', '_')}.{kind}"


def _open_lock(name: str, kind: str) -> int:
    path = _lock_file(name, kind)
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)


def use(name: str) -> None:
    """Mark entry `name` in use by this process (a shared flock, held until exit), so no eviction or prune removes
    it from under a reader; blocks only while a prune is removing that entry."""
    path = str(_lock_file(name, "use"))
    with _pins_lock:
        if path in _pins:
            return
        fd = _open_lock(name, "use")
        fcntl.flock(fd, fcntl.LOCK_SH)
        _pins[path] = fd


def release_all() -> None:
    """Drop this process's use locks: for long-lived processes between jobs, and for tests of eviction."""
    with _pins_lock:
        for fd in _pins.values():
            os.close(fd)
        _pins.clear()


@contextmanager
def _try_lock(name: str, kind: str) -> Iterator[bool]:
    """An exclusive flock if nobody holds `kind` on `name` (True), else False at once: never waits."""
    fd = _open_lock(name, kind)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            yield False
            return
        yield True
    finally:
        os.close(fd)  # closing drops the lock


@contextmanager
def building(name: str) -> Iterator[None]:
    """Hold the build lock of `name`: one process at a time extracts or downloads an entry; another waits, then
    finds it complete. The caller holds the use lock first, so the entry cannot be pruned while being built."""
    fd = _open_lock(name, "build")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def complete(path: Path) -> bool:
    """An entry is complete only once its marker exists: the marker is written after everything else."""
    return (path / MARKER).is_file()


def write_marker(path: Path, source: str) -> None:
    """Write the completion marker last (atomically): a process killed before this leaves an incomplete entry."""
    meta = {"source": redact_url(source), "size": tree_size(path), "created": time.time()}
    tmp = path / f"{MARKER}.partial"
    tmp.write_text(json.dumps(meta))
    os.replace(tmp, path / MARKER)


def touch(path: Path) -> None:
    """Record a reuse as the entry's last use (the marker's mtime), which LRU eviction orders by."""
    try:
        os.utime(path / MARKER)
    except OSError as exc:  # a read-only cache still serves; it just cannot keep LRU order
        log.debug("staging: cannot record the use of %s: %s", path, exc)


def _read_marker(path: Path) -> tuple[str, int | None]:
    """Source and recorded size of a complete entry; entries from before markers held JSON keep their text."""
    text = (path / MARKER).read_text(errors="replace")
    try:
        meta = json.loads(text)
    except ValueError:
        return text.strip(), None
    if not isinstance(meta, dict):
        return text.strip(), None
    return str(meta.get("source", "")), meta.get("size")


def _entry(name: str, path: Path) -> Entry | None:
    try:
        if complete(path):
            source, size = _read_marker(path)
            return Entry(name, path, True, source, size if isinstance(size, int) else tree_size(path),
                         (path / MARKER).stat().st_mtime)
        return Entry(name, path, False, "", tree_size(path), path.stat().st_mtime)
    except FileNotFoundError:  # removed while we looked
        return None


def lock_name(name: str) -> str:
    """The lock a folder under the root answers to: a leftover `.<key>.<random>` belongs to entry `<key>`."""
    if name.startswith(".") and not name.startswith(LOCKS):
        return name[1:].split(".", 1)[0]
    return name


def entries() -> list[Entry]:
    """Every entry and leftover in the cache, with whether a process holds it now."""
    root = cache_root()
    if not root.is_dir():
        return []
    found: list[Entry] = []
    for child in sorted(root.iterdir()):
        if child.name == LOCKS or not child.is_dir():
            continue
        if child.name == OBJECTS:
            found += [e for o in sorted(child.iterdir()) if o.is_dir() and (e := _entry(f"{OBJECTS}/{o.name}", o))]
        elif e := _entry(child.name, child):
            found.append(e)
    for e in found:
        e.in_use = held(e)
    return found


def _guard(e: Entry) -> str:
    """The lock that keeps `e`: readers hold the use lock of a complete entry; an incomplete one is only ever
    touched by its builder, under the build lock (a leftover of a killed run has neither held)."""
    return "use" if e.complete else "build"


def held(e: Entry) -> bool:
    """True when some process uses the entry, or is building it, now."""
    with _try_lock(lock_name(e.name), _guard(e)) as free:
        return not free


def remove(e: Entry) -> bool:
    """Delete an entry nobody holds; False (and nothing touched) when it is in use or being built."""
    with _try_lock(lock_name(e.name), _guard(e)) as free:
        if not free or not e.path.exists() or complete(e.path) != e.complete:  # gone, or finished since we looked
            return False
        # The marker goes first: a prune killed half-way leaves an incomplete entry, never a "complete" partial one.
        (e.path / MARKER).unlink(missing_ok=True)
        shutil.rmtree(e.path, ignore_errors=True)
        return not e.path.exists()


def _eviction_order(found: list[Entry]) -> list[Entry]:
    """Leftovers of killed runs first, then complete entries from least to most recently used."""
    return sorted(found, key=lambda e: (e.complete, e.last_used))


def prune(limit: int | None = None, everything: bool = False, incomplete: bool = False) -> tuple[list[Entry],
                                                                                              list[Entry]]:
    """Remove leftovers (`incomplete`), everything not in use (`everything`), or least-recently-used entries until
    the cache fits in `limit` bytes; returns (removed, kept because in use). In-use entries are never removed."""
    found = entries()
    removed: list[Entry] = []
    skipped: list[Entry] = []
    total = sum(e.size for e in found)
    for e in _eviction_order(found):
        wanted = everything or (incomplete and not e.complete) or (limit is not None and total > limit)
        if not wanted:
            continue
        if e.in_use or not remove(e):
            skipped.append(e)
            continue
        removed.append(e)
        total -= e.size
    return removed, skipped


def evict(keep: Path | None = None) -> list[Entry]:
    """Apply the size cap after staging added an entry: least-recently-used first, never one in use (this process's
    own staged entries included), and never `keep`, the entry just staged, even when it alone exceeds the cap."""
    limit = max_bytes()
    if limit is None:
        return []
    with _evicting:
        found = entries()
        total = sum(e.size for e in found)
        if total <= limit:
            return []
        removed = []
        for e in _eviction_order(found):
            if total <= limit:
                break
            if e.in_use or (keep is not None and e.path == keep) or not remove(e):
                continue
            log.info("staging: evicted %s (%s, %s) to keep the cache under %s", e.name, human(e.size),
                     e.source or "leftover", human(limit))
            removed.append(e)
            total -= e.size
        if total > limit:
            log.warning("staging: the cache holds %s, over its cap of %s (%s), because the rest is in use; raise the "
                        "cap or run `oneformer cache prune` when those runs finish", human(total), human(limit),
                        MAX_GB_ENV)
        return removed


def human(size: float) -> str:
    """Bytes in decimal units, as the cap is set."""
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"


def list_report(as_json: bool = False) -> str:
    """What `oneformer cache list` prints: one line per entry, then the total against the cap."""
    found = entries()
    if as_json:
        return json.dumps({"root": str(cache_root()), "max_bytes": max_bytes(),
                           "entries": [e.row() for e in found]}, indent=1)
    limit = max_bytes()
    lines = [f"{'entry':<32} {'state':<10} {'size':>9}  {'last used':<19}  source"]
    for e in sorted(found, key=lambda e: e.last_used, reverse=True):
        state = ("complete" if e.complete else "building" if e.in_use else "incomplete") + ("*" if e.in_use and
                                                                                           e.complete else "")
        used = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.last_used))
        lines.append(f"{e.name:<32} {state:<10} {human(e.size):>9}  {used:<19}  {e.source or '-'}")
    cap = human(limit) if limit is not None else "no cap"
    lines.append(f"{len(found)} entries, {human(sum(e.size for e in found))} in {cache_root()} (cap {cap}, "
                 f"{MAX_GB_ENV}); * = in use by a running process")
    return "\n".join(lines)


def prune_report(max_gb: float | None = None, everything: bool = False, incomplete: bool = False) -> str:
    """What `oneformer cache prune` does and prints: without options it applies the configured cap."""
    if max_gb is not None and max_gb < 0:
        raise DataError(f"--max-gb {max_gb}: give a size of 0 GB or more")
    limit = int(max_gb * GB) if max_gb is not None else None if everything or incomplete else max_bytes()
    removed, kept = prune(limit, everything, incomplete)
    lines = [f"removed {e.name} ({human(e.size)}, {e.source or 'incomplete'})" for e in removed]
    lines += [f"kept {e.name} ({human(e.size)}): in use by a running process" for e in kept]
    left = sum(e.size for e in entries())
    lines.append(f"freed {human(sum(e.size for e in removed))}; {human(left)} left in {cache_root()}")
    return "\n".join(lines)
