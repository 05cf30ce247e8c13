"""Data layer: config rules, datalists, stored splits, transform chains and their inverse."""

from __future__ import annotations

import json
import pickle
from dataclasses import replace

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import IPL_AFFINE

from tdseg_lite import data
from tdseg_lite.config import ConfigError, build_config
from tdseg_lite.data import DataConfig
from tdseg_lite.errors import UserInputError
from tdseg_lite.validate import validate_dataset

# small grid for the chain tests: 2 mm voxels, 16^3 patches
CFG = DataConfig(spacing=(2.0, 2.0, 2.0), patch_size=(16, 16, 16), foreground_margin=2, num_samples=2)


# --- config ---------------------------------------------------------------------------------------------------

def test_presets() -> None:
    assert build_config(DataConfig, "cpu") == DataConfig()
    smoke, full = build_config(DataConfig, "smoke"), build_config(DataConfig, "full")
    assert smoke.patch_size == (32, 32, 32) and smoke.phantom_cases == 12 and DataConfig().phantom_cases == 40
    assert full.spacing == (1.5, 1.5, 2.0) and full.patch_size == (96, 96, 96)
    assert build_config(DataConfig, "smoke", {"patch_size": [48, 48, 48]}).patch_size == (48, 48, 48)


@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [
        ({"patch_size": (40, 64, 64)}, (r"^`DataConfig.patch_size` must be 3 positive sizes divisible by 16 .*, "
                                       r"got \(40, 64, 64\)\. Use e\.g\. \(64, 64, 64\)\.$")),
        ({"spacing": (0.0, 1.0, 1.0)}, r"`DataConfig.spacing` must be 3 positive voxel sizes in mm, got \(0.0, 1.0"),
        ({"a_min": 300.0}, r"`DataConfig.a_min` must be below a_max .*, got \(300.0, 250.0\)"),
        ({"val_fraction": 1.0}, r"`DataConfig.val_fraction` must be in \[0, 1\), got 1.0"),
        ({"cache_rate": 1.5}, r"`DataConfig.cache_rate` must be in \[0, 1\], got 1.5"),
        ({"pos_fraction": -0.1}, r"`DataConfig.pos_fraction` must be in \[0, 1\]"),
        ({"num_samples": 0}, r"`DataConfig.num_samples` must be >= 1, got 0"),
        ({"foreground_margin": -1}, r"`DataConfig.foreground_margin` must be >= 0, got -1"),
        ({"mirror_prob": 1.5}, r"`DataConfig.mirror_prob` must be in \[0, 1\], got 1.5"),
        ({"flip_axes": (0, 3)}, r"`DataConfig.flip_axes` must be distinct axes among 0, 1, 2, got \(0, 3\)"),
        ({"phantom_task": ""}, r"`DataConfig.phantom_task` must be a non-empty task name"),
        ({"patch": (32, 32, 32)}, r"unknown field 'patch' for DataConfig; did you mean 'patch_size'"),
    ],
)
def test_config_rules(overrides: dict, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        build_config(DataConfig, "cpu", overrides)


# --- datalists and splits ---------------------------------------------------------------------------------------

def test_load_datalist_gives_absolute_paths_and_ids(msd_dataset) -> None:
    root = msd_dataset(n_cases=2, test=["./imagesTs/t_000.nii.gz", {"image": "./imagesTs/t_001.nii.gz"}])
    cases = data.load_datalist(root)
    assert [c["case_id"] for c in cases] == ["case_000", "case_001"]
    assert set(cases[0]) == {"image", "label", "description", "case_id"}
    assert cases[0]["image"] == str((root / "imagesTr" / "case_000.nii.gz").resolve())
    assert cases[1]["description"] == "case 1: a small lesion"
    test = data.load_datalist(root, "test")
    assert [t["case_id"] for t in test] == ["t_000", "t_001"] and "label" not in test[0]
    assert data.load_labels(root) == {0: "background", 1: "kidney", 2: "tumor"}


def test_load_datalist_errors(msd_dataset, tmp_path) -> None:
    with pytest.raises(UserInputError, match="dataset folder does not exist"):
        data.load_datalist(tmp_path / "missing")
    root = msd_dataset(n_cases=1)
    with pytest.raises(UserInputError, match='required key "validation" is missing'):
        data.load_datalist(root, "validation")
    (root / "dataset.json").write_text(json.dumps({"labels": {"background": 0}, "training": []}))
    with pytest.raises(UserInputError, match='"training" must be a non-empty list'):
        data.load_datalist(root)
    with pytest.raises(UserInputError, match='"labels" must map class indices to names'):
        data.load_labels(root)


def test_make_splits_is_deterministic_and_stable() -> None:
    ids = [f"case_{i:03d}" for i in range(20)]
    a = data.make_splits(ids, 0.2, seed=0)
    assert a == data.make_splits(list(reversed(ids)), 0.2, seed=0)
    assert len(a["val"]) == 4 and set(a["train"]) | set(a["val"]) == set(ids) and not set(a["train"]) & set(a["val"])
    assert data.make_splits(ids, 0.2, seed=1)["val"] != a["val"]
    grown = data.make_splits(ids + ["case_020"], 0.2, seed=0)  # one more case moves at most one other
    assert len(set(a["val"]) ^ set(grown["val"])) <= 2
    assert data.make_splits(ids, 0.0, seed=0)["val"] == []
    with pytest.raises(UserInputError, match=r"`val_fraction` leaves no training case, got 0.5 of 1 case"):
        data.make_splits(["only"], 0.5, seed=0)


def test_ensure_splits_writes_reuses_and_regenerates(msd_dataset, tmp_path) -> None:
    root = msd_dataset(n_cases=5)
    first = data.ensure_splits(root, 0.2, seed=0)
    assert json.loads((root / "splits.json").read_text()) == first and len(first["val"]) == 1
    custom = {**first, "train": first["train"][1:], "val": first["val"] + first["train"][:1]}  # hand-edited split
    (root / "splits.json").write_text(json.dumps(custom))
    assert data.ensure_splits(root, 0.2, seed=0) == custom
    with pytest.warns(UserWarning, match="regenerating the train/val split because it was made with seed=0"):
        assert data.ensure_splits(root, 0.2, seed=3) == data.make_splits(first["train"] + first["val"], 0.2, 3)
    meta = json.loads((root / "dataset.json").read_text())
    meta["training"] = meta["training"][:4]
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match="the dataset's cases changed"):
        assert len(data.ensure_splits(root, 0.2, seed=3)["train"]) == 3
    (root / "splits.json").write_text("{not json")
    with pytest.warns(UserWarning, match="it is not a valid splits file"):
        assert data.ensure_splits(root, 0.2, seed=3) == json.loads((root / "splits.json").read_text())
    elsewhere = tmp_path / "runs" / "splits.json"
    assert data.ensure_splits(root, 0.5, seed=0, path=elsewhere) == json.loads(elsewhere.read_text())


def test_ensure_splits_on_read_only_dataset(msd_dataset, monkeypatch) -> None:
    root = msd_dataset(n_cases=3)

    def refuse(path, text) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(data, "atomic_write_text", refuse)
    with pytest.raises(UserInputError, match=r"splits.json` must be writable .*, got Permission denied\. Pass path="):
        data.ensure_splits(root, 0.2, seed=0)


# --- transform chains ---------------------------------------------------------------------------------------------

BALL_CENTRE = np.array([-8.0, 2.0, 0.0])  # world (RAS) mm
BALL_RADIUS = 12.0  # mm


@pytest.fixture
def ipl_case(msd_dataset) -> dict[str, str]:
    """A KiTS19-like case: voxel axes I-P-L, spacing (5, 0.8, 0.8) mm, shape (12, 48, 48), with a
    ball of ``BALL_RADIUS`` mm (label 1) around ``BALL_CENTRE`` whose lower half (S < 0) is label 2."""
    root = msd_dataset(n_cases=1, shape=(12, 48, 48), affine=IPL_AFFINE)
    case = data.load_datalist(root)[0]
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in (12, 48, 48)], indexing="ij"), -1)
    world = grid @ IPL_AFFINE[:3, :3].T + IPL_AFFINE[:3, 3]
    inside = np.linalg.norm(world - BALL_CENTRE, axis=-1) < BALL_RADIUS
    label = (inside * (1 + (world[..., 2] < BALL_CENTRE[2]))).astype(np.uint8)
    nib.save(nib.Nifti1Image(label, IPL_AFFINE), case["label"])
    return case


def test_val_chain_reorients_and_resamples(ipl_case) -> None:
    out = data.val_transforms(CFG)(dict(ipl_case))
    image, label = out["image"], out["label"]
    assert image.dtype == torch.float32 and label.dtype == torch.int64 and image.shape == label.shape
    assert nib.aff2axcodes(image.affine.numpy()) == ("R", "A", "S")
    np.testing.assert_allclose(np.diag(image.affine.numpy())[:3], CFG.spacing)
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
    assert all(s >= p for s, p in zip(image.shape[1:], CFG.patch_size))
    orig = np.asanyarray(nib.load(ipl_case["label"]).dataobj)
    vox0, vox1 = np.argwhere(orig > 0), np.argwhere(label[0].numpy() > 0)
    vol0, vol1 = len(vox0) * 5 * 0.8 * 0.8, len(vox1) * 8.0  # mm^3 before / after
    assert abs(vol1 - vol0) / vol0 < 0.05, (vol0, vol1)
    centre = (label.affine.numpy() @ np.r_[vox1.mean(0), 1.0])[:3]  # RAS world position of the ball
    np.testing.assert_allclose(centre, BALL_CENTRE, atol=1.0)  # within half a 2 mm voxel
    lower = (label.affine.numpy() @ np.r_[np.argwhere(label[0].numpy() == 2).mean(0), 1.0])[:3]
    assert lower[2] < BALL_CENTRE[2] - 3.0  # label 2 stays inferior: S is up after RAS


def test_invert_maps_a_prediction_back_to_the_original_grid(ipl_case) -> None:
    chain = data.val_transforms(CFG)
    out = chain(dict(ipl_case))
    out["pred"] = out["label"].clone()  # stands in for a network's argmax on the processed grid
    back = data.make_inverter(chain, keys="pred", orig_key="image")(out)["pred"]
    orig = nib.load(ipl_case["label"])
    assert tuple(back.shape) == (1, *orig.shape)
    np.testing.assert_allclose(back.affine.numpy(), orig.affine, atol=1e-5)
    truth = np.asanyarray(orig.dataobj)
    pred = back[0].numpy()
    dice = 2 * ((pred > 0) & (truth > 0)).sum() / ((pred > 0).sum() + (truth > 0).sum())
    assert dice > 0.9 and set(np.unique(pred)) <= {0, 1, 2}  # 0.95 measured (2 mm round trip of 5 mm slices)


def test_train_chain_gives_patches(ipl_case) -> None:
    chain = data.train_transforms(replace(CFG, pos_fraction=1.0, affine_prob=1.0))
    chain.set_random_state(seed=0)
    samples = chain(dict(ipl_case))
    assert isinstance(samples, list) and len(samples) == CFG.num_samples
    for s in samples:
        assert {"image", "label", "description", "case_id"} <= set(s)
        assert s["image"].shape == (1, 16, 16, 16) and s["label"].shape == (1, 16, 16, 16)
        assert s["image"].dtype == torch.float32 and s["label"].dtype == torch.int64
        assert set(s["label"].unique().tolist()) <= {0, 1, 2} and s["label"].max() > 0  # pos_fraction=1
    pickle.dumps(chain)  # spawn-based DataLoader workers need picklable transforms (no lambdas)


def test_mirror_flips_image_and_label_left_right_and_swaps_the_report(ipl_case) -> None:
    case = data.val_transforms(CFG)(dict(ipl_case, description="A tumour in the left kidney; right kidney normal."))
    mirrored = data.RandMirrorSidesd(prob=1.0)(case)
    assert torch.equal(mirrored["image"], case["image"].flip(1)) and torch.equal(mirrored["label"], case["label"].flip(1))
    assert mirrored["description"] == "A tumour in the right kidney; left kidney normal."
    kept = data.RandMirrorSidesd(prob=0.0)(case)
    assert torch.equal(kept["label"], case["label"]) and kept["description"] == case["description"]
    # in the training chain the mirror comes before the coordinates: they describe the mirrored volume
    chain = data.train_transforms(replace(CFG, mirror_prob=1.0, flip_prob=0.0, affine_prob=0.0))
    names = [type(t).__name__ for t in chain.transforms]
    assert names.index("RandMirrorSidesd") < names.index("AddCoordinates")
    samples = chain(dict(ipl_case, description="A tumour in the left kidney."))
    assert all(s["description"] == "A tumour in the right kidney." for s in samples)
    assert "RandMirrorSidesd" not in [type(t).__name__ for t in data.train_transforms(CFG).transforms]  # off by default


def test_datasets_and_loaders(msd_dataset) -> None:
    root = msd_dataset(n_cases=5)
    cfg = replace(CFG, batch_size=2)
    train_ds, val_ds = data.make_datasets(cfg, root)
    assert (len(train_ds), len(val_ds)) == (4, 1) and (root / "splits.json").is_file()
    train_loader, val_loader = data.make_loaders(cfg, train_ds, val_ds)
    batch = next(iter(train_loader))
    assert batch["image"].shape == (4, 1, 16, 16, 16) and batch["label"].dtype == torch.int64
    assert len(batch["case_id"]) == 4
    val = next(iter(val_loader))
    assert val["image"].shape[:2] == (1, 1) and val["image"].shape == val["label"].shape


def test_default_dataset_with_a_folder(msd_dataset, tmp_path) -> None:
    root = msd_dataset(n_cases=2)
    assert data.default_dataset(CFG, str(root)) == root.resolve()
    (root / "labelsTr" / "case_000.nii.gz").unlink()
    with pytest.raises(UserInputError, match=r"is not a valid dataset: labelsTr/case_000.nii.gz: label file"):
        data.default_dataset(CFG, root)


def test_default_dataset_builds_the_phantom(tmp_path) -> None:
    pytest.importorskip("tdseg_lite.phantom")
    cfg = build_config(DataConfig, "smoke", {"phantom_cases": 3})
    root = data.default_dataset(cfg, "", artifacts=tmp_path)
    assert root == tmp_path / "data" / f"phantom_{cfg.phantom_task}"
    assert len(data.load_datalist(root)) == 3
    report = validate_dataset(root)
    assert report.ok, report.errors
    assert data.default_dataset(cfg, "", artifacts=tmp_path) == root  # second call reuses it
