"""Downloads and archives (tdseg_lite.datasets.download), offline: ranged, resumable downloads from a local
server, checksums, free disk, one-line errors, unsafe members, decompression bombs, size caps."""

from __future__ import annotations

import http.server
import io
import json
import os
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.error import URLError

import pytest
from test_datasets_prepare import write_kits

from tdseg_lite import cli
from tdseg_lite.datasets import download as dl
from tdseg_lite.datasets.prepare import prepare_kits19
from tdseg_lite.errors import UserInputError
from tdseg_lite.validate import validate_dataset


def test_msd_source_comes_from_monai() -> None:
    from monai.apps import DecathlonDataset

    url, md5 = dl.msd_source("Task07_Pancreas")
    assert (url, md5) == (DecathlonDataset.resource["Task07_Pancreas"], DecathlonDataset.md5["Task07_Pancreas"])
    assert md5 == "4f7080cfca169fa8066d17ce6eb061e4" and url.endswith("/Task07_Pancreas.tar")


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.files[path]`` with HTTP Range support (or ignoring it, or cut short)."""

    def do_GET(self) -> None:  # http.server's method name
        srv = self.server
        srv.ranges.append(self.headers.get("Range"))  # type: ignore[attr-defined]
        data = srv.files.get(self.path)  # type: ignore[attr-defined]
        if data is None:
            self.send_error(404)
            return
        start = 0
        if self.headers.get("Range") and not srv.ignore_range:  # type: ignore[attr-defined]
            start = int(self.headers["Range"].split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        body = data[start:]
        self.wfile.write(body[: srv.cut] if srv.cut else body)  # type: ignore[attr-defined]

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[http.server.HTTPServer]:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RangeHandler)
    srv.payload = bytes(range(256)) * 4096  # type: ignore[attr-defined]  # 1 MiB
    srv.files = {"/file.bin": srv.payload}  # type: ignore[attr-defined]
    srv.ranges, srv.ignore_range, srv.cut = [], False, 0  # type: ignore[attr-defined]
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _url(srv: http.server.HTTPServer, name: str = "file.bin") -> str:
    return f"http://127.0.0.1:{srv.server_address[1]}/{name}"


def test_kits19_download_mirrors_and_sha256(tmp_path: Path, server: http.server.HTTPServer,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Segmentations from the repository URL, imaging from the first mirror that answers, SHA-256 checked."""
    src = write_kits(tmp_path / "kits19") / "data"
    files = server.files  # type: ignore[attr-defined]
    listing = []
    for case in (0, 1):
        files[f"/seg/case_{case:05d}.nii.gz"] = (src / f"case_{case:05d}" / "segmentation.nii.gz").read_bytes()
        image = (src / f"case_{case:05d}" / "imaging.nii.gz").read_bytes()
        files[f"/img/case_{case:05d}.nii.gz"] = image
        listing.append({"type": "file", "path": f"images/case_{case:05d}.nii.gz",
                        "lfs": {"oid": dl.hashlib.sha256(image).hexdigest(), "size": len(image)}})
    files["/tree"] = json.dumps(listing).encode()
    base = _url(server, "").rstrip("/")
    monkeypatch.setattr(dl, "KITS19_SEGMENTATION_URL", base + "/seg/case_{case:05d}.nii.gz")
    monkeypatch.setattr(dl, "KITS19_IMAGING_URLS", (base + "/gone/{case:05d}", base + "/img/case_{case:05d}.nii.gz"))
    monkeypatch.setattr(dl, "KITS19_IMAGING_TREE", base + "/tree")
    out = prepare_kits19(tmp_path / "out", cases="0-1", download_dir=tmp_path / "dl", progress=False)
    assert sorted(p.name for p in (out / "labelsTr").iterdir()) == ["case_00000.nii.gz", "case_00001.nii.gz"]
    assert validate_dataset(out).ok
    files["/img/case_00001.nii.gz"] = b"\x1f\x8b" + bytes(100)  # tampered: wrong SHA-256
    (tmp_path / "dl" / "case_00001" / "imaging.nii.gz").unlink()
    with pytest.raises(UserInputError, match="sha256 checksum must be"):
        prepare_kits19(tmp_path / "out2", cases="1", download_dir=tmp_path / "dl", progress=False)
    assert not (tmp_path / "dl" / "case_00001" / "imaging.nii.gz").exists()


def test_kits19_offline_names_the_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(dl, "urlopen", offline)
    code = cli.main(["prepare", "kits19", "--cases", "0", "--out", str(tmp_path / "out"),
                     "--download-dir", str(tmp_path / "dl"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert ("could not reach https://raw.githubusercontent.com/neheller/kits19/master/data/case_00000/"
            "segmentation.nii.gz (offline?)") in err and "--src /path/to/kits19" in err


def test_download_resumes_a_part_file(tmp_path: Path, server: http.server.HTTPServer) -> None:
    data = server.payload  # type: ignore[attr-defined]
    dest = tmp_path / "file.bin"
    dest.with_name("file.bin.part").write_bytes(data[:300_000])
    got = dl.download_file(_url(server), dest, hash_val=dl.hashlib.md5(data).hexdigest(), progress=False)
    assert got.read_bytes() == data and server.ranges == ["bytes=300000-"]  # type: ignore[attr-defined]
    assert not dest.with_name("file.bin.part").exists()
    server.ignore_range = True  # type: ignore[attr-defined]  # a server without Range support: start over
    dest2 = tmp_path / "again.bin"
    dest2.with_name("again.bin.part").write_bytes(b"stale bytes")
    assert dl.download_file(_url(server), dest2, progress=False).read_bytes() == data


def test_download_interrupted_then_resumed(tmp_path: Path, server: http.server.HTTPServer) -> None:
    server.cut = 100_000  # type: ignore[attr-defined]  # the connection drops after 100 kB
    dest = tmp_path / "file.bin"
    with pytest.raises(UserInputError, match="resume"):
        dl.download_file(_url(server), dest, progress=False)
    assert dest.with_name("file.bin.part").stat().st_size == 100_000 and not dest.exists()
    server.cut = 0  # type: ignore[attr-defined]
    assert dl.download_file(_url(server), dest, progress=False).read_bytes() == server.payload  # type: ignore[attr-defined]
    assert server.ranges[-1] == "bytes=100000-"  # type: ignore[attr-defined]


def test_download_checksum_mismatch_keeps_nothing(tmp_path: Path, server: http.server.HTTPServer) -> None:
    dest = tmp_path / "file.bin"
    with pytest.raises(UserInputError, match=r"md5 checksum must be 0{32}, got [0-9a-f]{32}"):
        dl.download_file(_url(server), dest, hash_val="0" * 32, progress=False)
    assert not dest.exists() and not dest.with_name("file.bin.part").exists()


def test_download_errors_are_one_line(tmp_path: Path, server: http.server.HTTPServer,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UserInputError, match=r"could not reach http://127\.0\.0\.1:9/x\.tar \(offline\?\).*--src"):
        dl.download_file("http://127.0.0.1:9/x.tar", tmp_path / "x.tar", manual="pass --src /path/to/x.tar")
    with pytest.raises(UserInputError, match="answered HTTP 404"):
        dl.download_file(_url(server, "missing"), tmp_path / "m.bin", progress=False)

    def offline(*args: object, **kwargs: object) -> None:
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(dl, "urlopen", offline)
    with pytest.raises(UserInputError, match="could not reach https://a.example/f.tar") as info:
        dl.download_file(["https://a.example/f.tar", "https://b.example/f.tar"], tmp_path / "f.tar")
    assert "\n" not in str(info.value)


def test_download_checks_free_disk_first(tmp_path: Path, server: http.server.HTTPServer,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dl.shutil, "disk_usage", lambda p: type("U", (), {"free": 1000})())
    with pytest.raises(UserInputError, match="GB of free disk"):
        dl.download_file(_url(server), tmp_path / "file.bin", progress=False)
    assert not (tmp_path / "file.bin.part").exists() or (tmp_path / "file.bin.part").stat().st_size == 0


def _tar_with(tmp_path: Path, member: tarfile.TarInfo, data: bytes = b"evil") -> Path:
    archive = tmp_path / "bad.tar"
    with tarfile.open(archive, "w") as tar:
        good = tarfile.TarInfo("Task/ok.txt")
        good.size = 2
        tar.addfile(good, io.BytesIO(b"ok"))
        tar.addfile(member, io.BytesIO(data) if member.isfile() else None)
    return archive


def _member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, linkname, 4 if kind == tarfile.REGTYPE else 0
    return info


@pytest.mark.parametrize(("member", "message"), [
    (_member("../evil.txt"), "'..' path that escapes"),
    (_member("Task/../../evil.txt"), "'..' path that escapes"),
    (_member("/tmp/tdseg_abs_evil.txt"), "absolute path"),
    (_member("Task/link", tarfile.SYMTYPE, "/etc/passwd"), "symbolic link"),
    (_member("Task/hard", tarfile.LNKTYPE, "../../evil.txt"), "hard link"),
    (_member("Task/dev", tarfile.CHRTYPE), "device file"),
])
def test_unsafe_tar_members_are_refused(tmp_path: Path, member: tarfile.TarInfo, message: str) -> None:
    archive = _tar_with(tmp_path, member)
    target = tmp_path / "deep" / "target"
    with pytest.raises(UserInputError, match=message):
        dl.extract_archive(archive, target, progress=False)
    assert not list(target.rglob("*"))  # checked before anything is written
    assert not (tmp_path / "deep" / "evil.txt").exists() and not (tmp_path / "evil.txt").exists()
    assert not Path("/tmp/tdseg_abs_evil.txt").exists()


def test_unsafe_zip_members_are_refused(tmp_path: Path) -> None:
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ok.txt", "ok")
        zf.writestr("../evil.txt", "evil")
    with pytest.raises(UserInputError, match="escapes"):
        dl.extract_archive(archive, tmp_path / "target", progress=False)
    link = zipfile.ZipInfo("link")
    link.external_attr = (0o120777 << 16)  # a symbolic link, as Info-ZIP stores it
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(link, "/etc/passwd")
    with pytest.raises(UserInputError, match="link or special file"):
        dl.extract_archive(archive, tmp_path / "target", progress=False)
    assert not (tmp_path / "evil.txt").exists() and not list((tmp_path / "target").rglob("*"))


def test_unsafe_archive_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    archive = _tar_with(tmp_path, _member("Task07_Pancreas/../../evil.txt"))
    code = cli.main(["prepare", "msd", "--task", "pancreas", "--src", str(archive), "--skip-checksum",
                     "--out", str(tmp_path / "out"), "--download-dir", str(tmp_path / "dl"), "--quiet"])
    assert code == 2 and "refusing to extract anything" in capsys.readouterr().err
    assert not (tmp_path / "evil.txt").exists()


def test_not_an_archive_and_junk_names(tmp_path: Path) -> None:
    (tmp_path / "x.tar").write_bytes(b"<html>not found</html>")
    with pytest.raises(UserInputError, match="must be a .tar or .zip archive"):
        dl.extract_archive(tmp_path / "x.tar", tmp_path / "t", progress=False)
    assert dl.is_junk("Task07_Pancreas/imagesTr/._pancreas_001.nii.gz") and dl.is_junk("__MACOSX/a/b.nii.gz")
    assert dl.is_junk(".DS_Store") and not dl.is_junk("Task07_Pancreas/imagesTr/pancreas_001.nii.gz")


class Zeros(io.RawIOBase):
    """``n`` zero bytes, streamed (nothing of that size is ever held in memory or on disk)."""

    def __init__(self, n: int) -> None:
        self.left = n

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        k = min(len(buf), self.left)
        buf[:k] = bytes(k)
        self.left -= k
        return k


def tar_of(path: Path, members: dict[str, int]) -> Path:
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        for name, size in members.items():
            info = tarfile.TarInfo(name)
            info.size = size
            tar.addfile(info, io.BufferedReader(Zeros(size)))
    return path


def test_a_decompression_bomb_is_refused_before_anything_is_extracted(tmp_path: Path) -> None:
    from tdseg_lite.datasets.download import extract_archive

    bomb = tar_of(tmp_path / "bomb.tar.gz", {"Task/labelsTr/a.nii": 96 << 20})
    assert bomb.stat().st_size < 2 << 20
    with pytest.raises(UserInputError, match=r"must expand at most 100x its size, got .* a decompression bomb"):
        extract_archive(bomb, tmp_path / "out", progress=False)
    assert not any(p.is_file() for p in (tmp_path / "out").rglob("*"))


def test_a_bomb_is_refused_at_its_first_header_and_leaves_no_folder(tmp_path: Path) -> None:
    """The members are read lazily: a huge member is refused from its header, before its data is decompressed
    (here the data is not even there: the archive is cut after 64 KiB)."""
    from tdseg_lite.datasets.download import extract_archive

    bomb = tar_of(tmp_path / "bomb.tar.gz", {"Task/imagesTr/a.nii": 96 << 20, "Task/imagesTr/b.nii": 96 << 20})
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(bomb.read_bytes()[: 64 << 10])
    with pytest.raises(UserInputError, match="a decompression bomb"):
        extract_archive(cut, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_the_total_size_cap_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tdseg_lite.datasets.download import extract_archive

    small = tar_of(tmp_path / "small.tar.gz", {"a.nii": 4096})
    monkeypatch.setenv("TDSEG_MAX_EXTRACT_GB", "0.000001")
    with pytest.raises(UserInputError, match="must expand to at most 1e-06 GB"):
        extract_archive(small, tmp_path / "out", progress=False)
    monkeypatch.delenv("TDSEG_MAX_EXTRACT_GB")
    assert [p.name for p in extract_archive(small, tmp_path / "out", progress=False)] == ["a.nii"]


def test_a_failed_extraction_removes_what_it_wrote(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tdseg_lite.datasets.download as dl

    archive = tar_of(tmp_path / "two.tar.gz", {"a.nii": 1000, "b.nii": 1000})
    real, calls = os.replace, []

    def fail_second(src: Any, dst: Any) -> None:
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real(src, dst)

    monkeypatch.setattr(dl.os, "replace", fail_second)
    with pytest.raises(OSError, match="No space"):
        dl.extract_archive(archive, tmp_path / "out", progress=False)
    assert [p for p in (tmp_path / "out").rglob("*") if p.is_file()] == []
