"""Building blocks of the synthetic CT phantom: tissues, smooth random fields, shapes, a canvas.

Everything here works in **world millimetres, NIfTI RAS+**: ``+x`` points to the patient's
*Right*, ``+y`` *Anterior*, ``+z`` *Superior*. An organ on the patient's left therefore has
``x < 0``. The generator paints on a *canonical* grid whose array axes follow RAS
(index ``i`` grows toward the patient's right, ``j`` anterior, ``k`` superior); ``scan.reorient``
reorients the finished arrays to the requested orientation and writes the matching affine.

Shapes are evaluated on *warped* coordinates (a smooth random displacement field, a few mm),
and organs additionally get a smooth random radial perturbation, so no two cases look alike.

Explained in ``notebooks/00_setup_and_data.ipynb``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "HU_RANGES",
    "ORGANS",
    "TISSUES",
    "Canvas",
    "Ellipsoid",
    "Grid",
    "RadialPerturbation",
    "frame",
    "smooth_field",
]

#: Tissue classes of the tissue map; the id of a tissue is its index.
TISSUES: tuple[str, ...] = (
    "air", "fat", "muscle", "soft tissue", "bowel gas", "fluid", "bone", "cortical bone",
    "liver", "spleen", "kidney cortex", "kidney medulla", "pancreas", "aorta", "vein",
    "kidney tumour", "pancreas tumour", "necrosis", "table",
)
T: dict[str, int] = {name: i for i, name in enumerate(TISSUES)}

#: Expected mean HU of each tissue (lo, hi), measured away from boundaries. Per case the
#: generator draws each tissue's mean from the middle half of its range; the tests and
#: notebook 00 compare measured means against these ranges.
HU_RANGES: dict[str, tuple[float, float]] = {
    "air": (-1024.0, -950.0), "fat": (-120.0, -80.0), "muscle": (30.0, 65.0),
    "soft tissue": (20.0, 60.0), "bowel gas": (-1000.0, -500.0), "fluid": (-5.0, 25.0),
    "bone": (300.0, 600.0), "cortical bone": (600.0, 1200.0), "liver": (50.0, 70.0),
    "spleen": (40.0, 60.0), "kidney cortex": (150.0, 200.0), "kidney medulla": (60.0, 120.0),
    "pancreas": (35.0, 60.0), "aorta": (150.0, 200.0), "vein": (90.0, 140.0),
    "kidney tumour": (30.0, 120.0), "pancreas tumour": (15.0, 40.0), "necrosis": (0.0, 30.0),
    "table": (100.0, 400.0),
}
#: Standard deviation (HU) of the smooth texture added to each tissue (heterogeneity).
TEXTURE_HU: dict[str, float] = {
    "fat": 6.0, "muscle": 5.0, "soft tissue": 6.0, "bone": 60.0, "cortical bone": 80.0,
    "liver": 5.0, "spleen": 5.0, "kidney cortex": 8.0, "kidney medulla": 8.0, "pancreas": 6.0,
    "kidney tumour": 16.0, "pancreas tumour": 7.0, "necrosis": 5.0,
}
#: Tissues that organs never paint over (the skeleton and the big vessels).
PROTECTED: tuple[int, ...] = (T["bone"], T["cortical bone"], T["aorta"], T["vein"])

#: Structures of the organ map; the id of an organ is its index. Tumours get ids >= 32.
ORGANS: tuple[str, ...] = (
    "none", "liver", "spleen", "right kidney", "left kidney", "pancreas", "gallbladder",
    "stomach", "aorta", "inferior vena cava",
)
O: dict[str, int] = {name: i for i, name in enumerate(ORGANS)}
TUMOUR_ID0 = 32


@dataclass(frozen=True)
class Grid:
    """Voxel-centre world coordinates (mm, RAS+) of the canonical grid, one 1-D array per axis."""

    xs: np.ndarray  # (X,) increasing: toward the patient's Right
    ys: np.ndarray  # (Y,) increasing: toward Anterior
    zs: np.ndarray  # (Z,) increasing: toward Superior

    @classmethod
    def centred(cls, shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> Grid:
        """A grid of ``shape`` voxels of ``spacing`` mm centred on the world origin."""
        axes = [((np.arange(n) - (n - 1) / 2.0) * s).astype(np.float32) for n, s in zip(shape, spacing)]
        return cls(*axes)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self.xs), len(self.ys), len(self.zs))

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(a[1] - a[0]) if len(a) > 1 else 1.0 for a in (self.xs, self.ys, self.zs))

    @property
    def voxel_ml(self) -> float:
        """Volume of one voxel in millilitres."""
        return float(np.prod(self.spacing)) / 1000.0


def _bspline_weights(coords: np.ndarray, step: float) -> np.ndarray:
    """(N, K) cubic B-spline weights from K knots ``step`` mm apart, rows normalised to unit L2."""
    lo = float(coords.min()) - 2 * step
    knots = lo + step * np.arange(int(np.ceil((float(coords.max()) - lo) / step)) + 3)
    u = np.abs(coords[:, None].astype(np.float64) - knots[None, :]) / step
    w = np.where(u < 1, 2 / 3 - u**2 + u**3 / 2, np.where(u < 2, (2 - u) ** 3 / 6, 0.0))
    return (w / np.sqrt((w**2).sum(1, keepdims=True))).astype(np.float32)


def smooth_field(rng: np.random.Generator, grid: Grid, step_mm: float,
                 box: tuple[slice, ...] | None = None) -> np.ndarray:
    """Smooth Gaussian random field, zero mean and unit variance at every voxel.

    White noise on a coarse knot lattice (``step_mm`` apart) is interpolated with separable
    cubic B-splines: three small tensor contractions instead of a 3-D filter. ``np.einsum``
    (no BLAS) keeps it single-threaded, which is much faster on a busy machine.

    Args:
        rng: random generator (consumed).
        grid: the grid.
        step_mm: knot spacing, about the correlation length.
        box: optional index slices; the field is computed on that sub-block only.

    Returns:
        float32 array (X, Y, Z), or the shape of ``box``.
    """
    box = box or (slice(None),) * 3
    wx, wy, wz = (_bspline_weights(c[b], step_mm) for c, b in zip((grid.xs, grid.ys, grid.zs), box))
    coarse = rng.standard_normal((wx.shape[1], wy.shape[1], wz.shape[1]), dtype=np.float32)
    f = np.einsum("abk,zk->abz", coarse, wz)
    f = np.einsum("abz,yb->ayz", f, wy)
    return np.einsum("ayz,xa->xyz", f, wx)


class RadialPerturbation:
    """Smooth random function on the unit sphere, zero mean: a traceless quadratic form plus
    cubes of projections on two random directions (like low-order spherical harmonics:
    elongations and bumps), costing only multiply-adds per voxel."""

    def __init__(self, rng: np.random.Generator, amplitude: float) -> None:
        q = rng.standard_normal(6) * amplitude / 2.0
        q[:3] -= q[:3].mean()  # traceless: no change of the mean radius
        self.quad = q.astype(np.float32)
        d = rng.standard_normal((2, 3))
        self.dirs = (d / np.linalg.norm(d, axis=1, keepdims=True)).astype(np.float32)
        self.cube = (rng.standard_normal(2) * amplitude).astype(np.float32)
        s = rng.standard_normal((256, 3))
        s /= np.linalg.norm(s, axis=1, keepdims=True)
        self.bound = float(np.abs(self(tuple(s[:, k] for k in range(3)))).max()) * 1.1 + 0.02

    def __call__(self, u: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
        """Relative radius change (>= -0.5) for unit directions ``u`` (3 arrays of one shape)."""
        u0, u1, u2 = u
        q = self.quad
        out = q[0] * u0 * u0 + q[1] * u1 * u1 + q[2] * u2 * u2 + q[3] * u0 * u1 + q[4] * u0 * u2 + q[5] * u1 * u2
        for d, c in zip(self.dirs, self.cube):
            p = d[0] * u0 + d[1] * u1 + d[2] * u2
            out += c * p * p * p
        return np.maximum(out, -0.5)


def frame(long_axis: np.ndarray, toward: np.ndarray) -> np.ndarray:
    """(3, 3) rotation whose columns are local axes (lateral-ish, depth, long) in world coordinates.

    Column 2 is ``long_axis``; column 0 is ``toward`` made orthogonal to it; column 1 completes
    a right-handed frame.
    """
    e2 = long_axis / np.linalg.norm(long_axis)
    e0 = toward - np.dot(toward, e2) * e2
    e0 = e0 / np.linalg.norm(e0)
    return np.stack([e0, np.cross(e2, e0), e2], axis=1)


@dataclass
class Ellipsoid:
    """A perturbed ellipsoid: centre (mm), semi-axes (mm) along the columns of ``rot``."""

    centre: np.ndarray
    axes: np.ndarray
    rot: np.ndarray = field(default_factory=lambda: np.eye(3))
    pert: RadialPerturbation | None = None

    @property
    def extent(self) -> np.ndarray:
        """(3,) half-widths (mm) along world x, y, z that bound the shape, perturbation included."""
        grow = 1.0 + (self.pert.bound if self.pert is not None else 0.0)
        return np.sqrt(((self.rot * self.axes[None, :]) ** 2).sum(1)) * grow

    def scaled(self, factor: float) -> Ellipsoid:
        return Ellipsoid(self.centre, self.axes * factor, self.rot, self.pert)

    def local(self, cv: Canvas, box: tuple[slice, ...]) -> tuple[np.ndarray, ...]:
        """Normalised local coordinates (v0, v1, v2): the unperturbed surface is ``|v| = 1``."""
        d = [c[box] - float(c0) for c, c0 in zip(cv.coords, self.centre)]
        return tuple(
            (self.rot[0, k] * d[0] + self.rot[1, k] * d[1] + self.rot[2, k] * d[2]) / float(self.axes[k])
            for k in range(3)
        )

    def rho(self, cv: Canvas, box: tuple[slice, ...]) -> np.ndarray:
        """Perturbed normalised radius over ``box``: inside is ``rho < 1``, shells are level sets."""
        v = self.local(cv, box)
        r = np.sqrt(v[0] ** 2 + v[1] ** 2 + v[2] ** 2) + np.float32(1e-6)
        if self.pert is None:
            return r
        return r / (1.0 + self.pert((v[0] / r, v[1] / r, v[2] / r)))


class Canvas:
    """Tissue map + organ map painted in order (later strokes win), on warped coordinates.

    Attributes:
        grid: the canonical grid.
        coords: warped world coordinates, three float32 arrays (X, Y, Z).
        tissue: uint8 (X, Y, Z) tissue ids (``TISSUES``).
        organ: uint8 (X, Y, Z) organ ids (``ORGANS``; tumours ``TUMOUR_ID0 + k``).
        cavity: bool (X, Y, Z), inside the abdominal wall (set by the body painter).
        body: bool (X, Y, Z), inside the skin (set by the body painter).
    """

    def __init__(self, grid: Grid, warp: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
        self.grid = grid
        self.coords = tuple(
            a[tuple(slice(None) if k == ax else None for k in range(3))] + w
            for ax, (a, w) in enumerate(zip((grid.xs, grid.ys, grid.zs), warp))
        )
        self.tissue = np.zeros(grid.shape, np.uint8)
        self.organ = np.zeros(grid.shape, np.uint8)
        self.cavity = np.ones(grid.shape, bool)
        self.body = np.ones(grid.shape, bool)
        self.margin = float(max(np.abs(w).max() for w in warp)) + 1.0  # mm added to boxes for the warp

    def box(self, centre: np.ndarray, radius: float | np.ndarray) -> tuple[slice, ...] | None:
        """Index slices of the grid within ``radius`` (+ warp margin) of ``centre``; None if empty."""
        r = np.broadcast_to(np.asarray(radius, float), (3,)) + self.margin
        out = []
        for a, c, rr in zip((self.grid.xs, self.grid.ys, self.grid.zs), centre, r):
            lo, hi = np.searchsorted(a, c - rr), np.searchsorted(a, c + rr, side="right")
            if hi <= lo:
                return None
            out.append(slice(int(lo), int(hi)))
        return tuple(out)

    def paint(self, box: tuple[slice, ...] | None, mask: np.ndarray, tissue: int | np.ndarray,
              organ: int | None = 0, *, protect: bool = True, cavity: bool = False,
              free: bool = False) -> np.ndarray:
        """Set tissue (and organ; ``None`` keeps it) where ``mask`` holds; returns the painted mask.

        ``protect`` keeps bone and the great vessels; ``cavity`` clips to the abdominal cavity;
        ``free`` paints only voxels that belong to no organ yet.
        """
        if box is None:
            return np.zeros((0, 0, 0), bool)
        m = mask.copy()
        if protect:
            m &= ~np.isin(self.tissue[box], PROTECTED)
        if cavity:
            m &= self.cavity[box]
        if free:
            m &= self.organ[box] == 0
        t = self.tissue[box]
        t[m] = tissue if np.isscalar(tissue) else tissue[m]
        if organ is not None:
            self.organ[box][m] = organ
        return m

    def full_mask(self, box: tuple[slice, ...], mask: np.ndarray) -> np.ndarray:
        """Embed a box-sized mask into a full-grid bool array."""
        out = np.zeros(self.grid.shape, bool)
        out[box] = mask
        return out
