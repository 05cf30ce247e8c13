"""`tdseg predict`: labels in the input's own grid (shape, affine, alignment), input checks, the real CLI."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import IPL_AFFINE, one_line, synthetic_case
from test_model import one_thread  # noqa: F401 - tests/ is on sys.path; autouse fixture

from tdseg_lite.cli import main
from tdseg_lite.data import DataConfig
from tdseg_lite.errors import UserInputError
from tdseg_lite.predict import check_ct, predict_volume, save_nifti
from tdseg_lite.segmenter import Segmenter


def rotation_z(degrees: float) -> np.ndarray:
    a = np.radians(degrees)
    r = np.eye(4)
    r[:2, :2] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
    return r


#: IPL voxel order (5 mm inferior, 0.8 mm posterior, 0.8 mm left) on an oblique grid (20° about S)
OBLIQUE_IPL = rotation_z(20.0) @ IPL_AFFINE
#: DataConfig.a_min / a_max: scaled intensity = (HU + 175) / 425
A_MIN, A_MAX = -175.0, 250.0


class Oracle(Segmenter):
    """Thresholds the scaled intensity of `synthetic_case` (body 40, organ 80, lesion 150 HU) into one-hot
    classes; its "uncertainty" is the scaled intensity itself. Exact on any grid, so the only error left is
    the geometry round trip."""

    def __init__(self) -> None:
        super().__init__()
        self.num_classes = 3
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # Segmenter.device() reads a parameter

    def predict(self, image: torch.Tensor, text: object = None, *, uncertainty: bool = False,
                **kwargs: object) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        scaled = lambda hu: (hu - A_MIN) / (A_MAX - A_MIN)
        idx = (image[:, 0] > scaled(60.0)).long() + (image[:, 0] > scaled(115.0)).long()
        probs = F.one_hot(idx, 3).permute(0, 4, 1, 2, 3).float()
        return (probs, image.clone()) if uncertainty else probs


def write_ct(path: Path, shape: tuple[int, int, int] = (24, 80, 80), affine: np.ndarray = OBLIQUE_IPL, seed: int = 1,
             image: np.ndarray | None = None) -> np.ndarray:
    """Write a synthetic CT (or ``image``) and return the true labels of ``synthetic_case``."""
    ct, label = synthetic_case(shape, seed=seed)
    nib.save(nib.Nifti1Image(ct if image is None else image, affine), str(path))
    return label


def dice(a: np.ndarray, b: np.ndarray, c: int) -> float:
    return float(2 * ((a == c) & (b == c)).sum() / ((a == c).sum() + (b == c).sum()))


@pytest.mark.parametrize("spacing", [(0.8, 0.8, 5.0), (0.4, 0.4, 2.5), (1.6, 1.6, 2.5)],
                         ids=["reorient-only", "upsample-2x", "resample-anisotropic"])
def test_oracle_labels_come_back_in_the_input_grid(spacing: tuple[float, float, float], tmp_path: Path) -> None:
    truth = write_ct(tmp_path / "ct.nii.gz")
    res = predict_volume(Oracle(), DataConfig(spacing=spacing, patch_size=(32, 32, 32)), tmp_path / "ct.nii.gz")
    save_nifti(res["label"], res["image"], tmp_path / "seg.nii.gz")
    seg = nib.load(str(tmp_path / "seg.nii.gz"))
    assert seg.shape == truth.shape and seg.get_data_dtype() == np.uint8
    assert np.array_equal(seg.affine, nib.load(str(tmp_path / "ct.nii.gz")).affine)
    assert np.allclose(seg.affine, OBLIQUE_IPL, atol=1e-5)
    out = np.asanyarray(seg.dataobj)
    scores = [dice(out, truth, c) for c in (1, 2)]
    # grids that nest in the input's (same size, 2x finer) are exact; 1.6 mm in-plane loses the odd voxel rows
    assert min(scores) >= (0.99 if spacing != (1.6, 1.6, 2.5) else 0.85), scores
    # the check can fail: the same labels flipped along one axis (a typical orientation bug) score far lower
    assert max(dice(np.flip(out, axis), truth, 2) for axis in range(3)) < 0.5


def test_four_d_singleton_input_and_bilinear_uncertainty(tmp_path: Path) -> None:
    ct, truth = synthetic_case((24, 80, 80), seed=2)
    write_ct(tmp_path / "ct.nii.gz", image=ct[..., None])
    res = predict_volume(Oracle(), DataConfig(spacing=(0.4, 0.4, 2.5), patch_size=(32, 32, 32)),
                         tmp_path / "ct.nii.gz", uncertainty=True)
    assert res["label"].shape == truth.shape and dice(res["label"], truth, 2) >= 0.99
    unc = res["uncertainty"]
    assert unc.dtype == np.float32 and unc.shape == truth.shape
    expected = np.clip((ct.astype(np.float32) - A_MIN) / (A_MAX - A_MIN), 0, 1)  # the oracle's map is the scaled CT
    np.testing.assert_allclose(unc, expected, atol=1e-4)


def bad_input(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / ("ct.nii.gz" if kind != "suffix" else "ct.mha")
    ct, _ = synthetic_case((12, 16, 16))
    arrays = {"2d": ct[0], "channels": np.stack([ct, ct, ct], -1), "nan": np.where(ct > 100, np.nan, ct),
              "normalised": (ct.astype(np.float32) + 1000) / 1150, "range": ct.astype(np.float32) * 10}
    if kind in ("corrupt", "suffix"):
        path.write_bytes(b"\x1f\x8b\x08not really a gzip stream")
    elif kind != "missing":
        nib.save(nib.Nifti1Image(arrays.get(kind, ct), IPL_AFFINE), str(path))
    return path


@pytest.mark.parametrize(("kind", "pattern"), [
    ("missing", "must be an existing file"), ("suffix", r"must be a NIfTI file \(.nii or .nii.gz\), got '.mha'"),
    ("corrupt", "must be a readable NIfTI"), ("2d", r"must be a 3D volume .* got shape \(16, 16\)"),
    ("channels", r"got shape \(12, 16, 16, 3\)"), ("nan", "must hold finite values, got 8 NaN"),
    ("normalised", "looks normalised, pass raw HU"), ("range", r"must hold HU in \[-3100, 5000\], got -10000..1500"),
])
def test_bad_inputs_are_one_line_errors(kind: str, pattern: str, tmp_path: Path) -> None:
    path = bad_input(tmp_path, kind)
    with pytest.raises(UserInputError, match=pattern) as err:
        check_ct(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(("extra", "pattern"), [
    (["--output", "seg.nii.gz", "--prompt", "   "], "`--prompt` must contain text"),
    (["--output", "seg.png"], r"`--output .*seg.png` must end with .nii or .nii.gz"),
    (["--output", "blocker/seg.nii.gz"], "`--output` must be under a folder, but blocker is a file"),
    (["--output", "seg.nii.gz", "--uncertainty", "seg.nii.gz"], "must be different files"),
    (["--output", "seg.nii.gz", "--samples", "0"], "`--samples` must be >= 1, got 0"),
    (["--output", "seg.nii.gz", "--input", "missing.nii.gz"], "must be an existing file"),
    (["--output", "seg.nii.gz"], r"no_run/checkpoints/last.pt` does not exist"),
])
def test_cli_errors_exit_2_with_one_line(extra: list[str], pattern: str, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    write_ct(tmp_path / "ct.nii.gz", shape=(12, 16, 16))
    (tmp_path / "blocker").write_text("a file where a folder should be")
    assert main(["predict", "--run", "no_run", "--input", "ct.nii.gz", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("tdseg predict: error:")
    assert __import__("re").search(pattern, err), err


def test_cli_end_to_end_on_a_trained_run(tiny_unet_run: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    run, _ = tiny_unet_run
    write_ct(tmp_path / "ct.nii.gz", shape=(20, 48, 44), affine=OBLIQUE_IPL)
    seg, unc = tmp_path / "out" / "seg.nii.gz", tmp_path / "out" / "unc.nii"
    code = main(["predict", "--run", str(run), "--input", str(tmp_path / "ct.nii.gz"), "--output", str(seg),
                 "--uncertainty", str(unc), "--prompt", "A small lesion.", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    assert "tdseg predict: wrote" in capsys.readouterr().err
    ct = nib.load(str(tmp_path / "ct.nii.gz"))
    for path, dtype in ((seg, np.uint8), (unc, np.float32)):
        img = nib.load(str(path))
        assert img.shape == ct.shape and np.array_equal(img.affine, ct.affine) and img.get_data_dtype() == dtype
    labels, u = np.asanyarray(nib.load(str(seg)).dataobj), nib.load(str(unc)).get_fdata()
    assert set(np.unique(labels)) <= {0, 1, 2} and np.isfinite(u).all() and u.min() >= 0
    assert not list(seg.parent.glob(".*.tmp")), "atomic writes must not leave temporary files"


def test_predict_says_what_its_work_is(run_copy: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    run, _ = run_copy
    write_ct(tmp_path / "ct.nii.gz", shape=(12, 40, 40))
    assert main(["predict", "--run", str(run), "--input", str(tmp_path / "ct.nii.gz"),
                 "--output", str(tmp_path / "seg.nii.gz"), "--device", "cpu", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "tdseg predict: " in err and "window(s) of the run's 32×32×32 patch, one network pass each" in err
    assert "s per window" in err


def test_work_summary_names_what_dominates() -> None:
    from test_model import make

    from tdseg_lite.predict import work_summary

    model = make("textdiffseg")
    line = work_summary(model, 8, 2, 4)
    assert line.startswith("8 window(s) × 2 denoiser call(s) × 4 sample(s) = 64 denoiser passes; windows dominate")
    assert "samples dominates" in work_summary(model, 2, 2, 8)
    assert "the run's 32×32×32 patch (half-overlapping windows) sets it" in work_summary(model, 75, 2, 1, (32, 32, 32))
    model.set_sampling_start("aux", 500)
    assert "× 3 denoiser call(s)" in work_summary(model, 1, 5, 1)  # only the schedule's steps <= 500 run


def test_a_failed_predict_leaves_no_output_folder(tmp_path: Path, capsys) -> None:
    write_ct(tmp_path / "ct.nii.gz", shape=(12, 16, 16))
    assert main(["predict", "--run", str(tmp_path / "no_run"), "--input", str(tmp_path / "ct.nii.gz"),
                 "--output", str(tmp_path / "new" / "deeper" / "seg.nii.gz")]) == 2
    one_line(capsys, "predict")
    assert not (tmp_path / "new").exists()
