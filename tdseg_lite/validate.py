"""Check an MSD-layout dataset up front: a summary when it is sound, one line per problem when not.

``validate_dataset(path)`` uses nibabel only (no MONAI, so ``tdseg validate`` starts fast): shapes
and affines come from the headers, label values / NaN / corrupt data from the voxel arrays
(``check_arrays=False`` skips those). Each problem is one line ``<file>: <rule>, got <value>; <fix>``.

Errors: ``dataset.json`` missing, not JSON or not an object; schema (``"labels"`` a mapping
``{"0": "background", "1": name}`` with ``"0"``; ``"training"`` a non-empty list of ``{"image",
"label"}``; ``"test"`` a list); duplicate images, label files or case ids; missing or unreadable
(corrupt, truncated) files; images that are not 3D ``(X, Y, Z)`` -- 4D ``(X, Y, Z, C)`` only when
``"modality"`` declares ``C`` channels (MSD multi-modal MRI); label maps that are not 3D, differ in
shape, or whose affine differs from the image's beyond ``AFFINE_ATOL`` mm; singular affines;
non-integer or undeclared label values; NaN/inf in images; all-background training labels (almost
always a wrong pairing; ``allow_empty_labels`` / ``--allow-empty-labels`` makes them warnings).

Warnings: declared labels never present, a wrong ``numTraining``, unlisted files in ``imagesTr/``,
missing ``"test"`` files, CT images not in HU.

``tdseg validate --data DIR`` prints warnings and the summary and exits 0 when there is no error;
otherwise it prints every error as one line and exits 2, the status ``tdseg`` uses for all bad
input. Explained in ``notebooks/00_setup_and_data.ipynb``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from tdseg_lite.errors import UserInputError
from tdseg_lite.nifti_io import header_problem

__all__ = [
    "AFFINE_ATOL", "AFFINE_RTOL", "ValidationReport", "add_cli_arguments", "case_id_from_path", "cli_main",
    "parse_section", "read_dataset_json", "validate_dataset",
]

AFFINE_ATOL = 1e-3  # mm: image and label affines may differ by float rounding, not more
AFFINE_RTOL = 1e-4
_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")


@dataclass
class ValidationReport:
    """Result of ``validate_dataset``: ``ok`` when ``errors`` is empty.

    Attributes:
        root: the dataset folder.
        errors: one line each, ``<file>: <rule>, got <value>; <fix>``.
        warnings: one line each, same format; they do not make the dataset invalid.
        summary: cases, labels, shapes, spacings (mm), orientation codes, label voxel counts.
    """

    root: Path
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors

    def raise_if_invalid(self) -> None:
        """Raise ``UserInputError`` with the first error (and the count of the others)."""
        if self.errors:
            n = len(self.errors) - 1
            more = f" (+{n} more; run `tdseg validate --data {self.root}`)" if n else ""
            raise UserInputError(f"{self.root} is not a valid dataset: {self.errors[0]}{more}")

    def format_summary(self) -> str:
        """The summary as a few human-readable lines."""
        s = self.summary
        lines = [f"dataset {s.get('name', '?')} at {self.root}: {'OK' if self.ok else 'INVALID'}"]
        for key in ("num_training", "num_test", "modality", "labels", "shape_min", "shape_max",
                    "spacing_min_mm", "spacing_median_mm", "spacing_max_mm", "orientations",
                    "intensity_range", "label_voxels", "label_cases"):
            if key in s:
                lines.append(f"  {key:18s} {s[key]}")
        return "\n".join(lines)


def case_id_from_path(path: str | os.PathLike[str]) -> str:
    """``./imagesTr/case_003.nii.gz`` -> ``case_003``."""
    name = Path(path).name
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def read_dataset_json(root: str | os.PathLike[str]) -> dict[str, Any]:
    """Read ``root/dataset.json``; ``UserInputError`` (one line) if missing, not JSON or not an object."""
    root = Path(root)
    if not root.is_dir():
        raise UserInputError(f"{root}: dataset folder does not exist; pass the folder "
                             "that holds dataset.json, imagesTr/ and labelsTr/ (e.g. --data data/Task09_Spleen)")
    path = root / "dataset.json"
    if not path.is_file():
        raise UserInputError("dataset.json: file is missing in the dataset folder, got "
                             f"{sorted(p.name for p in root.iterdir())[:5]}; write it in the MSD layout "
                             "(convert real data with `tdseg prepare`, or make the phantom with `tdseg phantom`)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        where = f"line {err.lineno} column {err.colno}: {err.msg}" if hasattr(err, "lineno") else str(err)
        raise UserInputError(f"dataset.json: must be valid JSON, got an error at {where}; "
                             "fix the syntax (trailing commas and single quotes are not JSON)") from None
    if not isinstance(meta, dict):
        raise UserInputError(f"dataset.json: must hold a JSON object, got {type(meta).__name__}; "
                             'write {"labels": {...}, "training": [...]}')
    return meta


def _label_errors(meta: dict[str, Any]) -> list[str]:
    labels = meta.get("labels")
    fix = 'write "labels": {"0": "background", "1": "<organ>", ...}'
    if labels is None:
        return [f'dataset.json: required key "labels" is missing, got keys {sorted(meta)}; {fix}']
    if not isinstance(labels, dict) or not labels:
        return [f'dataset.json: "labels" must be a non-empty mapping of index to name, got {labels!r}; {fix}']
    bad = [k for k in labels if not (isinstance(k, str) and k.isdigit())]
    if bad:
        flipped = " (it looks inverted: map index to name, not name to index)" if all(
            str(v).isdigit() for v in labels.values()) else ""
        return [f'dataset.json: "labels" keys must be class indices "0", "1", ..., got {bad[0]!r}{flipped}; {fix}']
    if "0" not in labels:
        return [(f'dataset.json: "labels" must declare "0" (background), got keys {sorted(labels, key=int)}; '
                'add "0": "background"')]
    return []


def parse_section(root: Path, meta: dict[str, Any], section: str = "training",
                  ) -> tuple[list[dict[str, str]], list[str]]:
    """Entries of a ``dataset.json`` section with absolute paths, plus one-line schema errors.

    Returns:
        ``(entries, errors)``; each entry has ``image``, ``label`` (training only),
        ``description`` (``""`` when absent) and ``case_id``. Malformed entries are skipped.
    """
    items = meta.get(section)
    if items is None:
        return [], [(f'dataset.json: required key "{section}" is missing, got keys {sorted(meta)}; '
                    f'add "{section}": [{{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}}]')]
    if not isinstance(items, list) or (section == "training" and not items):
        kind = "a non-empty list of cases" if section == "training" else "a list of image paths"
        return [], [(f'dataset.json: "{section}" must be {kind}, got {json.dumps(items)[:60]}; write one '
                    '{"image": "./imagesTr/x.nii.gz", "label": ...} object per case (bare paths in "test")')]
    need = ("image", "label") if section == "training" else ("image",)
    entries, errors = [], []
    for i, item in enumerate(items):
        if isinstance(item, str) and section != "training":
            item = {"image": item}  # MSD "test" lists bare image paths
        missing = [k for k in need if not isinstance(item, dict) or not isinstance(item.get(k), str) or not item[k]]
        if missing:
            errors.append(f'dataset.json: {section}[{i}] must be an object with string "{missing[0]}", got '
                          f'{json.dumps(item)[:60]}; write {{"image": "./imagesTr/x.nii.gz", "label": ...}}')
            continue
        entry = {k: str((root / item[k]).resolve()) for k in need}
        entry["description"] = str(item.get("description") or "")
        entry["case_id"] = case_id_from_path(item["image"])
        entries.append(entry)
    return entries, errors


def _duplicate_errors(root: Path, entries: list[dict[str, str]]) -> list[str]:
    """The same image listed twice; distinct images sharing a label file or a case id."""
    errors = []
    unique = list({e["image"]: e for e in entries}.values())
    for key, items in (("image", entries), ("label", unique), ("case_id", unique)):
        for value, n in Counter(e[key] for e in items).items():
            if n > 1:
                shown = f"case id {value!r}" if key == "case_id" else _rel(root, value)
                errors.append(f'dataset.json: "training" must list each case once, got {shown} {n} times; '
                              "remove the duplicate entries (case ids come from the image file names)")
    return errors


def _rel(root: Path, path: str | os.PathLike[str]) -> str:
    try:
        return Path(path).relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


@dataclass
class _Case:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)


def _load_header(path: Path, rel: str, key: str, out: _Case) -> Any:
    if not path.is_file():
        out.errors.append(f"{rel}: {key} file listed in dataset.json does not exist; "
                          'fix the path in "training" or add the file')
        return None
    try:
        img = nib.load(path)
    except Exception as err:  # noqa: BLE001 - nibabel raises many types for corrupt/foreign files
        out.errors.append(f"{rel}: cannot be read as NIfTI, got {type(err).__name__}: {_one_line(err)}; "
                          "re-export the file as .nii.gz (e.g. with nibabel or SimpleITK)")
        return None
    try:  # the header's shape x dtype against the file and the voxel cap, before any voxel is read
        problem = header_problem(img, path)
    except UserInputError as err:  # a bad $TDSEG_MAX_VOXELS
        out.errors.append(str(err))
        return None
    if problem is not None:
        rule, got, fix = problem
        out.errors.append(f"{rel}: voxel data must be readable: the file {rule}, got {got}; {fix}")
        return None
    return img


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())[:120]


def _check_geometry(img: Any, lab: Any, rels: tuple[str, str], channels: int, out: _Case) -> None:
    """Dimensions, channels, shape and affine agreement of one image/label pair (headers only)."""
    img_rel, lab_rel = rels
    ishape, lshape = tuple(img.shape), tuple(lab.shape)
    if len(ishape) not in (3, 4):
        out.errors.append(f"{img_rel}: image must be 3D (X, Y, Z) or 4D (X, Y, Z, C), got shape {ishape}; "
                          "save one volume per case (channels last for multi-modal data)")
        return
    have = ishape[3] if len(ishape) == 4 else 1
    if have != channels:
        out.errors.append(f'{img_rel}: image has {have} channel(s) (shape {ishape}) but dataset.json "modality" '
                          f'declares {channels} (1 if absent); declare one "modality" entry per channel '
                          '(e.g. {"0": "CT"}) or save 3D single-channel images')
    if len(lshape) not in (3, 4) or (len(lshape) == 4 and lshape[3] != 1):
        out.errors.append(f"{lab_rel}: label map must be 3D (X, Y, Z), got shape {lshape}; "
                          "save one integer class map per case, not one channel per class")
        return
    if ishape[:3] != lshape[:3]:
        out.errors.append(f"{lab_rel}: label shape must equal the image shape {ishape[:3]} ({img_rel}), got "
                          f"{lshape[:3]}; pair the right files or resample the label onto the image grid (nearest)")
        return
    for rel, aff in ((img_rel, img.affine), (lab_rel, lab.affine)):
        if abs(np.linalg.det(aff[:3, :3])) < 1e-9 or not np.all(np.isfinite(aff)):
            out.errors.append(f"{rel}: affine must be invertible with finite entries, got {aff[:3].tolist()}; "
                              "fix the voxel sizes / direction in the header (pixdim, sform/qform)")
            return
    if not np.allclose(img.affine, lab.affine, rtol=AFFINE_RTOL, atol=AFFINE_ATOL):
        diff = float(np.abs(img.affine - lab.affine).max())
        codes = "".join(nib.aff2axcodes(img.affine)), "".join(nib.aff2axcodes(lab.affine))
        out.errors.append(f"{lab_rel}: label affine must match the image affine (tolerance {AFFINE_ATOL} mm), got a "
                          f"max difference of {diff:.3g} (orientation image {codes[0]}, label {codes[1]}); copy the "
                          "image affine into the label header if the voxels align, else resample the label")
    zooms = np.sqrt((img.affine[:3, :3] ** 2).sum(axis=0))
    out.stats.update(shape=ishape[:3], spacing=tuple(float(z) for z in zooms),
                     axcodes="".join(nib.aff2axcodes(img.affine)))


def _read_voxels(img: Any, rel: str, out: _Case, unscaled: bool) -> np.ndarray | None:
    """The voxel array (raw stored values when ``unscaled``), or ``None`` plus an error if corrupt."""
    try:
        proxy = img.dataobj
        return np.asanyarray(proxy.get_unscaled() if unscaled and hasattr(proxy, "get_unscaled") else proxy)
    except Exception as err:  # noqa: BLE001 - truncated gzip streams, short files, ...
        out.errors.append(f"{rel}: voxel data must be readable, got {type(err).__name__}: {_one_line(err)}; "
                          "the file is truncated or corrupt, re-download or re-export it")
        return None


def _check_arrays(img: Any, lab: Any, rels: tuple[str, str], ctx: dict[str, Any], out: _Case) -> None:
    """Voxel-level checks: corrupt data, NaN/inf, integer and declared label values, empty labels."""
    img_rel, lab_rel = rels
    raw = _read_voxels(img, img_rel, out, unscaled=True)
    lab_arr = _read_voxels(lab, lab_rel, out, unscaled=False)
    if raw is None or lab_arr is None:
        return
    lab_arr = lab_arr.reshape(lab.shape[:3])
    if raw.dtype.kind == "f":
        bad = raw.size - int(np.count_nonzero(np.isfinite(raw)))
        if bad:
            out.errors.append(f"{img_rel}: image must be finite, got {bad} NaN/inf voxels; replace them "
                              "(e.g. np.nan_to_num(x, nan=-1024.0)) or they turn every loss into NaN")
            raw = np.nan_to_num(raw)
    slope = float(getattr(img.dataobj, "slope", 1.0) or 1.0)
    inter = float(getattr(img.dataobj, "inter", 0.0) or 0.0)
    lo, hi = sorted((float(raw.min()) * slope + inter, float(raw.max()) * slope + inter))
    out.stats["intensity"] = (lo, hi)
    if ctx["is_ct"] and hi - lo < 50:
        out.warnings.append(f"{img_rel}: CT intensities should be in HU (about -1000..1000), got range "
                            f"[{lo:.3g}, {hi:.3g}]; save raw HU, the HU window would map this to a constant")
    if lab_arr.dtype.kind not in "iu":
        if not np.all(np.isfinite(lab_arr)) or not np.array_equal(np.rint(lab_arr), lab_arr):
            out.errors.append(f"{lab_rel}: label values must be integers, got non-integer values (dtype "
                              f"{lab_arr.dtype}); the label was probably resampled linearly, use nearest")
            return
        lab_arr = lab_arr.astype(np.int64)
    if lab_arr.min() >= 0 and lab_arr.max() < 2**16:  # bincount is ~10x faster than unique
        counts = np.bincount(lab_arr.ravel().astype(np.intp))
        values = np.flatnonzero(counts)
        counts = counts[values]
    else:
        values, counts = np.unique(lab_arr, return_counts=True)
    out.stats["counts"] = {int(v): int(c) for v, c in zip(values, counts)}
    undeclared = [int(v) for v in values if int(v) not in ctx["declared"]]
    if undeclared:
        vals = ", ".join(map(str, undeclared))
        declared = ",".join(map(str, sorted(ctx["declared"])))
        out.errors.append(f'{lab_rel}: label value{"s" if len(undeclared) > 1 else ""} {vals} '
                          f'{"are" if len(undeclared) > 1 else "is"} not declared in dataset.json "labels" '
                          f'(declared {declared}); fix the label map or add "{undeclared[0]}": "<name>" to "labels"')
    if values.tolist() == [0]:
        msg = (f"{lab_rel}: label map must contain foreground in a training case, got all voxels 0 (background); "
               "check the image/label pairing, or pass --allow-empty-labels if negative cases are intended")
        (out.warnings if ctx["allow_empty"] else out.errors).append(msg)


def _check_case(root: Path, entry: dict[str, str], ctx: dict[str, Any]) -> _Case:
    out = _Case()
    rels = (_rel(root, entry["image"]), _rel(root, entry["label"]))
    img = _load_header(Path(entry["image"]), rels[0], "image", out)
    lab = _load_header(Path(entry["label"]), rels[1], "label", out)
    if img is None or lab is None:
        return out
    _check_geometry(img, lab, rels, ctx["channels"], out)
    if not out.errors and ctx["check_arrays"]:
        _check_arrays(img, lab, rels, ctx, out)
    return out


def _dataset_warnings(root: Path, meta: dict[str, Any], entries: list[dict[str, str]],
                      summary: dict[str, Any]) -> list[str]:
    out = []
    n = meta.get("numTraining")
    if isinstance(n, int) and n != len(meta["training"]):
        out.append(f'dataset.json: "numTraining" should equal the number of "training" entries '
                   f"({len(meta['training'])}), got {n}; update it (tdseg_lite ignores it)")
    listed = {Path(e["image"]).name for e in entries}
    folder = root / "imagesTr"
    for p in sorted(folder.iterdir()) if folder.is_dir() else []:
        if p.name.endswith(_SUFFIXES) and not p.name.startswith("._") and p.name not in listed:
            out.append(f'imagesTr/{p.name}: file is not listed in dataset.json "training", got an unused image; '
                       "add an entry for it or remove it")
    for e in parse_section(root, meta, "test")[0] if "test" in meta else []:
        if not Path(e["image"]).is_file():
            out.append(f'{_rel(root, e["image"])}: listed in "test" but missing, got no file; '
                       'remove it from "test" or add the file')
    for k, name in meta["labels"].items() if "label_cases" in summary else []:
        if k != "0" and k not in summary["label_cases"]:
            out.append(f'dataset.json: label "{k}": "{name}" should occur in some training case, got 0 voxels '
                       'in every case; drop it from "labels" or check the label maps')
    return out


def _summarize(meta: dict[str, Any], cases: list[_Case], n_test: int) -> dict[str, Any]:
    stats = [c.stats for c in cases if "shape" in c.stats]
    summary: dict[str, Any] = {"name": meta.get("name", "?"), "num_training": len(cases), "num_test": n_test,
                               "modality": meta.get("modality", {}), "labels": meta.get("labels", {})}
    if stats:
        shapes, spacings = np.array([s["shape"] for s in stats]), np.array([s["spacing"] for s in stats])
        summary.update(shape_min=shapes.min(0).tolist(), shape_max=shapes.max(0).tolist(),
                       spacing_min_mm=np.round(spacings.min(0), 3).tolist(),
                       spacing_median_mm=np.round(np.median(spacings, 0), 3).tolist(),
                       spacing_max_mm=np.round(spacings.max(0), 3).tolist(),
                       orientations=dict(Counter(s["axcodes"] for s in stats)))
    counted = [s for s in stats if "counts" in s]
    if counted:
        lo = min(s["intensity"][0] for s in counted)
        summary["intensity_range"] = [lo, max(s["intensity"][1] for s in counted)]
        voxels: Counter[int] = Counter()
        present: Counter[int] = Counter()
        for s in counted:
            voxels.update(s["counts"])
            present.update(k for k, v in s["counts"].items() if v)
        summary["label_voxels"] = {str(k): voxels[k] for k in sorted(voxels)}
        summary["label_cases"] = {str(k): present[k] for k in sorted(present)}
    return summary


def validate_dataset(path: str | os.PathLike[str], check_arrays: bool = True,
                     allow_empty_labels: bool = False, workers: int | None = None) -> ValidationReport:
    """Check an MSD-layout dataset and summarise it (see the module docstring for every rule).

    Args:
        path: the dataset folder (holds ``dataset.json``).
        check_arrays: also read the voxel arrays (label values, NaN/inf, corrupt data, counts);
            ``False`` reads headers only (shapes, affines, orientation) and is much faster.
        allow_empty_labels: report all-background training labels as warnings, not errors.
        workers: threads reading files in parallel (default: up to 4).

    Returns:
        A ``ValidationReport``; it never raises for a broken dataset.
    """
    root = Path(path).expanduser()
    report = ValidationReport(root=root)
    try:
        meta = read_dataset_json(root)
    except UserInputError as err:
        report.errors.append(str(err))
        return report
    report.errors += _label_errors(meta)
    entries, errors = parse_section(root, meta, "training")
    report.errors += errors + (parse_section(root, meta, "test")[1] if "test" in meta else [])
    if report.errors:
        return report
    report.errors += _duplicate_errors(root, entries)
    modality = meta.get("modality")
    modality = modality if isinstance(modality, dict) and modality else {"0": "?"}
    ctx = {"declared": {int(k) for k in meta["labels"]}, "check_arrays": check_arrays, "channels": len(modality),
           "allow_empty": allow_empty_labels, "is_ct": list(modality.values()) == ["CT"]}
    unique = list({e["image"]: e for e in entries}.values())
    with ThreadPoolExecutor(max_workers=workers or min(4, os.cpu_count() or 1)) as pool:
        cases = list(pool.map(lambda e: _check_case(root, e, ctx), unique))
    for case in cases:
        report.errors += case.errors
        report.warnings += case.warnings
    n_test = len(meta["test"]) if isinstance(meta.get("test"), list) else 0
    report.summary = _summarize(meta, cases, n_test)
    report.warnings += _dataset_warnings(root, meta, entries, report.summary)
    return report


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``tdseg validate``."""
    parser.add_argument("--data", required=True, help="dataset folder holding dataset.json, imagesTr/, labelsTr/")
    parser.add_argument("--quick", action="store_true",
                        help="headers only: skip label values, NaN and corrupt-data checks")
    parser.add_argument("--allow-empty-labels", action="store_true",
                        help="report all-background training labels as warnings instead of errors")


def cli_main(args: argparse.Namespace) -> int:
    """Run ``tdseg validate``: summary and exit 0 when valid, else one line per error and exit 2."""
    report = validate_dataset(args.data, check_arrays=not args.quick, allow_empty_labels=args.allow_empty_labels)
    for line in report.warnings:
        print(f"tdseg validate: warning: {line}", file=sys.stderr)
    if report.ok:
        print(report.format_summary())
        return 0
    for line in report.errors:
        print(f"tdseg validate: error: {line}", file=sys.stderr)
    print(f"tdseg validate: {len(report.errors)} error(s) in {report.root}; fix them and run again",
          file=sys.stderr)
    return 2
