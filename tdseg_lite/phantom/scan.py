"""The "scanner" of the CT phantom: tissue map -> HU image, label sets, orientation and affine.

* ``render``: per-case tissue means drawn inside ``HU_RANGES``, a smooth texture, a mean per
  tumour, Gaussian partial-volume blur, correlated Gaussian noise, clipping to [-1024, 3071]. Its
  steps (``tissue_means``, ``texture_sd``, ``tumour_offsets``, ``partial_volume``, ``noise_gain``)
  also paint real label maps (``labels_paint``).
* ``label_map``: organ map -> KiTS19 / MSD pancreas / BTCV-subset labels (``LABEL_SETS``).
* ``reorient`` / ``affine_for``: the canonical RAS arrays -> any axis order such as ``"LPS"`` or
  ``"IPL"``, with the NIfTI affine (voxel index -> RAS+ mm) that keeps world positions;
  ``nifti_gz``: the bytes of the gzipped NIfTI file written with that affine.
* ``hu_statistics``: pooled HU mean/SD per tissue or label (the realism table of notebook 00).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from tdseg_lite.phantom.anatomy import (
    HU_RANGES,
    ORGANS,
    TEXTURE_HU,
    TISSUES,
    Grid,
    T,
    smooth_field,
)

__all__ = [
    "LABEL_SETS", "affine_for", "case_grid", "hu_statistics", "label_map", "nifti_gz", "noise_gain", "partial_volume",
    "render", "reorient", "texture_sd", "tissue_means", "tumour_offsets",
]

#: task -> label id -> name. kidney: KiTS19; pancreas: MSD Task07; multiorgan: BTCV names of
#: the organs the phantom models, renumbered 1..9 in BTCV order (BTCV ids 1,2,3,4,6,7,8,9,11).
LABEL_SETS: dict[str, dict[int, str]] = {
    "kidney": {0: "background", 1: "kidney", 2: "tumor"},
    "pancreas": {0: "background", 1: "pancreas", 2: "cancer"},
    "multiorgan": {0: "background", 1: "spleen", 2: "right kidney", 3: "left kidney", 4: "gallbladder",
                   5: "liver", 6: "stomach", 7: "aorta", 8: "inferior vena cava", 9: "pancreas"},
}
#: orientation letter -> (world axis, sign): the direction an array axis grows toward.
AXIS: dict[str, tuple[int, int]] = {"R": (0, 1), "L": (0, -1), "A": (1, 1), "P": (1, -1), "S": (2, 1), "I": (2, -1)}


def case_grid(shape: tuple[int, int, int], spacing: tuple[float, float, float], anisotropic: bool,
              rng: np.random.Generator) -> Grid:
    """The canonical grid of a case; ``anisotropic`` keeps the field of view but draws a finer
    or coarser in-plane spacing (x0.8-1.15) and 1.4-2x thicker slices."""
    if not anisotropic:
        return Grid.centred(shape, spacing)
    f_xy, f_z = rng.uniform(0.8, 1.15), rng.uniform(1.4, 2.0)
    new = (spacing[0] * f_xy, spacing[1] * f_xy, spacing[2] * f_z)
    dims = tuple(max(16, round(n * s / t)) for n, s, t in zip(shape, spacing, new))
    return Grid.centred(dims, new)


def reorient(arr: np.ndarray, code: str) -> np.ndarray:
    """Canonical RAS array (X, Y, Z) -> array whose axes grow toward the letters of ``code``."""
    out = np.transpose(arr, [AXIS[c][0] for c in code])
    for k, c in enumerate(code):
        if AXIS[c][1] < 0:
            out = np.flip(out, axis=k)
    return np.ascontiguousarray(out)


def affine_for(grid: Grid, code: str) -> np.ndarray:
    """(4, 4) affine of ``reorient(canonical, code)``: voxel index -> RAS+ mm."""
    axes, aff = (grid.xs, grid.ys, grid.zs), np.eye(4)
    aff[:3, 3] = [float(a[0]) for a in axes]
    for k, c in enumerate(code):
        w, sign = AXIS[c]
        aff[:3, k] = 0.0
        aff[w, k] = sign * grid.spacing[w]
        if sign < 0:
            aff[w, 3] = float(axes[w][-1])
    return aff


def nifti_gz(arr: np.ndarray, affine: np.ndarray) -> bytes:
    """Bytes of a gzipped NIfTI-1 file (deterministic: no name or time in the gzip header)."""
    import gzip

    import nibabel as nib

    img = nib.Nifti1Image(arr, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return gzip.compress(img.to_bytes(), compresslevel=1, mtime=0)


def tissue_means(rng: np.random.Generator) -> np.ndarray:
    """One case's mean HU per tissue id, drawn from the middle half of each ``HU_RANGES`` entry
    (air fixed at -1000 HU, bowel gas in [-1000, -960])."""
    base = np.array([rng.uniform(lo + (hi - lo) / 4, hi - (hi - lo) / 4) for lo, hi in HU_RANGES.values()])
    base[T["air"]], base[T["bowel gas"]] = -1000.0, rng.uniform(-1000.0, -960.0)
    return base


def texture_sd() -> np.ndarray:
    """SD (HU) of the smooth texture per tissue id (``TEXTURE_HU``, 0 for the others)."""
    return np.array([TEXTURE_HU.get(name, 0.0) for name in TISSUES], np.float32)


def tumour_offsets(tumours: dict[int, str], base: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(256,) HU added to each tumour id's voxels: its own mean inside the host's tumour range."""
    offset = np.zeros(256, np.float32)
    for tid, host in sorted(tumours.items()):
        kind = "pancreas tumour" if host == "pancreas" else "kidney tumour"
        lo, hi = HU_RANGES[kind]
        margin = (hi - lo) / (8 if kind == "kidney tumour" else 4)  # kidney tumours vary widely
        offset[tid] = rng.uniform(lo + margin, hi - margin) - base[T[kind]]
    return offset


def partial_volume(img: np.ndarray, spacing: tuple[float, ...], blur_mm: float) -> np.ndarray:
    """Gaussian partial-volume blur of SD ``blur_mm`` (mm) on a grid of ``spacing`` (mm)."""
    from scipy import ndimage

    if blur_mm <= 0:
        return img
    return ndimage.gaussian_filter(img, [blur_mm / s for s in spacing], mode="nearest", truncate=3.0)


#: SD (voxels) of the Gaussian that correlates the noise, and the voxels it reaches.
NOISE_SIGMA, NOISE_REACH = 0.6, 2


def noise_gain(rng: np.random.Generator, noise_hu: float) -> float:
    """Factor that gives white noise smoothed by ``NOISE_SIGMA`` the case's SD (``noise_hu`` +-15 %)."""
    k = np.exp(-0.5 * (np.arange(-NOISE_REACH, NOISE_REACH + 1) / NOISE_SIGMA) ** 2)
    return noise_hu * rng.uniform(0.85, 1.15) / float(np.sqrt(((k / k.sum()) ** 2).sum()) ** 3)


def render(tissue: np.ndarray, organ: np.ndarray, grid: Grid, tumours: dict[int, str], rng: np.random.Generator,
           noise_hu: float, blur_mm: float) -> np.ndarray:
    """HU image from the tissue and organ maps.

    Args:
        tissue: uint8 (X, Y, Z) tissue ids.
        organ: uint8 (X, Y, Z) organ ids (tumour ids get their own mean HU).
        grid: the canonical grid (spacing for the blur).
        tumours: tumour organ id -> host organ.
        rng: the case's scan random generator.
        noise_hu: mean noise SD; the case's SD is drawn within +-15 %.
        blur_mm: SD of the Gaussian partial-volume blur applied before the noise.

    Returns:
        float32 (X, Y, Z) HU in [-1024, 3071].
    """
    from scipy import ndimage

    base = tissue_means(rng)
    img = base.astype(np.float32)[tissue] + texture_sd()[tissue] * smooth_field(rng, grid, 7.0)
    offset = tumour_offsets(tumours, base, rng)
    lesion = np.isin(tissue, (T["kidney tumour"], T["pancreas tumour"]))
    img[lesion] += offset[organ[lesion]]
    img = partial_volume(img, grid.spacing, blur_mm)
    noise = ndimage.gaussian_filter(rng.standard_normal(grid.shape, dtype=np.float32), NOISE_SIGMA, truncate=3.0)
    gain = noise_gain(rng, noise_hu)
    return np.clip(img + np.float32(gain) * noise, -1024.0, 3071.0).astype(np.float32)


def label_map(organ: np.ndarray, tumours: dict[int, str], task: str) -> np.ndarray:
    """Organ map -> uint8 label map of ``LABEL_SETS[task]`` (multiorgan: tumours join their organ)."""
    lut = np.zeros(256, np.uint8)
    ids = {name: i for i, name in enumerate(ORGANS)}
    if task == "multiorgan":
        for label, name in LABEL_SETS[task].items():
            if label:
                lut[ids[name]] = label
        for tid, host in tumours.items():
            lut[tid] = lut[ids[host]]
        return lut[organ]
    hosts = ("right kidney", "left kidney") if task == "kidney" else ("pancreas",)
    for name in hosts:
        lut[ids[name]] = 1
    for tid, host in tumours.items():
        lut[tid] = 2 if host in hosts else 0
    return lut[organ]


def _core(tissue: np.ndarray) -> np.ndarray:
    """Voxels whose 6 neighbours have the same tissue (away from partial-volume edges)."""
    core = np.zeros(tissue.shape, bool)
    core[1:-1, 1:-1, 1:-1] = True
    for ax in range(3):
        t, c = np.moveaxis(tissue, ax, 0), np.moveaxis(core, ax, 0)
        c[1:] &= t[1:] == t[:-1]
        c[:-1] &= t[:-1] == t[1:]
    return core


def hu_statistics(cases: Iterable[Any], by: str = "tissue", core: bool = True) -> dict[str, dict[str, Any]]:
    """Pooled HU mean / SD per tissue (``by="tissue"``) or per label name (``by="label"``).

    Args:
        cases: ``PhantomCase`` objects (``image``, ``tissue``, ``label``, ``task``).
        by: "tissue" (``TISSUES``, with the ``HU_RANGES`` they should fall in) or "label".
        core: for tissues, only voxels whose 6 neighbours share their tissue (no partial volume);
            a tissue too thin to have 20 such voxels (e.g. the cortical rim) uses all its voxels.

    Returns:
        name -> {"mean", "std", "voxels", "core", "expected"}; ``expected`` is (lo, hi) or None.
    """
    if by not in ("tissue", "label"):
        raise ValueError(f"`by` must be 'tissue' or 'label', got {by!r}.")
    acc, names = np.zeros((2, 3, 256)), {}
    for case in cases:
        keys = case.tissue if by == "tissue" else case.label
        names = dict(enumerate(TISSUES)) if by == "tissue" else LABEL_SETS[case.task]
        masks = (np.ones(keys.shape, bool), _core(case.tissue) if core and by == "tissue" else None)
        for j, m in enumerate(masks):
            if m is not None:
                k, v = keys[m].astype(np.int64), case.image[m].astype(np.float64)
                acc[j] += [np.bincount(k, minlength=256), np.bincount(k, v, minlength=256),
                           np.bincount(k, v * v, minlength=256)]
    out = {}
    for i, name in names.items():
        use_core = acc[1, 0, i] >= 20
        cnt, s, s2 = acc[int(use_core), :, i]
        if cnt:
            mean = s / cnt
            out[name] = {"mean": round(float(mean), 1), "std": round(float(np.sqrt(max(s2 / cnt - mean**2, 0))), 1),
                         "voxels": int(cnt), "core": bool(use_core),
                         "expected": HU_RANGES.get(name) if by == "tissue" else None}
    return out


def remove_stale(out: Path, keep: set[str], pattern: str) -> None:
    """Delete ``imagesTr``/``labelsTr`` files of ``out`` matching ``pattern`` whose name is not in ``keep``
    (cases of an earlier, larger run of the same writer)."""
    for sub in ("imagesTr", "labelsTr"):
        for f in (out / sub).glob(pattern):
            if f.name not in keep:
                f.unlink()
