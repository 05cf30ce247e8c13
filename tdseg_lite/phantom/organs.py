"""Procedural abdominal anatomy for the CT phantom, painted back to front onto a ``Canvas``.

World frame: NIfTI RAS+ mm (``+x`` = patient Right, ``+y`` = Anterior, ``+z`` = Superior),
origin at the centre of the field of view. Painting order (later strokes win, but never over
bone or the great vessels): body wall and table -> bowel and colon -> psoas -> spine and ribs
-> aorta and IVC -> stomach, liver (+ vessels), gallbladder, spleen -> duodenum, pancreas ->
perirenal fat (where no organ is) and kidneys. Tumours are added by ``findings``.

Placement (patient frame): liver right-upper, spleen left-upper-posterior, stomach left-upper-
anterior, kidneys posterior either side of the spine (the right one lower), pancreas anterior
to the aorta and left kidney, head on the right of the midline, tail at the splenic hilum.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from tdseg_lite.phantom.anatomy import (
    Canvas,
    Ellipsoid,
    Grid,
    O,
    RadialPerturbation,
    T,
    frame,
    smooth_field,
)

__all__ = ["Anatomy", "build_anatomy", "build_surroundings"]

RIGHT, LEFT = 1.0, -1.0  # sign of world x on the patient's right / left side


@dataclass
class Anatomy:
    """A painted case plus the geometry the tumour and report code needs."""

    canvas: Canvas
    kidneys: dict[str, Ellipsoid] = field(default_factory=dict)      # "right kidney"/"left kidney"
    kidney_masks: dict[str, np.ndarray] = field(default_factory=dict)  # bool (X, Y, Z) envelopes
    pancreas_curve: np.ndarray | None = None   # (N, 3) centre line, head (t=0) -> tail (t=1)
    pancreas_radius: np.ndarray | None = None  # (N,) mm
    facts: dict[str, object] = field(default_factory=dict)


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _landmarks(rng: np.random.Generator, grid: Grid) -> dict[str, float]:
    """Body and cavity size and the spine position for one case (mm).

    The abdominal cavity has a lateral half-width ``a_in`` and anterior/posterior half-depths
    ``b_ant``/``b_post`` around ``(cx, cy)``; the wall (muscle, then fat, then skin) wraps it,
    thicker at the back where the paraspinal muscles lie. Fat shrinks if the FOV is small.
    """
    half_x, half_y = float(grid.xs[-1]), float(grid.ys[-1])
    a_in, b_ant, b_post = _u(rng, 90, 102), _u(rng, 62, 76), _u(rng, 58, 66)
    wall, back = _u(rng, 8, 13), _u(rng, 34, 42)
    fat = min(_u(rng, 6, 24), half_x - 8 - a_in - wall - 2.5)
    depth = b_ant + b_post + back + 2 * (wall + fat + 2.5)
    fat = max(2.0, fat - max(0.0, depth - (2 * half_y - 40)) / 2)
    cy = (b_post + back - b_ant) / 2 + _u(rng, -4, 4)  # centres the body front-to-back
    return {
        "a_in": a_in, "b_ant": b_ant, "b_post": b_post, "wall": wall, "back": back, "fat": fat,
        "cx": _u(rng, -6, 6), "cy": cy, "cz": _u(rng, -10, 10), "y_vb": cy - b_post + _u(rng, 20, 26),
        "rx_vb": _u(rng, 20, 24), "ry_vb": _u(rng, 16, 19),
    }


def _paint_body(cv: Canvas, rng: np.random.Generator, L: dict[str, float]) -> None:
    """Skin, subcutaneous fat, abdominal wall and back muscles, intra-abdominal fat, the CT table.

    Each layer is an egg-shaped region (half-ellipses in front and behind, deeper behind for the
    back muscles); the cavity has a flat back (superellipse x^4 + y^4 < 1) with deep
    paravertebral gutters for the kidneys.
    """
    X, Y, Z = cv.coords
    taper = 1.0 + 0.0003 * (Z - L["cz"])  # slightly wider toward the ribs
    dx, dy = (X - L["cx"]) / taper, (Y - L["cy"]) / taper
    dx2, dy2, front = dx * dx, dy * dy, dy >= 0
    everything = (slice(None),) * 3
    outer = L["wall"] + L["fat"] + 2.5
    for depth, tissue in ((0.0, T["soft tissue"]), (2.5, T["fat"]), (2.5 + L["fat"], T["muscle"])):
        grow = outer - depth
        b = np.where(front, np.float32((L["b_ant"] + grow) ** -2), np.float32((L["b_post"] + L["back"] + grow) ** -2))
        region = dx2 * np.float32((L["a_in"] + grow) ** -2) + dy2 * b < 1.0
        cv.paint(everything, region, tissue, protect=False)
        if depth == 0.0:
            cv.body = region
    x2 = dx2 * np.float32(L["a_in"] ** -2)
    y2 = dy2 * np.where(front, np.float32(L["b_ant"] ** -2), np.float32(L["b_post"] ** -2))
    cv.cavity = np.where(front, x2 + y2, x2 * x2 + y2 * y2) < 1.0
    cv.paint(everything, cv.cavity, T["fat"], protect=False)
    top = L["cy"] - L["b_post"] - L["back"] - outer - 2.0 + 0.0006 * (X - L["cx"]) ** 2
    table = (Y < top) & (Y > top - 7.0) & (np.abs(X - L["cx"]) < 170) & ~cv.body
    cv.paint(everything, table, T["table"], protect=False)


def _paint_bowel(cv: Canvas, rng: np.random.Generator, L: dict[str, float]) -> None:
    """Small-bowel loops (curved bands of soft tissue with gas pockets) and the colon."""
    grid, (X, Y, Z) = cv.grid, cv.coords
    loops = np.abs(smooth_field(rng, grid, 22.0)) < 0.42
    gas = smooth_field(rng, grid, 9.0)
    front = (Y - L["cy"]) / L["b_ant"]  # gas floats up (anterior) in a supine patient
    everything = (slice(None),) * 3
    region = cv.cavity & (Y > L["y_vb"] - 15)
    cv.paint(everything, region & loops, T["soft tissue"])
    cv.paint(everything, region & loops & (gas > 1.5 - 0.6 * front), T["bowel gas"])
    for side, top in ((RIGHT, _u(rng, -10, 25)), (LEFT, _u(rng, 5, 40))):
        cx, cy, r = L["cx"] + side * (L["a_in"] - 24), L["cy"] + _u(rng, -15, 10), _u(rng, 16, 24)
        tube = ((X - cx) ** 2 + (Y - cy) ** 2 < r**2) & (Z < top)
        cv.paint(everything, tube, T["soft tissue"], cavity=True)
        cv.paint(everything, tube & (gas > 0.2), T["bowel gas"], cavity=True)


def _paint_psoas(cv: Canvas, rng: np.random.Generator, L: dict[str, float]) -> None:
    """The psoas muscles beside the vertebral bodies, growing toward the pelvis."""
    z_ps = L["cz"] + _u(rng, 0, 30)
    box = cv.box(np.array([L["cx"], L["y_vb"], z_ps - 500.0]), (L["rx_vb"] + 45.0, 25.0, 500.0))
    if box is None:
        return
    X, Y, Z = (c[box] for c in cv.coords)
    r = 4.0 + 15.0 * np.clip((z_ps - Z) / 110.0, 0, 1)
    for side in (RIGHT, LEFT):
        px = L["cx"] + side * (L["rx_vb"] + 4 + r)
        psoas = ((X - px) ** 2 + (Y - L["y_vb"] - 3) ** 2 < r**2) & (Z < z_ps)
        cv.paint(box, psoas, T["muscle"])


def _paint_spine(cv: Canvas, rng: np.random.Generator, L: dict[str, float]) -> None:
    """Vertebral bodies with cortical rims and discs, canal with cord, posterior elements."""
    y_c = L["y_vb"] - L["ry_vb"] - 9.0  # spinal canal centre
    box = cv.box(np.array([L["cx"], (L["y_vb"] + L["ry_vb"] + y_c - 32) / 2, 0.0]),
                 (42.0, (L["y_vb"] + L["ry_vb"] - y_c + 32) / 2, 1000.0))
    X, Y, Z = (c[box] for c in cv.coords)
    everything = box
    period = _u(rng, 32, 36)
    zz = np.mod(Z - _u(rng, 0, period), period)
    disc = zz < 7.0
    dx = X - L["cx"]
    rv = np.sqrt((dx / L["rx_vb"]) ** 2 + ((Y - L["y_vb"]) / L["ry_vb"]) ** 2)
    cv.paint(everything, rv < 1, T["cortical bone"], protect=False)
    cv.paint(everything, (rv < 1 - 3.0 / L["ry_vb"]) & ~disc, T["bone"], protect=False)
    cv.paint(everything, (rv < 1) & disc, T["soft tissue"], protect=False)
    rc = np.sqrt(dx**2 + (Y - y_c) ** 2)
    arch = (rc < 16) & (Y < y_c + 4)
    spinous = (np.abs(dx) < 4) & (Y < y_c - 10) & (Y > y_c - 32)
    transverse = (zz > 8) & (zz < 20) & (np.abs(Y - y_c - 2) < 5) & (np.abs(dx) < 40)
    cv.paint(everything, (arch | spinous | transverse) & ~disc & cv.body[box], T["bone"], protect=False)
    cv.paint(everything, rc < 9, T["fluid"], protect=False)
    cv.paint(everything, rc < 5, T["soft tissue"], protect=False)
    _paint_ribs(cv, rng, L)


def _paint_ribs(cv: Canvas, rng: np.random.Generator, L: dict[str, float]) -> None:
    """Lower ribs: oblique arcs in the body wall, descending anteriorly; the lowest ones short."""
    z0 = L["cz"] + _u(rng, 25, 40) + 32.0 * np.arange(6)  # posterior ends, 12th rib first
    reach = (1.25, 1.7, 2.2, 2.4, 2.4, 2.4)
    box = cv.box(np.array([L["cx"], L["cy"], z0[-1]]), (500.0, 500.0, z0[-1] - z0[0] + 50.0))
    if box is None:
        return
    X, Y, Z = (c[box] for c in cv.coords)
    dx, dy = X - L["cx"], Y - L["cy"]
    b = np.where(dy > 0, L["b_ant"], L["b_post"]) + 5.0
    band = np.abs(np.sqrt((dx / (L["a_in"] + 5.0)) ** 2 + (dy / b) ** 2) - 1.0) < 3.5 / L["a_in"]
    idx = np.nonzero(band)
    phi = np.arctan2(np.abs(dx[idx]), -dy[idx])  # 0 = posterior midline, pi/2 = flank, pi = front
    rib = np.zeros(len(phi), bool)
    for zk, rk in zip(z0, reach):
        rib |= (np.abs(Z[idx] - (zk - 36.0 * phi)) < 4.5) & (phi > 0.45) & (phi < rk)
    band[idx] = rib
    cv.paint(box, band, T["bone"], protect=False)


def _paint_vessels(cv: Canvas, rng: np.random.Generator, L: dict[str, float]) -> dict[str, float]:
    """Aorta (left of midline, in front of the spine) and IVC (right of midline)."""
    X, Y, Z = cv.coords
    everything = (slice(None),) * 3
    r_ao = _u(rng, 9.5, 12.5)
    ax = L["cx"] + LEFT * _u(rng, 8, 14) + 3 * np.sin(Z / 60.0)
    ay = L["y_vb"] + L["ry_vb"] + r_ao + 2
    cv.paint(everything, (X - ax) ** 2 + (Y - ay) ** 2 < r_ao**2, T["aorta"], O["aorta"], protect=False)
    ix, iy = L["cx"] + RIGHT * _u(rng, 20, 26), ay + _u(rng, 0, 6)
    ivc = ((X - ix) / _u(rng, 11, 15)) ** 2 + ((Y - iy) / _u(rng, 8, 10)) ** 2 < 1
    cv.paint(everything, ivc, T["vein"], O["inferior vena cava"], protect=False)
    return {"ao_x": float(np.mean(ax)), "ao_y": ay, "r_ao": r_ao}


def _organ(rng: np.random.Generator, centre: tuple[float, ...], axes: tuple[float, ...], jitter: float,
           scale: float, long_axis=(0.0, 0.0, 1.0), toward=(1.0, 0.0, 0.0), amp: float = 0.1) -> Ellipsoid:
    """A randomly jittered, scaled and perturbed ellipsoid."""
    c = np.asarray(centre, float) + rng.uniform(-jitter, jitter, 3)
    ax = np.asarray(axes, float) * scale * rng.uniform(0.92, 1.08, 3)
    rot = frame(np.asarray(long_axis, float) + rng.normal(0, 0.08, 3), np.asarray(toward, float))
    return Ellipsoid(c, ax, rot, RadialPerturbation(rng, amp))


def _paint_upper(cv: Canvas, rng: np.random.Generator, L: dict[str, float], anat: Anatomy) -> None:
    """Stomach (gas anteriorly, fluid dependent), liver with vessels, gallbladder, spleen."""
    grid, cx, cy, cz, a = cv.grid, L["cx"], L["cy"], L["cz"], L["a_in"]
    st = _organ(rng, (cx - 0.45 * a, cy + 0.3 * L["b_ant"], cz + 50), (34, 30, 58), 8, _u(rng, 0.8, 1.1),
                long_axis=(0.5, 0.4, 0.75), toward=(1, 0, 0))
    box = cv.box(st.centre, st.extent)
    if box is not None:
        rho = st.rho(cv, box)
        gas_level = st.centre[1] + _u(rng, -0.2, 0.9) * st.axes[1]
        wall = cv.paint(box, rho < 1, T["soft tissue"], O["stomach"], cavity=True)
        lumen = (rho < 0.86) & wall
        cv.paint(box, lumen, T["fluid"], O["stomach"])
        cv.paint(box, lumen & (cv.coords[1][box] > gas_level), T["bowel gas"], O["stomach"])
    scale = _u(rng, 0.88, 1.1) * a / 96
    right = _organ(rng, (cx + 0.5 * a, cy + 0.05 * L["b_ant"], cz + 55), (62, 72, 68), 8, scale, amp=0.12)
    left = _organ(rng, (cx - 0.12 * a, cy + 0.55 * L["b_ant"], cz + 62), (45, 26, 34), 8, scale, amp=0.12)
    veins = (smooth_field(rng, grid, 18.0), smooth_field(rng, grid, 18.0))
    for part in (right, left):
        box = cv.box(part.centre, part.extent)
        if box is not None:
            liver = cv.paint(box, part.rho(cv, box) < 1, T["liver"], O["liver"], cavity=True)
            vessel = liver & (np.abs(veins[0][box]) < 0.12) & (np.abs(veins[1][box]) < 0.12)
            cv.paint(box, vessel, T["vein"], O["liver"])
    anat.facts["gallbladder"] = bool(rng.random() < 0.8)
    gb = _organ(rng, (cx + 0.4 * a, cy + 0.55 * L["b_ant"], cz - 2), (13, 14, 30), 8, _u(rng, 0.8, 1.2),
                long_axis=(-0.2, -0.5, 0.8), toward=(1, 0, 0), amp=0.06)
    box = cv.box(gb.centre, gb.extent)
    if anat.facts["gallbladder"] and box is not None:
        cv.paint(box, gb.rho(cv, box) < 1, T["fluid"], O["gallbladder"], cavity=True)
    spleen_scale = _u(rng, 0.85, 1.45) if rng.random() < 0.3 else _u(rng, 0.8, 1.1)
    sp = _organ(rng, (cx - a + 22, cy - 0.45 * L["b_post"], cz + 40), (22, 40, 56), 6, spleen_scale,
                long_axis=(0, 0.55, 0.85), toward=(1, 0.5, 0), amp=0.08)
    box = cv.box(sp.centre, sp.extent)
    if box is not None:
        v = sp.local(cv, box)
        hilum = ((v[0] - 1.0) / 0.6) ** 2 + (v[1] / 0.7) ** 2 + (v[2] / 0.8) ** 2 < 1
        cv.paint(box, (sp.rho(cv, box) < 1) & ~hilum, T["spleen"], O["spleen"], cavity=True)


def _paint_pancreas(cv: Canvas, rng: np.random.Generator, L: dict[str, float], anat: Anatomy) -> None:
    """Duodenum beside the head, then the pancreas as a lobulated tube head -> neck -> body -> tail."""
    cx, yv, zp = L["cx"], L["y_vb"], L["cz"] + _u(rng, -12, 8)
    ctrl = np.array([[cx + 30, yv + 48, zp - 22], [cx + 6, yv + 60, zp - 10],
                     [cx - 30, yv + 56, zp - 2], [cx - 72, yv + 26, zp + 12]]) + rng.uniform(-5, 5, (4, 3))
    radii = np.array([16.0, 9.5, 11.0, 9.5]) * _u(rng, 0.8, 1.12)
    seg = np.r_[0, np.cumsum(np.linalg.norm(np.diff(ctrl, axis=0), axis=1))]
    t = np.linspace(0, seg[-1], 28)
    curve = np.stack([np.interp(t, seg, ctrl[:, k]) for k in range(3)], axis=1)
    radius = np.interp(t, seg, radii)
    X, Y, Z = cv.coords
    head = curve[0] + np.array([radius[0] + 13, 0, -8])
    duo = ((X - head[0]) ** 2 + (Y - head[1]) ** 2 < 11.0**2) & (np.abs(Z - head[2]) < 28)
    cv.paint((slice(None),) * 3, duo, T["soft tissue"], cavity=True)
    lo, hi = curve.min(0) - radius.max(), curve.max(0) + radius.max()
    box = cv.box((lo + hi) / 2, (hi - lo) / 2)
    if box is None:
        return
    d2 = np.full(X[box].shape, np.inf, np.float32)
    rad = np.zeros_like(d2)
    for p, r in zip(curve, radius):
        dd = (X[box] - p[0]) ** 2 + (Y[box] - p[1]) ** 2 + (Z[box] - p[2]) ** 2
        closer = dd < d2
        d2[closer], rad[closer] = dd[closer], r
    lob = smooth_field(rng, cv.grid, 6.0, box)
    inside = np.sqrt(d2) < rad * (1.0 + 0.12 * lob)
    cv.paint(box, inside, T["pancreas"], O["pancreas"], cavity=True)
    cv.paint(box, inside & (lob > 1.7), T["fat"], O["pancreas"])
    anat.pancreas_curve, anat.pancreas_radius = curve, radius


def _paint_kidneys(cv: Canvas, rng: np.random.Generator, L: dict[str, float], anat: Anatomy) -> None:
    """Kidneys: cortex, medullary pyramids, sinus fat, pelvis; hilum facing antero-medially."""
    scale = _u(rng, 0.88, 1.1)
    for name, side, z in (("right kidney", RIGHT, -20.0), ("left kidney", LEFT, -6.0)):
        tilt, turn = np.radians(_u(rng, 6, 16)), np.radians(_u(rng, 20, 40))
        long_axis = (-side * np.sin(tilt), -np.sin(np.radians(_u(rng, 4, 14))), np.cos(tilt))
        medial = (-side * np.cos(turn), np.sin(turn), 0.0)
        x = 0.7 * L["a_in"] + _u(rng, -5, 5)
        back = L["cy"] - L["b_post"] * (1 - (x / L["a_in"]) ** 4) ** 0.25  # posterior cavity wall at x
        centre = (L["cx"] + side * x, back + 21 * scale + _u(rng, 3, 9), L["cz"] + z)
        kid = _organ(rng, centre, (27, 21, 55), 4, scale, long_axis=long_axis, toward=medial, amp=0.06)
        anat.kidneys[name] = kid
        box = cv.box(kid.centre, kid.scaled(1.35).extent)
        if box is None:
            anat.kidney_masks[name] = np.zeros(cv.grid.shape, bool)
            continue
        cv.paint(box, kid.scaled(1.35).rho(cv, box) < 1, T["fat"], cavity=True, free=True)
        v, rho = kid.local(cv, box), kid.rho(cv, box)
        notch = ((v[0] - 0.95) / 0.5) ** 2 + (v[1] / 0.45) ** 2 + (v[2] / 0.42) ** 2 < 1
        envelope = (rho < 1) & ~notch
        sinus = ((v[0] - 0.45) / 0.5) ** 2 + (v[1] / 0.4) ** 2 + (v[2] / 0.6) ** 2 < 1
        pelvis = ((v[0] - 0.6) / 0.3) ** 2 + (v[1] / 0.22) ** 2 + (v[2] / 0.3) ** 2 < 1
        columns = np.cos(7 * np.arctan2(v[2], v[1]) + _u(rng, 0, 6.3)) > 0.75
        medulla = (rho < 0.78) & ~sinus & ~columns
        painted = cv.paint(box, envelope, T["kidney cortex"], O[name], cavity=True)
        cv.paint(box, painted & medulla, T["kidney medulla"], O[name])
        cv.paint(box, painted & sinus, T["fat"], O[name])
        cv.paint(box, painted & pelvis, T["fluid"], O[name])
        anat.kidney_masks[name] = cv.full_mask(box, envelope)


def _paint_lung_bases(cv: Canvas, L: dict[str, float]) -> None:
    """Above the diaphragm (``z > L["z_dome"]``) the cavity holds the air-filled lung bases
    (bowel-gas HU); the liver, painted afterwards, bulges into them as the diaphragm's dome."""
    cv.paint((slice(None),) * 3, cv.cavity & (cv.coords[2] > L["z_dome"]), T["bowel gas"])


def _body_and_skeleton(grid: Grid, rng: np.random.Generator, L: dict[str, float]) -> tuple[Canvas, Anatomy]:
    """The part both builders share, in this random order: the canvas warp, then body wall, bowel,
    psoas and spine."""
    warp = tuple(np.float32(_u(rng, 2.0, 4.0)) * smooth_field(rng, grid, 50.0) for _ in range(3))
    cv = Canvas(grid, warp)
    anat = Anatomy(cv)
    _paint_body(cv, rng, L)
    _paint_bowel(cv, rng, L)
    _paint_psoas(cv, rng, L)
    _paint_spine(cv, rng, L)
    return cv, anat


def build_surroundings(grid: Grid, rng: np.random.Generator,
                       fit: Callable[[dict[str, float], np.random.Generator], dict[str, float]]) -> Anatomy:
    """Paint the abdomen of ``build_anatomy`` without kidneys, fitted around kidneys that come from
    elsewhere (real label maps, ``labels_paint``).

    Args:
        grid: the canonical (RAS) grid, in millimetres relative to the body's midline.
        rng: the case's anatomy random generator.
        fit: gets the random landmarks (``_landmarks``: cavity half-width ``a_in``, half-depths
            ``b_ant``/``b_post``, centre ``cx``/``cy``/``cz``, wall and fat thickness, spine) and
            returns them adjusted so that the cavity holds the given kidneys; an added ``z_dome``
            puts the lung bases above that height.

    Returns:
        ``Anatomy`` whose canvas holds every structure but the kidneys; ``facts`` holds the
        landmarks used.
    """
    L = fit(_landmarks(rng, grid), rng)
    cv, anat = _body_and_skeleton(grid, rng, L)
    if "z_dome" in L:
        _paint_lung_bases(cv, L)
    anat.facts.update(_paint_vessels(cv, rng, L))
    _paint_upper(cv, rng, L, anat)
    _paint_pancreas(cv, rng, L, anat)
    anat.facts.update(L)
    return anat


def build_anatomy(grid: Grid, rng: np.random.Generator) -> Anatomy:
    """Paint one random abdomen on ``grid``.

    Args:
        grid: the canonical (RAS) grid.
        rng: the case's anatomy random generator.

    Returns:
        ``Anatomy`` with the canvas (tissue and organ maps, each (X, Y, Z) uint8) and the organ
        geometry used to place tumours.
    """
    L = _landmarks(rng, grid)
    cv, anat = _body_and_skeleton(grid, rng, L)
    anat.facts.update(_paint_vessels(cv, rng, L))
    _paint_upper(cv, rng, L, anat)
    _paint_pancreas(cv, rng, L, anat)
    _paint_kidneys(cv, rng, L, anat)
    return anat
