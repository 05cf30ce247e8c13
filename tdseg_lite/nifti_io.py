"""Reading and writing NIfTI volumes for ``tdseg predict`` and ``tdseg evaluate``, every problem one line.

``check_ct`` reads a CT the user hands us: a ``.nii``/``.nii.gz`` file whose header is checked
against the file and a size cap before any voxel is read (``check_header``: a header that claims
2000³ voxels in a file holding 64 fails at once, without allocating), then 3D, finite, raw HU.
``read_label`` reads a label file as class indices; ``save_nifti`` writes a volume with another
image's affine and codes, atomically.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tdseg_lite.errors import UserInputError, require

__all__ = ["HU_MAX", "HU_MIN", "MIN_HU_SPAN", "NIFTI_SUFFIXES", "check_ct", "check_header", "header_problem",
           "is_nifti", "max_voxels", "read_label", "save_nifti"]

#: plausible raw CT values (HU): scanners pad outside the field of view with -1024, -2048 or -3024
HU_MIN, HU_MAX = -3100.0, 5000.0
#: a real CT spans air (-1000 HU) to soft tissue at least; a smaller span means normalised data
MIN_HU_SPAN = 50.0
NIFTI_SUFFIXES = (".nii", ".nii.gz")
#: default cap on the voxels of one volume (2^29 ≈ 537 M, e.g. 1024 × 1024 × 512); $TDSEG_MAX_VOXELS overrides it
MAX_VOXELS = 2**29
#: deflate never compresses better than about 1032 : 1, so a .gz smaller than data / this cannot hold the data
_MAX_DEFLATE_RATIO = 1100


def max_voxels() -> int:
    """The voxel cap: ``$TDSEG_MAX_VOXELS`` when set (a positive integer), else ``MAX_VOXELS``."""
    raw = os.environ.get("TDSEG_MAX_VOXELS", "")
    require(not raw or (raw.isdigit() and int(raw) > 0), "TDSEG_MAX_VOXELS", "must be a positive integer", raw,
            "Unset it or set e.g. TDSEG_MAX_VOXELS=1073741824.", UserInputError)
    return int(raw) if raw else MAX_VOXELS


def is_nifti(path: Path) -> bool:
    """True for a ``.nii`` or ``.nii.gz`` name (any case)."""
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def _load(p: Path, what: str) -> Any:
    """``nibabel.load`` with a one-line error (nibabel's own text never leaks into it)."""
    import nibabel as nib

    try:
        return nib.load(str(p))
    except Exception:  # noqa: BLE001 - nibabel raises many types for truncated or foreign files
        raise UserInputError(f"`{p}` must be a readable NIfTI {what}, got a file without a valid NIfTI header. "
                             "Re-export it as .nii or .nii.gz.") from None


def _array(img: Any, p: Path) -> Any:
    """The voxel array with a one-line error for a truncated or corrupt data block."""
    import numpy as np

    try:
        return np.asanyarray(img.dataobj)
    except Exception as err:  # noqa: BLE001 - EOFError, zlib.error, ValueError, OSError ...
        raise UserInputError(f"`{p}` must hold the voxels its header declares, got a truncated or corrupt data "
                             f"block ({type(err).__name__}). Re-export the file.") from None


def _gzip_size(p: Path) -> int:
    """The uncompressed size modulo 2^32 stored in the last 4 bytes of a gzip file (its ISIZE field)."""
    with p.open("rb") as fh:
        fh.seek(-4, os.SEEK_END)
        return int.from_bytes(fh.read(4), "little")


def header_problem(img: Any, path: str | os.PathLike[str]) -> tuple[str, str, str] | None:
    """``(rule, got, fix)`` when a loaded NIfTI header's shape × dtype does not fit its file or the voxel cap.

    Rules: at most ``max_voxels()`` voxels, and a file that can hold them (``.nii``: offset + data <= file
    size; ``.nii.gz``: the stored uncompressed size, and a compressed size that deflate could reach).
    Nothing is read but the header and the last 4 bytes of a ``.gz``.
    """
    import math

    p = Path(path).expanduser()
    shape = tuple(int(n) for n in img.shape)
    dtype = img.get_data_dtype()
    voxels = math.prod(shape)
    cap = max_voxels()
    if voxels > cap:
        return (f"must hold at most {cap:,} voxels", f"a header declaring shape {shape} ({voxels:,} voxels)",
                "Crop or downsample it, or raise TDSEG_MAX_VOXELS if it is real.")
    nbytes = voxels * dtype.itemsize
    need = int(img.header.get_data_offset()) + nbytes
    size = p.stat().st_size
    if p.name.lower().endswith(".gz"):
        held = _gzip_size(p) if size >= 18 else 0
        short = (need < 2**32 and held < need) or size * _MAX_DEFLATE_RATIO < need
    else:
        held, short = size, size < need
    if short:
        return (f"must hold the {nbytes:,} bytes of voxels its header declares (shape {shape}, {dtype})",
                f"a file with {held:,} bytes", "The file is truncated or its header is wrong: re-export it.")
    return None


def check_header(path: str | os.PathLike[str], what: str = "volume") -> dict[str, Any]:
    """Check a NIfTI header against the file before any voxel is read (nothing is allocated): ``header_problem``.

    Returns:
        ``{"image": the lazy nibabel image, "shape", "zooms", "dtype", "nbytes"}``.

    Raises:
        UserInputError: one line naming the file, what the header claims and what the file holds.
    """
    import math

    p = Path(path).expanduser()
    img = _load(p, what)
    problem = header_problem(img, p)
    if problem is not None:
        rule, got, fix = problem
        raise UserInputError(f"`{p}` {rule}, got {got}. {fix}")
    shape = tuple(int(n) for n in img.shape)
    dtype = img.get_data_dtype()
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    return {"image": img, "shape": shape, "zooms": zooms, "dtype": dtype, "nbytes": math.prod(shape) * dtype.itemsize}


def check_ct(path: str | os.PathLike[str]) -> Any:
    """Load and check a raw CT NIfTI; return the ``nibabel`` image.

    Rules: a ``.nii``/``.nii.gz`` file that nibabel reads; 3D, or 4D with a singleton last axis;
    finite values; raw HU (min >= ``HU_MIN``, max <= ``HU_MAX``, a span of at least ``MIN_HU_SPAN``).

    Raises:
        UserInputError: one line naming the file, the value, the rule and the fix.
    """
    import numpy as np

    p = Path(path).expanduser()
    require(p.is_file(), str(p), "must be an existing file", "no such file", "Check the --input path.",
            UserInputError)
    require(is_nifti(p), str(p), "must be a NIfTI file (.nii or .nii.gz)", p.suffix or "no suffix",
            "Convert it first, e.g. with dcm2niix or SimpleITK.", UserInputError)
    img = check_header(p, "CT")["image"]  # before any voxel is read
    shape = tuple(int(s) for s in img.shape)
    if not (len(shape) == 3 or (len(shape) == 4 and shape[3] == 1)):
        raise UserInputError(f"`{p}` must be a 3D volume (or 4D with a singleton last axis), got shape {shape}. "
                             "Pass one CT volume (split multi-channel or time series files).")
    data = _array(img, p)
    if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).sum())
        raise UserInputError(f"`{p}` must hold finite values, got {bad} NaN/inf voxel(s). "
                             "Replace them (e.g. with -1024 HU) before predicting.")
    _check_hu(p, float(data.min()), float(data.max()))
    return img


def _check_hu(p: Path, lo: float, hi: float) -> None:
    """Raise unless ``lo..hi`` looks like raw Hounsfield units."""
    if hi - lo < MIN_HU_SPAN or (lo >= 0.0 and hi <= 1.0):
        raise UserInputError(f"`{p}` must hold raw HU (air -1000 to tissue > 0), got values {lo:g}..{hi:g}: looks "
                             "normalised, pass raw HU.")
    if lo < HU_MIN or hi > HU_MAX:
        raise UserInputError(f"`{p}` must hold HU in [{HU_MIN:g}, {HU_MAX:g}], got {lo:g}..{hi:g}. Pass raw HU "
                             "(apply the DICOM rescale slope/intercept; clip metal above 3071).")


def read_label(path: str | os.PathLike[str]) -> tuple[Any, list[float]]:
    """A label file as (1, 1, X, Y, Z) int64 class indices in its own grid, and its voxel size (mm)."""
    import numpy as np
    import torch

    p = Path(path)
    img = check_header(p, "label")["image"]
    arr = _array(img, p)
    arr = arr.reshape(arr.shape[:3])  # MSD labels are 3D (a singleton 4th axis is dropped)
    return torch.from_numpy(arr.astype(np.int64))[None, None], [float(z) for z in img.header.get_zooms()[:3]]


def save_nifti(array: Any, like: Any, path: str | os.PathLike[str]) -> Path:
    """Write ``array`` (X0, Y0, Z0) with the affine, qform/sform codes and units of ``like``, atomically."""
    import gzip

    import nibabel as nib

    from tdseg_lite.utils import atomic_write_bytes

    out = nib.Nifti1Image(array, like.affine)
    out.header.set_xyzt_units(*like.header.get_xyzt_units())
    out.set_sform(like.affine, int(like.header["sform_code"]) or 1)
    out.set_qform(like.affine, int(like.header["qform_code"]) or 1)
    p = Path(path)
    raw = out.to_bytes()
    atomic_write_bytes(p, gzip.compress(raw, compresslevel=6) if p.name.lower().endswith(".gz") else raw)
    return p
