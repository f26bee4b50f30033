"""The staging cache: an extraction killed mid-way is never reused, LRU eviction under a size cap that spares entries
in use, and `oneformer cache list/prune` as a user runs them."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from oneformer.cli import main
from oneformer.data import cache
from oneformer.data.staging import stage
from oneformer.errors import DataError

SIZE = 1000  # bytes per test archive's one file: caps below are set in these units


@pytest.fixture(autouse=True)
def fresh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A cache of its own, and none of this process's use locks carried from one test into another."""
    monkeypatch.setenv("ONEFORMER_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(cache.MAX_GB_ENV, raising=False)
    cache.release_all()
    yield tmp_path / "cache" / "staging"
    cache.release_all()


def _archive(path: Path, tag: str, size: int = SIZE) -> Path:
    with tarfile.open(path, "w:gz") as t:
        info = tarfile.TarInfo(f"images/{tag}.jpg")
        info.size = size
        t.addfile(info, io.BytesIO(tag.encode()[:1] * size))
    return path


def _cap(monkeypatch: pytest.MonkeyPatch, nbytes: int) -> None:
    monkeypatch.setenv(cache.MAX_GB_ENV, str(nbytes / cache.GB))


def _by_source() -> dict[str, cache.Entry]:
    return {Path(e.source).name: e for e in cache.entries()}


def test_extraction_killed_mid_way_is_detected_and_redone(tmp_path: Path, fresh: Path) -> None:
    n = 6000
    arc = tmp_path / "big.tar.gz"
    with tarfile.open(arc, "w:gz", compresslevel=1) as t:
        for i in range(n):
            data = i.to_bytes(4, "big") * 256
            info = tarfile.TarInfo(f"images/{i:05d}.jpg")
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    script = "import sys; from oneformer.data.staging import stage; stage(sys.argv[1], 'dataset.train.images')"
    proc = subprocess.Popen([sys.executable, "-c", script, str(arc)], env=os.environ.copy())
    try:
        deadline = time.monotonic() + 60
        while not list(fresh.glob(".*/data/images/00200.jpg")):  # extraction under way: member 200 of 6000 is out
            assert proc.poll() is None and time.monotonic() < deadline, "the extraction ended before it was killed"
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    [left] = cache.entries()
    assert left.name.startswith(".") and not left.complete and not left.in_use  # the kernel dropped its locks
    assert not list(fresh.glob("*/.complete")) and not list(fresh.glob(".*/.complete"))
    done = len(list((left.path / "data" / "images").iterdir()))
    assert done < n  # really cut off part-way

    t0 = time.monotonic()
    staged = stage(arc, "dataset.train.images")
    redo = time.monotonic() - t0

    files = sorted(staged.iterdir())
    assert len(files) == n and all(f.read_bytes() == int(f.stem).to_bytes(4, "big") * 256 for f in files)
    [entry] = cache.entries()  # the leftover is gone, and one whole entry is there
    assert entry.complete and entry.source == str(arc) and entry.size == n * 1024
    print(f"killed after {done} of {n} members; re-extraction took {redo:.2f} s")


def _waiting_on(lock: Path) -> int:
    """How many processes are blocked on the flock `lock` now, from the kernel's table (Linux's /proc/locks)."""
    inode = f":{lock.stat().st_ino} "
    return sum(1 for line in Path("/proc/locks").read_text().splitlines() if " -> " in line and inode in line)


@pytest.mark.skipif(not Path("/proc/locks").exists(), reason="needs Linux's /proc/locks to see waiting processes")
def test_two_processes_staging_one_archive_extract_it_once(tmp_path: Path, fresh: Path) -> None:
    from oneformer.data.staging import _digest_file

    n = 500
    arc = tmp_path / "shared.tar.gz"
    with tarfile.open(arc, "w:gz", compresslevel=1) as t:
        for i in range(n):
            info = tarfile.TarInfo(f"images/{i:05d}.jpg")
            info.size = 512
            t.addfile(info, io.BytesIO(bytes([i % 256]) * 512))
    script = ("import logging, sys; logging.basicConfig(level=logging.INFO); from oneformer.data.staging import stage; "
              "print(stage(sys.argv[1]))")
    key = _digest_file(arc)
    with cache.building(key):  # both start at once, for certain: each blocks on the build lock until we let go
        procs = [subprocess.Popen([sys.executable, "-c", script, str(arc)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=os.environ.copy()) for _ in range(2)]
        deadline = time.monotonic() + 60
        while _waiting_on(fresh / cache.LOCKS / f"{key}.build") < 2:
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
            time.sleep(0.01)
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert outs[0][0] == outs[1][0]  # one folder for both
    assert sum("staging: extracting" in err for _, err in outs) == 1
    assert sum("extracted meanwhile" in err for _, err in outs) == 1  # the other waited on the lock, then reused it
    assert len(list(Path(outs[0][0].strip()).iterdir())) == n
    assert [e.complete for e in cache.entries()] == [True]


def test_lru_eviction_spares_the_recently_reused(tmp_path: Path, fresh: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    arcs = {tag: _archive(tmp_path / f"{tag}.tar.gz", tag) for tag in "abc"}
    for tag in "ab":
        stage(arcs[tag])
        cache.release_all()  # as if each came from a run that has finished
    for when, tag in enumerate("ab", start=1):  # a used long ago, b a little later
        os.utime(_by_source()[f"{tag}.tar.gz"].path / cache.MARKER, (when * 1000.0, when * 1000.0))
    stage(arcs["a"])  # reusing a makes it the most recently used
    cache.release_all()
    assert _by_source()["a.tar.gz"].last_used > time.time() - 60
    _cap(monkeypatch, 2 * SIZE)

    staged = stage(arcs["c"])

    assert sorted(_by_source()) == ["a.tar.gz", "c.tar.gz"]  # b, the least recently used, was evicted
    assert (staged / "c.jpg").exists()


def test_eviction_never_removes_what_this_process_staged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    first = stage(_archive(tmp_path / "a.tar.gz", "a"))  # still held: a later stage of this run may read it
    _cap(monkeypatch, SIZE)
    second = stage(_archive(tmp_path / "b.tar.gz", "b"))
    assert (first / "a.jpg").exists() and (second / "b.jpg").exists()
    assert "over its cap" in caplog.text
    cache.release_all()  # that run is over: the next staging call may evict a
    stage(_archive(tmp_path / "c.tar.gz", "c"))
    assert sorted(_by_source()) == ["c.tar.gz"]  # a and b went (least recently used first); c, just staged, stays


def test_entry_in_use_by_another_process_is_never_pruned(tmp_path: Path, fresh: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    arc = _archive(tmp_path / "a.tar.gz", "a")
    script = ("import sys, time; from oneformer.data.staging import stage; stage(sys.argv[1]); print('ready', "
              "flush=True); time.sleep(120)")
    reader = subprocess.Popen([sys.executable, "-c", script, str(arc)], stdout=subprocess.PIPE, text=True,
                              env=os.environ.copy())
    try:
        assert reader.stdout is not None and reader.stdout.readline().strip() == "ready"
        code, out = _cli(capsys, "cache", "prune", "--all")
        assert code == 0 and "kept " in out and "in use by a running process" in out
        assert [e.in_use for e in cache.entries()] == [True]
    finally:
        reader.kill()
        reader.wait()
    code, out = _cli(capsys, "cache", "prune", "--all")
    assert code == 0 and "removed " in out and cache.entries() == []


def _cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str]:
    """The console entry point in this process: exit code and stdout (stderr for errors)."""
    with pytest.raises(SystemExit) as done:
        main(list(args))
    out = capsys.readouterr()
    return int(done.value.code or 0), out.out + out.err


def test_cache_list_and_prune_from_the_command_line(tmp_path: Path, fresh: Path, capsys: pytest.CaptureFixture,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    for tag in "abc":
        stage(_archive(tmp_path / f"{tag}.tar.gz", tag))
    cache.release_all()
    for when, tag in enumerate("abc", start=1):
        os.utime(_by_source()[f"{tag}.tar.gz"].path / cache.MARKER, (when * 1000.0, when * 1000.0))
    leftover = fresh / f".{_by_source()['a.tar.gz'].name}.killed"  # what a killed extraction leaves
    (leftover / "data").mkdir(parents=True)
    (leftover / "data" / "half.jpg").write_bytes(b"x" * 10)

    code, out = _cli(capsys, "cache", "list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["entry", "state", "size", "last"]
    assert any(str(tmp_path / "a.tar.gz") in line and "complete" in line and "1.0 kB" in line for line in lines)
    assert any(line.startswith(leftover.name) and "incomplete" in line for line in lines)
    assert "4 entries, 3.0 kB" in lines[-1] and "cap 50.0 GB" in lines[-1]
    code, out = _cli(capsys, "cache", "list", "--json")
    listed = json.loads(out)
    assert listed["max_bytes"] == 50 * cache.GB and len(listed["entries"]) == 4
    assert {e["complete"] for e in listed["entries"]} == {True, False}

    code, out = _cli(capsys, "cache", "prune", "--incomplete")
    assert code == 0 and f"removed {leftover.name}" in out and not leftover.exists() and len(cache.entries()) == 3
    code, out = _cli(capsys, "cache", "prune", "--max-gb", str(2 * SIZE / cache.GB))
    assert code == 0 and sorted(_by_source()) == ["b.tar.gz", "c.tar.gz"]  # the least recently used went
    _cap(monkeypatch, SIZE)
    code, out = _cli(capsys, "cache", "prune")  # no option: down to the configured cap
    assert sorted(_by_source()) == ["c.tar.gz"] and "freed 1.0 kB; 1.0 kB left" in out
    code, out = _cli(capsys, "cache", "prune", "--all")
    assert code == 0 and cache.entries() == []


def test_bad_cap_is_a_clean_error_before_any_work(tmp_path: Path, fresh: Path, capsys: pytest.CaptureFixture,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cache.MAX_GB_ENV, "50GB")
    with pytest.raises(DataError, match=r"ONEFORMER_CACHE_MAX_GB='50GB' is not a size: set it to a number of GB"):
        stage(_archive(tmp_path / "a.tar.gz", "a"))
    assert not fresh.exists() or cache.entries() == []
    code, out = _cli(capsys, "cache", "list")
    assert code == 2 and out.startswith("error: ONEFORMER_CACHE_MAX_GB='50GB'") and "Traceback" not in out
    monkeypatch.setenv(cache.MAX_GB_ENV, "none")
    assert cache.max_bytes() is None
    stage(_archive(tmp_path / "a.tar.gz", "a"))
    assert cache.evict() == []
