"""A real kidney label map painted as the phantom paints its own: ``synthesise``.

The image keeps the label map's grid (shape, spacing, affine) and is built in three layers:

1. **Surroundings** (``organs.build_surroundings``) on a coarse working grid of about
   ``WORK_MM``, in millimetres relative to the midline that ``labels_geometry`` found: body
   wall, subcutaneous and intra-abdominal fat, muscle, bowel, spine and ribs, aorta and IVC, liver,
   gallbladder, stomach, spleen, pancreas, the lung bases above the diaphragm; the body's width
   follows the field of view and its cavity is fitted around the real kidneys.
2. **Kidneys at full resolution** in a box around them: perirenal fat, a cortical rim, medullary
   pyramids, sinus fat and pelvis on the antero-medial side, every tumour component with its own
   mean HU and texture, a necrotic core in some tumours of at least ``NECROSIS_MIN_CM``.
3. **Scanner** (``scan``): the case's tissue means, smooth texture, tumour offsets and
   partial-volume blur; the coarse image is interpolated to the full grid, the box blended in over
   ``RAMP_MM``, then correlated noise at full resolution and clipping to [-1024, 3071] HU.

The full-size arrays are made directly in the label map's own axis order (only the box and the
coarse grid are reoriented), slab by slab, so a 512 x 512 x 1000 map needs about 3 GB.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tdseg_lite.phantom.anatomy import PROTECTED, TUMOUR_ID0, Grid, O, T, smooth_field
from tdseg_lite.phantom.findings import describe, equivalent_diameter_cm
from tdseg_lite.phantom.labels_geometry import SIDES, find_kidneys, from_canonical, measure, to_canonical, world
from tdseg_lite.phantom.organs import build_surroundings
from tdseg_lite.phantom.scan import (
    NOISE_REACH,
    NOISE_SIGMA,
    noise_gain,
    partial_volume,
    texture_sd,
    tissue_means,
    tumour_offsets,
)

__all__ = ["Synthesis", "synthesise"]

WORK_MM = 2.5          # spacing of the coarse grid that holds the surroundings
BOX_MARGIN_MM = 20.0   # the full-resolution box reaches this far beyond the kidneys
RAMP_MM = 6.0          # the box blends into the coarse image over this distance
NECROSIS_MIN_CM = 2.5  # as the phantom: only tumours this large may get a necrotic core


def _taps(idx: np.ndarray, f: int, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Linear-interpolation taps of fine canonical indices ``idx`` on a grid of blocks of ``f`` (``m`` blocks)."""
    p = np.clip((idx - (f - 1) / 2) / f, 0, m - 1)
    i0 = np.floor(p).astype(np.intp)
    return i0, np.minimum(i0 + 1, m - 1), (p - i0).astype(np.float32)


def _interp(coarse: np.ndarray, taps: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> np.ndarray:
    """Separable linear interpolation of ``coarse`` at ``taps`` per axis; the full-size pass in slabs."""
    a = coarse.astype(np.float32)
    for k in (2, 1):
        i0, i1, w = taps[k]
        w = w.reshape([-1 if j == k else 1 for j in range(3)])
        a = np.take(a, i0, axis=k) * (1 - w) + np.take(a, i1, axis=k) * w
    i0, i1, w = taps[0]
    out = np.empty((len(i0), *a.shape[1:]), np.float32)
    for s in range(0, len(i0), 16):
        ww = w[s:s + 16, None, None]
        out[s:s + 16] = a[i0[s:s + 16]] * (1 - ww) + a[i1[s:s + 16]] * ww
    return out


def _at(coarse: np.ndarray, f: list[int], where: tuple[slice, ...]) -> np.ndarray:
    """``coarse`` interpolated on the canonical fine block ``where``."""
    return _interp(coarse, [_taps(np.arange(b.start, b.stop), k, m) for b, k, m in zip(where, f, coarse.shape)])


def _add_noise(img: np.ndarray, rng: np.random.Generator, gain: float, chunk: int = 32) -> None:
    """Add ``scan``'s correlated noise in place, slab by slab along axis 0 (the same field as one pass)."""
    from scipy import ndimage

    n, h = img.shape[0], NOISE_REACH
    stop = min(chunk, n)
    buf, start = rng.standard_normal((stop + 2 * h, *img.shape[1:]), dtype=np.float32), 0
    while True:
        smooth = ndimage.gaussian_filter(buf, NOISE_SIGMA, truncate=3.0)
        img[start:stop] += np.float32(gain) * smooth[h:h + stop - start]
        if stop >= n:
            return
        nxt = min(stop + chunk, n)
        buf = np.concatenate([buf[-2 * h:], rng.standard_normal((nxt - stop, *img.shape[1:]), dtype=np.float32)])
        start, stop = stop, nxt


def _bbox(mask: np.ndarray, pad: list[int]) -> tuple[slice, ...]:
    """Bounding box of ``mask`` grown by ``pad`` voxels per axis (clipped to the array)."""
    out = []
    for k in range(3):
        i = np.nonzero(mask.any(axis=tuple(a for a in range(3) if a != k)))[0]
        out.append(slice(max(0, int(i[0]) - pad[k]), min(mask.shape[k], int(i[-1]) + 1 + pad[k])))
    return tuple(out)


def _ramp(n: int, box: slice, step: float) -> np.ndarray:
    """Blend weight along one box axis: 0 at a face inside the volume, 1 from ``RAMP_MM`` inward."""
    i = np.arange(box.start, box.stop, dtype=np.float32)
    d = np.full(len(i), np.inf, np.float32)
    if box.start > 0:
        d = np.minimum(d, (i - box.start) * step)
    if box.stop < n:
        d = np.minimum(d, (box.stop - 1 - i) * step)
    return np.clip(d / RAMP_MM, 0.0, 1.0)


def _fit(kc_local: np.ndarray, half_x: float, top_y: float) -> Any:
    """Landmark adjustment for ``build_surroundings`` (local mm): the body about as wide as the
    field of view, the cavity around the kidneys (``kc_local``, (N, 3)) with its back wall just behind them."""
    x_abs, y_min, y_max = np.abs(kc_local[:, 0]), float(kc_local[:, 1].min()), float(kc_local[:, 1].max())
    x_post = float(x_abs[np.argmin(kc_local[:, 1])])

    def fit(L: dict[str, float], rng: np.random.Generator) -> dict[str, float]:
        floor, a0 = L["cy"] - L["b_post"], L["a_in"]
        a_min = float(x_abs.max()) + rng.uniform(12, 22)
        outer = max(rng.uniform(0.72, 0.9) * half_x, a_min + L["wall"] + 4.5)
        L["fat"] = float(np.clip(rng.uniform(0.06, 0.2) * outer, 2.0, outer - L["wall"] - 2.5 - a_min))
        L["a_in"] = outer - L["wall"] - L["fat"] - 2.5
        L["b_post"] *= L["a_in"] / a0
        L["cx"] = 0.0
        wall_y = y_min - rng.uniform(4, 9)  # the posterior cavity wall just behind the kidneys
        L["cy"] = wall_y + L["b_post"] * (1 - min(x_post / L["a_in"], 0.95) ** 4) ** 0.25
        front = top_y - 5 - L["cy"] - L["wall"] - L["fat"] - 2.5  # keep the belly inside the field of view
        L["b_ant"] = max(min(L["b_ant"] * L["a_in"] / a0, front), y_max - L["cy"] + rng.uniform(25, 40))
        L["y_vb"] += L["cy"] - L["b_post"] - floor
        L["cz"] = rng.uniform(8, 18)  # the phantom's kidneys sit about 13 mm below its centre
        L["z_dome"] = L["cz"] + rng.uniform(95, 115)
        return L

    return fit


@dataclass
class Synthesis:
    """One painted case: ``image`` float32 HU in the label map's own array order."""

    image: np.ndarray
    findings: list[dict[str, Any]]
    description: str
    facts: dict[str, Any]


def synthesise(label: np.ndarray, affine: np.ndarray, rngs: tuple[np.random.Generator, ...], *, noise_hu: float = 12.0,
               blur_mm: float = 1.2, necrosis: bool | None = None) -> Synthesis:
    """CT image around ``label`` (KiTS19 values 0/1/2, any orientation) and its oracle report.

    Args:
        label: uint8 (I, J, K) label map; ``affine`` its voxel -> RAS+ mm matrix.
        rngs: (anatomy, lesion, scan) random generators of the case.
        noise_hu, blur_mm: as ``PhantomConfig``.
        necrosis: the pathology's answer when known (KiTS19 ``tumor_necrosis``): True paints a
            necrotic core in the largest tumour, False in none; None draws as the phantom does
            (probability 0.5 per tumour of at least ``NECROSIS_MIN_CM``).

    Returns:
        ``Synthesis`` (image, findings, description, facts about the case's geometry).
    """
    from scipy import ndimage

    body, lesion, scan = rngs
    lab, A, ornt = to_canonical(label, affine)
    n, spacing = lab.shape, [float(np.linalg.norm(A[:3, k])) for k in range(3)]
    kid = find_kidneys(lab, A)
    # painting frame: the canonical grid, axis-aligned (the affine unless oblique), origin on the midline
    P = np.diag([*spacing, 1.0])
    P[:3, 3] = A[:3, 3]
    mid_idx = np.linalg.solve(A[:3, :3], np.array([kid.midline_x, 0, 0]) - A[:3, 3])[0]
    centre = [(c.start + c.stop - 1) / 2 for c in kid.crop]
    offset = world(P, np.array([[mid_idx, centre[1], centre[2]]]))[0]
    f = [max(1, round(WORK_MM / s)) for s in spacing]
    nc = [-(-m // k) for m, k in zip(n, f)]
    axes = [(P[k, 3] - offset[k] + (np.arange(nc[k]) * f[k] + (f[k] - 1) / 2) * spacing[k]).astype(np.float32)
            for k in range(3)]
    grid = Grid(*axes)

    # 1. surroundings on the coarse grid, kidneys as coarse blocks
    kc = np.zeros(nc, bool)
    kc[tuple(((np.argwhere(kid.side > 0) + [c.start for c in kid.crop]) // f).T)] = True
    kc_local = np.stack([axes[k][np.nonzero(kc)[k]] for k in range(3)], axis=1)
    anat = build_surroundings(grid, body, _fit(kc_local, float(min(-axes[0][0], axes[0][-1])), float(axes[1][-1])))
    cv, everything = anat.canvas, (slice(None),) * 3
    r_fat = float(body.uniform(6, 12))
    cv.paint(everything, (ndimage.distance_transform_edt(~kc, sampling=grid.spacing) <= r_fat) & ~kc, T["fat"],
             cavity=True, free=True)
    cv.tissue[kc] = T["kidney cortex"]
    cv.organ[kc] = np.where(cv.coords[0] > 0, O["right kidney"], O["left kidney"])[kc]
    base, tex = tissue_means(scan).astype(np.float32), texture_sd()
    field = smooth_field(scan, grid, 7.0)
    coarse = partial_volume(base[cv.tissue] + tex[cv.tissue] * field, grid.spacing, blur_mm)
    perm, flip = [int(k) for k in ornt[:, 0]], ornt[:, 1] < 0
    taps = [_taps(n[k] - 1 - np.arange(n[k]) if flip[a] else np.arange(n[k]), f[k], nc[k]) for a, k in enumerate(perm)]
    img = _interp(np.transpose(coarse, perm), taps)  # full size, in the label map's own axis order

    # 2. kidneys at full resolution in a canonical box
    box = tuple(slice(max(0, c.start - int(np.ceil(BOX_MARGIN_MM / s))), min(m, c.stop + int(np.ceil(BOX_MARGIN_MM / s))))
                for c, s, m in zip(kid.crop, spacing, n))
    near_idx = np.ix_(*[np.minimum(np.arange(b.start, b.stop) // k, m - 1) for b, k, m in zip(box, f, nc)])
    tissue, organ, cavity = cv.tissue[near_idx], cv.organ[near_idx], cv.cavity[near_idx]
    inner = tuple(slice(c.start - b.start, c.stop - b.start) for c, b in zip(kid.crop, box))
    lab_b, side, tum = np.ascontiguousarray(lab[box]), np.zeros(tissue.shape, np.int8), np.zeros(tissue.shape, np.int32)
    side[inner], tum[inner] = kid.side, kid.tumours
    stray = np.isin(organ, (O["right kidney"], O["left kidney"])) & (lab_b == 0)
    tissue[stray], organ[stray] = T["fat"], 0
    pyramids_c = smooth_field(body, grid, 6.0)
    t_cortex = float(body.uniform(4.0, 6.5))
    local = [(P[k, 3] - offset[k] + np.arange(b.start, b.stop) * spacing[k]).astype(np.float32) for k, b in enumerate(box)]
    for s, sign in ((1, 1.0), (2, -1.0)):
        if not (side == s).any():
            continue
        sb = _bbox(side == s, [int(np.ceil(r_fat / sp)) + 1 for sp in spacing])
        mine = side[sb] == s
        near = ~mine & (ndimage.distance_transform_edt(~mine, sampling=spacing) <= r_fat) & (lab_b[sb] == 0)
        fat = near & (organ[sb] == 0) & cavity[sb] & ~np.isin(tissue[sb], PROTECTED)
        tissue[sb][fat] = T["fat"]
        organ[sb][mine] = O[SIDES[s - 1]]
        par = mine & (lab_b[sb] == 1)
        if par.sum() < 27:
            tissue[sb][par] = T["kidney cortex"]
            continue
        depth = ndimage.distance_transform_edt(par, sampling=spacing)
        where = tuple(slice(b.start + q.start, b.start + q.stop) for b, q in zip(box, sb))
        medulla = par & (depth > t_cortex) & (_at(pyramids_c, f, where) > -0.3)
        cen = ndimage.center_of_mass(par)
        loc = [local[k][sb[k]] - local[k][sb[k]][0] - cen[k] * spacing[k] for k in range(2)]
        medial = (-sign * loc[0])[:, None, None] + 0.35 * loc[1][None, :, None]  # the hilum faces antero-medially
        deep = float(depth[par].max())
        sinus = par & (medial > 0) & (depth > 0.45 * deep)
        t = tissue[sb]
        t[par] = T["kidney cortex"]
        t[medulla] = T["kidney medulla"]
        t[sinus] = T["fat"]
        t[sinus & (depth > 0.7 * deep)] = T["fluid"]

    # tumours: own mean per component, a necrotic core in some
    tumours, necro = {}, {}
    counts = np.bincount(tum.ravel())
    if len(counts) > 1:
        tids = np.minimum(TUMOUR_ID0 + np.arange(len(counts)) - 1, 255)
        tissue[tum > 0], organ[tum > 0] = T["kidney tumour"], tids[tum[tum > 0]]
        tumours = {int(tids[t]): SIDES[int(kid.tumour_side[t]) - 1] for t in range(1, len(counts))}
        largest, voxel_ml = int(np.argmax(counts[1:])) + 1, float(np.prod(spacing)) / 1000
        for t, sl in enumerate(ndimage.find_objects(tum), start=1):
            draw, frac = lesion.random(), lesion.uniform(0.4, 0.6)
            if necrosis is None:
                paint = equivalent_diameter_cm(counts[t] * voxel_ml) >= NECROSIS_MIN_CM and draw < 0.5
            else:
                paint = necrosis and t == largest
            if sl is None or not paint:
                continue
            sl = tuple(slice(max(0, q.start - 1), q.stop + 1) for q in sl)
            mine = tum[sl] == t
            d_t = ndimage.distance_transform_edt(mine, sampling=spacing)
            core = mine & (d_t > (1 - frac) * float(d_t.max()))
            tissue[sl][core] = T["necrosis"]
            necro[t] = int(core.sum())
    img_b = base[tissue] + tex[tissue] * _at(field, f, box)
    offsets = tumour_offsets(tumours, base, scan)
    les = tissue == T["kidney tumour"]
    img_b[les] += offsets[organ[les]]
    img_b = partial_volume(img_b, spacing, blur_mm)

    # 3. blend the box into the full image (own axis order), noise, clip
    ramps = [_ramp(m, b, s).reshape([-1 if j == k else 1 for j in range(3)]) for k, (m, b, s) in enumerate(zip(n, box, spacing))]
    w = np.minimum(np.minimum(ramps[0], ramps[1]), ramps[2])
    box_o = tuple(slice(n[k] - box[k].stop, n[k] - box[k].start) if flip[a] else box[k] for a, k in enumerate(perm))
    old = to_canonical(img[box_o], affine)[0]
    img[box_o] = from_canonical(old + w * (img_b - old), ornt)
    del img_b, old, w
    _add_noise(img, scan, noise_gain(scan, noise_hu))
    np.clip(img, -1024.0, 3071.0, out=img)
    findings, unreported = measure(lab, A, kid, necro)
    facts = {"side_reference": kid.midline_from, "unreported_tumours": unreported,
             "working_grid_mm": [round(float(s * k), 2) for s, k in zip(spacing, f)]}
    return Synthesis(img, findings, describe(findings, "kidney"), facts)
