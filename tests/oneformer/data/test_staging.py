"""Staging: archives extracted once and safely, wrapper folders unwrapped, S3 over HTTP on 127.0.0.1."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from oneformer.data.staging import stage, stage_all
from oneformer.errors import DataError


def _tar(path: Path, members: dict[str, bytes], link: tuple[str, str] | None = None) -> Path:
    with tarfile.open(path, "w:gz") as t:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
        if link:
            info = tarfile.TarInfo(link[0])
            info.type, info.linkname = tarfile.SYMTYPE, link[1]
            t.addfile(info)
    return path


def test_archive_extracted_once_and_unwrapped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONEFORMER_CACHE", str(tmp_path / "cache"))
    arc = _tar(tmp_path / "images.tar.gz", {"images/a.jpg": b"x", "images/b.jpg": b"y"})
    first = stage(arc)
    assert sorted(p.name for p in first.iterdir()) == ["a.jpg", "b.jpg"]
    (first / "marker").write_text("kept")
    again = stage(arc)
    assert again == first and (again / "marker").exists()  # reused, not re-extracted


def test_member_escaping_target_is_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONEFORMER_CACHE", str(tmp_path / "cache"))
    arc = _tar(tmp_path / "bad.tar.gz", {"../escape.txt": b"evil"})
    with pytest.raises(DataError, match="cannot extract"):
        stage(arc)
    assert not (tmp_path / "escape.txt").exists()
    assert not list((tmp_path / "cache" / "staging").glob("*/.complete"))


def test_absolute_member_lands_inside_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONEFORMER_CACHE", str(tmp_path / "cache"))
    staged = stage(_tar(tmp_path / "abs.tar.gz", {"/abs/escape.txt": b"x", "/abs/other.txt": b"y"}))
    assert staged.resolve().is_relative_to((tmp_path / "cache").resolve())
    assert (staged / "escape.txt").exists() and not Path("/abs/escape.txt").exists()


def test_a_name_repeated_in_an_archive_keeps_its_last_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONEFORMER_CACHE", str(tmp_path / "cache"))
    members = {f"images/{n:04d}.png": n.to_bytes(2, "big") * 500 for n in range(600)}
    arc = tmp_path / "many.tar"
    with tarfile.open(arc, "w") as t:
        for name, data in [*members.items(), ("images/0001.png", b"last")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    staged = stage(arc)
    assert sorted(p.name for p in staged.iterdir()) == sorted(Path(n).name for n in members)
    assert (staged / "0001.png").read_bytes() == b"last"
    assert all((staged / Path(n).name).read_bytes() == d for n, d in members.items() if not n.endswith("0001.png"))


def test_link_out_of_target_is_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONEFORMER_CACHE", str(tmp_path / "cache"))
    arc = _tar(tmp_path / "link.tar.gz", {"ok.txt": b"x"}, link=("out", "/etc/passwd"))
    with pytest.raises(DataError, match="cannot extract"):
        stage(arc)


def test_missing_local_path_names_key(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="dataset.train.images: .*nothing.tar.gz does not exist"):
        stage(tmp_path / "nothing.tar.gz", "dataset.train.images")


def test_s3_archive_staged_and_reused_until_changed(s3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("ONEFORMER_CACHE", str(tmp_path / "cache"))
    arc = _tar(tmp_path / "images.tar.gz", {"images/a.jpg": b"x"})
    s3.upload_file(str(arc), "data", "train/images.tar.gz")
    first = stage("s3://data/train/images.tar.gz")
    assert (first / "a.jpg").read_bytes() == b"x"
    assert stage("s3://data/train/images.tar.gz") == first
    s3.upload_file(str(_tar(tmp_path / "v2.tar.gz", {"images/a.jpg": b"changed"})), "data", "train/images.tar.gz")
    assert (stage("s3://data/train/images.tar.gz") / "a.jpg").read_bytes() == b"changed"
    with pytest.raises(DataError, match="s3://data/train/missing.json does not exist"):
        stage("s3://data/train/missing.json")


def test_stage_all_stages_side_by_side_once_per_object(s3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("ONEFORMER_CACHE", str(tmp_path / "cache"))
    for n in range(3):
        s3.upload_file(str(_tar(tmp_path / f"{n}.tar.gz", {f"images/{n}.jpg": bytes([n])})), "data", f"{n}.tar.gz")
    s3.put_object(Bucket="data", Key="ann.json", Body=b"{}")
    uris = {f"split{n}.images": f"s3://data/{n}.tar.gz" for n in range(3)}
    uris.update({"train.annotations": "s3://data/ann.json", "val.annotations": "s3://data/ann.json"})

    staged = stage_all(uris)

    assert [(staged[f"split{n}.images"] / f"{n}.jpg").read_bytes() for n in range(3)] == [b"\x00", b"\x01", b"\x02"]
    assert staged["train.annotations"] == staged["val.annotations"] and staged["val.annotations"].read_bytes() == b"{}"
    uris["val.images"] = "s3://data/missing.tar.gz"
    with pytest.raises(DataError, match="val.images: s3://data/missing.tar.gz does not exist"):
        stage_all(uris)
