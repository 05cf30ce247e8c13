"""One case of ``tdseg prepare`` (tdseg_lite.datasets.volumes): descriptions in world coordinates, resampling."""

from __future__ import annotations

import nibabel as nib
import numpy as np
from test_datasets_prepare import ellipsoid

from tdseg_lite.datasets.volumes import (
    describe_kits19,
    describe_lesions,
    diameter_cm,
    resample,
)


def test_describe_kits19_uses_world_coordinates() -> None:
    """The same voxels read as left or right depending on the affine (RAS+: +x = patient's right)."""
    label = np.zeros((30, 10, 10), np.uint8)
    label[2:8, 3:7, 3:7] = 1
    label[22:28, 3:7, 3:7] = 1
    label[3:7, 4:6, 4:6] = 2  # tumour in the kidney at small x index
    ras = np.diag([2.0, 2.0, 2.0, 1.0])
    assert describe_kits19(label, ras).startswith("a ") and "left kidney; right kidney normal" in describe_kits19(label, ras)
    las = np.diag([-2.0, 2.0, 2.0, 1.0])
    assert "right kidney; left kidney normal" in describe_kits19(label, las)


def test_describe_lesions_for_each_msd_task() -> None:
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    label = np.zeros((40, 40, 40), np.uint8)
    label[5:35, 5:35, 5:35] = 1
    assert describe_lesions(label, affine, "spleen", 1, None) == "a spleen of 27 mL"
    assert describe_lesions(label, affine, "liver", 1, 2) == "liver without tumour"
    label[10:20, 10:20, 10:20] = 2
    label[25:28, 25:28, 25:28] = 2  # 27 mm³: a second, small tumour
    label[31, 31, 31] = 2  # 1 mm³: annotation noise, ignored
    assert describe_lesions(label, affine, "liver", 1, 2) == f"2 tumours in the liver, the largest {diameter_cm(1000):.1f} cm"
    assert describe_lesions(label == 2, affine, "colon", None, 1).startswith("2 tumours in the colon")


def test_resample_nearest_is_unbiased() -> None:
    """Nearest-neighbour label volumes scatter by ~1/radius (in voxels) but average out: no systematic shrink."""
    rng = np.random.default_rng(0)
    affine = np.diag([3.0, 2.4, 2.4, 1.0])
    errors = []
    for _ in range(40):
        centre = tuple(17 + rng.uniform(-5, 5) for _ in range(3))
        label = ellipsoid((34, 34, 34), centre, (6, 6, 5)).astype(np.uint8)
        out, new = resample(label, affine, (2.0, 2.0, 2.0), label=True)
        errors.append(out.sum() * np.prod(nib.affines.voxel_sizes(new)) / (label.sum() * 3.0 * 2.4 * 2.4) - 1)
    assert abs(np.mean(errors)) < 0.01 and np.std(errors) < 0.04


def test_resample_grid_covers_the_same_field_of_view() -> None:
    array = np.zeros((10, 10, 10), np.uint8)
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    out, new = resample(array, affine, (1.5, 1.5, 1.5), label=True)
    assert out.shape == (20, 20, 20) and out.dtype == np.uint8
    first_edge_old = affine[:3, :3] @ np.full(3, -0.5) + affine[:3, 3]
    first_edge_new = new[:3, :3] @ np.full(3, -0.5) + new[:3, 3]
    assert np.allclose(first_edge_old, first_edge_new)
