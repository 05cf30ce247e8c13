"""``tdseg prepare``: convert KiTS19, MSD (Task03/07/09/10) and BTCV into the common layout.

Every converter writes ``OUT/dataset.json`` + ``imagesTr/ labelsTr/ [imagesTs/]`` with label names
and a per-case ``description`` computed from the label map (see ``volumes``), which
``prompts.case_prompt`` appends to the class prompt. Sources (``--src`` takes files downloaded
elsewhere, so nothing needs a network):

* KiTS19 (``github.com/neheller/kits19``): ``data/case_XXXXX/{imaging,segmentation}.nii.gz``, labels
  0 background, 1 kidney, 2 tumor. The affine maps the array axes (slice, row, column) to I-P-L with
  negative slice thickness / pixel width entries (README "Voxel Spacing"; a left-right flip was
  fixed in the April 2019 release), so it is trusted and the volumes are reoriented to RAS.
  Cases 210-299 have imaging only -> ``imagesTs``. Without ``--src`` the files are downloaded
  (segmentations from the repository, imaging from its Hugging Face dataset, SHA-256 checked).
* MSD: ``TaskXX_Name.tar`` from MONAI's mirror (URL and MD5 from ``monai.apps.DecathlonDataset``),
  already in the layout: files are hard-linked (or copied), 4D single-channel images squeezed.
* BTCV (Synapse, registration needed): ``RawData/Training/{img,label}/``, ``RawData/Testing/img/``.

A re-run with the same settings resumes (finished cases are kept); ``tdseg prepare`` ends with
``validate_dataset``. Downloads and safe extraction: ``download``. Recipe:
``data_scripts/README.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tdseg_lite.datasets import download as dl
from tdseg_lite.datasets.volumes import (
    SPACING_RANGE,
    describe_kits19,
    describe_lesions,
    describe_organs,
    write_case,
    write_test_case,
)
from tdseg_lite.errors import UserInputError
from tdseg_lite.utils import atomic_write_text

__all__ = [
    "BTCV_LABELS",
    "KITS19_LABELS",
    "MSD_TASKS",
    "add_cli_arguments",
    "cli_main",
    "prepare_btcv",
    "prepare_kits19",
    "prepare_msd",
    "resolve_msd_task",
]

#: KiTS19 labels (README "Loading Data": 0 background, 1 kidney, 2 tumor).
KITS19_LABELS = {"0": "background", "1": "kidney", "2": "tumor"}
#: BTCV labels 0-13 (Synapse syn3193805, "Multi-Atlas Labeling Beyond the Cranial Vault").
BTCV_LABELS = {str(i): name for i, name in enumerate((
    "background", "spleen", "right kidney", "left kidney", "gallbladder", "esophagus", "liver", "stomach", "aorta",
    "inferior vena cava", "portal vein and splenic vein", "pancreas", "right adrenal gland", "left adrenal gland"))}
BTCV_HELP = ("BTCV needs a free Synapse account: register at https://www.synapse.org, open "
             "https://www.synapse.org/#!Synapse:syn3193805/wiki/89480 (Multi-Atlas Labeling Beyond the Cranial "
             "Vault), accept the data terms, download Abdomen/RawData.zip and pass --src /path/to/RawData.zip or the "
             "unzipped RawData folder (it holds Training/img/img0001.nii.gz, Training/label/label0001.nii.gz, "
             "Testing/img/...)")
#: MSD task -> (dataset.json "name" = key of prompts.KNOWN_DATASETS, host organ, organ label, lesion label).
MSD_TASKS: dict[str, tuple[str, str, int | None, int | None]] = {
    "Task03_Liver": ("msd_task03_liver", "liver", 1, 2),
    "Task07_Pancreas": ("msd_task07_pancreas", "pancreas", 1, 2),
    "Task09_Spleen": ("msd_task09_spleen", "spleen", 1, None),
    "Task10_Colon": ("msd_task10_colon", "colon", None, 1),
}


# ----------------------------------------------------------------------------- output folder
def _check_out(out: str | os.PathLike[str], settings: dict[str, Any], overwrite: bool) -> Path:
    """Refuse an ``out`` holding other files or other settings; a re-run with the same settings resumes."""
    out, settings = Path(out).expanduser(), json.loads(json.dumps(settings))
    record = out / "prepare.json"
    if record.is_file() and not overwrite:
        old = json.loads(record.read_text(encoding="utf-8"))
        if old != settings:
            raise UserInputError(f"`--out` {out} was prepared with {old}, got {settings}; pass a new --out, or "
                                 "--overwrite to convert every case again")
    elif out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserInputError(f"`--out` must be a new or empty folder, got {out} holding other files; pass a new "
                             "folder, or --overwrite to write into it anyway")
    return out


def _claim(out: Path, settings: dict[str, Any]) -> None:
    """Create ``out`` and record the settings (after the source was found, so a bad --src leaves nothing)."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "prepare.json", json.dumps(settings, indent=2) + "\n")


def _clean_failed(out: Path, existed: bool) -> None:
    """After a failed conversion: remove unfinished ``*.part`` files, and the whole ``out`` when this run
    created it and no case was converted yet (converted cases are kept: a re-run resumes from them)."""
    if not out.is_dir():
        return
    for part in out.rglob("*.part"):
        part.unlink(missing_ok=True)
    converted = any(f.is_file() for sub in ("imagesTr", "labelsTr") if (out / sub).is_dir()
                    for f in (out / sub).iterdir())
    if not existed and not converted:
        shutil.rmtree(out, ignore_errors=True)


def _finish(out: Path, meta: dict[str, Any], training: list[dict[str, str]], test: list[str]) -> Path:
    if not training:
        raise UserInputError(f"`--src` must hold at least one labelled case, got none for {out}; check the folder "
                             "(and --cases / --max-cases)")
    meta = {**meta, "tensorImageSize": "3D", "modality": {"0": "CT"}, "numTraining": len(training),
            "numTest": len(test), "training": training, "test": test}
    atomic_write_text(out / "dataset.json", json.dumps(meta, indent=2) + "\n")
    return out


def _entry(name: str, description: str) -> dict[str, str]:
    return {"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}", "description": description}


def _progress(items: list[Any], desc: str, progress: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit="case", disable=not progress)


# ----------------------------------------------------------------------------- KiTS19
def _parse_cases(spec: str | None) -> set[int] | None:
    """``"0-9,250"`` -> ``{0, ..., 9, 250}``; ``None`` -> ``None`` (all)."""
    if spec is None:
        return None
    ids: set[int] = set()
    for part in spec.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not match or int(match.group(2) or match.group(1)) < int(match.group(1)):
            raise UserInputError(f"`--cases` must be ids or ranges like 0-209,250, got {spec!r}. Pass e.g. --cases 0-9.")
        ids.update(range(int(match.group(1)), int(match.group(2) or match.group(1)) + 1))
    return ids


def _kits_root(src: Path) -> Path:
    for folder in (src / "data", src):
        if folder.is_dir() and any(p.is_dir() for p in folder.glob("case_[0-9][0-9][0-9][0-9][0-9]")):
            return folder
    raise UserInputError(f"`--src` must be the kits19 clone or its data/ folder with case_XXXXX/ subfolders, got "
                         f"{src}{'' if src.exists() else ' (missing)'}; run `git clone https://github.com/neheller/"
                         "kits19 && cd kits19 && python -m starter_code.get_imaging`, or omit --src to download")


def _check_segmentation(path: Path) -> None:
    with open(path, "rb") as handle:
        if handle.read(23) == b"version https://git-lfs":
            raise UserInputError(f"{path}: must be a NIfTI segmentation, got a Git LFS pointer; run `git lfs pull` "
                                 "in the kits19 clone, or clone it again (the repository no longer uses LFS)")


def prepare_kits19(out: str | os.PathLike[str], src: str | os.PathLike[str] | None = None, *,
                   download_dir: str | os.PathLike[str] | None = None, cases: str | None = None,
                   spacing: Sequence[float] | None = None, max_cases: int | None = None,
                   overwrite: bool = False, progress: bool = True) -> Path:
    """KiTS19 -> ``out`` (``kits19``: 0 background, 1 kidney, 2 tumor); cases without labels -> ``imagesTs``.

    Args:
        out: output dataset folder.
        src: the kits19 clone or its ``data/``; ``None`` downloads into ``download_dir``.
        download_dir: default ``out/../downloads/kits19``.
        cases: ids such as ``"0-209"`` (default: all in ``src``; ``0-209`` when downloading).
        spacing: resample to this voxel size (mm, R-A-S); ``None`` keeps the native grid.
        max_cases: at most this many training and test cases.
        overwrite: convert into an ``out`` holding other files or other settings.
        progress: ``tqdm.auto`` progress bars.
    """
    wanted = _parse_cases(cases)
    if wanted and max(wanted) > 299:
        raise UserInputError(f"`--cases` must lie in 0-299 (KiTS19 has 300 cases), got {cases!r}. Pass e.g. --cases 0-209.")
    settings = {"dataset": "kits19", "spacing": spacing}
    out = _check_out(out, settings, overwrite)
    if src is None:
        folder = Path(download_dir or out.parent / "downloads" / "kits19").expanduser()
        root = dl.download_kits19(folder, sorted(wanted if wanted is not None else dl.KITS19_LABELLED), progress)
    else:
        root = _kits_root(Path(src).expanduser())
    _claim(out, settings)
    folders = sorted(p for p in root.iterdir() if p.is_dir() and re.fullmatch(r"case_\d{5}", p.name)
                     and (wanted is None or int(p.name[5:]) in wanted))
    training: list[dict[str, str]] = []
    test: list[str] = []
    for folder in _progress(folders, "KiTS19", progress):
        name, image, seg = f"{folder.name}.nii.gz", folder / "imaging.nii.gz", folder / "segmentation.nii.gz"
        if not image.is_file():
            raise UserInputError(f"{image}: imaging file is missing, got only the segmentation; the kits19 repository "
                                 "holds segmentations only: run `python -m starter_code.get_imaging` in the clone, "
                                 "or omit --src to let tdseg download both")
        if seg.is_file() and (max_cases is None or len(training) < max_cases):
            _check_segmentation(seg)
            img, lab, affine = write_case(image, seg, out, name, spacing, overwrite, need_image=True)
            training.append(_entry(name, describe_kits19(lab, affine, img)))
        elif not seg.is_file() and (max_cases is None or len(test) < max_cases):
            test.append(write_test_case(image, out, name, spacing, overwrite))
    meta = {"name": "kits19", "description": "KiTS19 kidney and kidney tumour segmentation in contrast-enhanced CT",
            "reference": "https://kits19.grand-challenge.org, https://github.com/neheller/kits19",
            "licence": "CC BY-NC-SA 4.0", "labels": KITS19_LABELS}
    return _finish(out, meta, training, test)


# ----------------------------------------------------------------------------- MSD
def resolve_msd_task(task: str) -> str:
    """``"pancreas"``, ``"07"``, ``"task07"`` or ``"Task07_Pancreas"`` -> ``"Task07_Pancreas"``."""
    key = str(task).strip().lower()
    for name in MSD_TASKS:
        number = name[4:6]
        if key in (name.lower(), name[7:].lower(), number, str(int(number)), f"task{number}"):
            return name
    raise UserInputError(f"`--task` must be one of {', '.join(MSD_TASKS)} (or pancreas, liver, spleen, colon), got "
                         f"{task!r}. The other MSD tasks (MRI, lung, hepatic vessel) are not set up for tdseg prepare.")


def _msd_archive_folder(task: str, archive: Path, target: Path, progress: bool) -> Path:
    """Extract ``archive`` into ``target`` once (a marker file records a finished extraction)."""
    marker = target / f".{archive.name}.extracted"
    if not (marker.is_file() and (target / task / "dataset.json").is_file()):
        dl.extract_archive(archive, target, progress=progress)
        marker.write_text("extracted\n", encoding="utf-8")
    if not (target / task / "dataset.json").is_file():
        raise UserInputError(f"{archive}: must contain {task}/dataset.json, got an archive without it; pass the "
                             f"official {task}.tar")
    return target / task


def _msd_folder(task: str, src: Path | None, download_dir: Path, verify: bool, progress: bool) -> Path:
    """The extracted ``TaskXX_Name`` folder: from ``src`` (folder or archive) or downloaded."""
    if src is None:
        url, md5 = dl.msd_source(task)
        if (download_dir / f".{task}.tar.extracted").is_file() and (download_dir / task / "dataset.json").is_file():
            return download_dir / task
        archive = dl.download_file(url, download_dir / f"{task}.tar", hash_val=md5, hash_type="md5", progress=progress,
                                   space_factor=2.0, manual=f"download it on a machine with internet and pass "
                                                            f"--src /path/to/{task}.tar")
        return _msd_archive_folder(task, archive, download_dir, progress)
    if src.is_dir():
        for folder in (src, src / task):
            if (folder / "dataset.json").is_file():
                return folder
        raise UserInputError(f"`--src` must be the {task} folder holding dataset.json, imagesTr/ and labelsTr/ (or "
                             f"{task}.tar), got {src} without dataset.json; pass the extracted folder or the archive")
    if not src.is_file():
        raise UserInputError(f"`--src` must be {task}.tar or its extracted folder, got a missing path {src}; "
                             f"download {dl.msd_source(task)[0]} and pass its path, or omit --src to download it")
    if verify:
        expected, got = dl.msd_source(task)[1], dl.file_hash(src, "md5")
        if got != expected:
            raise UserInputError(f"{src}: md5 must be {expected} (MONAI's {task}.tar), got {got}; the archive is "
                                 "corrupt or another release: download it again, or pass --skip-checksum to trust it")
    return _msd_archive_folder(task, src, download_dir, progress)


def prepare_msd(task: str, out: str | os.PathLike[str], src: str | os.PathLike[str] | None = None, *,
                download_dir: str | os.PathLike[str] | None = None, spacing: Sequence[float] | None = None,
                max_cases: int | None = None, verify: bool = True, overwrite: bool = False,
                progress: bool = True) -> Path:
    """An MSD CT task -> ``out`` with its labels, ``name`` ``msd_taskXX_<organ>`` and per-case descriptions.

    Args:
        task: ``Task07_Pancreas``, ``Task03_Liver``, ``Task10_Colon``, ``Task09_Spleen`` (or the organ).
        out: output dataset folder.
        src: ``TaskXX_Name.tar`` or its extracted folder; ``None`` downloads from MONAI's mirror.
        download_dir: where archives are stored and extracted (default ``out/../downloads``).
        spacing: resample (mm, R-A-S); ``None`` hard-links the files as they are.
        max_cases: at most this many training and test cases.
        verify: check a ``src`` archive's MD5 against MONAI's (downloads are always checked).
        overwrite: convert into an ``out`` holding other files or other settings.
        progress: ``tqdm.auto`` progress bars.
    """
    task = resolve_msd_task(task)
    settings = {"dataset": "msd", "task": task, "spacing": spacing}
    out = _check_out(out, settings, overwrite)
    target = Path(download_dir or out.parent / "downloads").expanduser()
    folder = _msd_folder(task, None if src is None else Path(src).expanduser(), target, verify, progress)
    _claim(out, settings)
    try:
        meta = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
        entries = [e for e in meta["training"] if not dl.is_junk(e["image"])][:max_cases]
        tests = [t if isinstance(t, str) else t["image"] for t in meta.get("test", [])]
    except (ValueError, KeyError, TypeError) as err:
        raise UserInputError(f"{folder / 'dataset.json'}: must follow the MSD schema ({{\"labels\", \"training\": "
                             f"[{{\"image\", \"label\"}}], \"test\"}}), got {type(err).__name__}: {err}; extract "
                             "the official archive again") from None
    key, organ, organ_label, lesion_label = MSD_TASKS[task]
    training = []
    for entry in _progress(entries, task, progress):
        name = Path(entry["image"]).name
        _, label, affine = write_case(folder / entry["image"], folder / entry["label"], out, name, spacing, overwrite, link=True)
        training.append(_entry(name, describe_lesions(label, affine, organ, organ_label, lesion_label)))
    test = [write_test_case(folder / t, out, Path(t).name, spacing, overwrite, link=True)
            for t in [t for t in tests if not dl.is_junk(t)][:max_cases]]
    base = {k: v for k, v in meta.items() if k not in ("training", "test", "numTraining", "numTest")}
    return _finish(out, {**base, "name": key, "msd_name": meta.get("name", task)}, training, test)


# ----------------------------------------------------------------------------- BTCV
def _btcv_root(src: str | os.PathLike[str] | None, download_dir: Path | None, progress: bool) -> Path:
    """The ``RawData`` folder (holding ``Training/img``) from ``src``: that folder, a parent, or ``RawData.zip``."""
    if src is None or not Path(src).expanduser().exists():
        raise UserInputError(f"`--src` must be the BTCV RawData folder or RawData.zip, got "
                             f"{'nothing' if src is None else f'a missing path {src}'}; {BTCV_HELP}")
    path = Path(src).expanduser()
    if path.is_file():
        target = download_dir or path.with_name(f"{path.name.split('.')[0]}_extracted")
        marker = target / f".{path.name}.extracted"
        if not marker.is_file():
            dl.extract_archive(path, target, progress=progress)
            marker.write_text("extracted\n", encoding="utf-8")
        path = target
    for folder in (path, path / "RawData", *sorted(path.glob("*/RawData")), *sorted(path.glob("*/*/RawData"))):
        if (folder / "Training" / "img").is_dir():
            return folder
    raise UserInputError(f"`--src` must hold Training/img/img0001.nii.gz and Training/label/label0001.nii.gz, got "
                         f"{src} without a Training/img folder; {BTCV_HELP}")


def _nifti_files(folder: Path, prefix: str) -> list[Path]:
    return sorted(p for p in folder.glob(f"{prefix}*.nii*") if not dl.is_junk(p.name)) if folder.is_dir() else []


def prepare_btcv(out: str | os.PathLike[str], src: str | os.PathLike[str] | None = None, *,
                 download_dir: str | os.PathLike[str] | None = None, spacing: Sequence[float] | None = None,
                 max_cases: int | None = None, overwrite: bool = False, progress: bool = True) -> Path:
    """BTCV ``RawData`` -> ``out`` (``btcv``: 13 organs); ``Testing/img`` -> ``imagesTs``.

    Args:
        out: output dataset folder.
        src: ``RawData.zip`` from Synapse or the unzipped folder (no public download exists).
        download_dir: where ``RawData.zip`` is extracted (default: next to it).
        spacing: resample (mm, R-A-S); ``None`` keeps the native grid (reoriented to RAS).
        max_cases: at most this many training and test cases.
        overwrite: convert into an ``out`` holding other files or other settings.
        progress: ``tqdm.auto`` progress bars.
    """
    settings = {"dataset": "btcv", "spacing": spacing}
    out = _check_out(out, settings, overwrite)
    root = _btcv_root(src, None if download_dir is None else Path(download_dir).expanduser(), progress)
    _claim(out, settings)
    training = []
    for image in _progress(_nifti_files(root / "Training" / "img", "img")[:max_cases], "BTCV", progress):
        label = root / "Training" / "label" / image.name.replace("img", "label", 1)
        if not label.is_file():
            raise UserInputError(f"{label}: label of {image.name} is missing, got no file; restore the RawData "
                                 "folder from RawData.zip (Training/label/labelNNNN.nii.gz)")
        name = f"btcv_{re.sub(r'[^0-9]', '', image.name)}.nii.gz"
        _, lab, affine = write_case(image, label, out, name, spacing, overwrite)
        training.append(_entry(name, describe_organs(lab, affine, BTCV_LABELS)))
    test = [write_test_case(p, out, f"btcv_{re.sub(r'[^0-9]', '', p.name)}.nii.gz", spacing, overwrite)
            for p in _nifti_files(root / "Testing" / "img", "img")[:max_cases]]
    meta = {"name": "btcv", "description": "BTCV multi-organ abdominal CT (MICCAI 2015 Multi-Atlas Labeling)",
            "reference": "https://www.synapse.org/#!Synapse:syn3193805", "labels": BTCV_LABELS,
            "licence": "Synapse data use terms (registration required; do not redistribute)"}
    return _finish(out, meta, training, test)


# ----------------------------------------------------------------------------- CLI
def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``tdseg prepare {kits19,msd,btcv}``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", required=True, help="output dataset folder (MSD layout)")
    common.add_argument("--spacing", type=float, nargs=3, metavar=("X", "Y", "Z"),
                        help="resample to this voxel size in mm (R, A, S): image linear, label nearest "
                             "(e.g. 1.5 1.5 2.0, the `full` preset); default: keep the native grid")
    common.add_argument("--download-dir", help="where downloads / archives are stored and extracted "
                                               "(default: OUT/../downloads)")
    common.add_argument("--max-cases", type=int, metavar="N", help="only the first N training (and N test) cases")
    common.add_argument("--overwrite", action="store_true", help="convert again into an --out that holds other "
                                                                 "files or was prepared with other settings")
    common.add_argument("--no-validate", action="store_true", help="skip `tdseg validate` on the result")
    common.add_argument("--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="dataset", metavar="DATASET", required=True)
    kits = sub.add_parser("kits19", parents=[common], help="KiTS19 kidney + tumour (downloads without --src)",
                          description="KiTS19 -> common layout; labels 0 background, 1 kidney, 2 tumor.")
    kits.add_argument("--src", help="the kits19 clone or its data/ folder (case_XXXXX/imaging.nii.gz + segmentation)")
    kits.add_argument("--cases", help="case ids, e.g. 0-209 or 0-9,210 (default: all in --src; 0-209 when "
                                      "downloading); 210-299 have no labels and become test cases")
    msd = sub.add_parser("msd", parents=[common], help="MSD Task07 pancreas, Task03 liver, Task10 colon, Task09 spleen",
                         description="MSD CT task -> common layout (downloaded from MONAI's mirror without --src).")
    msd.add_argument("--task", required=True, help="Task07_Pancreas | Task03_Liver | Task10_Colon | Task09_Spleen "
                                                   "(or pancreas, liver, colon, spleen)")
    msd.add_argument("--src", help="TaskXX_Name.tar or its extracted folder")
    msd.add_argument("--skip-checksum", action="store_true", help="do not check the MD5 of a --src archive")
    btcv = sub.add_parser("btcv", parents=[common], help="BTCV 13 abdominal organs (Synapse RawData)",
                          description=f"BTCV RawData -> common layout. {BTCV_HELP}.")
    btcv.add_argument("--src", help="RawData.zip from Synapse, or the unzipped RawData folder")


def cli_main(args: argparse.Namespace) -> int:
    """Run ``tdseg prepare``: convert, then validate (summary, exit 0) or list the problems (exit 2)."""
    import sys

    lo, hi = SPACING_RANGE
    if args.spacing is not None and not all(lo <= s <= hi for s in args.spacing):
        raise UserInputError(f"`--spacing` must be 3 voxel sizes in mm between 0.05 and 20, got "
                             f"{' '.join(map(str, args.spacing))}. Pass e.g. --spacing 1.5 1.5 2.0.")
    if args.max_cases is not None and args.max_cases < 1:
        raise UserInputError(f"`--max-cases` must be >= 1, got {args.max_cases}. Pass e.g. --max-cases 5.")
    common = {"download_dir": args.download_dir, "spacing": args.spacing, "max_cases": args.max_cases,
              "overwrite": args.overwrite, "progress": not args.quiet}
    target = Path(args.out).expanduser()
    existed = target.exists()
    try:
        if args.dataset == "kits19":
            out = prepare_kits19(args.out, args.src, cases=args.cases, **common)
        elif args.dataset == "msd":
            out = prepare_msd(args.task, args.out, args.src, verify=not args.skip_checksum, **common)
        else:
            out = prepare_btcv(args.out, args.src, **common)
    except BaseException:
        _clean_failed(target, existed)
        raise
    print(f"tdseg prepare: wrote {out}")
    if args.no_validate:
        return 0
    from tdseg_lite.validate import validate_dataset

    report = validate_dataset(out)
    for line in report.warnings:
        print(f"tdseg prepare: warning: {line}", file=sys.stderr)
    if not report.ok:
        for line in report.errors:
            print(f"tdseg prepare: error: {line}", file=sys.stderr)
        return 2
    print(report.format_summary())
    return 0
