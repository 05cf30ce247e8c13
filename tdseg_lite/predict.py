"""``tdseg predict``: one CT volume in, a label NIfTI out in the input's own voxel grid.

The input may have any orientation, (anisotropic) spacing and even an oblique affine. The volume
goes through the very ``val_transforms`` chain used in training (RAS, ``DataConfig.spacing``,
body crop, HU window, padding), the model predicts on that grid with sliding windows, and
``make_inverter`` (MONAI ``Invertd``) replays the chain backwards — un-pad, un-crop, resample,
re-orient — so the label file has exactly the input's spatial shape and affine::

    CT (X0, Y0, Z0) --val_transforms--> (1, X, Y, Z) --sliding_window_predict--> (N, X, Y, Z) probs
       --argmax--> (1, X, Y, Z) --Invertd (nearest)--> (X0, Y0, Z0) uint8 labels
       [uncertainty (1, X, Y, Z) --Invertd (bilinear)--> (X0, Y0, Z0) float32]

A 4D input with a singleton last axis ``(X0, Y0, Z0, 1)`` is accepted; its outputs are 3D. The
input is checked first (readable NIfTI, 3D, finite, plausible raw HU) and every problem is a
one-line ``UserInputError``. Outputs are written atomically (temporary file + rename).

``predict_volume(model, data_cfg, path)`` takes any ``Segmenter``, so a test can inject an oracle;
``cli_main`` loads a trained run with ``train_run.load_trained``.
"""

from __future__ import annotations

import argparse
import gzip
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from tdseg_lite.errors import UserInputError

__all__ = ["apply_sampling_start", "check_ct", "check_output_path", "check_positive", "infer_case", "predict_volume", "save_nifti",
           "to_input_space"]

#: plausible raw CT values (HU): scanners pad outside the field of view with -1024, -2048 or -3024
HU_MIN, HU_MAX = -3100.0, 5000.0
#: a real CT spans air (-1000 HU) to soft tissue at least; a smaller span means normalised data
MIN_HU_SPAN = 50.0
NIFTI_SUFFIXES = (".nii", ".nii.gz")


def _is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def check_ct(path: str | os.PathLike[str]) -> Any:
    """Load and check a raw CT NIfTI; return the ``nibabel`` image.

    Rules: a ``.nii``/``.nii.gz`` file that nibabel reads; 3D, or 4D with a singleton last axis;
    finite values; raw HU (min >= ``HU_MIN``, max <= ``HU_MAX``, a span of at least ``MIN_HU_SPAN``).

    Raises:
        UserInputError: one line naming the file, the value, the rule and the fix.
    """
    import nibabel as nib

    p = Path(path).expanduser()
    if not p.is_file():
        raise UserInputError(f"`{p}` must be an existing file, got no such file. Check the --input path.")
    if not _is_nifti(p):
        raise UserInputError(f"`{p}` must be a NIfTI file (.nii or .nii.gz), got {p.suffix or 'no suffix'!r}. "
                             "Convert it first, e.g. with dcm2niix or SimpleITK.")
    try:
        img = nib.load(str(p))
        data = np.asanyarray(img.dataobj)
    except Exception as err:  # noqa: BLE001 - nibabel raises many types for truncated or foreign files
        raise UserInputError(f"`{p}` must be a readable NIfTI, got {type(err).__name__}: {str(err)[:120]}. "
                             "Re-export the file.") from None
    shape = tuple(int(s) for s in data.shape)
    if not (len(shape) == 3 or (len(shape) == 4 and shape[3] == 1)):
        raise UserInputError(f"`{p}` must be a 3D volume (or 4D with a singleton last axis), got shape {shape}. "
                             "Pass one CT volume (split multi-channel or time series files).")
    if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).sum())
        raise UserInputError(f"`{p}` must hold finite values, got {bad} NaN/inf voxel(s). "
                             "Replace them (e.g. with -1024 HU) before predicting.")
    _check_hu(p, float(data.min()), float(data.max()))
    return img


def _check_hu(p: Path, lo: float, hi: float) -> None:
    """Raise unless ``lo..hi`` looks like raw Hounsfield units."""
    if hi - lo < MIN_HU_SPAN or (lo >= 0.0 and hi <= 1.0):
        raise UserInputError(f"`{p}` must hold raw HU (air -1000 to tissue > 0), got values {lo:g}..{hi:g}: looks "
                             "normalised, pass raw HU.")
    if lo < HU_MIN or hi > HU_MAX:
        raise UserInputError(f"`{p}` must hold HU in [{HU_MIN:g}, {HU_MAX:g}], got {lo:g}..{hi:g}. Pass raw HU "
                             "(apply the DICOM rescale slope/intercept; clip metal above 3071).")


def check_output_path(path: str | os.PathLike[str], flag: str, suffixes: tuple[str, ...] = NIFTI_SUFFIXES) -> Path:
    """``path`` as a ``Path`` after checking its suffix and that its folder exists (or can be made) and is writable."""
    p = Path(path).expanduser()
    if not p.name.lower().endswith(suffixes):
        raise UserInputError(f"`{flag} {p}` must end with {' or '.join(suffixes)}, got {p.name!r}. "
                             f"Use e.g. {flag} out{suffixes[-1]}.")
    if p.is_dir():
        raise UserInputError(f"`{flag} {p}` must be a file path, got a folder. Add a file name.")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserInputError(f"`{flag} {p}`: folder must be creatable, got {err.strerror}. "
                             "Choose another output folder.") from None
    if not os.access(p.parent, os.W_OK):
        raise UserInputError(f"`{flag} {p}`: folder {p.parent} must be writable, got read-only. "
                             "Choose another output folder.")
    return p


def infer_case(model: Any, data_cfg: Any, transform: Any, item: Mapping[str, Any], *, prompt: str | None = None,
               uncertainty: bool = False, sw_batch_size: int = 2, **predict_kwargs: Any) -> dict[str, Any]:
    """Preprocess one case and predict it on the model grid.

    Args:
        model: a ``Segmenter``.
        data_cfg: the run's ``DataConfig`` (``patch_size`` = window size).
        transform: a ``val_transforms`` instance (keep it to invert the outputs).
        item: ``{"image": path, ["label": path], ["description": str]}``.
        prompt: the case description (overrides ``item["description"]``); the label template is
            prepended as in training (``Segmenter.batch_prompts``).
        uncertainty: also return the voxel-wise uncertainty.
        **predict_kwargs: ``steps``, ``samples``, ``generator`` (``sliding_window_predict``).

    Returns:
        ``{"data": the transformed item (MetaTensors), "probs": (N, X, Y, Z), "unc": (1, X, Y, Z) or None,
        "seconds": prediction time}``.
    """
    from tdseg_lite.inference import sliding_window_predict

    data = transform(dict(item))
    image = data["image"].unsqueeze(0)
    description = prompt if prompt is not None else item.get("description") or None
    prompts = model.batch_prompts({"image": image, "description": [description]}) if model.text is not None else None
    start = time.perf_counter()
    out = sliding_window_predict(model, image, prompts, roi_size=data_cfg.patch_size, sw_batch_size=sw_batch_size,
                                 uncertainty=True, **predict_kwargs)
    seconds = time.perf_counter() - start
    probs, unc = out
    return {"data": data, "probs": probs[0].cpu(), "unc": unc[0].cpu() if uncertainty else None, "seconds": seconds}


def to_input_space(transform: Any, data: Mapping[str, Any], values: Any, nearest: bool) -> Any:
    """Map ``values`` (K, X, Y, Z) on the model grid back to the input's grid -> (K, X0, Y0, Z0) tensor.

    ``nearest=True`` for class indices, ``False`` (bilinear) for continuous maps.
    """
    from monai.data import MetaTensor

    from tdseg_lite.data import make_inverter
    from tdseg_lite.segmenter import as_plain

    pred = MetaTensor(values)  # Invertd copies the image's trace onto a MetaTensor (a plain tensor is skipped)
    inverted = make_inverter(transform, keys="pred", nearest=nearest)({**data, "pred": pred})["pred"]
    return as_plain(inverted)


def predict_volume(model: Any, data_cfg: Any, image_path: str | os.PathLike[str], *, prompt: str | None = None,
                   steps: int | None = None, samples: int | None = None, seed: int = 0,
                   uncertainty: bool = False) -> dict[str, Any]:
    """Segment one CT file in its own grid (checked with ``check_ct``).

    Returns:
        ``{"label": uint8 (X0, Y0, Z0), "uncertainty": float32 (X0, Y0, Z0) or None, "image": the
        nibabel input image, "seconds": prediction time}``.
    """
    import torch

    from tdseg_lite.data import val_transforms

    img = check_ct(image_path)
    if prompt is not None:
        from tdseg_lite.prompts import validate_prompt

        prompt = validate_prompt(prompt, arg="--prompt")
    transform = val_transforms(data_cfg, with_label=False)
    kw = {"steps": steps, "samples": samples, "generator": torch.Generator().manual_seed(seed)}
    res = infer_case(model, data_cfg, transform, {"image": str(Path(image_path).expanduser())}, prompt=prompt,
                     uncertainty=uncertainty, **{k: v for k, v in kw.items() if v is not None})
    pred = res["probs"].argmax(dim=0, keepdim=True).to(torch.float32)
    label = to_input_space(transform, res["data"], pred, nearest=True)[0].round().to(torch.uint8).numpy()
    unc = None
    if uncertainty:
        unc = to_input_space(transform, res["data"], res["unc"], nearest=False)[0].to(torch.float32).numpy()
    if label.shape != tuple(img.shape[:3]):
        raise RuntimeError(f"inverted label has shape {label.shape}, expected {tuple(img.shape[:3])}")
    return {"label": label, "uncertainty": unc, "image": img, "seconds": res["seconds"]}


def save_nifti(array: np.ndarray, like: Any, path: str | os.PathLike[str]) -> Path:
    """Write ``array`` (X0, Y0, Z0) with the affine, qform/sform codes and units of ``like``, atomically."""
    import nibabel as nib

    from tdseg_lite.utils import atomic_write_bytes

    out = nib.Nifti1Image(array, like.affine)
    out.header.set_xyzt_units(*like.header.get_xyzt_units())
    out.set_sform(like.affine, int(like.header["sform_code"]) or 1)
    out.set_qform(like.affine, int(like.header["qform_code"]) or 1)
    p = Path(path)
    raw = out.to_bytes()
    atomic_write_bytes(p, gzip.compress(raw, compresslevel=6) if p.name.lower().endswith(".gz") else raw)
    return p


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``tdseg predict`` (DESIGN §6)."""
    parser.add_argument("--run", required=True, help="a `tdseg train` run folder")
    parser.add_argument("--input", required=True, help="CT volume (.nii/.nii.gz, raw HU, any orientation/spacing)")
    parser.add_argument("--output", required=True, help="label NIfTI to write (uint8, the input's shape and affine)")
    parser.add_argument("--prompt", default=None,
                        help="case description, e.g. 'A 3 cm tumour in the left kidney.' (label template prepended)")
    parser.add_argument("--uncertainty", default=None, help="also write the voxel-wise uncertainty (float32 NIfTI)")
    parser.add_argument("--steps", type=int, default=None, help="DDIM steps (diffusion models; default: the run's)")
    parser.add_argument("--samples", type=int, default=None,
                        help="ensemble size (diffusion models; default: the run's)")
    parser.add_argument("--start", default=None, choices=("noise", "aux"),
                        help="TextDiffSeg: sample from noise or from the aux head's latent (default: the run's)")
    parser.add_argument("--start-timestep", type=int, default=None,
                        help="TextDiffSeg with --start aux: timestep the aux latent is noised to (default: the run's)")
    parser.add_argument("--which", default="best", choices=("best", "last"), help="checkpoint to load")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampling noise")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")


def apply_sampling_start(model: Any, start: str | None, start_timestep: int | None) -> None:
    """``--start`` / ``--start-timestep`` of ``tdseg predict`` and ``tdseg evaluate`` (TextDiffSeg runs only)."""
    if start is None and start_timestep is None:
        return
    if not hasattr(model, "set_sampling_start"):
        raise UserInputError(f"`--start` and `--start-timestep` apply to TextDiffSeg runs, got a "
                             f"{type(model).__name__} run. Leave them out for this run.")
    model.set_sampling_start(start, start_timestep)


def check_positive(value: int | None, flag: str) -> None:
    """Raise unless ``value`` is ``None`` or >= 1."""
    if value is not None and value < 1:
        raise UserInputError(f"`{flag}` must be >= 1, got {value}. Omit it to use the run's setting.")


def cli_main(args: argparse.Namespace) -> int:
    """Run ``tdseg predict``; returns 0."""
    from tdseg_lite.prompts import validate_prompt

    check_positive(args.steps, "--steps")
    check_positive(args.samples, "--samples")
    output = check_output_path(args.output, "--output")
    unc_path = check_output_path(args.uncertainty, "--uncertainty") if args.uncertainty else None
    paths = [Path(args.input).expanduser().resolve(), output.resolve()] + ([unc_path.resolve()] if unc_path else [])
    if len(set(paths)) < len(paths):
        raise UserInputError(f"`--input`, `--output` and `--uncertainty` must be different files, got {args.output} "
                             "twice. Choose new output names.")
    prompt = validate_prompt(args.prompt, arg="--prompt") if args.prompt is not None else None
    check_ct(args.input)  # fail on bad input before the model loads
    from tdseg_lite.train_run import load_trained
    from tdseg_lite.utils import pick_device

    model, plan, _ = load_trained(args.run, args.which, pick_device(args.device))
    apply_sampling_start(model, args.start, args.start_timestep)
    res = predict_volume(model, plan["data"], args.input, prompt=prompt, steps=args.steps,
                         samples=args.samples, seed=args.seed, uncertainty=unc_path is not None)
    save_nifti(res["label"], res["image"], output)
    if unc_path is not None:
        save_nifti(res["uncertainty"], res["image"], unc_path)
    counts = np.bincount(res["label"].ravel(), minlength=model.num_classes)
    print(f"tdseg predict: wrote {output} (shape {res['label'].shape}, voxels per class {counts.tolist()}, "
          f"{res['seconds']:.1f} s)" + (f" and {unc_path}" if unc_path else ""), file=sys.stderr)
    return 0
