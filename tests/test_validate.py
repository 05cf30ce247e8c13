"""Dataset validation: one broken dataset per rule, one-line messages, exit codes, the happy path."""

from __future__ import annotations

import gzip
import json
import sys
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import write_msd_dataset
from test_nifti_io import lying_header

from tdseg_lite import cli
from tdseg_lite.cli import main
from tdseg_lite.errors import UserInputError
from tdseg_lite.validate import ValidationReport, case_id_from_path, validate_dataset

CASE = "case_001.nii.gz"


def _meta(root: Path) -> dict:
    return json.loads((root / "dataset.json").read_text())


def _write_meta(root: Path, meta: object) -> None:
    (root / "dataset.json").write_text(json.dumps(meta))


def _edit_meta(fn: Callable[[dict], object]) -> Callable[[Path], None]:
    """Apply ``fn`` to dataset.json in place (its return value is ignored)."""
    def mutate(root: Path) -> None:
        meta = _meta(root)
        fn(meta)
        _write_meta(root, meta)
    return mutate


Edit = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def _rewrite(folder: str, fn: Edit) -> Callable[[Path], None]:
    """Replace ``folder/case_001.nii.gz`` by ``fn(data, affine)``."""
    def mutate(root: Path) -> None:
        path = root / folder / CASE
        img = nib.load(path)
        data, affine = fn(np.asanyarray(img.dataobj), img.affine.copy())
        nib.save(nib.Nifti1Image(data, affine), path)
    return mutate


def _truncate(root: Path) -> None:
    """Keep the header but only half of the voxel bytes (an interrupted download)."""
    path = root / "labelsTr" / CASE
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[: len(raw) // 2]))


def _singular_affine(root: Path) -> None:
    """An image whose sform has a zero voxel size (nibabel refuses to write it the normal way)."""
    path = root / "imagesTr" / CASE
    img = nib.load(path)
    out = nib.Nifti1Image(np.asanyarray(img.dataobj), img.affine)
    out.header.set_sform(np.diag([2.0, 0.0, 3.0, 1.0]), code=1)
    out.header.set_qform(None, code=0)
    out.update_header = lambda: None  # keep the broken sform as written
    nib.save(out, path)


def _with_nan(data: np.ndarray, aff: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    out = data.astype(np.float32)
    out[0, 0, :5] = np.nan
    return out, aff


def _with_value(value: float, dtype: type) -> Edit:
    def fn(data: np.ndarray, aff: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = data.astype(dtype)
        out[0, 0, 0] = value
        return out, aff
    return fn


def _shift_affine(data: np.ndarray, aff: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    aff[0, 3] += 0.5
    return data, aff


def _dup_case_id(root: Path) -> None:
    (root / "other").mkdir()
    (root / "other" / CASE).write_bytes((root / "imagesTr" / CASE).read_bytes())
    meta = _meta(root)
    meta["training"].append({"image": f"./other/{CASE}", "label": f"./labelsTr/{CASE}"})
    _write_meta(root, meta)


BROKEN: dict[str, tuple[Callable[[Path], None], str]] = {
    "no_dataset_json": (lambda r: (r / "dataset.json").unlink(), "dataset.json: file is missing"),
    "invalid_json": (lambda r: (r / "dataset.json").write_text('{"labels": {"0": "bg"},}'),
                     "dataset.json: must be valid JSON, got an error at line 1 column"),
    "json_not_object": (lambda r: _write_meta(r, [1, 2]), "dataset.json: must hold a JSON object, got list"),
    "labels_missing": (_edit_meta(lambda m: m.pop("labels")), 'dataset.json: required key "labels" is missing'),
    "labels_no_background": (_edit_meta(lambda m: m["labels"].pop("0")), '"labels" must declare "0" (background)'),
    "labels_inverted": (_edit_meta(lambda m: m.update(labels={"background": 0, "kidney": 1})),
                        "it looks inverted: map index to name"),
    "training_missing": (_edit_meta(lambda m: m.pop("training")), 'required key "training" is missing'),
    "training_empty": (_edit_meta(lambda m: m.update(training=[])), '"training" must be a non-empty list'),
    "entry_without_label": (_edit_meta(lambda m: m["training"][1].pop("label")),
                            'dataset.json: training[1] must be an object with string "label"'),
    "test_not_list": (_edit_meta(lambda m: m.update(test="imagesTs")), '"test" must be a list of image paths'),
    "missing_image": (lambda r: (r / "imagesTr" / CASE).unlink(),
                      f"imagesTr/{CASE}: image file listed in dataset.json does not exist"),
    "missing_label": (lambda r: (r / "labelsTr" / CASE).unlink(),
                      f"labelsTr/{CASE}: label file listed in dataset.json does not exist"),
    "corrupt_file": (lambda r: (r / "imagesTr" / CASE).write_bytes(b"not a nifti at all" * 10),
                     f"imagesTr/{CASE}: cannot be read as NIfTI"),
    "truncated_data": (_truncate, f"labelsTr/{CASE}: voxel data must be readable"),
    "duplicate_image": (_edit_meta(lambda m: m["training"].append(m["training"][1])),
                        f'"training" must list each case once, got imagesTr/{CASE} 2 times'),
    "duplicate_case_id": (_dup_case_id, "got case id 'case_001' 2 times"),
    "image_2d": (_rewrite("imagesTr", lambda d, a: (d[:, :, 0], a)), "image must be 3D (X, Y, Z) or 4D"),
    "image_4d_undeclared": (_rewrite("imagesTr", lambda d, a: (np.stack([d, d], -1), a)),
                            ('image has 2 channel(s) (shape (40, 40, 24, 2)) but dataset.json "modality" '
                            "declares 1 (1 if absent)")),
    "label_4d": (_rewrite("labelsTr", lambda d, a: (np.stack([d == 1, d == 2], -1).astype(np.uint8), a)),
                 f"labelsTr/{CASE}: label map must be 3D (X, Y, Z), got shape (40, 40, 24, 2)"),
    "shape_mismatch": (_rewrite("labelsTr", lambda d, a: (d[:, :, :20], a)),
                       f"labelsTr/{CASE}: label shape must equal the image shape (40, 40, 24)"),
    "affine_mismatch": (_rewrite("labelsTr", _shift_affine),
                        (f"labelsTr/{CASE}: label affine must match the image affine (tolerance 0.001 mm), "
                        "got a max difference of 0.5")),
    "singular_affine": (_singular_affine,
                        f"imagesTr/{CASE}: affine must be invertible"),
    "undeclared_label": (_rewrite("labelsTr", _with_value(7, np.uint8)),
                         (f'labelsTr/{CASE}: label value 7 is not declared in dataset.json "labels" (declared 0,1,2); '
                         'fix the label map or add "7": "<name>" to "labels"')),
    "non_integer_label": (_rewrite("labelsTr", _with_value(0.5, np.float32)),
                          f"labelsTr/{CASE}: label values must be integers, got non-integer values"),
    "nan_image": (_rewrite("imagesTr", _with_nan), f"imagesTr/{CASE}: image must be finite, got 5 NaN/inf voxels"),
    "empty_label": (_rewrite("labelsTr", lambda d, a: (np.zeros_like(d), a)),
                    f"labelsTr/{CASE}: label map must contain foreground in a training case"),
}


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_broken_dataset_gives_one_line_per_error_and_exit_2(kind: str, msd_dataset, capsys) -> None:
    mutate, expected = BROKEN[kind]
    root = msd_dataset()
    mutate(root)
    assert cli.main(["validate", "--data", str(root)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert any(expected in line for line in lines), captured.err
    assert all(line.startswith("tdseg validate: ") for line in lines), captured.err
    assert "Traceback" not in captured.err and captured.out == ""
    report = validate_dataset(root)
    assert not report.ok and any(expected in e for e in report.errors)


def test_missing_folder_is_an_error(tmp_path, capsys) -> None:
    assert cli.main(["validate", "--data", str(tmp_path / "nope")]) == 2
    assert "dataset folder does not exist" in capsys.readouterr().err


def test_happy_path_prints_summary_and_exits_0(msd_dataset, capsys) -> None:
    root = msd_dataset(n_cases=3)
    assert cli.main(["validate", "--data", str(root)]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert f"dataset synthetic at {root}: OK" in captured.out
    report = validate_dataset(root)
    assert report.ok and report.errors == [] and report.warnings == []
    s = report.summary
    assert s["num_training"] == 3 and s["shape_min"] == [40, 40, 24] and s["spacing_median_mm"] == [2.0, 2.0, 3.0]
    assert s["orientations"] == {"RAS": 3} and set(s["label_voxels"]) == {"0", "1", "2"}
    assert s["label_cases"] == {"0": 3, "1": 3, "2": 3} and s["intensity_range"][0] == -1000.0


def test_ipl_orientation_is_reported(msd_dataset) -> None:
    from conftest import IPL_AFFINE

    report = validate_dataset(msd_dataset(n_cases=2, shape=(12, 48, 48), affine=IPL_AFFINE))
    assert report.ok and report.summary["orientations"] == {"IPL": 2}
    assert report.summary["spacing_min_mm"] == [5.0, 0.8, 0.8]


def test_quick_mode_reads_headers_only(msd_dataset, capsys) -> None:
    root = msd_dataset()
    BROKEN["undeclared_label"][0](root)
    assert cli.main(["validate", "--data", str(root), "--quick"]) == 0
    assert "label_voxels" not in validate_dataset(root, check_arrays=False).summary
    BROKEN["shape_mismatch"][0](root)
    assert cli.main(["validate", "--data", str(root), "--quick"]) == 2


def test_empty_labels_can_be_allowed(msd_dataset, capsys) -> None:
    root = msd_dataset()
    BROKEN["empty_label"][0](root)
    assert cli.main(["validate", "--data", str(root), "--allow-empty-labels"]) == 0
    assert "warning: labelsTr/case_001.nii.gz: label map must contain foreground" in capsys.readouterr().err


def test_multimodal_4d_images_need_declared_channels(msd_dataset) -> None:
    root = msd_dataset(n_cases=2, modality={"0": "FLAIR", "1": "T1w"})
    for case in ("case_000.nii.gz", CASE):
        img = nib.load(root / "imagesTr" / case)
        data = np.asanyarray(img.dataobj)
        nib.save(nib.Nifti1Image(np.stack([data, data], -1), img.affine), root / "imagesTr" / case)
    assert validate_dataset(root).ok
    _edit_meta(lambda m: m.update(modality={"0": "FLAIR", "1": "T1w", "2": "T2w"}))(root)
    assert "declares 3" in validate_dataset(root).errors[0]


def test_warnings_do_not_fail(msd_dataset, capsys) -> None:
    root = msd_dataset(numTraining=5, test=["./imagesTs/gone.nii.gz"])
    _edit_meta(lambda m: m["labels"].update({"3": "cyst"}))(root)
    (root / "imagesTr" / "extra.nii.gz").write_bytes((root / "imagesTr" / CASE).read_bytes())
    assert cli.main(["validate", "--data", str(root)]) == 0
    err = capsys.readouterr().err
    for expected in ('"numTraining" should equal the number of "training" entries (3), got 5',
                     'imagesTr/extra.nii.gz: file is not listed in dataset.json "training"',
                     'imagesTs/gone.nii.gz: listed in "test" but missing',
                     'label "3": "cyst" should occur in some training case'):
        assert expected in err
    assert len(err.splitlines()) == 4


def test_ct_not_in_hu_warns(msd_dataset) -> None:
    root = msd_dataset(n_cases=2)
    _rewrite("imagesTr", lambda d, a: ((d > 0).astype(np.float32), a))(root)
    report = validate_dataset(root)
    assert report.ok and "CT intensities should be in HU" in report.warnings[0]


def test_raise_if_invalid(msd_dataset) -> None:
    root = msd_dataset()
    BROKEN["missing_label"][0](root)
    with pytest.raises(UserInputError, match=r"is not a valid dataset: labelsTr/case_001.nii.gz: label file"):
        validate_dataset(root).raise_if_invalid()
    assert len(validate_dataset(root, workers=1).errors) == 1
    ValidationReport(root=root).raise_if_invalid()  # no errors: no exception


def test_case_id_and_no_monai_import() -> None:
    assert case_id_from_path("./imagesTr/la_003.nii.gz") == "la_003"
    assert case_id_from_path("x/BRATS_001.nii") == "BRATS_001"
    code = "import sys, tdseg_lite.validate; print(sorted({'monai', 'torch'} & set(sys.modules)))"
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_dataset_whose_header_lies_is_refused_without_allocating_and_leaves_no_run(tmp_path: Path,
                                                                                      capsys) -> None:
    from tdseg_lite.validate import validate_dataset

    data = write_msd_dataset(tmp_path / "ds", n_cases=2)
    lying_header(data / "imagesTr" / "case_001.nii.gz", (2000, 2000, 2000), np.int16)
    lying_header(data / "labelsTr" / "case_001.nii.gz", (2000, 2000, 2000), np.uint8)
    tracemalloc.start()
    report = validate_dataset(data)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 64 * 2**20, f"allocated {peak / 2**20:.0f} MiB before refusing"
    assert any("must hold at most 536,870,912 voxels" in e for e in report.errors), report.errors
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "r"), "--preset", "smoke", "--device", "cpu",
                 "--quiet", "--model", "unet"]) == 2
    err = capsys.readouterr().err  # validate's own one-line form: "tdseg train: error: DATA is not a valid dataset: ..."
    assert err.count("\n") == 1 and "is not a valid dataset" in err and "must hold at most" in err, err
    assert not (tmp_path / "r").exists()  # a refused dataset leaves no run folder
