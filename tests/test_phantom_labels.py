"""``tdseg phantom --labels-from``: real label maps painted with synthetic HU (tiny maps made on the fly)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, ornt_transform

from tdseg_lite import cli
from tdseg_lite.errors import UserInputError
from tdseg_lite.phantom.findings import describe
from tdseg_lite.phantom.labels import build_from_labels, find_label_files, read_label_map
from tdseg_lite.phantom.labels_geometry import find_kidneys, measure, to_canonical
from tdseg_lite.phantom.labels_paint import synthesise
from tdseg_lite.validate import validate_dataset

SHAPE, SPACING = (60, 52, 34), (5.0, 5.0, 6.0)  # R-L, A-P, I-S: a 300 x 260 x 204 mm field of view


def kidney_map(code: str = "RAS", tumour: str | None = "left", pole: str = "upper", radius: float = 14.0,
               kidneys: tuple[str, ...] = ("right", "left"), rotate_deg: float = 0.0,
               origin: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> tuple[np.ndarray, np.ndarray]:
    """Two ellipsoid kidneys 140 mm apart (the right one at world +x, lower) and a sphere tumour,
    written as an array in ``code`` axis order with the affine that keeps world positions."""
    xs = [(np.arange(n) - (n - 1) / 2) * s + o for n, s, o in zip(SHAPE, SPACING, origin)]
    X, Y, Z = np.meshgrid(*xs, indexing="ij")
    lab = np.zeros(SHAPE, np.uint8)
    centres = {"right": (70.0 + origin[0], -15.0), "left": (-70.0 + origin[0], 0.0)}
    for name in kidneys:
        cx, cz = centres[name]
        lab[((X - cx) / 28) ** 2 + ((Y + 30 - origin[1]) / 22) ** 2 + ((Z - cz - origin[2]) / 55) ** 2 < 1] = 1
    if tumour:
        cx, cz = centres[tumour]
        tz = cz + (38 if pole == "upper" else -38) + origin[2]
        lab[(X - cx - np.sign(cx - origin[0]) * 20) ** 2 + (Y + 30 - origin[1]) ** 2 + (Z - tz) ** 2 < radius**2] = 2
    aff = np.eye(4)
    aff[:3, :3], aff[:3, 3] = np.diag(SPACING), [x[0] for x in xs]
    if rotate_deg:  # an oblique scan: rotate the grid about the world z axis through the origin
        c, s = np.cos(np.radians(rotate_deg)), np.sin(np.radians(rotate_deg))
        aff = np.array([[c, -s, 0, 0], [s, c, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]) @ aff
    t = ornt_transform(axcodes2ornt("RAS"), axcodes2ornt(code))
    return np.ascontiguousarray(apply_orientation(lab, t)), aff @ inv_ornt_aff(t, lab.shape)


def save(path: Path, arr: np.ndarray, aff: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, aff), path)
    return path


def report(lab: np.ndarray, aff: np.ndarray) -> tuple[str, list[dict]]:
    canon, A, _ = to_canonical(lab, aff)
    findings, _ = measure(canon, A, find_kidneys(canon, A), {})
    return describe(findings, "kidney"), findings


# --- sides, poles, sizes: measured in world coordinates --------------------------------------


@pytest.mark.parametrize("code", ["RAS", "LPS", "IPL", "PIR"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_side_comes_from_world_coordinates_in_any_orientation(code, side) -> None:
    desc, findings = report(*kidney_map(code, tumour=side))
    other = "right" if side == "left" else "left"
    assert f"upper pole of the {side} kidney" in desc and f"the {other} kidney is normal" in desc, desc
    assert [f["organ"] for f in findings] == [f"{side} kidney"]


def test_same_array_with_a_mirrored_affine_swaps_the_side() -> None:
    """Array indices alone cannot tell left from right: flipping the affine's x axis must swap the report."""
    lab, aff = kidney_map("RAS", tumour="left")
    mirrored = np.diag([-1.0, 1.0, 1.0, 1.0]) @ aff  # same array, now written L-A-S
    assert nib.aff2axcodes(mirrored) == ("L", "A", "S")
    assert "of the left kidney" in report(lab, aff)[0]
    assert "of the right kidney" in report(lab, mirrored)[0]


def test_oblique_and_off_centre_affines_keep_the_side_and_pole() -> None:
    desc, _ = report(*kidney_map("LPS", tumour="right", pole="lower", rotate_deg=12.0, origin=(-250.0, 80.0, -400.0)))
    assert "lower pole of the right kidney" in desc, desc


def test_size_pole_exophytic_and_a_missing_kidney() -> None:
    desc, findings = report(*kidney_map("RAS", tumour="left", pole="lower", radius=15.0))
    f = findings[0]
    assert f["location"] == "lower pole" and abs(f["size_cm"] - 3.0) <= 0.3, f
    assert f["volume_ml"] == pytest.approx(4 / 3 * np.pi * 1.5**3, rel=0.2)
    assert f["exophytic"] is True  # centred 20 mm lateral of a 28 mm half-width kidney: mostly outside
    lab, aff = kidney_map("RAS", tumour="left", kidneys=("left",))
    desc, findings = report(lab, aff)
    assert desc.endswith("of the left kidney; the right kidney is not seen."), desc
    lab, aff = kidney_map("RAS", tumour=None)
    assert report(lab, aff)[0] == "Both kidneys are normal; no renal tumour."


# --- the painted image -----------------------------------------------------------------------


def rngs(seed: int = 0) -> tuple[np.random.Generator, ...]:
    return tuple(np.random.default_rng(s) for s in np.random.SeedSequence([seed, 7]).spawn(3))


def test_synthesis_is_deterministic_and_orientation_free_without_noise() -> None:
    lab, aff = kidney_map("RAS")
    a = synthesise(lab, aff, rngs(), noise_hu=0.0)
    assert np.array_equal(a.image, synthesise(lab, aff, rngs(), noise_hu=0.0).image)
    lab2, aff2 = kidney_map("IPL")
    b = synthesise(lab2, aff2, rngs(), noise_hu=0.0)
    assert b.image.shape == lab2.shape and b.description == a.description
    np.testing.assert_allclose(to_canonical(b.image, aff2)[0], a.image, atol=1e-3)


def hu_by_class(image: np.ndarray, lab: np.ndarray, aff: np.ndarray) -> dict[str, np.ndarray]:
    from scipy import ndimage

    canon_img, canon_lab = to_canonical(image, aff)[0], to_canonical(lab, aff)[0]
    kidney = canon_lab > 0
    ring = ndimage.binary_dilation(kidney, iterations=1) & ~kidney  # perirenal fat (partial volume aside)
    return {"kidney": canon_img[canon_lab == 1], "tumour": canon_img[canon_lab == 2], "fat": canon_img[ring],
            "corner": canon_img[:3, -3:, -3:]}


# --- the builder and its files ---------------------------------------------------------------


@pytest.fixture(scope="module")
def kits_dataset(tmp_path_factory) -> tuple[Path, Path]:
    """A KiTS19-layout folder (two cases, kits.json) built through the CLI."""
    src = tmp_path_factory.mktemp("kits") / "data"
    save(src / "case_00000" / "segmentation.nii.gz", *kidney_map("IPL", tumour="left", radius=16.0))
    save(src / "case_00001" / "segmentation.nii.gz", *kidney_map("LPS", tumour="right", pole="lower"))
    save(src / "case_00002" / "segmentation.nii.gz", *kidney_map("RAS", tumour=None))
    (src / "kits.json").write_text(json.dumps([{"case_id": "case_00000", "tumor_necrosis": True},
                                               {"case_id": "case_00001", "tumor_necrosis": False}]))
    out = tmp_path_factory.mktemp("painted") / "kits_phantom"
    argv = ["phantom", "--labels-from", str(src.parent), "--out", str(out), "--max-cases", "2", "--seed", "3",
            "--workers", "1"]
    assert cli.main(argv) == 0
    return src, out


def test_builder_copies_labels_and_affines_and_paints_plausible_hu(kits_dataset, capsys) -> None:
    src, out = kits_dataset
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["numTraining"] == 2 and meta["labels"] == {"0": "background", "1": "kidney", "2": "tumor"}
    assert "oracle reports derived from the masks" in meta["descriptions"] and "ORACLE" in meta["description"]
    assert "CC BY-NC-SA 4.0" in meta["licence"] and meta["tdseg_phantom_labels"]["layout"] == "kits19"
    assert validate_dataset(out).ok
    for entry, case in zip(meta["training"], ("case_00000", "case_00001")):
        given = nib.load(src / case / "segmentation.nii.gz")
        label, image = nib.load(out / entry["label"]), nib.load(out / entry["image"])
        assert np.array_equal(np.asanyarray(label.dataobj), np.asanyarray(given.dataobj))
        assert label.get_data_dtype() == np.uint8 and image.get_data_dtype() == np.int16
        np.testing.assert_allclose(label.affine, given.affine, atol=1e-5)
        np.testing.assert_allclose(image.affine, given.affine, atol=1e-5)
        assert nib.aff2axcodes(image.affine) == nib.aff2axcodes(given.affine)
        hu = hu_by_class(np.asanyarray(image.dataobj).astype(np.float32), np.asanyarray(given.dataobj), given.affine)
        assert hu["kidney"].mean() > 80 and hu["fat"].mean() < hu["kidney"].mean() - 100, entry
        assert np.percentile(hu["kidney"], 90) > np.percentile(hu["tumour"], 90) + 15, entry  # cortex vs tumour
        assert abs(hu["tumour"].mean() - hu["kidney"].mean()) > 5 and hu["corner"].mean() < -900
    first, second = meta["training"]
    assert "upper pole of the left kidney; the right kidney is normal." in first["description"]
    assert first["findings"][0]["necrotic"] is True and first["pathology_necrosis"] is True
    assert "lower pole of the right kidney; the left kidney is normal." in second["description"]
    assert second["findings"][0]["necrotic"] is False
    assert not (out / "imagesTr" / "case_00002.nii.gz").exists()  # --max-cases 2


def test_rerun_replaces_own_dataset_and_says_so(kits_dataset, capsys) -> None:
    src, out = kits_dataset
    before = (out / "labelsTr" / "case_00000.nii.gz").read_bytes()
    assert cli.main(["phantom", "--labels-from", str(src), "--out", str(out), "--max-cases", "1", "--workers", "1"]) == 0
    text = capsys.readouterr().out
    assert "replacing the earlier --labels-from dataset" in text and "1 cases from the kits19 label maps" in text
    assert json.loads((out / "dataset.json").read_text())["numTraining"] == 1
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == ["case_00000.nii.gz"]
    assert (out / "labelsTr" / "case_00000.nii.gz").read_bytes() == before


def test_layouts_msd_and_flat(tmp_path) -> None:
    lab, aff = kidney_map()
    save(tmp_path / "msd" / "labelsTr" / "la_001.nii.gz", lab, aff)
    (tmp_path / "msd" / "dataset.json").write_text("{}")
    save(tmp_path / "flat" / "b.nii", lab, aff)
    save(tmp_path / "flat" / "a.nii.gz", lab, aff)
    (tmp_path / "flat" / "._a.nii.gz").write_bytes(b"macOS resource fork")
    sources, layout = find_label_files(tmp_path / "msd")
    assert layout == "msd" and [s.name for s in sources] == ["la_001"]
    assert find_label_files(tmp_path / "msd" / "labelsTr")[1] == "msd"
    sources, layout = find_label_files(tmp_path / "flat")
    assert layout == "flat" and [s.name for s in sources] == ["a", "b"]


# --- refusals --------------------------------------------------------------------------------


def bad_file(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / "src" / "x.nii.gz"
    lab, aff = kidney_map()
    if kind == "values":
        lab[0, 0, 0] = 3
        return save(path, lab.astype(np.int16), aff)
    if kind == "4d":
        return save(path, np.stack([lab, lab], axis=-1), aff)
    if kind == "empty":
        return save(path, np.zeros_like(lab), aff)
    if kind == "fraction":
        return save(path, lab.astype(np.float32) * 0.5, aff)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x1f\x8b not really a gzip file")
    return path


@pytest.mark.parametrize(
    ("kind", "match"),
    [
        ("values", (r"x\.nii\.gz` must hold only the values 0 \(background\), 1 \(kidney\), 2 \(tumour\).*got also 3 "
                    r"in 1 voxels\. Map other labels")),
        ("fraction", r"must hold only the values .*got also 0\.5"),
        ("4d", r"x\.nii\.gz` must be a 3D label map, got shape \(60, 52, 34, 2\)\. Save it as one"),
        ("empty", r"x\.nii\.gz` must contain kidney voxels \(label 1 or 2\), got only background"),
        ("unreadable", r"x\.nii\.gz` must be a readable NIfTI label map, got an error: .*Replace the file"),
    ],
)
def test_bad_label_files_are_refused_before_anything_is_written(tmp_path, kind, match) -> None:
    path = bad_file(tmp_path, kind)
    with pytest.raises(UserInputError, match=match):
        read_label_map(path)
    with pytest.raises(UserInputError, match=match):
        build_from_labels(path.parent, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--labels-from", "{missing}"], "`--labels-from` must be an existing folder of label NIfTIs, got"),
        (["--labels-from", "{empty}"], "`--labels-from` must hold label NIfTIs (case_XXXXX/segmentation.nii.gz"),
        (["--labels-from", "{src}", "--cases", "3"],
         "`--cases` does not apply with `--labels-from`, got '3'. Leave it out: use --max-cases N"),
        (["--labels-from", "{src}", "--orientation", "LPS"], "`--orientation` does not apply with `--labels-from`"),
        (["--labels-from", "{src}", "--tumour-fraction", "1"], "`--tumour-fraction` does not apply"),
        (["--labels-from", "{src}", "--anisotropic"], "`--anisotropic` does not apply"),
        (["--labels-from", "{src}", "--task", "pancreas"], "`--task` must be kidney with `--labels-from`"),
        (["--labels-from", "{src}", "--max-cases", "0"], "`--max-cases` must be an integer >= 1, got 0."),
        (["--labels-from", "{src}", "--max-cases", "two"], "`--max-cases` must be an integer, got 'two'."),
        (["--max-cases", "2"], "`--max-cases` applies only with --labels-from, got '2'. Use --cases N"),
        (["--labels-from", "{src}", "--spacing", "0", "3", "3"],
         "`--spacing` must be 3 voxel sizes in mm between 0.05 and 20 (R, A, S), got 0 3 3. Pass e.g. --spacing 3 3 3"),
        (["--labels-from", "{src}", "--spacing", "three", "3", "3"], "`--spacing` must be 3 voxel sizes in mm"),
        (["--spacing", "3", "3", "3"], "`--spacing` applies only with --labels-from, got 3 3 3. Leave it out"),
    ],
)
def test_cli_refusals_are_one_line(tmp_path, capsys, args, match) -> None:
    save(tmp_path / "src" / "a.nii.gz", *kidney_map())
    (tmp_path / "empty").mkdir()
    paths = {"missing": tmp_path / "nope", "empty": tmp_path / "empty", "src": tmp_path / "src"}
    argv = ["phantom", "--out", str(tmp_path / "out"), *[a.format(**paths) for a in args]]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("tdseg phantom: error: ") and match in err, err
    assert not (tmp_path / "out").exists()


def test_out_must_be_new_empty_or_our_own(tmp_path) -> None:
    src = tmp_path / "src"
    save(src / "a.nii.gz", *kidney_map())
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(UserInputError, match=r"`--out` must be a new or empty folder or an earlier `tdseg phantom "
                                             r"--labels-from` dataset, got .*busy.*Pass another folder"):
        build_from_labels(src, tmp_path / "busy")
    (tmp_path / "ph").mkdir()
    (tmp_path / "ph" / "dataset.json").write_text(json.dumps({"tdseg_phantom": {}}))  # the synthetic phantom's
    with pytest.raises(UserInputError, match=r"`--out` must be a new or empty folder"):
        build_from_labels(src, tmp_path / "ph")
    with pytest.raises(UserInputError, match=r"`--out` must be a folder, got the file"):
        build_from_labels(src, tmp_path / "busy" / "notes.txt")
    with pytest.raises(UserInputError, match=r"`--out` must lie outside `--labels-from`"):
        build_from_labels(src, src / "painted")
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine" and not (src / "painted").exists()


def test_workers_and_max_cases_do_not_change_a_case(tmp_path) -> None:
    save(tmp_path / "src" / "a.nii.gz", *kidney_map("LPS"))
    save(tmp_path / "src" / "b.nii.gz", *kidney_map("IPL", tumour="right"))
    one = build_from_labels(tmp_path / "src", tmp_path / "one", seed=1, workers=1)
    two = build_from_labels(tmp_path / "src", tmp_path / "two", seed=1, workers=2)
    first = build_from_labels(tmp_path / "src", tmp_path / "first", seed=1, max_cases=1)
    for name in ("a.nii.gz", "b.nii.gz"):
        assert (one / "imagesTr" / name).read_bytes() == (two / "imagesTr" / name).read_bytes()
    assert (one / "imagesTr" / "a.nii.gz").read_bytes() == (first / "imagesTr" / "a.nii.gz").read_bytes()


def test_spacing_resamples_to_ras_and_keeps_the_kidneys_and_the_report(tmp_path, capsys) -> None:
    lab, aff = kidney_map("LPS", tumour="left", pole="upper")
    save(tmp_path / "src" / "a.nii.gz", lab, aff)
    native = build_from_labels(tmp_path / "src", tmp_path / "native", seed=1)
    argv = ["phantom", "--labels-from", str(tmp_path / "src"), "--out", str(tmp_path / "coarse"), "--seed", "1",
            "--workers", "1", "--spacing", "10", "10", "12"]
    assert cli.main(argv) == 0
    assert "at 10 x 10 x 12 mm (RAS)" in capsys.readouterr().out
    coarse = tmp_path / "coarse"
    meta = json.loads((coarse / "dataset.json").read_text())
    n = json.loads((native / "dataset.json").read_text())["training"][0]
    c = meta["training"][0]
    label, image = nib.load(coarse / c["label"]), nib.load(coarse / c["image"])
    assert nib.aff2axcodes(label.affine) == ("R", "A", "S")
    assert nib.aff2axcodes(nib.load(native / n["label"]).affine) == ("L", "P", "S")
    np.testing.assert_allclose(nib.affines.voxel_sizes(label.affine), (10, 10, 12), atol=1e-6)
    np.testing.assert_allclose(image.affine, label.affine, atol=1e-6)
    assert label.shape == image.shape == (30, 26, 17) and c["shape"] == [30, 26, 17] and c["spacing_mm"] == [10, 10, 12]
    assert c["source_shape"] == list(lab.shape) and c["source_spacing_mm"] == [5.0, 5.0, 6.0] and "source_shape" not in n
    assert meta["tdseg_phantom_labels"]["options"]["spacing"] == [10.0, 10.0, 12.0] and "resampled to" in meta["description"]
    assert validate_dataset(coarse).ok
    arr = np.asanyarray(label.dataobj)
    assert set(np.unique(arr)) == {0, 1, 2}
    for cls in (1, 2):  # the same anatomy: each class's volume within 15 % (ml), at the same place (world centroid)
        fine_ml = (lab == cls).sum() * 5 * 5 * 6 / 1000
        coarse_ml = (arr == cls).sum() * 10 * 10 * 12 / 1000
        assert abs(coarse_ml - fine_ml) < 0.15 * fine_ml, (cls, fine_ml, coarse_ml)
        centre = [A[:3, :3] @ np.argwhere(a == cls).mean(0) + A[:3, 3] for a, A in ((arr, label.affine), (lab, aff))]
        assert np.linalg.norm(centre[0] - centre[1]) < 6.0
    assert "upper pole of the left kidney; the right kidney is normal." in c["description"]
    assert "upper pole of the left kidney; the right kidney is normal." in n["description"]
