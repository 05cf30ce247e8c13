"""Where the kidneys and tumours of a real label map are, in world coordinates, and what to report.

* ``to_canonical`` / ``from_canonical``: the map in the canonical RAS array order by an exact flip
  and permutation (``nibabel.io_orientation``), and back. World positions always come from the
  affine (NIfTI RAS+ mm: ``+x`` patient Right, ``+y`` Anterior, ``+z`` Superior), never from indices.
* ``find_kidneys``: connected kidney components (labels 1 and 2 together). With two kidneys more
  than ``TWO_KIDNEYS_MM`` apart the midline is halfway between their centroids, otherwise (one
  kidney, horseshoe) the centre of the field of view. A component lies on the patient's Right when
  its centroid has the larger world ``x``; one that straddles the midline is split there. Each
  tumour component (26-connected label 2) takes the side most of its voxels lie on.
* ``measure``: each tumour component of at least ``MIN_REPORTED_ML`` (the ``MAX_REPORTED``
  largest) measured by ``findings.kidney_tumour_finding`` -- equivalent-sphere diameter,
  pole from its kidney's cranio-caudal extent in world ``z``, exophytic when > 30 % of it lies
  outside the convex hull of its kidney, necrotic when a necrotic core was painted; a side with no
  kidney voxel gives an ``"absent"`` finding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tdseg_lite.phantom.findings import kidney_tumour_finding

__all__ = ["SIDES", "Kidneys", "find_kidneys", "from_canonical", "measure", "to_canonical", "world"]

TWO_KIDNEYS_MM = 60.0  # the two largest components are two kidneys when their centroids are this far apart
MIN_REPORTED_ML = 0.1  # smaller tumour components (< 5.8 mm) are painted but not reported
MAX_REPORTED = 3       # tumours named in a description, largest first
SIDES = ("right kidney", "left kidney")  # side codes 1 and 2
_CONNECT = np.ones((3, 3, 3), bool)


def to_canonical(label: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(canonical RAS view of ``label``, its affine, nibabel orientation original -> RAS); no resampling."""
    import nibabel as nib

    ornt = nib.io_orientation(affine)
    return (nib.orientations.apply_orientation(label, ornt),
            affine @ nib.orientations.inv_ornt_aff(ornt, label.shape), ornt)


def from_canonical(arr: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """A canonical-order array (or block of one) back in the original axis order of ``ornt``."""
    import nibabel as nib

    back = nib.orientations.ornt_transform(np.array([[0, 1], [1, 1], [2, 1]]), ornt)
    return nib.orientations.apply_orientation(arr, back)


def world(affine: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """(N, 3) RAS+ mm of voxel indices (N, 3)."""
    return idx @ affine[:3, :3].T + affine[:3, 3]


@dataclass
class Kidneys:
    """Sides and tumours of a canonical label map inside ``crop`` (the bounding box of labels 1-2)."""

    crop: tuple[slice, slice, slice]
    side: np.ndarray         # int8 crop: 1 right, 2 left on labels 1-2, 0 elsewhere
    tumours: np.ndarray      # int32 crop: tumour component 1..n, 0 elsewhere
    tumour_side: np.ndarray  # (n + 1,) side code of each tumour component
    midline_x: float         # world x (mm) of the midline
    midline_from: str        # "two kidneys" | "field of view"


def find_kidneys(lab: np.ndarray, affine: np.ndarray) -> Kidneys:
    """Split the kidneys of canonical ``lab`` into sides in world coordinates (module docstring)."""
    from scipy import ndimage

    crop = tuple(slice(int(i[0]), int(i[-1]) + 1) for i in
                 (np.nonzero((lab > 0).any(axis=tuple(a for a in range(3) if a != k)))[0] for k in range(3)))
    sub = np.ascontiguousarray(lab[crop])
    comp, n = ndimage.label(sub > 0, structure=_CONNECT)
    where = np.nonzero(comp)
    ids = comp[where]
    xw = world(affine, np.stack(where, axis=1) + [c.start for c in crop])[:, 0]
    sizes = np.bincount(ids, minlength=n + 1).astype(float)
    sizes[0] = 1.0
    cent_x = np.bincount(ids, xw, minlength=n + 1) / sizes
    sizes[0] = 0.0
    big = np.argsort(-sizes)[:2]
    if n >= 2 and sizes[big[1]] >= 0.2 * sizes[big[0]] and abs(cent_x[big[0]] - cent_x[big[1]]) >= TWO_KIDNEYS_MM:
        x_mid = float(cent_x[big[0]] + cent_x[big[1]]) / 2
        source = "two kidneys"
    else:
        x_mid = float(world(affine, (np.array(lab.shape, float)[None] - 1) / 2)[0, 0])
        source = "field of view"
    right = xw > x_mid
    frac = np.bincount(ids, right, minlength=n + 1) / np.maximum(sizes, 1)
    lut = np.where(frac >= 0.5, 1, 2).astype(np.int8)
    lut[0] = 0
    vox_side = lut[ids]
    straddle = (frac > 0.2) & (frac < 0.8) & (sizes >= 0.2 * sizes.max())  # a horseshoe kidney: split at the midline
    split = straddle[ids]
    vox_side[split] = np.where(right[split], 1, 2)
    side = np.zeros(sub.shape, np.int8)
    side[where] = vox_side
    tum, nt = ndimage.label(sub == 2, structure=_CONNECT)
    tside = np.zeros(nt + 1, np.int8)
    if nt:
        tw = np.nonzero(tum)
        tid = tum[tw]
        tside[1:] = np.where(np.bincount(tid, side[tw] == 1, minlength=nt + 1)[1:] >= np.bincount(tid)[1:] / 2, 1, 2)
    return Kidneys(crop, side, tum.astype(np.int32), tside, x_mid, source)


def _outside_hull(inside: np.ndarray, query: np.ndarray) -> int:
    """How many ``query`` points (N, 3) lie outside the convex hull of ``inside`` (estimated on <= 200k)."""
    from scipy.spatial import ConvexHull, Delaunay, QhullError

    if len(inside) < 4:
        return len(query)
    try:
        tri = Delaunay(inside[ConvexHull(inside).vertices])
    except QhullError:  # a flat kidney (one slice): no volume to be inside of
        return len(query)
    step = max(1, len(query) // 200_000)
    return round(float((tri.find_simplex(query[::step].astype(float)) < 0).mean()) * len(query))


def measure(lab: np.ndarray, affine: np.ndarray, kid: Kidneys,
            necrosis: dict[int, int]) -> tuple[list[dict[str, Any]], int]:
    """Findings of canonical ``lab`` and how many reportable tumours were left out (``MAX_REPORTED``).

    ``necrosis`` maps a tumour component to its painted necrosis voxels.
    """
    from scipy import ndimage

    voxel_ml = abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0
    sub, start = lab[kid.crop], np.array([c.start for c in kid.crop])
    counts = np.bincount(kid.tumours.ravel())
    big = [t for t in range(1, len(counts)) if counts[t] * voxel_ml >= MIN_REPORTED_ML]
    keep = sorted(sorted(big, key=lambda t: -counts[t])[:MAX_REPORTED], key=lambda t: (kid.tumour_side[t], -counts[t]))
    findings, hosts = [], {}
    for t in keep:
        s = int(kid.tumour_side[t])
        if s not in hosts:
            host = (sub == 1) & (kid.side == s)
            hosts[s] = (np.argwhere(host) + start, np.argwhere(host & ~ndimage.binary_erosion(host)) + start)
        host_idx, surface = hosts[s]
        idx = np.argwhere(kid.tumours == t) + start
        z_t, z_h = world(affine, idx)[:, 2], world(affine, host_idx)[:, 2]
        findings.append(kidney_tumour_finding(SIDES[s - 1], len(idx), voxel_ml, z_t, np.concatenate([z_h, z_t]),
                                              _outside_hull(surface, idx), necrosis.get(t, 0)))
    present = set(np.unique(kid.side).tolist()) - {0}
    findings += [{"organ": SIDES[s - 1], "kind": "absent", "size_cm": None, "location": "", "volume_ml": 0.0}
                 for s in (1, 2) if s not in present]
    return findings, len(big) - len(keep)
