"""``tdseg prepare``: convert KiTS19, MSD (Task03/07/09/10) and BTCV into the common layout (DESIGN §5).

Every converter writes ``OUT/dataset.json`` + ``imagesTr/ labelsTr/ [imagesTs/]`` with label names
and a per-case ``description`` computed from the label map (see ``prepare_volumes``), which
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
``validate_dataset``. Downloads and safe extraction: ``tdseg_lite.download``. Recipe:
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

import numpy as np

from tdseg_lite import download as dl
from tdseg_lite.errors import UserInputError
from tdseg_lite.prepare_volumes import (convert_case, describe_kits19, describe_lesions, describe_organs, label_array,
                                        load_volume)
from tdseg_lite.utils import atomic_write_text

__all__ = ["add_cli_arguments", "cli_main", "prepare_btcv", "prepare_kits19", "prepare_msd"]

#: KiTS19 labels (README "Loading Data": 0 background, 1 kidney, 2 tumor).
KITS19_LABELS = {"0": "background", "1": "kidney", "2": "tumor"}
KITS19_LABELLED = range(0, 210)  # cases 210-299: imaging only (the challenge test set)
KITS19_IMAGE_BYTES = 110_000_000  # rough mean size of one KiTS19 imaging file, for the up-front disk check
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
def _start(out: str | os.PathLike[str], settings: dict[str, Any], overwrite: bool) -> Path:
    """Create ``out`` and record the settings; a re-run with the same settings resumes (skips done cases)."""
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
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(record, json.dumps(settings, indent=2) + "\n")
    return out


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


def _link(src: Path, dst: Path) -> None:
    """Hard-link ``src`` to ``dst`` (no extra disk), or copy where links are impossible."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _linkable(image: Path, label: Path | None) -> bool:
    """True when the files can be used as they are: 3D, and the label on the image's grid."""
    from tdseg_lite.validate import AFFINE_ATOL, AFFINE_RTOL

    img = load_volume(image, "image")
    if len(img.dataobj.shape) != 3:
        return False
    if label is None:
        return True
    lab = load_volume(label, "label")
    return lab.shape == img.shape and np.allclose(lab.affine, img.affine, rtol=AFFINE_RTOL, atol=AFFINE_ATOL)


def _case(image: Path, label: Path, out: Path, name: str, spacing: Sequence[float] | None, overwrite: bool,
          link: bool = False) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """Write one training case (resume: reuse finished outputs); returns ``(image or None, label, affine)``."""
    img_out, lab_out = out / "imagesTr" / name, out / "labelsTr" / name
    if img_out.is_file() and lab_out.is_file() and not overwrite:
        lab = load_volume(lab_out, "label")
        return np.asanyarray(load_volume(img_out, "image").dataobj), label_array(lab, lab_out), lab.affine
    if link and spacing is None and _linkable(image, label):
        _link(image, img_out)
        _link(label, lab_out)
        lab = load_volume(label, "label")
        return None, label_array(lab, label), lab.affine
    return convert_case(image, label, img_out, lab_out, spacing)  # type: ignore[return-value]


def _test_case(image: Path, out: Path, name: str, spacing: Sequence[float] | None, overwrite: bool,
               link: bool = False) -> str:
    dst = out / "imagesTs" / name
    if overwrite or not dst.is_file():
        if link and spacing is None and _linkable(image, None):
            _link(image, dst)
        else:
            convert_case(image, None, dst, None, spacing)
    return f"./imagesTs/{name}"


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


def _kits_download(folder: Path, ids: list[int], progress: bool) -> Path:
    """Fetch ``case_XXXXX/{segmentation,imaging}.nii.gz`` into ``folder`` (the kits19 ``data/`` layout)."""
    todo = [c for c in ids if not (folder / f"case_{c:05d}" / "imaging.nii.gz").is_file()]
    dl.ensure_disk_space(folder, 2 * len(todo) * KITS19_IMAGE_BYTES, f"{len(todo)} KiTS19 images (~110 MB each) + conversion")
    sums = dl.kits19_checksums() if todo else {}
    if todo and not sums:
        print("tdseg prepare: note: the KiTS19 checksum listing is unreachable; checking length and format only")
    manual = ("on a machine with internet run `git clone https://github.com/neheller/kits19 && cd kits19 && "
              "python -m starter_code.get_imaging`, copy the clone here and pass --src /path/to/kits19")
    for case in _progress(ids, "download KiTS19", progress):
        where = folder / f"case_{case:05d}"
        if case in KITS19_LABELLED:
            dl.download_file(dl.KITS19_SEGMENTATION_URL.format(case=case), where / "segmentation.nii.gz",
                             progress=False, manual=manual)
        image = dl.download_file([u.format(case=case) for u in dl.KITS19_IMAGING_URLS], where / "imaging.nii.gz",
                                 hash_val=sums.get(f"case_{case:05d}.nii.gz"), hash_type="sha256",
                                 progress=progress, manual=manual)
        with open(image, "rb") as handle:
            if handle.read(2) != b"\x1f\x8b":
                image.unlink()
                raise UserInputError(f"{image}: must be a gzip NIfTI, got another kind of file (an error page?); "
                                     "it was deleted, run the command again")
    return folder


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
    out = _start(out, {"dataset": "kits19", "spacing": spacing}, overwrite)
    wanted = _parse_cases(cases)
    if src is None:
        folder = Path(download_dir or out.parent / "downloads" / "kits19").expanduser()
        root = _kits_download(folder, sorted(wanted if wanted is not None else KITS19_LABELLED), progress)
    else:
        root = _kits_root(Path(src).expanduser())
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
            img, lab, affine = _case(image, seg, out, name, spacing, overwrite)
            training.append(_entry(name, describe_kits19(lab, affine, img)))
        elif not seg.is_file() and (max_cases is None or len(test) < max_cases):
            test.append(_test_case(image, out, name, spacing, overwrite))
    meta = {"name": "kits19", "description": "KiTS19 kidney and kidney tumour segmentation in contrast-enhanced CT",
            "reference": "https://kits19.grand-challenge.org, https://github.com/neheller/kits19",
            "licence": "CC BY-NC-SA 4.0", "labels": KITS19_LABELS}
    return _finish(out, meta, training, test)
