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


def _nothing_marked(cache: Path) -> bool:
    """No entry marked complete and no extraction folder left behind."""
    root = cache / "staging"
    return not list(root.glob("*/.complete")) and not [p for p in root.glob(".*") if p.name != ".locks"]


def test_member_escaping_target_is_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONEFORMER_CACHE", str(tmp_path / "cache"))
    arc = _tar(tmp_path / "bad.tar.gz", {"images/a.jpg": b"x", "images/../../escape.txt": b"evil"})
    with pytest.raises(DataError, match=rf"dataset.train.images: cannot extract {arc}: its member "
                                        r"'images/../../escape.txt' points outside the extraction folder"):
        stage(arc, "dataset.train.images")
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "cache" / "escape.txt").exists()
    assert _nothing_marked(tmp_path / "cache")


def test_absolute_member_is_refused_naming_member_archive_and_key(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONEFORMER_CACHE", str(tmp_path / "cache"))
    arc = _tar(tmp_path / "abs.tar.gz", {"images/ok.jpg": b"x", "/etc/x.jpg": b"y"})
    with pytest.raises(DataError, match=rf"dataset.train.images: cannot extract {arc}: its member '/etc/x.jpg' has "
                                        r"an absolute path; .*`tar czf images.tar.gz -C <folder> \."):
        stage(arc, "dataset.train.images")
    assert _nothing_marked(tmp_path / "cache")
    assert not list((tmp_path / "cache").rglob("x.jpg"))  # not re-rooted inside the cache either


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


@pytest.mark.parametrize("target", ["/etc/passwd", "../../outside"])
def test_link_out_of_target_is_rejected(target: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONEFORMER_CACHE", str(tmp_path / "cache"))
    arc = _tar(tmp_path / "link.tar.gz", {"ok.txt": b"x"}, link=("images/out", target))
    with pytest.raises(DataError, match=rf"val.images: cannot extract {arc}: its member 'images/out' is a link to "
                                        rf"'{target}', outside the archive"):
        stage(arc, "val.images")
    assert _nothing_marked(tmp_path / "cache")


def test_link_inside_the_archive_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONEFORMER_CACHE", str(tmp_path / "cache"))
    staged = stage(_tar(tmp_path / "link.tar.gz", {"images/a.jpg": b"x"}, link=("images/b.jpg", "a.jpg")))
    assert (staged / "b.jpg").is_symlink() and (staged / "b.jpg").read_bytes() == b"x"


def _empty_tar(path: Path, folders: tuple[str, ...] = ()) -> Path:
    with tarfile.open(path, "w:gz") as t:
        for name in folders:
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            t.addfile(info)
    return path


@pytest.mark.parametrize("kind", ["no members", "only folders", "zero bytes"])
def test_empty_archive_is_a_clear_error_and_never_cached(kind: str, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONEFORMER_CACHE", str(tmp_path / "cache"))
    arc = tmp_path / "images.tar.gz"
    if kind == "zero bytes":
        arc.write_bytes(b"")
    else:
        _empty_tar(arc, ("images/", "images/sub/") if kind == "only folders" else ())
    for _ in range(2):  # the second run meets the same error, not a reused empty entry
        with pytest.raises(DataError, match=rf"dataset.train.images: {arc} is an empty archive .*uploaded whole"):
            stage(arc, "dataset.train.images")
        assert _nothing_marked(tmp_path / "cache")


def test_entry_marked_complete_while_empty_is_extracted_again(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from oneformer.data.staging import _digest_file

    monkeypatch.setenv("ONEFORMER_CACHE", str(tmp_path / "cache"))
    arc = _tar(tmp_path / "images.tar.gz", {"images/a.jpg": b"x"})
    broken = tmp_path / "cache" / "staging" / _digest_file(arc)  # what the old code left for an empty archive
    broken.mkdir(parents=True)
    (broken / ".complete").write_text(str(arc))
    assert (stage(arc) / "a.jpg").read_bytes() == b"x"


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


def test_s3_prefix_staged_as_a_folder_and_reused_until_changed(s3, tmp_path: Path,  # noqa: ANN001
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONEFORMER_CACHE", str(tmp_path / "cache"))
    for name, body in (("images/train/a.jpg", b"a"), ("images/train/sub/b.jpg", b"b"), ("masks/train/a.png", b"m")):
        s3.put_object(Bucket="data", Key=f"seg/{name}", Body=body)
    first = stage("s3://data/seg/images/train")  # SegFormer's layout: a folder per split under one root
    assert first.name == "train" and sorted(p.relative_to(first).as_posix() for p in first.rglob("*.jpg")) == [
        "a.jpg", "sub/b.jpg"]
    assert stage("s3://data/seg/images/train") == first
    s3.put_object(Bucket="data", Key="seg/images/train/a.jpg", Body=b"changed")
    assert (stage("s3://data/seg/images/train") / "a.jpg").read_bytes() == b"changed"


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


def test_s3_archive_problems_name_key_and_uri_and_objects_are_cache_entries(s3, tmp_path: Path,  # noqa: ANN001
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from oneformer.data import cache

    monkeypatch.setenv("ONEFORMER_CACHE", str(tmp_path / "cache"))
    s3.upload_file(str(_empty_tar(tmp_path / "empty.tar.gz")), "data", "train/images.tar.gz")
    s3.upload_file(str(_tar(tmp_path / "abs.tar.gz", {"/etc/x.jpg": b"x"})), "data", "val/images.tar.gz")
    s3.put_object(Bucket="data", Key="train/annotations.json", Body=b"{}")
    with pytest.raises(DataError, match="dataset.train.images: s3://data/train/images.tar.gz is an empty archive"):
        stage("s3://data/train/images.tar.gz", "dataset.train.images")
    with pytest.raises(DataError, match="val.images: cannot extract s3://data/val/images.tar.gz: its member "
                                        "'/etc/x.jpg' has an absolute path"):
        stage("s3://data/val/images.tar.gz", "val.images")
    ann = stage("s3://data/train/annotations.json")
    partial = ann.parent / ".annotations.json.dead.partial"  # what a download killed mid-way leaves
    partial.write_bytes(b"{")
    [entry] = cache.entries()
    assert entry.complete and entry.source == "s3://data/train/annotations.json" and entry.name.startswith("objects/")
    cache.release_all()
    (entry.path / cache.MARKER).unlink()  # as if the download was killed before its marker
    ann.unlink()
    assert stage("s3://data/train/annotations.json").read_bytes() == b"{}"  # downloaded again, whole
    assert not partial.exists() and cache.entries()[0].complete
