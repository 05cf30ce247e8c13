"""Synthetic abdominal CT phantom in the Medical Segmentation Decathlon layout; ``tdseg phantom``.

Every case is a procedural abdomen (``organs``): body wall, bowel, spine and ribs, aorta
and IVC, liver, gallbladder, stomach, spleen, pancreas and kidneys with random sizes, positions
and smooth deformations, in realistic Hounsfield units (``HU_RANGES``). Tumours
(``findings``) go into a configurable fraction of kidneys / pancreases; each case gets
a description and structured ``findings`` measured on the generated volume. The intensity
image is blurred (partial volume) and gets correlated Gaussian noise. Three label sets mimic
real datasets (``LABEL_SETS``): KiTS19 (kidney), MSD Task07 (pancreas) and a BTCV subset.

Orientation: arrays are written with a proper NIfTI affine into RAS+ world millimetres
(``+x`` = patient **Right**, ``+y`` Anterior, ``+z`` Superior). ``orientation`` names the
direction each array axis grows toward (nibabel ``aff2axcodes`` letters): ``"RAS"`` (default),
``"LPS"`` (DICOM-like) or ``"IPL"`` (KiTS19-like). Anatomy stays correct in world space.

Determinism: case ``i`` is drawn from ``SeedSequence([seed, i])`` only, so the same seed gives
byte-identical files and a case does not depend on ``num_cases``, ``workers`` or the task's
tumour draw (anatomy, tumours, noise and decoys use separate streams).

Decoys (``decoy_fraction``, kidney task, default 0): a tumour-free kidney may get a lesion that
looks like a tumour but is labelled kidney and is not in the report -- a case where only the
report can say which kidney holds the tumour (``findings.add_decoys``). With the default 0 the
cases are the same as without the option.

``tdseg phantom --labels-from DIR`` paints real kidney label maps instead (``labels``).

Explained in ``notebooks/00_setup_and_data.ipynb``.
"""

from __future__ import annotations

import json
import numbers
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from tdseg_lite.config import ConfigError, config_to_dict
from tdseg_lite.errors import UserInputError
from tdseg_lite.phantom.anatomy import HU_RANGES, TISSUES
from tdseg_lite.phantom.scan import AXIS, LABEL_SETS, hu_statistics, nifti_gz, remove_stale
from tdseg_lite.utils import atomic_write_bytes, atomic_write_text

__all__ = [
    "HU_RANGES", "LABEL_SETS", "TISSUES", "PhantomCase", "PhantomConfig", "add_cli_arguments",
    "cli_main", "ensure_phantom", "generate_case", "generate_phantom", "hu_statistics",
]

PHANTOM_VERSION = "1"
TASKS: tuple[str, ...] = ("kidney", "pancreas", "multiorgan")
DEFAULT_TUMOUR_FRACTION: dict[str, float] = {"kidney": 0.5, "pancreas": 0.5, "multiorgan": 0.0}
_MARKER = ".tdseg_phantom_in_progress.json"
_FLAGS = {"task": "--task", "num_cases": "--cases", "seed": "--seed", "tumour_fraction": "--tumour-fraction",
          "decoy_fraction": "--decoy-fraction", "orientation": "--orientation"}


def _bad(name: str, rule: str, value: Any, fix: str) -> ConfigError:
    flag = f" ({_FLAGS[name]})" if name in _FLAGS else ""
    return ConfigError(f"`PhantomConfig.{name}`{flag} {rule}, got {value!r}. {fix}")


def _check_orientation(code: Any) -> None:
    ok = isinstance(code, str) and len(code) == 3 and all(c in AXIS for c in code)
    if not ok or len({AXIS[c][0] for c in code}) != 3:
        raise _bad("orientation", "must be 3 letters, one of R/L, one of A/P and one of S/I", code,
                   "Use e.g. 'RAS' (default), 'LPS' or 'IPL'.")


def _as_tuple(value: Any, integral: bool) -> Any:
    """Lists (from JSON) and numpy numbers -> a tuple of int/float; anything else is left to the checks."""
    if not isinstance(value, (list, tuple, np.ndarray)):
        return value
    kind = numbers.Integral if integral else numbers.Real
    if all(isinstance(x, kind) and not isinstance(x, bool) for x in value):
        return tuple(int(x) if integral else float(x) for x in value)
    return tuple(value)


@dataclass(frozen=True)
class PhantomConfig:
    """What to generate. ``shape``/``spacing`` follow the anatomical axes (R-L, A-P, I-S)."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": {"num_cases": 12, "shape": (64, 64, 43), "spacing": (4.5, 4.5, 4.5)},
        "cpu": {},
        "full": {"num_cases": 100},
    }
    task: str = "kidney"                                   # "kidney" | "pancreas" | "multiorgan"
    num_cases: int = 40                                    # cases written to imagesTr/labelsTr
    seed: int = 0                                          # case i uses SeedSequence([seed, i])
    shape: tuple[int, int, int] = (96, 96, 64)             # voxels along R-L, A-P, I-S
    spacing: tuple[float, float, float] = (3.0, 3.0, 3.0)  # mm along R-L, A-P, I-S
    tumour_fraction: float | None = None                   # P(tumour) per organ; None -> task default
    decoy_fraction: float = 0.0                            # P(tumour-like decoy, labelled kidney) per tumour-free kidney
    noise_hu: float = 12.0                                 # mean noise SD (HU), +-15 % per case
    blur_mm: float = 1.2                                   # partial-volume Gaussian SD (mm)
    anisotropic: bool = False                              # per case: finer in-plane, 1.4-2x thicker slices
    orientation: str = "RAS"                               # array axis directions (aff2axcodes letters)

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", _as_tuple(self.shape, integral=True))
        object.__setattr__(self, "spacing", _as_tuple(self.spacing, integral=False))
        if self.task not in TASKS:
            raise _bad("task", f"must be one of {', '.join(TASKS)}", self.task, "Use e.g. --task kidney.")
        for name, lo, hi in (("num_cases", 1, 100_000), ("seed", 0, 2**63 - 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                example = {"num_cases": "--cases 40", "seed": "--seed 0"}[name]
                raise _bad(name, f"must be an integer in [{lo}, {hi}]", v, f"Pass e.g. {example}.")
        if len(self.shape) != 3 or not all(isinstance(n, int) and 16 <= n <= 512 for n in self.shape):
            raise _bad("shape", "must be 3 integers in [16, 512]", self.shape, "Use e.g. shape=(96, 96, 64).")
        if len(self.spacing) != 3 or not all(isinstance(s, (int, float)) and 0.3 <= s <= 10 for s in self.spacing):
            raise _bad("spacing", "must be 3 numbers in [0.3, 10] mm", self.spacing, "Use e.g. spacing=(3.0, 3.0, 3.0).")
        fov = [n * s for n, s in zip(self.shape, self.spacing)]
        if fov[0] < 240 or fov[1] < 240 or fov[2] < 120:
            raise _bad("shape", "times spacing must give a field of view of at least 240 x 240 x 120 mm",
                       f"{self.shape} x {self.spacing} mm = {fov[0]:.0f} x {fov[1]:.0f} x {fov[2]:.0f} mm",
                       "Increase shape or spacing, e.g. shape=(96, 96, 64) at 3 mm.")
        tf = self.tumour_fraction
        if tf is not None and (isinstance(tf, bool) or not isinstance(tf, (int, float)) or not 0 <= tf <= 1):
            raise _bad("tumour_fraction", "must be a number in [0, 1] (or None for the task default)", tf,
                       "Pass e.g. --tumour-fraction 0.5.")
        df = self.decoy_fraction
        if isinstance(df, bool) or not isinstance(df, (int, float)) or not 0 <= df <= 1:
            raise _bad("decoy_fraction", "must be a number in [0, 1]", df, "Pass e.g. --decoy-fraction 0.5, or 0.")
        if df and self.task != "kidney":
            raise _bad("decoy_fraction", f"applies only to task='kidney' (this is task={self.task!r})", df,
                       "Use --decoy-fraction 0 (the default) for this task.")
        for name, hi in (("noise_hu", 100.0), ("blur_mm", 10.0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= hi:
                raise _bad(name, f"must be a number in [0, {hi:g}]", v, "Use the default or a value in range.")
        if not isinstance(self.anisotropic, bool):
            raise _bad("anisotropic", "must be True or False", self.anisotropic, "Pass --anisotropic or leave it out.")
        _check_orientation(self.orientation)

    @property
    def fraction(self) -> float:
        """The tumour fraction in effect (``tumour_fraction`` or the task default)."""
        return float(DEFAULT_TUMOUR_FRACTION[self.task] if self.tumour_fraction is None else self.tumour_fraction)

    def block(self) -> dict[str, Any]:
        """The ``"tdseg_phantom"`` block of dataset.json that identifies this configuration."""
        options = {k: v for k, v in config_to_dict(self).items() if k not in ("task", "seed", "num_cases")}
        options["tumour_fraction"] = self.fraction
        if not self.decoy_fraction:  # datasets written before decoys existed keep their identity
            options.pop("decoy_fraction")
        return {"task": self.task, "seed": self.seed, "num_cases": self.num_cases, "options": options,
                "version": PHANTOM_VERSION}


@dataclass(frozen=True)
class PhantomCase:
    """One generated case; arrays are (I, J, K) in ``orientation`` order, matching ``affine``."""

    name: str
    task: str
    image: np.ndarray        # float32 HU
    label: np.ndarray        # uint8, ids of LABEL_SETS[task]
    tissue: np.ndarray       # uint8, ids of TISSUES (for realism statistics)
    affine: np.ndarray       # (4, 4) voxel index -> RAS+ mm
    description: str
    findings: list[dict[str, Any]]


def generate_case(cfg: PhantomConfig, index: int) -> PhantomCase:
    """Generate case ``index`` of ``cfg`` (depends only on ``cfg`` and ``index``).

    Returns:
        ``PhantomCase`` with image/label/tissue arrays (I, J, K) in ``cfg.orientation``.
    """
    from tdseg_lite.phantom.findings import add_decoys, add_tumours, describe, measure_findings
    from tdseg_lite.phantom.organs import build_anatomy
    from tdseg_lite.phantom.scan import (
        affine_for,
        case_grid,
        label_map,
        render,
        reorient,
    )

    # one stream per stage; the decoy stream is the fifth child, so cases without decoys do not change
    geo, body, lesion, scan, decoy = (np.random.default_rng(s)
                                      for s in np.random.SeedSequence([cfg.seed, index]).spawn(5))
    grid = case_grid(cfg.shape, cfg.spacing, cfg.anisotropic, geo)
    anat = build_anatomy(grid, body)
    tumours = add_tumours(anat, lesion, cfg.task, cfg.fraction)
    if cfg.decoy_fraction:
        add_decoys(anat, decoy, tumours, cfg.decoy_fraction)
    findings = measure_findings(anat, tumours, cfg.task)
    cv, code = anat.canvas, cfg.orientation
    image = render(cv.tissue, cv.organ, grid, tumours, scan, cfg.noise_hu, cfg.blur_mm)
    return PhantomCase(
        name=f"phantom_{cfg.task}_{index:04d}", task=cfg.task, image=reorient(image, code),
        label=reorient(label_map(cv.organ, tumours, cfg.task), code), tissue=reorient(cv.tissue, code),
        affine=affine_for(grid, code), description=describe(findings, cfg.task), findings=findings,
    )


def _write_case(out: Path, cfg: PhantomConfig, index: int) -> dict[str, Any]:
    """Generate and write one case (image int16 HU, label uint8); return its dataset.json entry."""
    case = generate_case(cfg, index)
    image = np.round(case.image).astype(np.int16)
    atomic_write_bytes(out / "imagesTr" / f"{case.name}.nii.gz", nifti_gz(image, case.affine))
    atomic_write_bytes(out / "labelsTr" / f"{case.name}.nii.gz", nifti_gz(case.label, case.affine))
    return {"image": f"./imagesTr/{case.name}.nii.gz", "label": f"./labelsTr/{case.name}.nii.gz",
            "description": case.description, "findings": case.findings}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _check_target(out: Path, arg: str) -> None:
    """Refuse a file, or a non-empty folder that is not (an interrupted run of) a phantom dataset."""
    if out.exists() and not out.is_dir():
        raise UserInputError(f"`{arg}` must be a folder, got the file {str(out)!r}. Pass a new folder path.")
    ours = "tdseg_phantom" in _read_json(out / "dataset.json") or (out / _MARKER).exists()
    if out.is_dir() and not ours and any(out.iterdir()):
        raise UserInputError(
            f"`{arg}` must be a new or empty folder or an existing phantom dataset, got {str(out)!r}, which "
            "holds other files (no dataset.json with a 'tdseg_phantom' block). Pass another folder, "
            "or empty this one."
        )


def _cases(out: Path, cfg: PhantomConfig, workers: int) -> Iterable[dict[str, Any]]:
    """Write every case, in a process pool when ``workers > 1``; yield entries in case order.

    Linux forks (cheap, and works from notebooks and ``python -c``); other systems spawn.
    """
    n = cfg.num_cases
    if workers <= 1 or n < 4:
        yield from (_write_case(out, cfg, i) for i in range(n))
        return
    import multiprocessing
    import warnings
    from concurrent.futures import ProcessPoolExecutor

    ctx = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*fork.*", category=DeprecationWarning)
        with ProcessPoolExecutor(min(workers, n), mp_context=ctx) as pool:
            yield from pool.map(_write_case, [out] * n, [cfg] * n, range(n))


def generate_phantom(out_dir: str | Path, cfg: PhantomConfig | None = None, *, workers: int = 2,
                     progress: bool = False) -> Path:
    """Write the phantom dataset (MSD layout) into ``out_dir`` and return its path.

    ``dataset.json`` is removed first and written last, so an interrupted run never leaves a
    dataset.json that points at missing or stale files. Files of earlier runs with more cases
    are deleted.

    Args:
        out_dir: a new or empty folder, or an earlier phantom dataset (overwritten).
        cfg: what to generate (default ``PhantomConfig()``: 40 kidney cases, 96x96x64 at 3 mm).
        workers: processes (1 = in this process). The files do not depend on it; on a busy
            2-core machine 1 is as fast (see benchmarks/bench_phantom.py).
        progress: print one line per case.

    Returns:
        ``Path(out_dir)``.

    Raises:
        UserInputError: ``out_dir`` is a file or a non-empty folder that is not a phantom, or
            ``workers`` < 1.
    """
    cfg = cfg or PhantomConfig()
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise UserInputError(f"`workers` must be an integer >= 1, got {workers!r}. Pass e.g. workers=2.")
    out = Path(out_dir)
    _check_target(out, "out_dir")
    for sub in ("imagesTr", "labelsTr"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / _MARKER, json.dumps(cfg.block()) + "\n")
    (out / "dataset.json").unlink(missing_ok=True)
    entries = []
    for i, entry in enumerate(_cases(out, cfg, workers)):
        entries.append(entry)
        if progress:
            print(f"  [{i + 1}/{cfg.num_cases}] {Path(entry['image']).name}: {entry['description']}", flush=True)
    remove_stale(out, {Path(e["image"]).name for e in entries}, "phantom_*.nii.gz")
    meta = {
        "name": f"tdseg_lite phantom ({cfg.task})",
        "description": f"Synthetic abdominal CT phantom, {cfg.task} task, generated by tdseg_lite "
                       f"{PHANTOM_VERSION}; descriptions and findings are measured on each case.",
        "reference": "tdseg_lite.phantom", "licence": "CC0", "tensorImageSize": "3D",
        "modality": {"0": "CT"}, "labels": {str(k): v for k, v in LABEL_SETS[cfg.task].items()},
        "numTraining": len(entries), "numTest": 0, "training": entries, "test": [],
        "tdseg_phantom": cfg.block(),
    }
    atomic_write_text(out / "dataset.json", json.dumps(meta, indent=2) + "\n")
    (out / _MARKER).unlink(missing_ok=True)
    return out


def ensure_phantom(out_dir: str | Path, cfg: PhantomConfig | None = None, *, workers: int = 2) -> Path:
    """Return ``out_dir`` if it already holds the phantom of ``cfg``, else (re)generate it there.

    "Holds" means: dataset.json has a ``"tdseg_phantom"`` block equal to ``cfg.block()``
    (task, seed, number of cases, every option, generator version) and every listed file exists.
    Notebooks call this so that re-running them costs nothing.
    """
    cfg = cfg or PhantomConfig()
    out = Path(out_dir)
    meta = _read_json(out / "dataset.json")
    if meta.get("tdseg_phantom") == json.loads(json.dumps(cfg.block())):
        files = [out / e[k] for e in meta.get("training", []) for k in ("image", "label")]
        if len(files) == 2 * cfg.num_cases and all(f.is_file() for f in files):
            return out
    return generate_phantom(out, cfg, workers=workers)


def add_cli_arguments(parser: Any) -> None:
    """Arguments of ``tdseg phantom`` (values are checked in ``cli_main`` for one-line errors)."""
    add = parser.add_argument
    add("--out", required=True, metavar="DIR", help="output folder (new, empty, or an earlier phantom)")
    add("--cases", default=None, metavar="N", help="number of cases (default 40)")
    add("--seed", default=None, metavar="S", help="random seed (default 0)")
    add("--task", default=None, metavar="{kidney,pancreas,multiorgan}",
        help="label set: KiTS19-like, MSD-pancreas-like or a BTCV subset (default kidney)")
    add("--tumour-fraction", default=None, metavar="F", help="P(tumour) per kidney/pancreas in [0, 1] "
        "(default 0.5; multiorgan 0)")
    add("--decoy-fraction", default=None, metavar="P", help="kidney task: P(a tumour-free kidney gets a "
        "tumour-like lesion labelled kidney and left out of the report) in [0, 1] (default 0)")
    add("--anisotropic", action="store_true", help="per case: other in-plane spacing, 1.4-2x thicker slices")
    add("--orientation", default=None, metavar="CODE", help="array axis directions, e.g. RAS (default), LPS, IPL")
    add("--workers", default="2", metavar="W", help="processes (default 2; the files do not depend on it)")
    add("--labels-from", default=None, metavar="DIR", help="paint real kidney label maps (0/1/2, KiTS19 "
        "case_XXXXX/segmentation.nii.gz, MSD labelsTr/ or *.nii.gz) instead of generating anatomy")
    add("--max-cases", default=None, metavar="N", help="with --labels-from: the first N label maps (default all)")
    add("--spacing", default=None, nargs=3, metavar=("X", "Y", "Z"), help="with --labels-from: resample each map "
        "to this voxel size in mm (R, A, S; e.g. 3 3 3, the cpu preset's grid) before painting (default: its own grid)")


def _number(flag: str, value: str | None, kind: type, example: str) -> Any:
    if value is None:
        return None
    try:
        return kind(value)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise UserInputError(f"`{flag}` must be {what}, got {value!r}. Pass e.g. {flag} {example}.") from None


def cli_main(args: Any) -> int:
    """``tdseg phantom``: write the dataset, print a one-line summary; bad input -> UserInputError.

    With ``--labels-from`` the cases are real label maps painted by ``labels``.
    """
    workers = _number("--workers", args.workers, int, "2")
    if workers < 1:
        raise UserInputError(f"`--workers` must be >= 1, got {workers}. Pass e.g. --workers 2.")
    if getattr(args, "labels_from", None) is not None:
        from tdseg_lite.phantom.labels import cli_labels

        return cli_labels(args, _number)
    if getattr(args, "max_cases", None) is not None:
        raise UserInputError(f"`--max-cases` applies only with --labels-from, got {args.max_cases!r}. "
                             "Use --cases N for the synthetic phantom.")
    if getattr(args, "spacing", None) is not None:
        raise UserInputError(f"`--spacing` applies only with --labels-from, got {' '.join(args.spacing)}. Leave it "
                             "out: the synthetic phantom is drawn at 3 mm (--anisotropic varies it).")
    cfg = PhantomConfig(
        task="kidney" if args.task is None else args.task,
        num_cases=_number("--cases", "40" if args.cases is None else args.cases, int, "40"),
        seed=_number("--seed", "0" if args.seed is None else args.seed, int, "0"),
        tumour_fraction=_number("--tumour-fraction", args.tumour_fraction, float, "0.5"),
        decoy_fraction=_number("--decoy-fraction", "0" if getattr(args, "decoy_fraction", None) is None
                               else args.decoy_fraction, float, "0.5"),
        anisotropic=bool(args.anisotropic), orientation="RAS" if args.orientation is None else args.orientation,
    )
    out = Path(args.out)
    _check_target(out, "--out")
    start = time.perf_counter()
    generate_phantom(out, cfg, workers=workers)
    seconds = time.perf_counter() - start
    meta = _read_json(out / "dataset.json")
    tumours = sum(f["kind"] == "tumour" for e in meta["training"] for f in e["findings"])
    shape = "variable" if cfg.anisotropic else "x".join(map(str, cfg.shape))
    print(f"tdseg phantom: {cfg.num_cases} {cfg.task} cases ({tumours} tumours, {shape} voxels, {cfg.orientation}) "
          f"-> {out} in {seconds:.1f} s ({cfg.num_cases / seconds:.2f} cases/s)")
    return 0
