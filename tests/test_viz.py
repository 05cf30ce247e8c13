"""Pictures: radiological orientation of slices, overlays, histogram statistics, viewer fallback."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # unit tests only; notebooks keep the inline backend

import matplotlib.pyplot as plt
import numpy as np
import pytest

from tdseg_lite import viz


def _marked_volume() -> np.ndarray:
    vol = np.zeros((20, 16, 12), dtype=np.float32)
    vol[18, 8, 6] = 1.0   # patient right (x high in RAS)
    vol[10, 14, 6] = 2.0  # anterior (y high)
    vol[10, 8, 10] = 3.0  # superior (z high)
    return vol


def test_axial_slice_is_radiological() -> None:
    sl = viz._plane_slice(_marked_volume(), "axial", 6)
    _r, c = np.argwhere(sl == 1.0)[0]
    assert c < sl.shape[1] // 2, "patient right must be on the viewer's left"
    r2, _ = np.argwhere(sl == 2.0)[0]
    assert r2 < sl.shape[0] // 2, "anterior must be at the top"


def test_coronal_and_sagittal_put_superior_on_top() -> None:
    vol = _marked_volume()
    cor = viz._plane_slice(vol, "coronal", 8)
    assert np.argwhere(cor == 3.0)[0][0] < cor.shape[0] // 2
    sag = viz._plane_slice(vol, "sagittal", 10)
    assert np.argwhere(sag == 3.0)[0][0] < sag.shape[0] // 2
    assert np.argwhere(sag == 2.0)[0][1] < sag.shape[1] // 2, "anterior on the left in sagittal view"


def test_show_slices_centres_on_foreground_and_checks_shapes() -> None:
    img = np.random.default_rng(0).normal(0, 50, (24, 20, 16)).astype(np.float32)
    lab = np.zeros_like(img, dtype=np.uint8)
    lab[4:8, 4:8, 10:14] = 2
    fig = viz.show_slices(img, lab, spacing=(1, 1, 2.5), label_names={0: "background", 2: "tumor"})
    titles = [ax.get_title() for ax in fig.axes[:3]]
    assert titles == ["sagittal (x=6)", "coronal (y=6)", "axial (z=12)"]
    plt.close(fig)
    with pytest.raises(ValueError, match=r"`label` shape \(2, 2, 2\) must equal `image` shape"):
        viz.show_slices(img, np.zeros((2, 2, 2)))


def test_hu_histogram_statistics() -> None:
    img = np.full((10, 10, 10), -100.0, dtype=np.float32)
    lab = np.zeros(img.shape, dtype=np.uint8)
    img[:5] = 60.0
    lab[:5] = 1
    fig, stats = viz.hu_histograms([img], [lab], {0: "background", 1: "liver"})
    plt.close(fig)
    assert stats["liver"]["mean"] == pytest.approx(60.0) and stats["liver"]["voxels"] == 500
    assert stats["background"]["mean"] == pytest.approx(-100.0)


def test_viewer_falls_back_to_static_figure(monkeypatch) -> None:
    monkeypatch.setenv("TDSEG_STATIC_VIEWER", "1")
    before = set(plt.get_fignums())
    out = viz.slice_viewer(np.zeros((8, 8, 8)), np.ones((8, 8, 8), dtype=np.uint8))
    assert isinstance(out, plt.Figure) and len(out.axes) == 6
    # drawn once: returned (and shown as the cell's result), not left open for pyplot to flush again
    assert set(plt.get_fignums()) == before


def test_default_slices_cut_through_a_structure_not_between_two() -> None:
    lab = np.zeros((40, 20, 20), dtype=np.uint8)
    lab[4:12, 6:14, 6:14] = 1      # right-hand "kidney"
    lab[28:36, 6:14, 6:14] = 1     # left-hand "kidney" with a tumour
    lab[30:33, 8:11, 8:11] = 2
    x, _y, _z = viz._center_of(lab, lab.shape)
    assert 28 <= x < 36, "the sagittal slice must pass through the kidney with the rarest label, not the midline"
    fig = viz.show_slices(np.zeros(lab.shape, dtype=np.float32), lab)
    sagittal = viz._plane_slice(lab, "sagittal", x)
    assert (sagittal == 2).any() and fig.axes[0].get_title() == f"sagittal (x={x})"
    plt.close(fig)
    ring = np.zeros((21, 21, 5), dtype=np.uint8)  # a structure whose centroid lies outside it
    ring[2:19, 2:19] = 1
    ring[5:16, 5:16] = 0
    assert ring[viz._center_of(ring, ring.shape)] == 1


def test_axial_slice_is_the_radiological_view() -> None:
    import torch

    vol = _marked_volume()
    np.testing.assert_array_equal(viz.axial_slice(vol, 6), viz._plane_slice(vol, "axial", 6))
    np.testing.assert_array_equal(viz.axial_slice(torch.from_numpy(vol)[None], 6), vol[:, :, 6].T[::-1, ::-1])


def test_to_numpy_volume_drops_singleton_channels() -> None:
    import torch

    assert viz.to_numpy_volume(torch.zeros(1, 1, 4, 5, 6)).shape == (4, 5, 6)
    with pytest.raises(ValueError, match="must be 3D"):
        viz.to_numpy_volume(np.zeros((2, 4, 5, 6)))
