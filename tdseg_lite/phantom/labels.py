"""``tdseg phantom --labels-from DIR``: real kidney label maps painted with the phantom's synthetic HU.

Input: a folder of label NIfTIs in the KiTS19 convention (0 background, 1 kidney, 2 tumour), in
one of three layouts, tried in this order:

* KiTS19: ``case_XXXXX/segmentation.nii.gz`` (also under ``data/``); a ``kits.json`` next to the
  cases supplies the pathology's ``tumor_necrosis``, which decides whether a necrotic core is painted;
* MSD: ``labelsTr/*.nii.gz`` (the dataset folder or ``labelsTr`` itself);
* flat: ``*.nii.gz`` / ``*.nii``.

Every map is checked before anything is written (readable, 3D, finite, invertible affine, values
in {0, 1, 2}, at least one kidney voxel); a bad one stops the run with one line naming the file.
Each case is painted by ``labels_paint.synthesise`` on the map's own grid and written in
MSD layout: the label copied unchanged (uint8), the image int16 HU, both with the map's affine.
With ``spacing`` (``--spacing X Y Z``, mm along R, A, S) each map is first reoriented to RAS and
resampled to that voxel size by nearest neighbour (``datasets.volumes.resample``, as ``tdseg
prepare --spacing`` does), and painted and written on that grid: at the ``cpu`` preset's 3 mm a
KiTS19 map shrinks about 100-fold, so building and every later run's loading take seconds
instead of minutes; the reports are then measured on the resampled masks.
The descriptions are *oracle reports derived from the masks* (``findings``), and
``dataset.json`` says so. Case ``name`` depends only on the seed and its name (``SeedSequence([seed,
crc32(name)])``), not on the other files or ``--max-cases``.
"""

from __future__ import annotations

import json
import sys
import time
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tdseg_lite.errors import UserInputError
from tdseg_lite.phantom.scan import LABEL_SETS, nifti_gz, remove_stale
from tdseg_lite.utils import atomic_write_bytes, atomic_write_text

__all__ = ["LabelSource", "build_from_labels", "check_spacing", "cli_labels", "find_label_files", "read_label_map",
           "to_grid"]

LABELS_VERSION = "1"
BLOCK = "tdseg_phantom_labels"
_MARKER = ".tdseg_phantom_labels_in_progress.json"
_ARG = "--labels-from"
LICENCES = {"kits19": "label maps: KiTS19 (https://github.com/neheller/kits19), CC BY-NC-SA 4.0, non-commercial, "
                      "share-alike; images: synthetic, painted around them. Do not redistribute.",
            "msd": "label maps: as their source dataset's licence; images: synthetic, painted around them.",
            "flat": "label maps: as their source's licence; images: synthetic, painted around them."}


@dataclass(frozen=True)
class LabelSource:
    """One input label map: its file, the output case name, and the pathology's necrosis if known."""

    path: Path
    name: str
    necrosis: bool | None = None


def _nifti_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                  and p.name.endswith((".nii.gz", ".nii")))


def _stem(path: Path) -> str:
    return path.name[: -len(".nii.gz")] if path.name.endswith(".nii.gz") else path.stem


def _kits_necrosis(folder: Path) -> dict[str, bool]:
    try:
        rows = json.loads((folder / "kits.json").read_text())
        return {r["case_id"]: r["tumor_necrosis"] for r in rows if isinstance(r.get("tumor_necrosis"), bool)}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return {}


def find_label_files(src: str | Path, arg: str = _ARG) -> tuple[list[LabelSource], str]:
    """The label maps under ``src`` and its layout ("kits19", "msd" or "flat"; module docstring).

    Raises:
        UserInputError: ``src`` is not an existing folder, or holds no label NIfTI.
    """
    root = Path(src)
    if not root.is_dir():
        what = "a file" if root.exists() else "nothing there"
        raise UserInputError(f"`{arg}` must be an existing folder of label NIfTIs, got {str(root)!r} ({what}). "
                             "Pass the folder that holds them, e.g. kits19/data.")
    for folder in (root, root / "data"):
        cases = sorted(folder.glob("case_*/segmentation.nii.gz")) if folder.is_dir() else []
        if cases:
            necrosis = _kits_necrosis(folder)
            return [LabelSource(p, p.parent.name, necrosis.get(p.parent.name)) for p in cases], "kits19"
    for folder in (root / "labelsTr", root):
        if folder.name == "labelsTr" and folder.is_dir() and _nifti_files(folder):
            return [LabelSource(p, _stem(p)) for p in _nifti_files(folder)], "msd"
    files = _nifti_files(root)
    if not files:
        raise UserInputError(
            f"`{arg}` must hold label NIfTIs (case_XXXXX/segmentation.nii.gz, labelsTr/*.nii.gz or *.nii.gz), got "
            f"{str(root)!r} with none. Pass the folder of the label maps (for KiTS19: the repository's data/).")
    return [LabelSource(p, _stem(p)) for p in files], "flat"


def read_label_map(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 label map, affine) of one file, checked; the values are kept, only the dtype changes.

    Raises:
        UserInputError: unreadable, not 3D, singular or non-finite affine, non-finite or non-integer
            values, values outside {0, 1, 2}, or no kidney voxel.
    """
    import nibabel as nib

    name = str(path)
    try:
        img = nib.load(path)
        arr = np.asanyarray(img.dataobj)
    except Exception as err:  # noqa: BLE001 -- nibabel and gzip raise many types for a bad file
        detail = " ".join(str(err).split())[:120] or type(err).__name__
        raise UserInputError(f"`{name}` must be a readable NIfTI label map, got an error: {detail}. "
                             "Replace the file (re-download it) or remove it from the folder.") from None
    affine = np.asarray(img.affine, float)
    if arr.ndim != 3:
        raise UserInputError(f"`{name}` must be a 3D label map, got shape {tuple(arr.shape)}. Save it as one "
                             "(X, Y, Z) volume (e.g. squeeze a trailing channel) or remove it.")
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise UserInputError(f"`{name}` must have an invertible affine (voxel -> mm), got {affine[:3, :3].tolist()}. "
                             "Fix the header's sform/qform or remove the file.")
    if arr.dtype.kind in "iub":
        bad = arr[(arr < 0) | (arr > 2)] if arr.dtype.kind != "b" and (arr.min() < 0 or arr.max() > 2) else arr[:0]
    else:
        bad = arr[~np.isin(arr, (0, 1, 2))]
    if bad.size:
        values = np.unique(bad)
        shown = ", ".join(f"{v:g}" for v in values[:5].astype(float)) + (", ..." if len(values) > 5 else "")
        raise UserInputError(f"`{name}` must hold only the values 0 (background), 1 (kidney), 2 (tumour) (KiTS19), "
                             f"got also {shown} in {bad.size} voxels. Map other labels to these first, or remove it.")
    label = arr.astype(np.uint8)
    if not (label > 0).any():
        raise UserInputError(f"`{name}` must contain kidney voxels (label 1 or 2), got only background. "
                             "Remove the file or pass the right one.")
    return label, affine


def _check_target(out: Path, src: Path) -> bool:
    """Refuse a file, a folder around or inside the source, or a foreign non-empty folder; True when ``out``
    holds an earlier (or interrupted) ``--labels-from`` dataset that will be replaced."""
    if out.exists() and not out.is_dir():
        raise UserInputError(f"`--out` must be a folder, got the file {str(out)!r}. Pass a new folder path.")
    a, b = out.resolve(), src.resolve()
    if a == b or a in b.parents or b in a.parents:
        raise UserInputError(f"`--out` must lie outside `{_ARG}`, got {str(out)!r} for the labels in {str(src)!r}. "
                             "Pass a separate folder, e.g. data/kits_phantom.")
    try:
        ours = BLOCK in json.loads((out / "dataset.json").read_text())
    except (OSError, ValueError, TypeError):
        ours = False
    ours = ours or (out / _MARKER).exists()
    if out.is_dir() and not ours and any(out.iterdir()):
        raise UserInputError(
            f"`--out` must be a new or empty folder or an earlier `tdseg phantom {_ARG}` dataset, got {str(out)!r}, "
            f"which holds other files (no dataset.json with a '{BLOCK}' block). Pass another folder, or empty this one.")
    return ours and out.is_dir() and any(out.iterdir())


def to_grid(label: np.ndarray, affine: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """A label map (X, Y, Z) reoriented to RAS and resampled to ``spacing`` mm (R, A, S) by nearest
    neighbour over the same field of view; returns ``(label, affine)`` on the new grid."""
    from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation

    from tdseg_lite.datasets.volumes import resample

    ornt = io_orientation(affine)
    ras_affine = affine @ inv_ornt_aff(ornt, label.shape)
    ras = np.ascontiguousarray(apply_orientation(label, ornt)).astype(np.uint8)
    return resample(ras, ras_affine, spacing, label=True)


def _write_case(out: Path, source: LabelSource, seed: int, noise_hu: float, blur_mm: float,
                spacing: Sequence[float] | None = None) -> dict[str, Any]:
    """Paint and write one case (on the ``spacing`` grid when given); return its dataset.json entry."""
    from tdseg_lite.phantom.labels_paint import synthesise

    label, affine = read_label_map(source.path)
    native = {}
    if spacing is not None:
        native = {"source_shape": list(label.shape),
                  "source_spacing_mm": [round(float(z), 4) for z in np.linalg.norm(affine[:3, :3], axis=0)]}
        label, affine = to_grid(label, affine, spacing)
    rngs = tuple(np.random.default_rng(s) for s in
                 np.random.SeedSequence([seed, zlib.crc32(source.name.encode())]).spawn(3))
    case = synthesise(label, affine, rngs, noise_hu=noise_hu, blur_mm=blur_mm, necrosis=source.necrosis)
    image = np.round(case.image).astype(np.int16)
    del case.image
    atomic_write_bytes(out / "imagesTr" / f"{source.name}.nii.gz", nifti_gz(image, affine))
    del image
    atomic_write_bytes(out / "labelsTr" / f"{source.name}.nii.gz", nifti_gz(label, affine))
    zooms = np.linalg.norm(affine[:3, :3], axis=0)
    return {"image": f"./imagesTr/{source.name}.nii.gz", "label": f"./labelsTr/{source.name}.nii.gz",
            "description": case.description, "findings": case.findings, "source": source.path.name
            if source.path.name != "segmentation.nii.gz" else f"{source.name}/segmentation.nii.gz",
            "shape": list(label.shape), "spacing_mm": [round(float(z), 4) for z in zooms], **native,
            "pathology_necrosis": source.necrosis, **case.facts}


def _cases(out: Path, sources: list[LabelSource], seed: int, workers: int, noise_hu: float,
           blur_mm: float, spacing: Sequence[float] | None) -> Iterable[dict[str, Any]]:
    if workers <= 1 or len(sources) < 2:
        yield from (_write_case(out, s, seed, noise_hu, blur_mm, spacing) for s in sources)
        return
    import multiprocessing
    import warnings
    from concurrent.futures import ProcessPoolExecutor

    ctx = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    n = len(sources)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*fork.*", category=DeprecationWarning)
        with ProcessPoolExecutor(min(workers, n), mp_context=ctx) as pool:
            yield from pool.map(_write_case, [out] * n, sources, [seed] * n, [noise_hu] * n, [blur_mm] * n,
                                [spacing] * n)


def check_spacing(spacing: Sequence[Any] | None) -> list[float] | None:
    """``--spacing``: ``None`` or three voxel sizes in mm within ``SPACING_RANGE`` -> floats.

    Raises:
        UserInputError: not three numbers, or one outside the range.
    """
    if spacing is None:
        return None
    from tdseg_lite.datasets.volumes import SPACING_RANGE

    lo, hi = SPACING_RANGE
    shown = " ".join(map(str, spacing)) if isinstance(spacing, (list, tuple)) else repr(spacing)
    try:
        values = [float(v) for v in spacing]
    except (TypeError, ValueError):
        values = []
    if len(values) != 3 or not all(lo <= v <= hi for v in values):
        raise UserInputError(f"`--spacing` must be 3 voxel sizes in mm between {lo:g} and {hi:g} (R, A, S), got "
                             f"{shown}. Pass e.g. --spacing 3 3 3 (the cpu preset's grid), or leave it out.")
    return values


def build_from_labels(src: str | Path, out_dir: str | Path, *, seed: int = 0, max_cases: int | None = None,
                      workers: int = 1, progress: bool = False, noise_hu: float = 12.0,
                      blur_mm: float = 1.2, spacing: Sequence[float] | None = None) -> Path:
    """Write the dataset of the label maps under ``src`` into ``out_dir`` (MSD layout); return its path.

    Every selected map is read and checked first; dataset.json is written last (an interrupted run
    leaves none, and the same command resumes into the folder). Files of an earlier run that are not
    part of this one are deleted.

    Args:
        src: folder of label maps (module docstring).
        out_dir: a new or empty folder, or an earlier dataset of this builder (replaced).
        seed: random seed; max_cases: the first N maps in name order (None: all).
        workers: processes; progress: print one line per case.
        noise_hu, blur_mm: as ``PhantomConfig``.
        spacing: (R, A, S) voxel size in mm to resample every map to (``to_grid``); ``None`` keeps each
            map's own grid and orientation.

    Raises:
        UserInputError: bad ``src``, ``out_dir``, ``max_cases``, ``seed``, ``workers``, ``spacing`` or label file.
    """
    for name, value, lo in (("--seed", seed, 0), ("--max-cases", max_cases, 1), ("--workers", workers, 1)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < lo):
            raise UserInputError(f"`{name}` must be an integer >= {lo}, got {value!r}. Pass e.g. {name} {max(lo, 1)}.")
    spacing = check_spacing(spacing)
    src, out = Path(src), Path(out_dir)
    sources, layout = find_label_files(src)
    sources = sources[:max_cases] if max_cases else sources
    _check_target(out, src)
    for s in sources:
        read_label_map(s.path)
    for sub in ("imagesTr", "labelsTr"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    block = {"source": str(src.resolve()), "layout": layout, "seed": seed, "num_cases": len(sources),
             "options": {"noise_hu": noise_hu, "blur_mm": blur_mm, "spacing": spacing}, "version": LABELS_VERSION}
    atomic_write_text(out / _MARKER, json.dumps(block) + "\n")
    (out / "dataset.json").unlink(missing_ok=True)
    entries = []
    for i, entry in enumerate(_cases(out, sources, seed, workers, noise_hu, blur_mm, spacing)):
        entries.append(entry)
        if progress:
            shape = "x".join(map(str, entry["shape"]))
            print(f"  [{i + 1}/{len(sources)}] {Path(entry['image']).name} ({shape}): {entry['description']}", flush=True)
    remove_stale(out, {Path(e["image"]).name for e in entries}, "*.nii.gz")
    meta = {
        "name": f"tdseg_lite phantom from real kidney label maps ({src.name})",
        "description": "Synthetic CT painted by tdseg_lite around real kidney label maps ("
                       + ("labels copied unchanged, affine and spacing kept" if spacing is None else
                          f"labels reoriented to RAS and resampled to {spacing} mm by nearest neighbour")
                       + "). The per-case descriptions are ORACLE REPORTS derived from the "
                       "label masks (tumour size as equivalent-sphere diameter, side from the affine in RAS world "
                       "coordinates, pole from the kidney's cranio-caudal extent, exophytic) and from the painted "
                       "necrosis; they are not radiology reports.",
        "descriptions": "oracle reports derived from the masks",
        "reference": "tdseg_lite.phantom.labels", "licence": LICENCES[layout], "tensorImageSize": "3D",
        "modality": {"0": "CT"}, "labels": {str(k): v for k, v in LABEL_SETS["kidney"].items()},
        "numTraining": len(entries), "numTest": 0, "training": entries, "test": [], BLOCK: block,
    }
    atomic_write_text(out / "dataset.json", json.dumps(meta, indent=2) + "\n")
    (out / _MARKER).unlink(missing_ok=True)
    return out


def cli_labels(args: Any, number: Any) -> int:
    """``tdseg phantom --labels-from DIR``: options that do not apply are refused; one summary line."""
    given = {"--cases": args.cases, "--tumour-fraction": args.tumour_fraction, "--orientation": args.orientation,
             "--decoy-fraction": getattr(args, "decoy_fraction", None)}
    for flag, value in given.items():
        if value is not None:
            why = {"--cases": "use --max-cases N to take the first N label maps",
                   "--tumour-fraction": "the tumours come from the label maps",
                   "--orientation": "each case keeps its label map's orientation (RAS with --spacing)",
                   "--decoy-fraction": "decoys are drawn only in the generated phantom's kidneys"}[flag]
            raise UserInputError(f"`{flag}` does not apply with `{_ARG}`, got {value!r}. Leave it out: {why}.")
    if args.anisotropic:
        raise UserInputError(f"`--anisotropic` does not apply with `{_ARG}`, got it. Leave it out: each case keeps "
                             "its label map's spacing (or takes --spacing X Y Z).")
    if args.task not in (None, "kidney"):
        raise UserInputError(f"`--task` must be kidney with `{_ARG}` (KiTS19 labels), got {args.task!r}. Leave it out.")
    seed = number("--seed", "0" if args.seed is None else args.seed, int, "0")
    max_cases = number("--max-cases", args.max_cases, int, "10")
    workers = number("--workers", args.workers, int, "2")
    spacing = check_spacing(getattr(args, "spacing", None))
    src, out = Path(args.labels_from), Path(args.out)
    layout = find_label_files(src)[1]
    if _check_target(out, src):
        print(f"tdseg phantom: replacing the earlier {_ARG} dataset in {out}", flush=True)
    start = time.perf_counter()
    build_from_labels(src, out, seed=seed, max_cases=max_cases, workers=workers, progress=True, spacing=spacing)
    meta = json.loads((out / "dataset.json").read_text())
    tumours = sum(f["kind"] == "tumour" for e in meta["training"] for f in e["findings"])
    with_tumour = sum(any(f["kind"] == "tumour" for f in e["findings"]) for e in meta["training"])
    grid = "" if spacing is None else f" at {' x '.join(f'{v:g}' for v in spacing)} mm (RAS)"
    print(f"tdseg phantom: {meta['numTraining']} cases from the {layout} label maps in {src} ({with_tumour} with a "
          f"reported tumour, {tumours} tumours) -> {out}{grid} in {time.perf_counter() - start:.1f} s")
    return 0
