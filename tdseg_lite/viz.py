"""Pictures: three-plane slices with label overlays, HU histograms, curves and a slice viewer.

Arrays follow the NIfTI/MONAI convention: a volume is ``(X, Y, Z)`` (or ``(C, X, Y, Z)`` with
one channel), and after ``Orientationd("RAS")`` the X index grows toward the patient's Right,
Y toward Anterior and Z toward Superior (nibabel's RAS+ convention). Pictures use radiological display conventions: an axial slice is shown
with the patient's right on the viewer's left and anterior at the top.

The interactive viewer uses ipywidgets when they can render (Jupyter, Colab) and falls back
to a static grid of slices otherwise (papermill, nbval, plain Python), so every notebook shows
the same information headless.

Explained in ``notebooks/00_setup_and_data.ipynb``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch

__all__ = [
    "LABEL_COLORS",
    "axial_slice",
    "hu_histograms",
    "label_colormap",
    "plot_curves",
    "show_slices",
    "slice_viewer",
    "to_numpy_volume",
]

#: RGB colours for label ids 1.. (0 = background is transparent).
LABEL_COLORS: tuple[tuple[float, float, float], ...] = (
    (0.90, 0.20, 0.20), (0.20, 0.70, 0.30), (0.25, 0.45, 0.95), (0.95, 0.75, 0.10),
    (0.70, 0.30, 0.85), (0.10, 0.80, 0.80), (0.95, 0.50, 0.20), (0.60, 0.60, 0.60),
    (0.55, 0.35, 0.20), (0.95, 0.40, 0.70), (0.40, 0.80, 0.10), (0.10, 0.30, 0.50),
    (0.80, 0.80, 0.40),
)

PLANES = ("sagittal", "coronal", "axial")


def to_numpy_volume(volume: Any) -> np.ndarray:
    """A ``(X, Y, Z)`` numpy array from a tensor/array of shape (X,Y,Z), (1,X,Y,Z) or (1,1,X,Y,Z)."""
    arr = volume.detach().cpu().numpy() if hasattr(volume, "detach") else np.asarray(volume)
    while arr.ndim > 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 3:
        raise ValueError(f"`volume` must be 3D after dropping singleton channels, got shape {arr.shape}.")
    return arr


def label_colormap(num_labels: int) -> ListedColormap:
    """Colormap for integer labels 0..num_labels-1 with a transparent background."""
    colors = [(0.0, 0.0, 0.0, 0.0)] + [
        (*LABEL_COLORS[(i - 1) % len(LABEL_COLORS)], 1.0) for i in range(1, max(num_labels, 2))
    ]
    return ListedColormap(colors)


def _plane_slice(vol: np.ndarray, plane: str, index: int) -> np.ndarray:
    """2D slice for display: rows = vertical screen axis (top first), cols = horizontal."""
    # RAS+ arrays: x grows toward the patient's Right, y toward Anterior, z toward Superior.
    # Radiological display puts the patient's right on the viewer's left, so x is reversed.
    if plane == "axial":      # fixed z: rows = y (anterior at top), cols = x (patient right on the left)
        return vol[:, :, index].T[::-1, ::-1]
    if plane == "coronal":    # fixed y: rows = z (superior at top), cols = x (patient right on the left)
        return vol[:, index, :].T[::-1, ::-1]
    if plane == "sagittal":   # fixed x: rows = z (superior at top), cols = y (anterior on the left)
        return vol[index, :, :].T[::-1, ::-1]
    raise ValueError(f"`plane` must be one of {PLANES}, got {plane!r}.")


def axial_slice(volume: Any, z: int) -> np.ndarray:
    """Axial slice ``z`` of an RAS ``(X, Y, Z)`` volume as shown on screen (radiological view).

    Rows run from anterior (top) to posterior, columns from the patient's right (viewer's left) to
    the patient's left, so ``plt.imshow(axial_slice(ct, z))`` looks like a radiology workstation.
    Accepts numpy arrays and (CPU or GPU) tensors of shape (X, Y, Z) or with singleton leading axes.
    """
    return _plane_slice(to_numpy_volume(volume), "axial", int(z))


def _aspect(spacing: Sequence[float] | None, plane: str) -> float:
    if spacing is None:
        return 1.0
    sx, sy, sz = (float(s) for s in spacing)
    return {"axial": sy / sx, "coronal": sz / sx, "sagittal": sz / sy}[plane]


def _center_of(label: np.ndarray | None, shape: Sequence[int]) -> tuple[int, int, int]:
    """Slice indices (x, y, z) that cut through a labelled structure in all three planes.

    The centroid of *all* foreground can fall between structures (two kidneys: the midline, where a
    sagittal slice shows no label), so we centre on one connected structure: the one holding the
    most voxels of the rarest label present (e.g. the kidney with the tumour), at its centroid,
    moved to the nearest voxel of that structure if the centroid lies outside it. Without a label:
    the volume's centre.
    """
    if label is None or not np.any(label > 0):
        return tuple(s // 2 for s in shape)  # type: ignore[return-value]
    from scipy import ndimage

    components, count = ndimage.label(label > 0)
    ids, voxels = np.unique(label[label > 0], return_counts=True)
    rarest = ids[np.argmin(voxels)]
    hits = np.bincount(components[label == rarest], minlength=count + 1)
    idx = np.argwhere(components == int(np.argmax(hits)))
    centre = np.round(idx.mean(axis=0)).astype(int)
    if not components[tuple(centre)]:
        centre = idx[np.argmin(((idx - centre) ** 2).sum(axis=1))]
    return tuple(int(v) for v in centre)  # type: ignore[return-value]


def show_slices(
    image: Any,
    label: Any | None = None,
    *,
    index: Sequence[int] | None = None,
    spacing: Sequence[float] | None = None,
    window: tuple[float, float] = (-175.0, 250.0),
    label_names: Mapping[int, str] | None = None,
    alpha: float = 0.45,
    title: str | None = None,
    axes: Sequence[Any] | None = None,
) -> plt.Figure:
    """Sagittal, coronal and axial slices through ``index`` with an optional label overlay.

    Args:
        image: CT volume (X, Y, Z) in HU (or any intensity; set ``window``), RAS-oriented.
        label: integer label volume, same shape, or None.
        index: (x, y, z) slice indices; default = through one labelled structure (``_center_of``).
        spacing: voxel size in mm, to draw slices with the right aspect ratio.
        window: display window (low, high) in image units; (-175, 250) is an abdominal window.
        label_names: {id: name} for the legend.
        alpha: overlay opacity.
        title: figure title.
        axes: three existing axes to draw into (otherwise a new 1×3 figure).

    Returns:
        The matplotlib figure.
    """
    img = to_numpy_volume(image).astype(np.float32)
    lab = to_numpy_volume(label).astype(np.int64) if label is not None else None
    if lab is not None and lab.shape != img.shape:
        raise ValueError(f"`label` shape {lab.shape} must equal `image` shape {img.shape}.")
    center = tuple(index) if index is not None else _center_of(lab, img.shape)
    if axes is None:
        fig, axes = plt.subplots(1, 3, figsize=(12, 4.2))
    else:
        fig = axes[0].figure
    num_labels = int(lab.max()) + 1 if lab is not None else 0
    if label_names:
        num_labels = max(num_labels, max(int(k) for k in label_names) + 1)
    cmap = label_colormap(num_labels)
    for ax, plane, axis in zip(axes, PLANES, range(3)):
        ax.imshow(_plane_slice(img, plane, center[axis]), cmap="gray", vmin=window[0], vmax=window[1],
                  aspect=_aspect(spacing, plane), interpolation="nearest")
        if lab is not None:
            sl = _plane_slice(lab, plane, center[axis])
            ax.imshow(np.ma.masked_equal(sl, 0), cmap=cmap, vmin=0, vmax=num_labels - 1, alpha=alpha,
                      aspect=_aspect(spacing, plane), interpolation="nearest")
        ax.set_title(f"{plane} ({'xyz'[axis]}={center[axis]})", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[1:]:  # coronal and axial: radiological convention
        ax.text(0.02, 0.03, "R", color="yellow", transform=ax.transAxes, fontsize=9)
        ax.text(0.93, 0.03, "L", color="yellow", transform=ax.transAxes, fontsize=9)
    if label_names:
        handles = [Patch(color=cmap(int(k)), label=name) for k, name in sorted(label_names.items(), key=lambda kv: int(kv[0])) if int(k) > 0]
        axes[2].legend(handles=handles, loc="upper right", fontsize=8, framealpha=0.7)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def hu_histograms(
    images: Sequence[Any],
    labels: Sequence[Any],
    label_names: Mapping[int, str],
    *,
    bins: int = 120,
    hu_range: tuple[float, float] = (-1000.0, 500.0),
    ax: Any | None = None,
) -> tuple[plt.Figure, dict[str, dict[str, float]]]:
    """Per-label HU histograms (density) pooled over several cases, plus a statistics table.

    Args:
        images: CT volumes (X, Y, Z) in HU.
        labels: label volumes, same shapes.
        label_names: {id: name}; id 0 is drawn as "background (body + air)".
        bins: histogram bins over ``hu_range``.
        hu_range: HU range to draw.
        ax: an existing axis.

    Returns:
        (figure, {name: {"mean", "std", "p5", "p95", "voxels"}}).
    """
    if ax is None:
        fig, ax = plt.subplots(figsize=(9, 4))
    else:
        fig = ax.figure
    stats: dict[str, dict[str, float]] = {}
    for lid, name in sorted(label_names.items(), key=lambda kv: int(kv[0])):
        values = np.concatenate([
            to_numpy_volume(im)[to_numpy_volume(lb) == int(lid)].ravel() for im, lb in zip(images, labels)
        ])
        if values.size == 0:
            continue
        stats[name] = {"mean": float(values.mean()), "std": float(values.std()),
                       "p5": float(np.percentile(values, 5)), "p95": float(np.percentile(values, 95)),
                       "voxels": int(values.size)}
        color = "0.5" if int(lid) == 0 else LABEL_COLORS[(int(lid) - 1) % len(LABEL_COLORS)]
        ax.hist(values, bins=bins, range=hu_range, density=True, histtype="step", lw=1.6, color=color,
                label=f"{name} ({stats[name]['mean']:.0f} ± {stats[name]['std']:.0f} HU)")
    ax.set_xlabel("Hounsfield units")
    ax.set_ylabel("density")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.set_title("HU distribution per label")
    fig.tight_layout()
    return fig, stats


def plot_curves(
    curves: Mapping[str, Sequence[float]],
    *,
    xlabel: str = "step",
    ylabel: str = "value",
    logy: bool = False,
    ax: Any | None = None,
    title: str | None = None,
) -> plt.Figure:
    """Line plot of named curves (losses, Dice over time...)."""
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 3.5))
    else:
        fig = ax.figure
    for name, values in curves.items():
        ax.plot(np.arange(len(values)), np.asarray(values, dtype=float), label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _widgets_available() -> bool:
    """True when ipywidgets can render: an IPython kernel with a front end (not papermill/nbval)."""
    try:
        import ipywidgets  # noqa: F401
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    if shell is None or not hasattr(shell, "kernel"):
        return False
    import os

    # Headless runs (the series runner and the tests set TDSEG_STATIC_VIEWER=1) save no widget
    # state, so a widget would show nothing in the executed notebook or its HTML.
    return os.environ.get("TDSEG_STATIC_VIEWER", "0") in ("", "0")


def _static_grid(img: np.ndarray, lab: np.ndarray | None, plane: str, window: tuple[float, float],
                 spacing: Sequence[float] | None, label_names: Mapping[int, str] | None, n: int = 6) -> plt.Figure:
    """Fallback: ``n`` evenly spaced slices of one plane."""
    axis = PLANES.index(plane)
    positions = np.linspace(0, img.shape[axis] - 1, n + 2)[1:-1].astype(int)
    fig, axes = plt.subplots(1, n, figsize=(2.2 * n, 2.6))
    num_labels = max(int(lab.max()) + 1 if lab is not None else 0, len(label_names or {}))
    cmap = label_colormap(num_labels)
    for ax, pos in zip(axes, positions):
        ax.imshow(_plane_slice(img, plane, int(pos)), cmap="gray", vmin=window[0], vmax=window[1],
                  aspect=_aspect(spacing, plane), interpolation="nearest")
        if lab is not None:
            ax.imshow(np.ma.masked_equal(_plane_slice(lab, plane, int(pos)), 0), cmap=cmap, vmin=0,
                      vmax=num_labels - 1, alpha=0.45, aspect=_aspect(spacing, plane), interpolation="nearest")
        ax.set_title(f"{plane} {pos}", fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    return fig


def slice_viewer(
    image: Any,
    label: Any | None = None,
    *,
    spacing: Sequence[float] | None = None,
    label_names: Mapping[int, str] | None = None,
    window: tuple[float, float] = (-175.0, 250.0),
    force_static: bool = False,
) -> Any:
    """Interactive viewer: slice slider, plane, window/level and per-label toggles.

    The widget needs a running kernel: a saved or exported notebook shows no slider (JupyterLab
    then says the widget model was not found). Where widgets cannot render (papermill, nbval,
    plain Python, ``TDSEG_STATIC_VIEWER=1``, ``force_static=True``) it returns a static grid of
    axial slices instead: a figure that is already closed in pyplot, so a notebook draws it once
    (as the cell's result) and not a second time when the inline backend flushes open figures.

    Args:
        image: CT volume (X, Y, Z), RAS-oriented.
        label: label volume, same shape, or None.
        spacing: voxel size in mm (for the aspect ratio).
        label_names: {id: name} for the toggles.
        window: initial (low, high) display window in HU.
        force_static: skip widgets even when available.

    Returns:
        The widget box, or the static matplotlib figure.
    """
    img = to_numpy_volume(image).astype(np.float32)
    lab = to_numpy_volume(label).astype(np.int64) if label is not None else None
    names = dict(label_names or ({i: f"label {i}" for i in range(1, int(lab.max()) + 1)} if lab is not None else {}))
    if force_static or not _widgets_available():
        fig = _static_grid(img, lab, "axial", window, spacing, names)
        plt.close(fig)  # shown once, as the returned value; pyplot must not flush it again
        return fig
    import ipywidgets as w

    plane = w.ToggleButtons(options=list(PLANES), value="axial", description="plane")
    pos = w.IntSlider(value=img.shape[2] // 2, min=0, max=img.shape[2] - 1, description="slice")
    level = w.IntSlider(value=int(sum(window) / 2), min=-1000, max=1000, step=10, description="level")
    width = w.IntSlider(value=int(window[1] - window[0]), min=10, max=2500, step=10, description="width")
    toggles = {int(k): w.Checkbox(value=True, description=str(v)) for k, v in names.items() if int(k) > 0}
    out = w.Output()

    def redraw(*_: Any) -> None:
        axis = PLANES.index(plane.value)
        pos.max = img.shape[axis] - 1
        shown = lab.copy() if lab is not None else None
        if shown is not None:
            for k, box in toggles.items():
                if not box.value:
                    shown[shown == k] = 0
        lo, hi = level.value - width.value / 2, level.value + width.value / 2
        with out:
            out.clear_output(wait=True)
            _fig, ax = plt.subplots(figsize=(5, 5))
            ax.imshow(_plane_slice(img, plane.value, min(pos.value, pos.max)), cmap="gray", vmin=lo, vmax=hi,
                      aspect=_aspect(spacing, plane.value), interpolation="nearest")
            if shown is not None:
                n = max(int(lab.max()) + 1, len(names) + 1)
                ax.imshow(np.ma.masked_equal(_plane_slice(shown, plane.value, min(pos.value, pos.max)), 0),
                          cmap=label_colormap(n), vmin=0, vmax=n - 1, alpha=0.45,
                          aspect=_aspect(spacing, plane.value), interpolation="nearest")
            ax.axis("off")
            plt.show()

    for control in (plane, pos, level, width, *toggles.values()):
        control.observe(redraw, names="value")
    redraw()
    return w.VBox([w.HBox([plane]), pos, w.HBox([level, width]), w.HBox(list(toggles.values())), out])
