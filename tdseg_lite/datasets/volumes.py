"""Volumes for ``tdseg prepare``: reading, RAS reorientation, resampling, writing, and descriptions.

``convert_case`` turns one source image (+ label) into the common layout: it trusts the affine and
reorients to RAS (an exact flip/permutation of the array, no interpolation), optionally resamples
to a voxel size over the same field of view (image linear, label nearest), and writes NIfTI with
qform = sform = the affine. CT stays in HU (``int16`` when the source values are whole numbers),
labels become ``uint8``.

The ``describe_*`` functions turn a label map into the per-case ``description`` of ``dataset.json``
(``docs/design.md`` §7), e.g. KiTS19 ``"a 4.1 cm tumour in the left kidney; right kidney normal"``:

* size = diameter of the sphere with the volume of the largest connected component
  (26-connectivity), using the voxel spacing from the affine;
* laterality from world coordinates: in RAS+ (NIfTI), +x points to the patient's right, so the
  structure whose centroid has the larger x is on the right; the midline is halfway between two
  kidneys, else the centroid of the body (HU > -500), else the centre of the field of view.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tdseg_lite.errors import UserInputError

__all__ = [
    "MIN_LESION_MM3",
    "SPACING_RANGE",
    "convert_case",
    "describe_kits19",
    "describe_lesions",
    "describe_organs",
    "diameter_cm",
    "label_array",
    "link_or_copy",
    "load_volume",
    "resample",
    "save_volume",
    "write_case",
    "write_test_case",
]

MIN_LESION_MM3 = 20.0  # lesion fragments smaller than this (~3.4 mm across) are annotation noise


# ----------------------------------------------------------------------------- descriptions
def _components(mask: np.ndarray, affine: np.ndarray) -> list[tuple[float, np.ndarray]]:
    """``(volume mm³, world centroid (3,))`` of each 26-connected component of ``mask``, largest first."""
    from scipy import ndimage

    if not mask.any():
        return []
    box = ndimage.find_objects(mask.astype(np.uint8))[0]  # crop first: whole CT volumes are large
    sub = mask[box]
    labels, n = ndimage.label(sub, structure=np.ones((3, 3, 3)))
    counts = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    centres = ndimage.center_of_mass(sub, labels, range(1, n + 1))
    corner = np.array([s.start for s in box], dtype=float)
    voxel = abs(float(np.linalg.det(affine[:3, :3])))
    comps = [(float(c) * voxel, affine[:3, :3] @ (np.asarray(m) + corner) + affine[:3, 3]) for c, m in zip(counts, centres)]
    return sorted(comps, key=lambda comp: -comp[0])


def diameter_cm(volume_mm3: float) -> float:
    """Diameter (cm) of the sphere with this volume: the lesion size reported in descriptions."""
    return 2.0 * (3.0 * volume_mm3 / (4.0 * np.pi)) ** (1.0 / 3.0) / 10.0


def _tumour_phrase(volumes: list[float], where: str) -> str:
    size = diameter_cm(max(volumes))
    if len(volumes) == 1:
        return f"a {size:.1f} cm tumour in {where}"
    return f"{len(volumes)} tumours in {where}, the largest {size:.1f} cm"


def _midline_x(kidneys: list[tuple[float, np.ndarray]], affine: np.ndarray, shape: Sequence[int],
               image: np.ndarray | None) -> float:
    """World x of the patient's midline: between two kidneys, else the body (HU > -500), else the FOV."""
    if len(kidneys) >= 2 and abs(kidneys[0][1][0] - kidneys[1][1][0]) > 40.0:
        return float(kidneys[0][1][0] + kidneys[1][1][0]) / 2.0
    centre = (np.asarray(shape[:3], dtype=float) - 1) / 2.0
    body = None if image is None else image > -500
    if body is not None and body.any():  # centroid of the body from its projections (cheap on large volumes)
        centre = np.array([np.average(np.arange(n), weights=body.sum(axis=tuple(a for a in range(3) if a != axis)))
                           for axis, n in enumerate(body.shape)])
    return float((affine[:3, :3] @ centre + affine[:3, 3])[0])


def describe_kits19(label: np.ndarray, affine: np.ndarray, image: np.ndarray | None = None) -> str:
    """``"a 4.1 cm tumour in the left kidney; right kidney normal"`` from a KiTS19 label map.

    Args:
        label: ``(X, Y, Z)`` 0 background, 1 kidney, 2 tumour; any orientation.
        affine: its voxel-to-world (RAS+) matrix: +x is the patient's right.
        image: the CT in HU, used for the body midline when only one kidney is visible.
    """
    kidneys = _components(label > 0, affine)
    if not kidneys:
        return "no kidney in view"
    kidneys = [k for k in kidneys if k[0] >= 0.1 * kidneys[0][0]]  # drop small fragments
    midline = _midline_x(kidneys, affine, label.shape, image)
    side = lambda centre: "right" if centre[0] > midline else "left"  # RAS+: +x is the patient's right
    tumours: dict[str, list[float]] = {"left": [], "right": []}
    for volume, centre in _components(label == 2, affine):
        if volume >= MIN_LESION_MM3:
            tumours[side(centre)].append(volume)
    present = {side(centre) for _, centre in kidneys}
    if not tumours["left"] and not tumours["right"] and present == {"left", "right"}:
        return "no tumour; both kidneys normal"
    parts = [_tumour_phrase(tumours[s], f"the {s} kidney") for s in ("left", "right") if tumours[s]]
    parts += [f"{s} kidney normal" if s in present else f"no {s} kidney" for s in ("left", "right") if not tumours[s]]
    return "; ".join(parts)


def describe_lesions(label: np.ndarray, affine: np.ndarray, organ: str, organ_label: int | None,
                     lesion_label: int | None) -> str:
    """MSD-style description: ``"2 tumours in the liver, the largest 4.1 cm"``, ``"a spleen of 215 mL"``."""
    voxel = abs(float(np.linalg.det(affine[:3, :3])))
    if lesion_label is None:
        return f"a {organ} of {np.count_nonzero(label == organ_label) * voxel / 1000.0:.0f} mL"
    volumes = [v for v, _ in _components(label == lesion_label, affine) if v >= MIN_LESION_MM3]
    if volumes:
        return _tumour_phrase(volumes, f"the {organ}")
    return f"{organ} without tumour" if organ_label is not None and (label == organ_label).any() else "no tumour"


def describe_organs(label: np.ndarray, affine: np.ndarray, names: dict[str, str]) -> str:
    """BTCV-style: which organs are absent, and the two largest organs' volumes in mL."""
    counts = np.bincount(label.ravel().astype(np.int64), minlength=len(names))
    voxel = abs(float(np.linalg.det(affine[:3, :3])))
    organs = [int(k) for k in names if k != "0"]
    absent = [names[str(k)] for k in organs if counts[k] == 0]
    largest = sorted((k for k in organs if counts[k]), key=lambda k: -counts[k])[:2]
    sizes = ", ".join(f"{names[str(k)]} {counts[k] * voxel / 1000.0:.0f} mL" for k in largest)
    if not absent:
        return f"all {len(organs)} organs present; {sizes}"
    return f"{' and '.join(absent)} not present; {len(organs) - len(absent)} organs labelled; {sizes}"


# ----------------------------------------------------------------------------- volumes
def load_volume(path: Path, what: str) -> Any:
    """A 3D NIfTI (``(X, Y, Z, 1)`` squeezed); multi-channel or unreadable files -> ``UserInputError``."""
    import nibabel as nib

    try:
        img = nib.load(path)
    except Exception as err:  # noqa: BLE001 - nibabel raises many types for corrupt or foreign files
        raise UserInputError(f"{path}: {what} must be a readable NIfTI file, got {type(err).__name__}: "
                             f"{' '.join(str(err).split())[:100]}; download or export it again") from None
    shape = tuple(img.shape)
    if len(shape) == 4 and shape[3] == 1:
        return img.slicer[..., 0]
    if len(shape) != 3:
        raise UserInputError(f"{path}: {what} must be 3D (X, Y, Z) or 4D with one channel, got shape {shape}; "
                             "tdseg prepare converts single-channel CT only (multi-channel MRI tasks are not supported)")
    return img


def _ct_array(img: Any) -> np.ndarray:
    """Voxels in HU: ``int16`` when they are whole numbers that fit, else ``float32``."""
    raw = np.asanyarray(img.dataobj)
    if raw.size and raw.min() >= -32768 and raw.max() <= 32767 and (raw.dtype.kind in "iub" or np.array_equal(np.round(raw), raw)):
        return raw.astype(np.int16, copy=False)
    return raw.astype(np.float32, copy=False)


def label_array(img: Any, path: Path) -> np.ndarray:
    """The label map as ``uint8`` class indices; non-integer or out-of-range values -> ``UserInputError``."""
    raw = np.asanyarray(img.dataobj)
    if raw.dtype.kind == "f" and not np.array_equal(np.round(raw), raw):
        raise UserInputError(f"{path}: label values must be integers, got non-integer values; use the original "
                             "label file (a label resampled with linear interpolation is not a label map)")
    if raw.size and (raw.min() < 0 or raw.max() > 255):
        raise UserInputError(f"{path}: label values must be class indices 0-255, got {raw.min()}..{raw.max()}; "
                             "pass the label map, not an image")
    return raw.astype(np.uint8, copy=False)


#: voxel sizes (mm) that ``--spacing`` accepts (``tdseg prepare``, ``tdseg phantom --labels-from``)
SPACING_RANGE = (0.05, 20.0)


def resample(array: np.ndarray, affine: np.ndarray, spacing: Sequence[float], label: bool) -> tuple[np.ndarray, np.ndarray]:
    """Resample ``(X, Y, Z)`` to ``spacing`` mm per array axis over the same field of view.

    The new grid's first and last voxel edges sit on the old ones (rounded to whole voxels); new
    voxel ``i`` samples old index ``i * s + (s - 1) / 2`` with ``s = new / old spacing``. Labels
    use nearest neighbour, images linear interpolation (rounded back to ``int16`` if integer).

    Returns:
        ``(array, affine)`` on the new grid.
    """
    from scipy import ndimage

    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    scale = np.asarray(spacing, dtype=float) / zooms
    shape = tuple(int(n) for n in np.maximum(1, np.round(np.asarray(array.shape) / scale)))
    offset = 0.5 * scale - 0.5
    if label:
        out = ndimage.affine_transform(array, scale, offset, output_shape=shape, order=0, mode="nearest")
    else:
        out = ndimage.affine_transform(array.astype(np.float32), scale, offset, output_shape=shape, order=1,
                                       mode="nearest", output=np.float32)
        out = np.rint(out).astype(np.int16) if array.dtype == np.int16 else out
    new = affine.copy()
    new[:3, :3] = affine[:3, :3] * scale
    new[:3, 3] = affine[:3, :3] @ offset + affine[:3, 3]
    return out, new


def save_volume(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """Write a NIfTI with qform = sform = ``affine`` (code 1, scanner), mm units, atomically."""
    import nibabel as nib

    img = nib.Nifti1Image(np.ascontiguousarray(array), affine)
    img.set_qform(affine, 1)
    img.set_sform(affine, 1)
    img.header.set_xyzt_units("mm")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".part_{path.name}")
    nib.save(img, tmp)
    os.replace(tmp, path)


def convert_case(image_path: Path, label_path: Path | None, out_image: Path, out_label: Path | None,
                 spacing: Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Reorient one image (+ label) to RAS, optionally resample, and write them.

    Returns:
        ``(image (X, Y, Z) HU, label (X, Y, Z) uint8 or None, affine (4, 4))`` as written.
    """
    import nibabel as nib
    from nibabel import orientations as ornts

    img = load_volume(image_path, "image")
    ornt = ornts.io_orientation(img.affine)
    affine = img.affine @ ornts.inv_ornt_aff(ornt, img.shape)
    image = ornts.apply_orientation(_ct_array(img), ornt)
    label = None
    if label_path is not None:
        lab = load_volume(label_path, "label")
        zooms = nib.affines.voxel_sizes(img.affine)
        diff = float(np.abs(lab.affine - img.affine).max())
        if lab.shape != img.shape or diff > 0.01 * float(min(zooms)):
            raise UserInputError(f"{label_path}: label grid must match the image {image_path.name} (shape "
                                 f"{img.shape}), got shape {lab.shape} and affines {diff:.3g} mm apart; check "
                                 "that the files belong to the same case")
        label = ornts.apply_orientation(label_array(lab, label_path), ornt)  # takes the image affine
    if spacing is not None:
        image, new_affine = resample(image, affine, spacing, label=False)
        label = None if label is None else resample(label, affine, spacing, label=True)[0]
        affine = new_affine
    save_volume(image, affine, out_image)
    if label is not None and out_label is not None:
        save_volume(label, affine, out_label)
    return image, label, affine


# ----------------------------------------------------------------------------- cases
def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link ``src`` to ``dst`` (no extra disk), or copy where links are impossible."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _linkable(image: Path, label: Path | None) -> bool:
    """True when the files can be used as they are: 3D, and the label on the image's grid."""
    import nibabel as nib

    from tdseg_lite.validate import AFFINE_ATOL, AFFINE_RTOL

    img = load_volume(image, "image")
    if len(nib.load(image).shape) != 3:  # (X, Y, Z, 1): rewrite it squeezed
        return False
    if label is None:
        return True
    lab = load_volume(label, "label")
    return lab.shape == img.shape and np.allclose(lab.affine, img.affine, rtol=AFFINE_RTOL, atol=AFFINE_ATOL)


def write_case(image: Path, label: Path, out: Path, name: str, spacing: Sequence[float] | None, overwrite: bool,
               link: bool = False, need_image: bool = False) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """Write one training case to ``out/imagesTr/name`` and ``out/labelsTr/name``.

    Finished outputs are reused unless ``overwrite`` (resume). ``link``: hard-link 3D files on a
    shared grid when ``spacing`` is ``None`` instead of rewriting them (MSD).

    Returns:
        ``(image, label, affine)`` as written, for the description; the image is ``None`` for linked
        files, and for reused ones unless ``need_image``.
    """
    img_out, lab_out = out / "imagesTr" / name, out / "labelsTr" / name
    if img_out.is_file() and lab_out.is_file() and not overwrite:
        lab = load_volume(lab_out, "label")
        image = np.asanyarray(load_volume(img_out, "image").dataobj) if need_image else None
        return image, label_array(lab, lab_out), lab.affine
    if link and spacing is None and _linkable(image, label):
        link_or_copy(image, img_out)
        link_or_copy(label, lab_out)
        lab = load_volume(label, "label")
        return None, label_array(lab, label), lab.affine
    return convert_case(image, label, img_out, lab_out, spacing)  # type: ignore[return-value]


def write_test_case(image: Path, out: Path, name: str, spacing: Sequence[float] | None, overwrite: bool,
                    link: bool = False) -> str:
    """Write one unlabelled case to ``out/imagesTs/name`` (see ``write_case``); returns its dataset.json path."""
    dst = out / "imagesTs" / name
    if overwrite or not dst.is_file():
        if link and spacing is None and _linkable(image, None):
            link_or_copy(image, dst)
        else:
            convert_case(image, None, dst, None, spacing)
    return f"./imagesTs/{name}"
