"""Safe downloads and archive extraction for ``tdseg prepare`` (real datasets).

``download_file`` fetches one URL into ``dest``:

* resumable: bytes go to ``dest.part``; a later call sends ``Range: bytes=<size of .part>-`` and
  appends (a server that ignores the range answers 200 and the file starts over);
* checked: the free disk is compared with the remaining size (``Content-Length``) first, the
  length is checked at the end, and an MD5/SHA-256 mismatch deletes the ``.part`` file, so a
  corrupt download never becomes ``dest``;
* one-line errors: no network, HTTP errors and interruptions raise ``UserInputError`` naming the
  URL and how to place the file by hand (``--src``).

``extract_archive`` unpacks a tar or zip only after checking *every* member: absolute paths,
``..`` components, symbolic and hard links, device files and FIFOs are refused before anything is
written (the same rules on every Python >= 3.10; ``tarfile``'s ``filter="data"`` exists only from
3.11.4). macOS junk (``._*`` AppleDouble files, ``.DS_Store``, ``__MACOSX/``), which the MSD tars
contain, is skipped. The sizes the members declare are capped before anything is written: in total
(``max_extract_bytes``, ``$TDSEG_MAX_EXTRACT_GB``) and against the archive's own size (an expansion
beyond ``MAX_EXTRACT_RATIO`` : 1, ``$TDSEG_MAX_EXTRACT_RATIO``, is a decompression bomb, not a CT
archive), and no member may write more than it declared. An extraction that fails half-way removes
the files it wrote. Explained in ``data_scripts/README.md``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import tarfile
import zipfile
from collections.abc import Sequence
from http.client import HTTPException
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

from tdseg_lite import __version__
from tdseg_lite.errors import UserInputError

__all__ = [
    "CHUNK",
    "KITS19_IMAGE_BYTES",
    "KITS19_IMAGING_TREE",
    "KITS19_IMAGING_URLS",
    "KITS19_LABELLED",
    "KITS19_SEGMENTATION_URL",
    "MAX_EXTRACT_GB",
    "MAX_EXTRACT_RATIO",
    "download_file",
    "download_kits19",
    "ensure_disk_space",
    "extract_archive",
    "file_hash",
    "is_junk",
    "kits19_checksums",
    "max_extract_bytes",
    "msd_source",
    "safe_member_path",
]

CHUNK = 1 << 20  # bytes read per step (1 MiB)
_SPACE_MARGIN = 256 << 20  # bytes kept free on top of what a step needs
_GB = 1e9
#: largest expansion (extracted bytes / archive bytes) accepted; CT archives hold compressed NIfTI (about 1 : 1)
MAX_EXTRACT_RATIO = 100.0
#: archives that expand to less than this are not ratio-checked (small test or label archives)
_RATIO_FLOOR = 64 << 20
#: default cap on the total bytes of one extraction (GB); $TDSEG_MAX_EXTRACT_GB overrides it
MAX_EXTRACT_GB = 300.0

# Where the datasets live (checked against github.com/neheller/kits19 at commit 456b293, 2026-05).
#: KiTS19 segmentations, cases 0-209: plain git blobs in the official repository (its Git LFS
#: tracking was removed in commit 258aec5; older clones hold LFS pointers instead).
KITS19_SEGMENTATION_URL = "https://raw.githubusercontent.com/neheller/kits19/master/data/case_{case:05d}/segmentation.nii.gz"
#: KiTS19 imaging, cases 0-299, as ``starter_code/get_imaging.py`` fetches it: since commit 456b293 from
#: the Hugging Face dataset neheller/KiTS-Challenge-Imaging; before, from DigitalOcean as
#: ``master_XXXXX.nii.gz`` (kept as a fallback mirror).
KITS19_IMAGING_URLS = (
    "https://huggingface.co/datasets/neheller/KiTS-Challenge-Imaging/resolve/main/images/case_{case:05d}.nii.gz",
    "https://kits19.sfo2.digitaloceanspaces.com/master_{case:05d}.nii.gz",
)
#: Hugging Face listing of those files; each LFS entry carries the file's SHA-256 as ``lfs.oid``.
KITS19_IMAGING_TREE = "https://huggingface.co/api/datasets/neheller/KiTS-Challenge-Imaging/tree/main/images"
KITS19_LABELLED = range(210)  # cases 210-299: imaging only (the challenge's test set)
KITS19_IMAGE_BYTES = 110_000_000  # rough mean size of one KiTS19 imaging file, for the up-front disk check


def file_hash(path: str | os.PathLike[str], hash_type: str = "md5") -> str:
    """Hex digest of a file (``hash_type``: ``"md5"``, ``"sha1"``, ``"sha256"``, ...), read in chunks."""
    try:
        digest = hashlib.new(hash_type.lower())
    except ValueError:
        raise UserInputError(f"`hash_type` must be one of md5, sha1, sha256, got {hash_type!r}. "
                             "Pass the algorithm that produced the published checksum.") from None
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def ensure_disk_space(folder: str | os.PathLike[str], need_bytes: int, what: str) -> None:
    """Raise ``UserInputError`` unless ``folder``'s disk has ``need_bytes`` (+ 5 % + 256 MiB) free.

    Args:
        folder: where the bytes will be written (its nearest existing parent is measured).
        need_bytes: bytes about to be written.
        what: what needs the space, for the message (e.g. ``"Task07_Pancreas.tar + extraction"``).
    """
    probe = Path(folder).expanduser().absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    need = int(need_bytes * 1.05) + _SPACE_MARGIN
    free = shutil.disk_usage(probe).free
    if free < need:
        raise UserInputError(
            f"`{folder}` needs {need / _GB:.1f} GB of free disk for {what}, got {free / _GB:.1f} GB free. "
            "Free some space, or pass --download-dir / --out on a larger disk (e.g. a mounted drive).")


def msd_source(task: str) -> tuple[str, str]:
    """``(url, md5)`` of an MSD task archive, read from ``monai.apps.DecathlonDataset`` (MONAI's mirror)."""
    from monai.apps import DecathlonDataset

    return DecathlonDataset.resource[task], DecathlonDataset.md5[task]


def kits19_checksums(timeout: float = 30.0) -> dict[str, str]:
    """``{"case_00000.nii.gz": sha256, ...}`` for the KiTS19 imaging; ``{}`` if the listing is unavailable."""
    sums: dict[str, str] = {}
    url: str | None = KITS19_IMAGING_TREE
    for _ in range(20):  # the listing is paginated through "Link: <...>; rel=next" headers
        if url is None:
            break
        try:
            with _request(url, 0, timeout) as response:
                items = json.load(response)
                link = re.search(r'<([^>]+)>;\s*rel="next"', response.headers.get("Link") or "")
        except (OSError, ValueError, HTTPException):
            return {}
        for item in items if isinstance(items, list) else []:
            lfs = item.get("lfs") if isinstance(item, dict) else None
            if isinstance(lfs, dict) and isinstance(lfs.get("oid"), str):
                sums[Path(str(item.get("path"))).name] = lfs["oid"]
        url = link.group(1) if link else None
    return sums


def download_kits19(folder: str | os.PathLike[str], cases: Sequence[int], progress: bool = True) -> Path:
    """Fetch ``case_XXXXX/{segmentation,imaging}.nii.gz`` into ``folder`` (the kits19 ``data/`` layout).

    Segmentations (cases < 210) come from the repository, imaging from its Hugging Face dataset with
    the listed SHA-256 (or, if the listing is unreachable, checked for length and gzip format only).
    """
    from tqdm.auto import tqdm

    folder = Path(folder).expanduser()
    todo = [c for c in cases if not (folder / f"case_{c:05d}" / "imaging.nii.gz").is_file()]
    ensure_disk_space(folder, 2 * len(todo) * KITS19_IMAGE_BYTES, f"{len(todo)} KiTS19 images (~110 MB each) + conversion")
    sums = kits19_checksums() if todo else {}
    if todo and not sums:
        print("tdseg prepare: note: the KiTS19 checksum listing is unreachable; checking length and format only")
    manual = ("on a machine with internet run `git clone https://github.com/neheller/kits19 && cd kits19 && "
              "python -m starter_code.get_imaging`, copy the clone here and pass --src /path/to/kits19")
    for case in tqdm(list(cases), desc="download KiTS19", unit="case", disable=not progress):
        where = folder / f"case_{case:05d}"
        if case in KITS19_LABELLED:
            download_file(KITS19_SEGMENTATION_URL.format(case=case), where / "segmentation.nii.gz",
                          progress=False, manual=manual)
        image = download_file([u.format(case=case) for u in KITS19_IMAGING_URLS], where / "imaging.nii.gz",
                              hash_val=sums.get(f"case_{case:05d}.nii.gz"), hash_type="sha256",
                              progress=progress, manual=manual)
        with open(image, "rb") as handle:
            if handle.read(2) != b"\x1f\x8b":
                image.unlink()
                raise UserInputError(f"{image}: must be a gzip NIfTI, got another kind of file (an error page?); "
                                     "it was deleted, run the command again")
    return folder


def _request(url: str, offset: int, timeout: float):  # -> http.client.HTTPResponse
    headers = {"User-Agent": f"tdseg_lite/{__version__}"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    return urlopen(Request(url, headers=headers), timeout=timeout)


def _range_total(content_range: str | None) -> tuple[int | None, int | None]:
    """``"bytes 100-199/1000"`` -> ``(100, 1000)``; ``"bytes */1000"`` -> ``(None, 1000)``."""
    match = re.match(r"bytes (?:(\d+)-\d+|\*)/(\d+|\*)", content_range or "")
    if not match:
        return None, None
    start, total = match.groups()
    return (int(start) if start else None), (int(total) if total and total != "*" else None)


def _unreachable(url: str, err: BaseException, manual: str) -> UserInputError:
    reason = getattr(err, "reason", err)
    return UserInputError(f"could not reach {url} (offline?): {' '.join(str(reason).split())}; {manual}")


def _open_at(url: str, part: Path, timeout: float, manual: str):
    """Open ``url`` to continue ``part``; returns ``(response or None, offset)``.

    ``None`` means ``part`` already holds the whole file (the server answered 416 at its size).
    """
    for _ in range(2):
        offset = part.stat().st_size if part.is_file() else 0
        try:
            response = _request(url, offset, timeout)
        except HTTPError as err:
            _, total = _range_total(err.headers.get("Content-Range") if err.headers else None)
            if err.code == 416 and offset and total == offset:
                return None, offset
            if err.code == 416 and offset:
                part.unlink()  # the .part is longer than the file: start over
                continue
            raise UserInputError(f"{url} answered HTTP {err.code} {err.reason}, got no file; check the URL or "
                                 f"the server status later; {manual}") from None
        except (URLError, OSError, HTTPException) as err:
            raise _unreachable(url, err, manual) from None
        start, _ = _range_total(response.headers.get("Content-Range"))
        if offset and (response.status != 206 or start != offset):
            return response, 0  # the server ignored the range: the body is the whole file
        return response, offset
    raise UserInputError(f"{url} refused to resume {part}, got HTTP 416 twice; delete {part} and run again")


def _stream(response, part: Path, offset: int, total: int | None, progress: bool, url: str) -> None:
    from tqdm.auto import tqdm

    mode = "ab" if offset else "wb"
    with open(part, mode) as out, tqdm(total=total, initial=offset, unit="B", unit_scale=True,
                                       unit_divisor=1024, desc=part.name[:-5], disable=not progress) as bar:
        try:
            for block in iter(lambda: response.read(CHUNK), b""):
                out.write(block)
                bar.update(len(block))
        except (OSError, HTTPException) as err:
            out.flush()
            raise UserInputError(
                f"download of {url} was interrupted after {part.stat().st_size / 1e6:.1f} MB, got "
                f"{type(err).__name__}: {' '.join(str(err).split())}; run the same command again to resume "
                f"from {part}") from None


def download_file(url: str | Sequence[str], dest: str | os.PathLike[str], *, hash_val: str | None = None,
                  hash_type: str = "md5", progress: bool = True, timeout: float = 60.0,
                  space_factor: float = 1.0, manual: str = "") -> Path:
    """Download ``url`` to ``dest`` with resume, disk-space check, length and checksum verification.

    Args:
        url: the URL, or mirrors tried in order (the first one's error is reported if all fail).
        dest: final file path; bytes accumulate in ``dest.part`` until verified.
        hash_val: expected hex digest; ``None`` skips the check (the length is still checked).
        hash_type: ``"md5"`` or ``"sha256"`` (any ``hashlib`` name).
        progress: show a ``tqdm.auto`` progress bar.
        timeout: seconds to wait for the server to answer a read.
        space_factor: free space required = remaining bytes x this (2 for "archive + extraction").
        manual: how to place the file by hand, appended to network errors
            (e.g. ``"download it on a machine with internet and pass --src /path/to/x.tar"``).

    Returns:
        ``dest``, verified. An existing ``dest`` with the right checksum is reused.
    """
    urls = [url] if isinstance(url, str) else list(url)
    dest = Path(dest).expanduser()
    manual = manual or f"download it on a machine with internet and place it at {dest}"
    if dest.is_file():
        if hash_val is None or file_hash(dest, hash_type) == hash_val.lower():
            return dest
        dest.unlink()  # a stale or corrupt earlier file: fetch it again
    dest.parent.mkdir(parents=True, exist_ok=True)
    first_error: UserInputError | None = None
    for candidate in urls:
        try:
            return _download_one(candidate, dest, hash_val, hash_type, progress, timeout, space_factor, manual)
        except UserInputError as err:
            if "could not reach" not in str(err) and "answered HTTP" not in str(err):
                raise  # checksum, disk space, interruption: another mirror would not help
            first_error = first_error or err
    raise first_error  # type: ignore[misc]


def _download_one(url: str, dest: Path, hash_val: str | None, hash_type: str, progress: bool,
                  timeout: float, space_factor: float, manual: str) -> Path:
    part = dest.with_name(dest.name + ".part")
    response, offset = _open_at(url, part, timeout, manual)
    total = offset
    if response is not None:
        with response:
            length = response.headers.get("Content-Length")
            total = offset + int(length) if length and length.isdigit() else None
            if total:
                ensure_disk_space(dest.parent, int((total - offset) * space_factor), f"{dest.name} ({total / _GB:.2f} GB)")
            _stream(response, part, offset, total, progress, url)
    size = part.stat().st_size
    if total is not None and size != total:
        raise UserInputError(f"{url} sent {size} of {total} bytes, got an incomplete file; run the same "
                             f"command again to resume from {part}")
    if hash_val is not None:
        got = file_hash(part, hash_type)
        if got != hash_val.lower():
            part.unlink()
            raise UserInputError(f"{url}: {hash_type} checksum must be {hash_val}, got {got}; the download was "
                                 "corrupted and has been deleted, run the command again to download it afresh")
    os.replace(part, dest)
    return dest


def is_junk(name: str) -> bool:
    """macOS metadata in archives: ``._*`` AppleDouble files, ``.DS_Store``, anything under ``__MACOSX/``."""
    parts = [p for p in name.replace("\\", "/").split("/") if p]
    return bool(parts) and ("__MACOSX" in parts or parts[-1].startswith("._") or parts[-1] == ".DS_Store")


def safe_member_path(name: str, target: Path, archive: Path) -> Path | None:
    """Where member ``name`` may be written under ``target``; ``None`` for the archive root itself.

    Raises:
        UserInputError: an absolute path, a drive letter or a ``..`` component (path traversal).
    """
    norm = name.replace("\\", "/")
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm):
        raise UserInputError(f"{archive}: member {name!r} must be a relative path, got an absolute path; refusing "
                             "to extract anything (the archive is unsafe or corrupt: download it again from the "
                             "official source)")
    parts = [p for p in norm.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UserInputError(f"{archive}: member {name!r} must stay inside {target}, got a '..' path that escapes "
                             "it; refusing to extract anything (the archive is unsafe or corrupt: download it "
                             "again from the official source)")
    if not parts:
        return None
    path = target.joinpath(*parts)
    root = os.path.realpath(target)
    if os.path.commonpath([root, os.path.realpath(path)]) != root:
        raise UserInputError(f"{archive}: member {name!r} must stay inside {target}, got a path that resolves "
                             f"outside it through an existing link; refusing to extract anything")
    return path


def _tar_plan(archive: Path, target: Path) -> list[tuple[tarfile.TarInfo, Path]]:
    plan, declared = [], 0
    with tarfile.open(archive, "r:*") as tar:
        for member in tar:  # lazily: a bomb is refused at its first huge header, before its data is decompressed
            declared += member.size if member.isfile() else 0
            _check_expansion(archive, declared)
            path = safe_member_path(member.name, target, archive)
            if not (member.isfile() or member.isdir()):
                kind = ("a symbolic link" if member.issym() else "a hard link" if member.islnk()
                        else "a device file" if member.isdev() else "a special file")
                raise UserInputError(f"{archive}: member {member.name!r} must be a regular file or folder, got "
                                     f"{kind}; refusing to extract anything (links and devices could write "
                                     "outside the target folder)")
            if path is not None and member.isfile() and not is_junk(member.name):
                plan.append((member, path))
    return plan


def _zip_plan(archive: Path, target: Path) -> list[tuple[zipfile.ZipInfo, Path]]:
    plan = []
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            path = safe_member_path(info.filename, target, archive)
            kind = stat.S_IFMT(info.external_attr >> 16)  # Unix file type, 0 when not recorded
            if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
                raise UserInputError(f"{archive}: member {info.filename!r} must be a regular file or folder, got "
                                     "a link or special file; refusing to extract anything")
            if path is not None and not info.is_dir() and not is_junk(info.filename):
                plan.append((info, path))
    return plan


def extract_archive(archive: str | os.PathLike[str], target: str | os.PathLike[str], *,
                    progress: bool = True) -> list[Path]:
    """Extract a tar (any compression) or zip into ``target`` after validating every member.

    Args:
        archive: the ``.tar``, ``.tar.gz`` or ``.zip`` file.
        target: folder to extract into (created).
        progress: show a ``tqdm.auto`` progress bar over the bytes.

    Returns:
        The extracted files (macOS junk skipped). Each file is written to ``<name>.part`` and
        renamed when complete, so an interrupted extraction never leaves a truncated file.

    Raises:
        UserInputError: not a tar/zip, an unsafe member (nothing is written then), too little disk.
    """
    from tqdm.auto import tqdm

    archive, target = Path(archive).expanduser(), Path(target).expanduser()
    is_zip = zipfile.is_zipfile(archive)
    if not is_zip and not tarfile.is_tarfile(archive):
        raise UserInputError(f"{archive}: must be a .tar or .zip archive, got a file that is neither; download it "
                             "again (an interrupted download is not an archive) or pass the extracted folder")
    plan = _zip_plan(archive, target) if is_zip else _tar_plan(archive, target)
    total = sum(m.file_size if is_zip else m.size for m, _ in plan)
    _check_expansion(archive, total)
    ensure_disk_space(target, total, f"extracting {archive.name} ({total / _GB:.2f} GB)")
    target.mkdir(parents=True, exist_ok=True)  # only now: a refused archive leaves no folder behind
    written: list[Path] = []
    try:
        with (zipfile.ZipFile(archive) if is_zip else tarfile.open(archive, "r:*")) as handle, \
                tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=f"extract {archive.name}",
                     disable=not progress) as bar:
            for member, path in plan:
                declared = member.file_size if is_zip else member.size
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(path.name + ".part")
                written.append(tmp)
                done = 0
                with (handle.open(member) if is_zip else handle.extractfile(member)) as src, open(tmp, "wb") as out:
                    for block in iter(lambda: src.read(CHUNK), b""):
                        done += len(block)
                        if done > declared:
                            raise UserInputError(f"{archive}: member {path.name!r} must hold the {declared:,} bytes "
                                                 "it declares, got more; refusing it (a corrupt or malicious "
                                                 "archive: download it again)")
                        out.write(block)
                        bar.update(len(block))
                os.replace(tmp, path)
                written.append(path)
    except BaseException:
        for f in written:  # a failed extraction leaves nothing of its own behind
            f.unlink(missing_ok=True)
        raise
    return [path for _, path in plan]


def max_extract_bytes() -> float:
    """The total-size cap of one extraction in bytes (``$TDSEG_MAX_EXTRACT_GB`` or ``MAX_EXTRACT_GB``)."""
    raw = os.environ.get("TDSEG_MAX_EXTRACT_GB", "")
    try:
        gb = float(raw) if raw else MAX_EXTRACT_GB
    except ValueError:
        gb = -1.0
    if not gb > 0:
        raise UserInputError(f"`TDSEG_MAX_EXTRACT_GB` must be a positive number, got {raw!r}. Unset it or set "
                             "e.g. TDSEG_MAX_EXTRACT_GB=500.")
    return gb * _GB


def _check_expansion(archive: Path, total: int) -> None:
    """Refuse an archive whose members declare more bytes than the cap, or far more than it could hold."""
    cap = max_extract_bytes()
    if total > cap:
        raise UserInputError(f"{archive}: must expand to at most {cap / _GB:g} GB, got members declaring "
                             f"{total / _GB:.2f} GB; refusing to extract anything (set TDSEG_MAX_EXTRACT_GB to "
                             "extract a larger archive you trust)")
    raw = os.environ.get("TDSEG_MAX_EXTRACT_RATIO", "")
    ratio = float(raw) if raw.replace(".", "", 1).isdigit() else MAX_EXTRACT_RATIO
    size = max(archive.stat().st_size, 1)
    if total > _RATIO_FLOOR and total > ratio * size:
        raise UserInputError(f"{archive}: must expand at most {ratio:g}x its size, got {size / 2**20:.1f} MiB "
                             f"declaring {total / 2**20:.0f} MiB ({total / size:.0f}x: a decompression bomb, not a "
                             "CT archive); refusing to extract anything (set TDSEG_MAX_EXTRACT_RATIO for an archive "
                             "you trust)")

