"""Data layer: MSD-layout datalists, a stored train/val split and MONAI transform chains.

Every dataset (the phantom, MSD tasks, KiTS19, BTCV) uses the Medical Segmentation Decathlon
layout::

    DATASET/dataset.json   {"labels": {"0": "background", ...}, "training": [{"image", "label",
                            "description"?}], "test": [...]}
    DATASET/imagesTr/  DATASET/labelsTr/  [DATASET/imagesTs/]   (+ splits.json written here)

The deterministic chain, cached in RAM by ``CacheDataset``, turns a CT volume of any orientation
and spacing into a RAS volume at ``cfg.spacing``::

    LoadImaged -> EnsureChannelFirstd -> Orientationd("RAS") -> Spacingd (bilinear / nearest)
      -> CropForegroundd (body: HU > body_threshold_hu, + margin) -> ScaleIntensityRanged
         (HU a_min..a_max -> [0, 1], clipped) -> SpatialPadd (>= patch_size)

Training may first mirror a volume left↔right and exchange "left" and "right" in its report
(``RandMirrorSidesd``, ``mirror_prob``, off by default), then gives every voxel its normalised
position in the whole volume (``coords``,
``positions.AddCoordinates``, made per sample, not cached), then draws ``num_samples`` patches per
volume: by default (``crop_centres="classes"``) ``RandCropByLabelClassesd`` picks the centres per
class in equal shares (background, kidney, tumour: a third each; it needs ``num_classes``, without
which ``train_transforms`` falls back to the foreground rule), or with
``crop_centres="foreground"`` ``RandCropByPosNegLabeld`` centres a share ``pos_fraction`` on
foreground voxels; then flips, a small ``RandAffined`` (image, label and coords together) and
``RandShiftIntensityd`` (image only). Both chains end in ``EnsureTyped``: image ``float32 (C, X, Y, Z)``,
label ``int64 (1, X, Y, Z)`` class indices. MetaTensors keep the affine and the list of applied
operations, so ``make_inverter`` maps a prediction back onto the original image grid.

Explained in ``notebooks/00_setup_and_data.ipynb``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from monai import transforms as mt
from monai.data import CacheDataset, DataLoader

from tdseg_lite.errors import UserInputError, require
from tdseg_lite.positions import COORD_KEY, AddCoordinates
from tdseg_lite.reports import swap_sides
from tdseg_lite.utils import artifacts_dir, atomic_write_text
from tdseg_lite.validate import parse_section, read_dataset_json, validate_dataset

__all__ = [
    "BodyMask",
    "DataConfig",
    "RandMirrorSidesd",
    "default_dataset",
    "ensure_splits",
    "load_datalist",
    "load_labels",
    "make_datasets",
    "make_inverter",
    "make_loaders",
    "make_splits",
    "train_transforms",
    "val_transforms",
]

_RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))  # "R" = index grows towards the patient's right
Vec3 = tuple[float, float, float]
Int3 = tuple[int, int, int]


@dataclass(frozen=True)
class DataConfig:
    """Preprocessing, sampling, augmentation, split and loader settings (presets in ``PRESETS``)."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": {"patch_size": (32, 32, 32), "phantom_cases": 12, "affine_prob": 0.0},
        "cpu": {},
        "full": {"spacing": (1.5, 1.5, 2.0), "patch_size": (96, 96, 96), "num_samples": 4,
                 "num_workers": 4, "cache_rate": 0.5},
    }
    spacing: Vec3 = (3.0, 3.0, 3.0)            # target voxel size (mm) along R, A, S
    a_min: float = -175.0                      # HU mapped to 0 (abdominal soft-tissue window)
    a_max: float = 250.0                       # HU mapped to 1; values outside are clipped
    body_threshold_hu: float = -500.0          # CropForegroundd keeps the box of voxels above this (body)
    foreground_margin: int = 8                 # voxels kept around the body box
    patch_size: Int3 = (64, 64, 64)            # training crop (X, Y, Z) in voxels, divisible by 16
    crop_centres: Literal["classes", "foreground"] = "classes"  # classes: centres drawn per class in equal shares
    pos_fraction: float = 0.5                  # "foreground": share of crops centred on a foreground voxel
    num_samples: int = 2                       # crops per volume per epoch (batch = batch_size * this)
    augment: bool = True                       # master switch for the random flips/affine/intensity
    flip_prob: float = 0.1                     # per-axis flip probability
    flip_axes: tuple[int, ...] = (1, 2)        # A-P and S-I; axis 0 (R-L) would swap left/right organs
    mirror_prob: float = 0.0                   # R-L mirror of image + label, "left" <-> "right" in the report
    affine_prob: float = 0.2                   # probability of a small rotation + scaling
    rotate_deg: float = 10.0                   # max rotation per axis (degrees)
    scale_range: float = 0.1                   # max relative zoom
    intensity_prob: float = 0.5                # probability of an intensity shift
    intensity_shift: float = 0.1               # max shift in scaled units (0.1 = 42 HU)
    val_fraction: float = 0.2                  # share of cases held out for validation
    split_seed: int = 0                        # seed of the train/val split (splits.json)
    cache_rate: float = 1.0                    # share of volumes CacheDataset keeps in RAM
    num_workers: int = 0                       # DataLoader worker processes
    batch_size: int = 2                        # volumes per batch (each gives num_samples crops)
    phantom_task: str = "kidney"               # phantom used when no data_dir is given
    phantom_cases: int = 40                    # cases in that phantom
    phantom_seed: int = 0                      # seed of that phantom

    def __post_init__(self) -> None:
        for name in ("spacing", "patch_size", "flip_axes"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        require(len(self.spacing) == 3 and all(v > 0 for v in self.spacing), "DataConfig.spacing",
                "must be 3 positive voxel sizes in mm", self.spacing, "Use e.g. (1.5, 1.5, 2.0).")
        require(self.a_min < self.a_max, "DataConfig.a_min", "must be below a_max (the HU window a_min..a_max)",
                (self.a_min, self.a_max), "Use e.g. a_min=-175, a_max=250.")
        require(len(self.patch_size) == 3 and all(p > 0 and p % 16 == 0 for p in self.patch_size),
                "DataConfig.patch_size", "must be 3 positive sizes divisible by 16 (the networks halve it 4 times)",
                self.patch_size, "Use e.g. (64, 64, 64).")
        require(all(a in (0, 1, 2) for a in self.flip_axes) and len(set(self.flip_axes)) == len(self.flip_axes),
                "DataConfig.flip_axes", "must be distinct axes among 0, 1, 2", self.flip_axes, "Use e.g. (1, 2).")
        for name in ("foreground_margin", "num_workers", "rotate_deg", "scale_range", "intensity_shift"):
            require(getattr(self, name) >= 0, f"DataConfig.{name}", "must be >= 0",
                    getattr(self, name), "Use 0 to disable it.")
        for name in ("num_samples", "batch_size", "phantom_cases"):
            require(getattr(self, name) >= 1, f"DataConfig.{name}", "must be >= 1",
                    getattr(self, name), "Use e.g. 2.")
        for name in ("pos_fraction", "flip_prob", "mirror_prob", "affine_prob", "intensity_prob", "cache_rate"):
            require(0.0 <= getattr(self, name) <= 1.0, f"DataConfig.{name}", "must be in [0, 1]",
                    getattr(self, name), "Use e.g. 0.5.")
        require(0.0 <= self.val_fraction < 1.0, "DataConfig.val_fraction", "must be in [0, 1)",
                self.val_fraction, "Use e.g. 0.2 (0 = no validation cases).")
        require(bool(self.phantom_task), "DataConfig.phantom_task", "must be a non-empty task name",
                self.phantom_task, "Use 'kidney', 'pancreas' or 'multiorgan'.")


def load_datalist(data_dir: str | os.PathLike[str], section: str = "training") -> list[dict[str, str]]:
    """Cases of a ``dataset.json`` section with absolute paths.

    Args:
        data_dir: the dataset folder (MSD layout).
        section: ``"training"`` (image + label) or ``"test"`` (image only).

    Returns:
        One dict per case: ``image``, ``label`` (training), ``description`` (``""`` if absent),
        ``case_id`` (the image file name without extension).
    """
    root = Path(data_dir).expanduser().resolve()
    entries, errors = parse_section(root, read_dataset_json(root), section)
    if errors:
        raise UserInputError(errors[0])
    return entries


def load_labels(data_dir: str | os.PathLike[str]) -> dict[int, str]:
    """``{0: "background", 1: "kidney", ...}`` from ``dataset.json``."""
    labels = read_dataset_json(Path(data_dir).expanduser()).get("labels")
    if not isinstance(labels, dict) or not all(str(k).isdigit() for k in labels):
        raise UserInputError(f'dataset.json: "labels" must map class indices to names, got {labels!r}; '
                             'write "labels": {"0": "background", "1": "<organ>"}')
    return {int(k): str(v) for k, v in sorted(labels.items(), key=lambda kv: int(kv[0]))}


def make_splits(case_ids: list[str], val_fraction: float, seed: int) -> dict[str, Any]:
    """Deterministic train/val split: cases ordered by ``sha256(f"{seed}:{case_id}")``.

    The order depends on nothing but the ids and the seed (no RNG, platform or version), and
    adding a case moves at most one other case across the boundary.
    """
    cases = sorted(set(case_ids))
    n_val = 0 if val_fraction == 0 else max(1, round(len(cases) * val_fraction))
    if len(cases) - n_val < 1:
        raise UserInputError(f"`val_fraction` leaves no training case, got {val_fraction} of {len(cases)} "
                             "case(s). Add cases or use val_fraction=0.")
    order = sorted(cases, key=lambda c: hashlib.sha256(f"{seed}:{c}".encode()).hexdigest())
    return {"seed": seed, "val_fraction": val_fraction, "train": sorted(order[n_val:]), "val": sorted(order[:n_val])}


def ensure_splits(data_dir: str | os.PathLike[str], val_fraction: float, seed: int,
                  path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Read or write ``splits.json`` (``{"seed", "val_fraction", "train": [ids], "val": [ids]}``).

    An existing file is reused when it covers exactly the dataset's cases with the same seed and
    fraction (so a hand-edited split survives); otherwise it is regenerated with a warning.

    Args:
        data_dir: the dataset folder.
        val_fraction: share of cases for validation.
        seed: split seed.
        path: where to keep the file (default ``data_dir/splits.json``); use it for read-only data.
    """
    cases = sorted(e["case_id"] for e in load_datalist(data_dir))
    target = Path(path) if path else Path(data_dir).expanduser() / "splits.json"
    if target.is_file():
        reason = _splits_mismatch(target, cases, val_fraction, seed)
        if reason is None:
            return json.loads(target.read_text())
        warnings.warn(f"{target}: regenerating the train/val split because {reason}.", stacklevel=2)
    splits = make_splits(cases, val_fraction, seed)
    try:
        atomic_write_text(target, json.dumps(splits, indent=2) + "\n")
    except OSError as err:
        raise UserInputError(f"`{target}` must be writable to store the split, got {err.strerror}. "
                             "Pass path=... (e.g. artifacts/splits.json) for a read-only dataset.") from None
    return splits


def _splits_mismatch(target: Path, cases: list[str], val_fraction: float, seed: int) -> str | None:
    """Why a stored split cannot be reused, or ``None`` if it can."""
    try:
        old = json.loads(target.read_text())
        train, val = set(old["train"]), set(old["val"])
    except (ValueError, KeyError, TypeError):
        return "it is not a valid splits file"
    if (old.get("seed"), old.get("val_fraction")) != (seed, val_fraction):
        return f"it was made with seed={old.get('seed')}, val_fraction={old.get('val_fraction')}"
    if train & val or train | val != set(cases):
        return "the dataset's cases changed"
    return None


@dataclass(frozen=True)
class BodyMask:
    """``select_fn`` of ``CropForegroundd``: voxels above ``threshold_hu`` (a picklable callable)."""

    threshold_hu: float = -500.0

    def __call__(self, x: Any) -> Any:
        return x > self.threshold_hu


def _preprocess(cfg: DataConfig, keys: tuple[str, ...]) -> list[Any]:
    """Deterministic part: load, RAS, resample, crop to the body, HU window, pad to the patch."""
    modes = tuple("nearest" if k == "label" else "bilinear" for k in keys)
    return [
        mt.LoadImaged(keys=keys, image_only=True),
        mt.EnsureChannelFirstd(keys=keys),
        mt.Orientationd(keys=keys, axcodes="RAS", labels=_RAS_LABELS),
        mt.Spacingd(keys=keys, pixdim=cfg.spacing, mode=modes),
        mt.CropForegroundd(keys=keys, source_key="image", select_fn=BodyMask(cfg.body_threshold_hu),
                           margin=cfg.foreground_margin, allow_smaller=True, start_coord_key=None,
                           end_coord_key=None),
        mt.ScaleIntensityRanged(keys="image", a_min=cfg.a_min, a_max=cfg.a_max, b_min=0.0, b_max=1.0, clip=True),
        mt.SpatialPadd(keys=keys, spatial_size=cfg.patch_size),
    ]


def _to_types(keys: tuple[str, ...]) -> list[Any]:
    out = [mt.EnsureTyped(keys=[k for k in ("image", COORD_KEY) if k in keys], dtype=torch.float32, track_meta=True)]
    if "label" in keys:
        out.append(mt.EnsureTyped(keys="label", dtype=torch.int64, track_meta=True))
    return out


class RandMirrorSidesd(mt.RandomizableTransform):
    """With probability ``prob``: mirror the volume left↔right and say so in its report.

    The image and label are flipped along axis 0 (R-L in the RAS grid) and the words "left" and
    "right" of ``description`` are exchanged (``reports.swap_sides``), so image, label and report
    still agree. Every report then comes in two versions that differ only in the side, each with the
    matching image: the side word is the one thing that tells them apart, which is what lets a
    text pathway learn to read it (``DataConfig.mirror_prob``; off by default). Real abdomens are not
    mirror images (liver, spleen): on real CT a mirrored case is a plausible kidney in an
    implausible body.
    """

    def __init__(self, keys: tuple[str, ...] = ("image", "label"), prob: float = 0.5) -> None:
        super().__init__(prob)
        self.flip = mt.Flipd(keys=keys, spatial_axis=0)

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        """``data`` with ``keys`` (C, X, Y, Z) flipped on X and its ``description`` side-swapped, or unchanged."""
        self.randomize(None)
        if not self._do_transform:
            return dict(data)
        out = dict(self.flip(data))
        if out.get("description"):
            out["description"] = swap_sides(out["description"])
        return out


def train_transforms(cfg: DataConfig, num_classes: int | None = None) -> mt.Compose:
    """Preprocessing + ``num_samples`` random patches per volume + augmentation.

    Args:
        cfg: data settings.
        num_classes: N (background included); with ``cfg.crop_centres == "classes"`` the crop centres
            are drawn per class in equal shares (``RandCropByLabelClassesd``), so a rare class such
            as a tumour is sampled as often as the organ; ``None`` falls back to foreground/background.

    Returns:
        A ``Compose`` mapping ``{"image": path, "label": path, ...}`` to a list of ``num_samples``
        dicts with ``image`` float32 ``(C, *patch_size)``, ``label`` int64 ``(1, *patch_size)`` and
        ``coords`` float32 ``(3, *patch_size)``: where each voxel lay in the whole volume
        (``positions.volume_coordinates``).
    """
    keys = ("image", "label", COORD_KEY)  # the coordinates are cropped and warped with the image
    if cfg.crop_centres == "classes" and num_classes:  # a tumour voxel is a centre as often as a kidney voxel
        crop = mt.RandCropByLabelClassesd(keys=keys, label_key="label", spatial_size=cfg.patch_size,
                                          num_classes=num_classes, num_samples=cfg.num_samples, warn=False)
    else:
        crop = mt.RandCropByPosNegLabeld(keys=keys, label_key="label", spatial_size=cfg.patch_size,
                                         pos=cfg.pos_fraction, neg=1.0 - cfg.pos_fraction,
                                         num_samples=cfg.num_samples, image_key="image", image_threshold=0.0)
    mirror = [RandMirrorSidesd(keys[:2], cfg.mirror_prob)] if cfg.augment and cfg.mirror_prob else []
    chain = _preprocess(cfg, keys[:2]) + mirror + [
        AddCoordinates(),  # (3, X, Y, Z) in [-1, 1] of the whole volume, before the crop (positions.py)
        crop,
    ]
    if cfg.augment:
        chain += [mt.RandFlipd(keys=keys, prob=cfg.flip_prob, spatial_axis=a) for a in cfg.flip_axes if cfg.flip_prob]
        if cfg.affine_prob:
            angle = math.radians(cfg.rotate_deg)
            chain.append(mt.RandAffined(keys=keys, prob=cfg.affine_prob, rotate_range=[angle] * 3,
                                        scale_range=[cfg.scale_range] * 3, mode=("bilinear", "nearest", "bilinear"),
                                        padding_mode="border", spatial_size=cfg.patch_size, cache_grid=True))
        if cfg.intensity_prob:
            chain.append(mt.RandShiftIntensityd(keys="image", offsets=cfg.intensity_shift, prob=cfg.intensity_prob))
    return mt.Compose(chain + _to_types(keys))


def val_transforms(cfg: DataConfig, with_label: bool = True) -> mt.Compose:
    """The deterministic preprocessing of whole volumes (for sliding-window validation/inference).

    Args:
        cfg: data settings.
        with_label: ``False`` for images without labels (``"test"`` section, ``tdseg predict``).

    Returns:
        A ``Compose`` giving ``image`` float32 ``(C, X, Y, Z)`` (RAS, ``cfg.spacing``) and
        ``label`` int64 ``(1, X, Y, Z)``; keep this instance to invert its output later.
    """
    keys = ("image", "label") if with_label else ("image",)
    return mt.Compose(_preprocess(cfg, keys) + _to_types(keys))


def make_inverter(transform: mt.Compose, keys: str | tuple[str, ...] = "pred", orig_key: str = "image",
                  nearest: bool = True) -> mt.Invertd:
    """``Invertd`` that maps ``keys`` back to the original grid, replaying ``orig_key``'s operations.

    Use the very ``transform`` instance that produced the data, on one un-batched item (apply
    ``monai.data.decollate_batch`` first). The prediction must be a ``MetaTensor`` (e.g.
    ``MetaTensor(pred, affine=image.affine)``): ``Invertd`` skips plain tensors with only a warning. A prediction ``(K, X, Y, Z)`` on the processed grid
    becomes ``(K, X0, Y0, Z0)`` with the original affine.

    Args:
        transform: the ``val_transforms`` instance used for the data.
        keys: keys holding predictions on the processed grid.
        orig_key: the key whose applied operations are replayed in reverse.
        nearest: nearest-neighbour resampling (class indices); ``False`` for probabilities.
    """
    return mt.Invertd(keys=keys, transform=transform, orig_keys=orig_key, nearest_interp=nearest)


def make_datasets(cfg: DataConfig, data_dir: str | os.PathLike[str], splits_path: str | os.PathLike[str] | None = None,
                  progress: bool = False) -> tuple[CacheDataset, CacheDataset]:
    """Train and validation ``CacheDataset`` s from the stored split (see ``ensure_splits``).

    The deterministic preprocessing of ``cfg.cache_rate`` of the volumes is cached in RAM;
    random crops and augmentation run afresh each epoch.
    """
    by_id = {e["case_id"]: e for e in load_datalist(data_dir)}
    splits = ensure_splits(data_dir, cfg.val_fraction, cfg.split_seed, path=splits_path)
    kwargs = {"cache_rate": cfg.cache_rate, "num_workers": cfg.num_workers, "progress": progress}
    train_ds = CacheDataset([by_id[c] for c in splits["train"]], train_transforms(cfg, len(load_labels(data_dir))),
                            **kwargs)
    val_ds = CacheDataset([by_id[c] for c in splits["val"]], val_transforms(cfg), **kwargs)
    return train_ds, val_ds


def make_loaders(cfg: DataConfig, train_ds: CacheDataset, val_ds: CacheDataset) -> tuple[DataLoader, DataLoader]:
    """Shuffled training loader (``batch_size`` volumes -> ``batch_size * num_samples`` patches,
    batch ``(B, C, X, Y, Z)``) and a validation loader of whole volumes, batch size 1.

    Memory is pinned when CUDA is available; workers come from ``cfg.num_workers``.
    """
    pin = torch.cuda.is_available()
    train = DataLoader(train_ds, batch_size=cfg.batch_size, shuffle=True, num_workers=cfg.num_workers,
                       pin_memory=pin, persistent_workers=cfg.num_workers > 0)
    val = DataLoader(val_ds, batch_size=1, shuffle=False, num_workers=cfg.num_workers, pin_memory=pin)
    return train, val


def default_dataset(cfg: DataConfig, data_dir: str | os.PathLike[str] = "",
                    artifacts: str | os.PathLike[str] | None = None) -> Path:
    """The dataset folder a notebook or run uses.

    Args:
        cfg: data settings (``phantom_task``, ``phantom_cases``, ``phantom_seed``).
        data_dir: a dataset folder; checked with ``validate_dataset(check_arrays=False)``
            (headers only; run ``tdseg validate`` for the full check).
        artifacts: artifacts root (default ``$TDSEG_ARTIFACTS`` or ``./artifacts``).

    Returns:
        ``data_dir`` when given, else ``ARTIFACTS/data/phantom_<task>`` (generated when absent).
    """
    if str(data_dir):
        root = Path(data_dir).expanduser().resolve()
        validate_dataset(root, check_arrays=False).raise_if_invalid()
        return root
    from tdseg_lite.phantom import PhantomConfig, ensure_phantom

    out = artifacts_dir("data", root=artifacts) / f"phantom_{cfg.phantom_task}"
    phantom_cfg = PhantomConfig(task=cfg.phantom_task, num_cases=cfg.phantom_cases, seed=cfg.phantom_seed)
    return Path(ensure_phantom(out, phantom_cfg))
