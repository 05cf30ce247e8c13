"""The synthetic CT phantom: determinism, realism, anatomy/orientation, descriptions, files, CLI."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from tdseg_lite import cli
from tdseg_lite.config import ConfigError, build_config
from tdseg_lite.errors import UserInputError
from tdseg_lite.phantom import (
    HU_RANGES,
    LABEL_SETS,
    TISSUES,
    PhantomConfig,
    ensure_phantom,
    generate_case,
    generate_phantom,
    hu_statistics,
)
from tdseg_lite.phantom import dataset as phantom  # the module behind the package's names (monkeypatched below)

SMALL = {"shape": (48, 48, 32), "spacing": (6.0, 6.0, 6.0)}      # same field of view, 1/8 of the voxels
MEDIUM = {"shape": (64, 64, 43), "spacing": (4.5, 4.5, 4.5)}     # the smoke preset


def world(case: phantom.PhantomCase, mask: np.ndarray) -> np.ndarray:
    """(N, 3) RAS+ mm coordinates of the voxels in ``mask``."""
    return nib.affines.apply_affine(case.affine, np.argwhere(mask))


@pytest.fixture(scope="module")
def kidney_cases() -> list[phantom.PhantomCase]:
    cfg = PhantomConfig(task="kidney", seed=3, **MEDIUM)
    return [generate_case(cfg, i) for i in range(10)]


# --- configuration -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"task": "liver"}, r"PhantomConfig.task` \(--task\) must be one of kidney, pancreas, multiorgan, got 'liver'"),
        ({"num_cases": -3}, r"num_cases` \(--cases\) must be an integer in \[1, 100000\], got -3\. Pass e\.g\. --cases 40"),
        ({"num_cases": True}, r"num_cases"),
        ({"seed": -1}, r"seed` \(--seed\) must be an integer"),
        ({"shape": (8, 96, 64)}, r"shape` must be 3 integers in \[16, 512\]"),
        ({"spacing": (3.0, 0.0, 3.0)}, r"spacing` must be 3 numbers in \[0\.3, 10\] mm"),
        ({"shape": (32, 32, 32)}, r"field of view of at least 240 x 240 x 120 mm, got .*96 x 96 x 96 mm"),
        ({"tumour_fraction": 1.5}, r"tumour_fraction` \(--tumour-fraction\) must be a number in \[0, 1\]"),
        ({"noise_hu": -1.0}, r"noise_hu` must be a number in \[0, 100\]"),
        ({"blur_mm": 20.0}, r"blur_mm` must be a number in \[0, 10\]"),
        ({"anisotropic": "yes"}, r"anisotropic` must be True or False"),
        ({"decoy_fraction": -0.1}, r"decoy_fraction` \(--decoy-fraction\) must be a number in \[0, 1\], got -0\.1"),
        ({"task": "pancreas", "decoy_fraction": 0.5}, r"decoy_fraction` \(--decoy-fraction\) applies only to task='kidney'"),
        ({"orientation": "RAX"}, r"orientation` \(--orientation\) must be 3 letters.*got 'RAX'\. Use e\.g\. 'RAS'"),
        ({"orientation": "RRS"}, r"orientation"),
    ],
)
def test_config_rejects_bad_values(overrides, match) -> None:
    with pytest.raises(ConfigError, match=match):
        PhantomConfig(**overrides)


def test_config_defaults_presets_and_block() -> None:
    cfg = PhantomConfig()
    assert (cfg.task, cfg.num_cases, cfg.shape, cfg.spacing, cfg.orientation) == (
        "kidney", 40, (96, 96, 64), (3.0, 3.0, 3.0), "RAS")
    assert cfg.fraction == 0.5 and PhantomConfig(task="multiorgan").fraction == 0.0
    smoke = build_config(PhantomConfig, "smoke")
    assert smoke.shape == (64, 64, 43) and smoke.num_cases == 12
    block = cfg.block()
    assert block["task"] == "kidney" and block["options"]["tumour_fraction"] == 0.5 and "version" in block
    assert set(LABEL_SETS) == {"kidney", "pancreas", "multiorgan"}
    assert set(HU_RANGES) == set(TISSUES)


# --- determinism ---------------------------------------------------------------------------


def test_same_seed_identical_other_seed_differs_and_cases_independent() -> None:
    cfg = PhantomConfig(num_cases=5, seed=7, **SMALL)
    a, b = generate_case(cfg, 2), generate_case(PhantomConfig(num_cases=1, seed=7, **SMALL), 2)
    assert a.image.tobytes() == b.image.tobytes() and a.label.tobytes() == b.label.tobytes()
    assert a.description == b.description and a.findings == b.findings
    c = generate_case(PhantomConfig(num_cases=5, seed=8, **SMALL), 2)
    assert not np.array_equal(a.image, c.image)
    assert not np.array_equal(a.image, generate_case(cfg, 3).image)


def test_decoys_look_like_tumours_but_keep_labels_and_reports() -> None:
    """A decoy changes the image (tumour tissue in a tumour-free kidney) and nothing else; 0 = no decoys."""
    plain, with_decoys = PhantomConfig(seed=3, **MEDIUM), PhantomConfig(seed=3, decoy_fraction=1.0, **MEDIUM)
    assert "decoy_fraction" not in plain.block()["options"]  # datasets written before decoys keep their identity
    assert with_decoys.block()["options"]["decoy_fraction"] == 1.0
    tumour = TISSUES.index("kidney tumour")
    seen = 0
    for i in range(6):
        a, b = generate_case(plain, i), generate_case(with_decoys, i)
        assert a.label.tobytes() == b.label.tobytes() and a.description == b.description and a.findings == b.findings
        sides = {f["organ"] for f in a.findings if f["kind"] == "tumour"}
        new = (b.tissue == tumour) & (a.tissue != tumour)
        if len(sides) == 2:  # both kidneys hold a tumour: nowhere to put a decoy
            assert not new.any() and a.image.tobytes() == b.image.tobytes()
            continue
        assert new.any() and (a.label[new] == 1).all()  # tumour-looking voxels labelled kidney
        x = world(b, new)[:, 0]  # RAS+: x > 0 is the patient's right
        assert not any(((x > 0) if "right" in s else (x < 0)).any() for s in sides)  # only in tumour-free kidneys
        seen += 1
    assert seen >= 2
    again = generate_case(with_decoys, 0)
    assert again.image.tobytes() == generate_case(with_decoys, 0).image.tobytes()


# --- realism -------------------------------------------------------------------------------


def test_tissue_hu_means_are_realistic() -> None:
    cfg = PhantomConfig(task="multiorgan", tumour_fraction=1.0, seed=1)  # default 3 mm grid
    cases = [generate_case(cfg, i) for i in range(3)]
    stats = hu_statistics(cases)
    must = {"air", "fat", "muscle", "soft tissue", "bowel gas", "bone", "liver", "spleen", "kidney cortex",
            "kidney medulla", "pancreas", "aorta", "kidney tumour", "pancreas tumour"}
    assert must <= set(stats), must - set(stats)
    for name, s in stats.items():
        lo, hi = HU_RANGES[name]
        if s["voxels"] >= 30:
            assert lo <= s["mean"] <= hi, (name, s)
    assert 8.0 < stats["air"]["std"] < 20.0  # the noise (default 12 HU +-15 %)
    # tumours overlap their surroundings: not separable by a threshold
    assert stats["kidney tumour"]["mean"] < stats["kidney cortex"]["mean"] - 40
    assert stats["pancreas tumour"]["mean"] + 2 * stats["pancreas tumour"]["std"] > stats["pancreas"]["mean"]
    labels = hu_statistics(cases, by="label")
    assert set(labels) == set(LABEL_SETS["multiorgan"].values()) - ({"gallbladder"} - set(labels))


def test_tumour_fraction_and_declared_labels(kidney_cases) -> None:
    kidneys_with_tumour = sum(len({f["organ"] for f in c.findings}) for c in kidney_cases)
    assert 5 <= kidneys_with_tumour <= 15  # 20 kidneys at p = 0.5
    for c in kidney_cases:
        assert set(np.unique(c.label)) <= set(LABEL_SETS["kidney"]) and c.label.dtype == np.uint8
        assert c.image.dtype == np.float32 and c.image.shape == c.label.shape == c.tissue.shape
    cfg = PhantomConfig(task="kidney", num_cases=4, **MEDIUM)
    none = [generate_case(PhantomConfig(**{**cfg.__dict__, "tumour_fraction": 0.0}), i) for i in range(3)]
    assert all(not (c.label == 2).any() and not c.findings for c in none)
    every = [generate_case(PhantomConfig(**{**cfg.__dict__, "tumour_fraction": 1.0}), i) for i in range(3)]
    assert all(len(c.findings) == 2 for c in every)
    for task in ("pancreas", "multiorgan"):
        c = generate_case(PhantomConfig(task=task, tumour_fraction=1.0, **SMALL), 0)
        assert set(np.unique(c.label)) <= set(LABEL_SETS[task])


# --- anatomy and orientation ---------------------------------------------------------------


def _centroids(case: phantom.PhantomCase) -> dict[str, np.ndarray]:
    names = LABEL_SETS[case.task]
    return {names[k]: world(case, case.label == k).mean(0) for k in np.unique(case.label) if k}


@pytest.mark.parametrize("orientation", ["LPS", "IPL"])
def test_orientation_affine_and_anatomical_sides(orientation) -> None:
    cfg = PhantomConfig(task="multiorgan", anisotropic=True, orientation=orientation, seed=5, **SMALL)
    ras = PhantomConfig(task="multiorgan", anisotropic=True, orientation="RAS", seed=5, **SMALL)
    case, ref = generate_case(cfg, 1), generate_case(ras, 1)
    assert "".join(nib.aff2axcodes(case.affine)) == orientation
    assert not np.allclose(np.abs(np.diag(ref.affine)[:3]), np.abs(np.diag(ref.affine)[0]))  # anisotropic
    cen, cen_ras = _centroids(case), _centroids(ref)
    for name in cen_ras:  # the same anatomy in world space, whatever the array order
        np.testing.assert_allclose(cen[name], cen_ras[name], atol=1e-3)
    # RAS+ world: +x = patient Right, +y = Anterior, +z = Superior
    assert cen["left kidney"][0] < -30 < 30 < cen["right kidney"][0]
    assert cen["liver"][0] > 0 > cen["spleen"][0] and cen["stomach"][0] < 0
    assert cen["pancreas"][1] > cen["aorta"][1] > cen["left kidney"][1]  # pancreas in front, kidneys behind
    assert cen["liver"][2] > cen["right kidney"][2] and cen["left kidney"][2] > cen["right kidney"][2]


# --- descriptions ---------------------------------------------------------------------------


def test_kidney_descriptions_match_the_labels(kidney_cases) -> None:
    for c in kidney_cases:
        tumour, kidney = c.label == 2, c.label > 0
        voxel_ml = abs(np.linalg.det(c.affine[:3, :3])) / 1000
        sides = {"right kidney": world(c, tumour)[:, 0] > 0, "left kidney": world(c, tumour)[:, 0] < 0}
        named = {f["organ"]: f for f in c.findings}
        for organ, on_side in sides.items():
            assert bool(on_side.any()) == (organ in named), (c.name, organ, c.description)
            if organ not in named:
                continue
            f = named[organ]
            assert f"{f['size_cm']:.1f} cm" in c.description and f"{f['location']} of the {organ}" in c.description
            vol = on_side.sum() * voxel_ml
            assert f["size_cm"] == pytest.approx((6 * vol * 1000 / np.pi) ** (1 / 3) / 10, abs=0.051)
            xyz = world(c, kidney)
            z = xyz[(xyz[:, 0] > 0) == (organ == "right kidney"), 2]
            frac = (world(c, tumour)[on_side, 2].mean() - z.min()) / (z.max() - z.min())
            expect = "upper pole" if frac > 2 / 3 else "lower pole" if frac < 1 / 3 else "interpolar region"
            assert f["location"] == expect
        if not named:
            assert c.description == "Both kidneys are normal; no renal tumour."
        elif len(named) == 1:
            healthy = ({"right kidney", "left kidney"} - set(named)).pop()
            assert c.description.endswith(f"the {healthy} is normal.")


def test_pancreas_descriptions_name_the_part() -> None:
    cfg = PhantomConfig(task="pancreas", tumour_fraction=1.0, seed=2, **MEDIUM)
    xs: dict[str, list[float]] = {"head": [], "body": [], "tail": []}
    for i in range(8):
        c = generate_case(cfg, i)
        (f,) = c.findings
        assert f["organ"] == "pancreas" and f"in the {f['location']} of the pancreas" in c.description
        tumour = world(c, c.label == 2)
        gland = world(c, c.label > 0)
        xs[f["location"]].append((tumour[:, 0].mean() - gland[:, 0].min()) / np.ptp(gland[:, 0]))
    # the head lies to the patient's right (+x), the tail to the left
    ordered = [np.mean(v) for v in xs.values() if v]
    assert ordered == sorted(ordered, reverse=True) and len(ordered) >= 2


def test_multiorgan_description_volumes() -> None:
    c = generate_case(PhantomConfig(task="multiorgan", **SMALL), 0)
    vols = {f["organ"]: f["volume_ml"] for f in c.findings if f["kind"] == "volume"}
    assert f"Liver {vols['liver']:.0f} mL" in c.description and vols["liver"] > 500
    assert 50 < vols["right kidney"] < 300 and "stomach" in c.description


# --- files ---------------------------------------------------------------------------------


def test_generate_phantom_writes_msd_layout(tmp_path) -> None:
    cfg = PhantomConfig(num_cases=3, orientation="LPS", **SMALL)
    out = generate_phantom(tmp_path / "ds", cfg, workers=1)
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["labels"] == {"0": "background", "1": "kidney", "2": "tumor"} and meta["modality"] == {"0": "CT"}
    assert meta["numTraining"] == 3 and len(meta["training"]) == 3 and meta["test"] == []
    assert meta["tdseg_phantom"] == json.loads(json.dumps(cfg.block()))
    entry = meta["training"][1]
    assert entry["image"] == "./imagesTr/phantom_kidney_0001.nii.gz" and "findings" in entry
    img, lab = nib.load(out / entry["image"]), nib.load(out / entry["label"])
    case = generate_case(cfg, 1)
    assert img.get_data_dtype() == np.int16 and lab.get_data_dtype() == np.uint8
    assert nib.aff2axcodes(img.affine) == ("L", "P", "S") and img.header["sform_code"] == 1
    np.testing.assert_array_equal(np.asanyarray(lab.dataobj), case.label)
    np.testing.assert_allclose(np.asanyarray(img.dataobj), np.round(case.image), atol=0.5)
    assert entry["description"] == case.description
    assert sorted(p.name for p in out.iterdir()) == ["dataset.json", "imagesTr", "labelsTr"]


def test_workers_give_identical_files(tmp_path) -> None:
    cfg = PhantomConfig(num_cases=4, **SMALL)
    a = generate_phantom(tmp_path / "a", cfg, workers=1)
    b = generate_phantom(tmp_path / "b", cfg, workers=2)
    for sub in ("imagesTr", "labelsTr"):
        for f in (a / sub).iterdir():
            assert f.read_bytes() == (b / sub / f.name).read_bytes()
    assert (a / "dataset.json").read_text() == (b / "dataset.json").read_text()
    with pytest.raises(UserInputError, match=r"`workers` must be an integer >= 1, got 0"):
        generate_phantom(tmp_path / "c", cfg, workers=0)


def test_ensure_phantom_reuses_and_regenerates(tmp_path, monkeypatch) -> None:
    out = tmp_path / "ds"
    cfg = PhantomConfig(num_cases=4, **SMALL)
    ensure_phantom(out, cfg, workers=1)
    calls = []
    real = phantom.generate_phantom
    monkeypatch.setattr(phantom, "generate_phantom", lambda *a, **k: calls.append(a) or real(*a, **k))
    ensure_phantom(out, cfg)
    assert calls == []  # reused
    fewer = PhantomConfig(num_cases=2, seed=1, **SMALL)
    ensure_phantom(out, fewer, workers=1)
    assert len(calls) == 1
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == ["phantom_kidney_0000.nii.gz",
                                                                    "phantom_kidney_0001.nii.gz"]
    (out / "labelsTr" / "phantom_kidney_0001.nii.gz").unlink()  # a missing file -> regenerate
    ensure_phantom(out, fewer, workers=1)
    assert len(calls) == 2 and (out / "labelsTr" / "phantom_kidney_0001.nii.gz").exists()


def test_interrupted_run_leaves_no_dataset_json_and_can_resume(tmp_path, monkeypatch) -> None:
    out = tmp_path / "ds"
    cfg = PhantomConfig(num_cases=3, **SMALL)
    generate_phantom(out, cfg, workers=1)
    real = phantom._write_case

    def flaky(o, c, i):
        if i == 2:
            raise KeyboardInterrupt
        return real(o, c, i)

    monkeypatch.setattr(phantom, "_write_case", flaky)
    with pytest.raises(KeyboardInterrupt):
        generate_phantom(out, PhantomConfig(num_cases=3, seed=9, **SMALL), workers=1)
    assert not (out / "dataset.json").exists()
    monkeypatch.setattr(phantom, "_write_case", real)
    ensure_phantom(out, cfg, workers=1)  # the half-written folder is still recognised as ours
    assert json.loads((out / "dataset.json").read_text())["numTraining"] == 3


def test_refuses_a_foreign_non_empty_folder(tmp_path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserInputError, match=r"`out_dir` must be a new or empty folder .* Pass another folder"):
        generate_phantom(tmp_path, PhantomConfig(num_cases=1, **SMALL))
    with pytest.raises(UserInputError, match=r"`out_dir` must be a folder, got the file"):
        generate_phantom(tmp_path / "notes.txt", PhantomConfig(num_cases=1, **SMALL))
    assert (tmp_path / "notes.txt").read_text() == "mine" and len(list(tmp_path.iterdir())) == 1


# --- command line --------------------------------------------------------------------------


def test_cli_happy_path(tmp_path, capsys) -> None:
    out = tmp_path / "ph"
    argv = ["phantom", "--out", str(out), "--cases", "4", "--seed", "1", "--task", "pancreas",
            "--tumour-fraction", "1", "--orientation", "IPL", "--workers", "1"]
    assert cli.main(argv) == 0
    line = capsys.readouterr().out.strip()
    assert "\n" not in line and line.startswith("tdseg phantom: 4 pancreas cases (4 tumours") and " s (" in line
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["labels"]["2"] == "cancer" and meta["tdseg_phantom"]["options"]["orientation"] == "IPL"
    assert nib.aff2axcodes(nib.load(out / meta["training"][0]["image"]).affine) == ("I", "P", "L")


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--task", "liver"], "`PhantomConfig.task` (--task) must be one of kidney, pancreas, multiorgan, got 'liver'"),
        (["--cases", "-3"], "(--cases) must be an integer in [1, 100000], got -3. Pass e.g. --cases 40."),
        (["--cases", "ten"], "`--cases` must be an integer, got 'ten'. Pass e.g. --cases 40."),
        (["--tumour-fraction", "2"], "(--tumour-fraction) must be a number in [0, 1]"),
        (["--decoy-fraction", "x"], "`--decoy-fraction` must be a number, got 'x'. Pass e.g. --decoy-fraction 0.5."),
        (["--orientation", "XYZ"], "(--orientation) must be 3 letters"),
        (["--workers", "0"], "`--workers` must be >= 1, got 0. Pass e.g. --workers 2."),
    ],
)
def test_cli_bad_values_exit_2_with_one_line(tmp_path, capsys, args, match) -> None:
    assert cli.main(["phantom", "--out", str(tmp_path / "x"), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("tdseg phantom: error: ") and match in err
    assert not (tmp_path / "x").exists()


def test_cli_refuses_foreign_folder(tmp_path, capsys) -> None:
    (tmp_path / "data.csv").write_text("a,b\n")
    assert cli.main(["phantom", "--out", str(tmp_path), "--cases", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "`--out` must be a new or empty folder" in err and "Pass another folder" in err


def test_hu_statistics_rejects_unknown_grouping() -> None:
    with pytest.raises(ValueError, match=r"`by` must be 'tissue' or 'label', got 'organ'"):
        hu_statistics([], by="organ")
