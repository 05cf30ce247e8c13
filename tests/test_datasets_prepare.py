"""``tdseg prepare`` (tdseg_lite.datasets.prepare), offline, on files that mimic each source exactly.

Mimicked formats (tiny arrays, real header conventions):

* KiTS19 ``data/case_XXXXX/{imaging,segmentation}.nii.gz``: arrays ``(slices, rows, columns)``, affine
  ``[[0, 0, -px, 0], [0, -px, 0, 0], [-slice, 0, 0, 0]]`` (codes I-P-L, anisotropic), sform code 2,
  qform code 0 (as in the real ``case_00000/segmentation.nii.gz``), imaging float32 HU,
  segmentation uint8 0/1/2; ``case_00210`` has imaging only (test set).
* MSD ``Task07_Pancreas/`` (+ ``.tar``): the real ``dataset.json`` schema, ``imagesTr/ labelsTr/
  imagesTs/``, ``._*`` AppleDouble junk next to every file, one 4D ``(X, Y, Z, 1)`` image, LPS-style
  affine ``diag(-0.9, -0.9, 2.5)`` with an origin, qform = sform code 1, int16 HU, uint8 labels.
* BTCV ``RawData/Training/{img,label}/imgNNNN|labelNNNN.nii.gz``, ``RawData/Testing/img/``: labels 0-13,
  one case without a gallbladder, LPS-style affine with an origin.

Nearest-neighbour resampling changes a structure's volume by roughly 1/(radius in target voxels)
(unbiased on average, see ``test_resample_nearest_is_unbiased`` in ``test_datasets_volumes.py``), so the
2 % volume checks after resampling use structures >= ~10 target voxels in radius (``zoom``), like real
organs and tumours.
"""

from __future__ import annotations

import json
import tarfile
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tdseg_lite import cli
from tdseg_lite.cli import main
from tdseg_lite.datasets import download as dl
from tdseg_lite.datasets.prepare import (
    prepare_btcv,
    prepare_kits19,
    prepare_msd,
    resolve_msd_task,
)
from tdseg_lite.datasets.volumes import diameter_cm
from tdseg_lite.errors import UserInputError
from tdseg_lite.validate import validate_dataset

KITS_SHAPE = (24, 32, 40)  # (slices, rows, columns), like the real (num_slices, 512, 512)
APPLEDOUBLE = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(4066)  # a real "._" file's header


def kits_affine(slice_mm: float = 3.0, pixel_mm: float = 2.4) -> np.ndarray:
    """The KiTS19 affine (README "Voxel Spacing"): axes (z, y, x) with negative spacings -> I-P-L."""
    return np.array([[0.0, 0.0, -pixel_mm, 0.0], [0.0, -pixel_mm, 0.0, 0.0], [-slice_mm, 0.0, 0.0, 0.0], [0, 0, 0, 1.0]])


def lps_affine(spacing: tuple[float, float, float], origin: tuple[float, float, float]) -> np.ndarray:
    """Typical DICOM-converted CT affine: x towards the patient's left, y posterior (codes L-P-S)."""
    aff = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    aff[:3, 3] = origin
    return aff


def ellipsoid(shape: tuple[int, ...], centre: tuple[float, ...], radii: tuple[float, ...]) -> np.ndarray:
    grid = np.indices(shape, dtype=float)
    return sum(((grid[i] - centre[i]) / radii[i]) ** 2 for i in range(3)) <= 1.0


def save(array: np.ndarray, affine: np.ndarray, path: Path, sform: int = 1, qform: int = 1) -> None:
    img = nib.Nifti1Image(array, affine)
    img.set_sform(affine, sform)
    img.set_qform(affine if qform else None, qform)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, path)


def volumes_mm3(path: Path) -> dict[int, float]:
    img = nib.load(path)
    values, counts = np.unique(np.asarray(img.dataobj), return_counts=True)
    voxel = abs(np.linalg.det(img.affine[:3, :3]))
    return {int(v): float(c) * voxel for v, c in zip(values, counts) if v}


def centroid_world(path: Path, value: int) -> np.ndarray:
    img = nib.load(path)
    idx = np.argwhere(np.asarray(img.dataobj) == value).mean(axis=0)
    return img.affine[:3, :3] @ idx + img.affine[:3, 3]


def assert_preserved(src_label: Path, out_label: Path, rtol: float = 0.02) -> None:
    """Label volumes (mm³) within ``rtol`` and each label's world centroid within one output voxel."""
    before, after = volumes_mm3(src_label), volumes_mm3(out_label)
    assert before.keys() == after.keys()
    for k in before:
        assert after[k] == pytest.approx(before[k], rel=rtol), (k, before[k], after[k])
    voxel = float(max(nib.affines.voxel_sizes(nib.load(out_label).affine)))
    for k in before:
        shift = np.linalg.norm(centroid_world(src_label, k) - centroid_world(out_label, k))
        assert shift < voxel, (k, shift, voxel)


# ----------------------------------------------------------------------------- fixtures
def write_kits(root: Path, zoom: int = 1) -> Path:
    """``root/data/case_XXXXX`` like a kits19 clone after ``get_imaging``; returns the clone root.

    ``zoom`` scales the grid and every structure (in voxels): nearest-neighbour resampling changes
    a structure's volume by about 1/radius, so the resampling tests use structures >= 10 voxels wide.
    """
    aff, shape = kits_affine(), tuple(n * zoom for n in KITS_SHAPE)
    # columns (axis 2) run towards the patient's LEFT: small column = right kidney
    cases = {0: ((10, 30), 30), 1: ((10, 30), 10), 2: ((30,), 30)}  # kidney columns, tumour column
    for case, (kidneys, tumour) in cases.items():
        image = np.full(shape, -1000.0, np.float32)
        image[:, 3 * zoom:29 * zoom, 2 * zoom:38 * zoom] = 40.0
        seg = np.zeros(shape, np.uint8)
        for col in kidneys:
            seg[ellipsoid(shape, (12 * zoom, 16 * zoom, col * zoom), (7 * zoom, 8 * zoom, 7 * zoom))] = 1
        seg[ellipsoid(shape, (12 * zoom, 16 * zoom, (tumour + 1) * zoom), (5 * zoom, 5 * zoom, 4.5 * zoom))] = 2
        image[seg == 1], image[seg == 2] = 160.0, 60.0
        folder = root / "data" / f"case_{case:05d}"
        save(image, aff, folder / "imaging.nii.gz", sform=2, qform=0)
        save(seg, aff, folder / "segmentation.nii.gz", sform=2, qform=0)
    save(np.full(shape, -1000.0, np.float32), aff, root / "data" / "case_00210" / "imaging.nii.gz", sform=2, qform=0)
    return root


MSD_SHAPE = (32, 32, 24)


def write_msd(root: Path, channels: int | None = None, zoom: int = 1) -> Path:
    """``root/Task07_Pancreas`` with the real dataset.json schema and macOS junk files (``zoom``: see write_kits)."""
    task, shape = root / "Task07_Pancreas", tuple(n * zoom for n in MSD_SHAPE)
    aff = lps_affine((0.9, 0.9, 2.5), (120.0, 150.0, -300.0))
    training = []
    for i in (1, 2, 3):
        image = np.full(shape, -1000, np.int16)
        image[3 * zoom:29 * zoom, 3 * zoom:29 * zoom, :] = 30
        label = np.zeros(shape, np.uint8)
        label[ellipsoid(shape, (16 * zoom, 16 * zoom, 12 * zoom), (11 * zoom, 7 * zoom, 5 * zoom))] = 1
        label[ellipsoid(shape, ((14 + i) * zoom, 16 * zoom, 12 * zoom), (7 * zoom, 6 * zoom, 3 * zoom))] = 2
        image[label > 0] = 90
        name = f"pancreas_{i:03d}.nii.gz"
        arr = image[..., None] if i == 2 else image  # one (X, Y, Z, 1) image
        if channels:
            arr = np.stack([image] * channels, axis=-1)
        save(arr, aff, task / "imagesTr" / name)
        save(label, aff, task / "labelsTr" / name)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    save(np.full(shape, -1000, np.int16), aff, task / "imagesTs" / "pancreas_004.nii.gz")
    for junk in ("imagesTr/._pancreas_001.nii.gz", "labelsTr/._pancreas_001.nii.gz", "imagesTs/._pancreas_004.nii.gz",
                 "._dataset.json"):
        (task / junk).write_bytes(APPLEDOUBLE)
    meta = {"name": "Pancreas", "description": "Pancreas and cancer segmentation",
            "reference": "Memorial Sloan Kettering Cancer Center", "licence": "CC-BY-SA 4.0",
            "release": "1.0 04/05/2018", "tensorImageSize": "3D", "modality": {"0": "CT"},
            "labels": {"0": "background", "1": "pancreas", "2": "cancer"}, "numTraining": 3, "numTest": 1,
            "training": training, "test": ["./imagesTs/pancreas_004.nii.gz"]}
    (task / "dataset.json").write_text(json.dumps(meta, indent=4))
    return task


def tar_folder(folder: Path, archive: Path) -> Path:
    with tarfile.open(archive, "w") as tar:
        tar.add(folder, arcname=folder.name)
    return archive


BTCV_SHAPE = (28, 28, 12)


def write_btcv(root: Path, zoom: int = 3) -> Path:
    """``root/RawData`` as unzipped from Synapse's RawData.zip (``zoom``: see write_kits)."""
    raw, shape = root / "RawData", tuple(n * zoom for n in BTCV_SHAPE)
    aff = lps_affine((1.5, 1.5, 3.0), (170.0, 180.0, -360.0))
    centres = [(x * zoom, y * zoom) for x in (3.5, 10.5, 17.5, 24.5) for y in (3.5, 10.5, 17.5, 24.5)][:13]
    for case in (1, 2):
        image = np.full(shape, -1000, np.int16)
        image[zoom:-zoom, zoom:-zoom, :] = 20
        label = np.zeros(shape, np.uint8)
        for k, (x, y) in enumerate(centres, start=1):
            if case == 2 and k == 4:
                continue  # no gallbladder (cholecystectomy)
            label[ellipsoid(shape, (x, y, 6 * zoom), (3.25 * zoom, 3.25 * zoom, 3 * zoom))] = k
        image[label > 0] = 60
        save(image, aff, raw / "Training" / "img" / f"img{case:04d}.nii.gz")
        save(label, aff, raw / "Training" / "label" / f"label{case:04d}.nii.gz")
    save(np.full(shape, -1000, np.int16), aff, raw / "Testing" / "img" / "img0061.nii.gz")
    return raw


# ----------------------------------------------------------------------------- KiTS19
def test_kits19_conversion_orientation_volumes_and_descriptions(tmp_path: Path) -> None:
    src = write_kits(tmp_path / "kits19")
    out = prepare_kits19(tmp_path / "out", src, progress=False)
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["name"] == "kits19" and meta["labels"] == {"0": "background", "1": "kidney", "2": "tumor"}
    assert meta["test"] == ["./imagesTs/case_00210.nii.gz"]
    described = {e["image"]: e["description"] for e in meta["training"]}
    size = diameter_cm(volumes_mm3(src / "data" / "case_00000" / "segmentation.nii.gz")[2])
    assert described["./imagesTr/case_00000.nii.gz"] == f"a {size:.1f} cm tumour in the left kidney; right kidney normal"
    assert described["./imagesTr/case_00001.nii.gz"].endswith("tumour in the right kidney; left kidney normal")
    assert described["./imagesTr/case_00002.nii.gz"].endswith("tumour in the left kidney; no right kidney")
    written = nib.load(out / "labelsTr" / "case_00000.nii.gz")
    assert nib.aff2axcodes(written.affine) == ("R", "A", "S") and written.get_data_dtype() == np.uint8
    assert nib.load(out / "imagesTr" / "case_00000.nii.gz").get_data_dtype() == np.int16  # whole HU values
    for case in ("case_00000", "case_00001", "case_00002"):
        assert_preserved(src / "data" / case / "segmentation.nii.gz", out / "labelsTr" / f"{case}.nii.gz", rtol=1e-9)
    report = validate_dataset(out)
    assert report.ok, report.errors
    from tdseg_lite.prompts import case_prompts

    assert case_prompts(meta)[0].startswith("A computerized tomography of a kidney and kidney tumor. A ")


def test_kits19_resampling_keeps_volumes_and_positions(tmp_path: Path) -> None:
    src = write_kits(tmp_path / "kits19", zoom=2)
    out = prepare_kits19(tmp_path / "out", src / "data", spacing=(1.5, 1.5, 2.0), progress=False)
    for case in ("case_00000", "case_00001", "case_00002"):
        assert_preserved(src / "data" / case / "segmentation.nii.gz", out / "labelsTr" / f"{case}.nii.gz")
    assert np.allclose(nib.affines.voxel_sizes(nib.load(out / "imagesTs" / "case_00210.nii.gz").affine), (1.5, 1.5, 2.0))
    assert validate_dataset(out).ok


def test_kits19_cli_validates_and_resumes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = write_kits(tmp_path / "kits19")
    args = ["prepare", "kits19", "--src", str(src), "--out", str(tmp_path / "out"), "--quiet", "--max-cases", "2"]
    assert cli.main(args) == 0
    assert "dataset kits19" in capsys.readouterr().out
    first = (tmp_path / "out" / "imagesTr" / "case_00000.nii.gz").stat().st_mtime_ns
    assert cli.main(args) == 0  # same settings: resumes, finished cases are kept
    assert (tmp_path / "out" / "imagesTr" / "case_00000.nii.gz").stat().st_mtime_ns == first
    assert len(json.loads((tmp_path / "out" / "dataset.json").read_text())["training"]) == 2
    assert cli.main([*args[:-2], "--spacing", "2", "2", "2"]) == 2  # other settings need --overwrite
    assert "was prepared with" in capsys.readouterr().err
    assert cli.main(["validate", "--data", str(tmp_path / "out")]) == 0


def test_kits19_bad_sources(tmp_path: Path) -> None:
    src = write_kits(tmp_path / "kits19")
    (src / "data" / "case_00001" / "segmentation.nii.gz").write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 775587\n")
    with pytest.raises(UserInputError, match="Git LFS pointer"):
        prepare_kits19(tmp_path / "a", src, progress=False)
    (src / "data" / "case_00002" / "imaging.nii.gz").unlink()
    with pytest.raises(UserInputError, match="imaging file is missing"):
        prepare_kits19(tmp_path / "b", src, cases="2", progress=False)
    with pytest.raises(UserInputError, match="kits19 clone"):
        prepare_kits19(tmp_path / "c", tmp_path / "nowhere", progress=False)
    with pytest.raises(UserInputError, match="--cases"):
        prepare_kits19(tmp_path / "d", src, cases="5-1", progress=False)
    with pytest.raises(UserInputError, match="0-299"):
        prepare_kits19(tmp_path / "e", src, cases="0-300", progress=False)


# ----------------------------------------------------------------------------- MSD
def test_msd_folder_links_squeezes_skips_junk(tmp_path: Path) -> None:
    task = write_msd(tmp_path)
    out = prepare_msd("pancreas", tmp_path / "out", task, progress=False)
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["name"] == "msd_task07_pancreas" and meta["msd_name"] == "Pancreas"
    assert meta["labels"]["2"] == "cancer" and meta["licence"] == "CC-BY-SA 4.0"
    assert all(e["description"].startswith("a ") and "tumour in the pancreas" in e["description"] for e in meta["training"])
    assert meta["test"] == ["./imagesTs/pancreas_004.nii.gz"]
    assert not list(out.rglob("._*"))
    assert nib.load(out / "imagesTr" / "pancreas_002.nii.gz").shape == MSD_SHAPE  # 4D squeezed
    assert (out / "imagesTr" / "pancreas_001.nii.gz").stat().st_ino == (task / "imagesTr" / "pancreas_001.nii.gz").stat().st_ino
    for i in (1, 2, 3):
        assert_preserved(task / "labelsTr" / f"pancreas_{i:03d}.nii.gz", out / "labelsTr" / f"pancreas_{i:03d}.nii.gz", 1e-9)
    assert validate_dataset(out).ok


def test_msd_tar_with_checksum_and_resampling(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    task = write_msd(tmp_path / "src", zoom=3)
    archive = tar_folder(task, tmp_path / "Task07_Pancreas.tar")
    monkeypatch.setattr(dl, "msd_source", lambda t: (f"https://example.invalid/{t}.tar", dl.file_hash(archive)))
    out = prepare_msd("Task07_Pancreas", tmp_path / "out", archive, spacing=(1.5, 1.5, 2.0), progress=False,
                      download_dir=tmp_path / "dl")
    assert (tmp_path / "dl" / "Task07_Pancreas" / "dataset.json").is_file()
    assert not list((tmp_path / "dl").rglob("._*"))  # junk members are not extracted
    for i in (1, 2, 3):
        assert_preserved(task / "labelsTr" / f"pancreas_{i:03d}.nii.gz", out / "labelsTr" / f"pancreas_{i:03d}.nii.gz")
    assert validate_dataset(out).ok
    monkeypatch.setattr(dl, "msd_source", lambda t: ("https://example.invalid/x.tar", "0" * 32))
    with pytest.raises(UserInputError, match="md5 must be 0{32}"):
        prepare_msd("pancreas", tmp_path / "out2", archive, progress=False, download_dir=tmp_path / "dl2")


def test_msd_refuses_multichannel_and_unknown_tasks(tmp_path: Path) -> None:
    task = write_msd(tmp_path, channels=2)
    with pytest.raises(UserInputError, match="4D with one channel"):
        prepare_msd("pancreas", tmp_path / "out", task, progress=False)
    with pytest.raises(UserInputError, match="--task"):
        resolve_msd_task("heart")
    assert resolve_msd_task("07") == resolve_msd_task("task07") == "Task07_Pancreas"
    assert resolve_msd_task("Liver") == "Task03_Liver"


def test_msd_offline_is_one_line_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    url = "http://127.0.0.1:9/Task07_Pancreas.tar"  # the discard port: connection refused
    monkeypatch.setattr(dl, "msd_source", lambda t: (url, "0" * 32))
    code = cli.main(["prepare", "msd", "--task", "pancreas", "--out", str(tmp_path / "out"),
                     "--download-dir", str(tmp_path / "dl"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert f"could not reach {url} (offline?)" in err and "--src /path/to/Task07_Pancreas.tar" in err


# ----------------------------------------------------------------------------- BTCV
def test_btcv_conversion(tmp_path: Path) -> None:
    raw = write_btcv(tmp_path / "Abdomen")
    zipped = tmp_path / "RawData.zip"
    with zipfile.ZipFile(zipped, "w") as zf:
        for path in sorted(raw.rglob("*")):
            zf.write(path, path.relative_to(raw.parent).as_posix())
        zf.writestr("__MACOSX/RawData/._img0001.nii.gz", APPLEDOUBLE)
    out = prepare_btcv(tmp_path / "out", zipped, spacing=(1.5, 1.5, 2.0), progress=False)
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["name"] == "btcv" and meta["labels"]["10"] == "portal vein and splenic vein" and len(meta["labels"]) == 14
    described = {e["image"]: e["description"] for e in meta["training"]}
    assert described["./imagesTr/btcv_0001.nii.gz"].startswith("all 13 organs present")
    assert described["./imagesTr/btcv_0002.nii.gz"].startswith("gallbladder not present; 12 organs labelled")
    assert meta["test"] == ["./imagesTs/btcv_0061.nii.gz"]
    for case in (1, 2):
        assert_preserved(raw / "Training" / "label" / f"label{case:04d}.nii.gz", out / "labelsTr" / f"btcv_{case:04d}.nii.gz")
    assert validate_dataset(out).ok
    native = prepare_btcv(tmp_path / "native", raw, progress=False)
    assert_preserved(raw / "Training" / "label" / "label0001.nii.gz", native / "labelsTr" / "btcv_0001.nii.gz", 1e-9)
    assert validate_dataset(native).ok


def test_btcv_missing_source_explains_registration(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["prepare", "btcv", "--src", str(tmp_path / "RawData"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "synapse.org" in err and "RawData.zip" in err and "Training/img/img0001.nii.gz" in err
    assert err.count("\n") == 1 and not (tmp_path / "o").exists()  # a bad --src leaves nothing behind


def test_cli_rejects_bad_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["prepare", "btcv", "--src", str(tmp_path), "--out", str(tmp_path / "o")]
    assert cli.main([*base, "--spacing", "0", "1", "1"]) == 2
    assert "`--spacing` must be" in capsys.readouterr().err
    assert cli.main([*base, "--max-cases", "0"]) == 2
    assert "`--max-cases` must be >= 1" in capsys.readouterr().err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("x")
    with pytest.raises(UserInputError, match="new or empty folder"):
        prepare_btcv(tmp_path / "full", write_btcv(tmp_path / "b"), progress=False)


def test_a_failed_prepare_removes_the_folder_it_created(tmp_path: Path, capsys) -> None:
    task = write_msd(tmp_path / "src")
    meta = json.loads((task / "dataset.json").read_text())
    meta.pop("training")
    (task / "dataset.json").write_text(json.dumps(meta))
    out = tmp_path / "out"
    assert main(["prepare", "msd", "--task", "pancreas", "--src", str(task), "--out", str(out), "--quiet",
                 "--download-dir", str(tmp_path / "dl")]) == 2
    assert "must follow the MSD schema" in capsys.readouterr().err
    assert not out.exists()
