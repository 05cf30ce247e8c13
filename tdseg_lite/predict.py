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
arguments and the input are checked first (readable NIfTI whose header matches the file, 3D, finite,
plausible raw HU), before torch and MONAI load; every problem is a one-line ``UserInputError`` and
leaves nothing on disk. Outputs are written atomically (temporary file + rename). While it runs,
``predict`` shows windows × DDIM steps × samples and a progress bar over the windows.

The prediction itself is ``inference.predict_volume`` (any ``Segmenter``, so a test can inject an
oracle); this module holds the command.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tdseg_lite.checks import (
    apply_sampling_start,
    check_device,
    check_output_path,
    check_positive,
    check_sampling_flags,
)
from tdseg_lite.errors import UserInputError, require
from tdseg_lite.nifti_io import check_ct, save_nifti

if TYPE_CHECKING:
    from tdseg_lite.segmenter import Segmenter

__all__ = ["add_cli_arguments", "apply_sampling_start", "check_ct", "check_output_path", "check_positive", "cli_main",
           "save_nifti", "work_summary"]


def __getattr__(name: str) -> Any:
    """Old import paths: ``infer_case``, ``predict_volume`` and ``to_input_space`` live in ``inference``
    (imported on first use, so that ``tdseg predict`` checks its arguments before torch and MONAI load)."""
    if name in ("infer_case", "predict_volume", "to_input_space"):
        from tdseg_lite import inference

        return getattr(inference, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``tdseg predict``."""
    parser.add_argument("--run", required=True, help="a `tdseg train` run folder")
    parser.add_argument("--input", required=True, help="CT volume (.nii/.nii.gz, raw HU, any orientation/spacing)")
    parser.add_argument("--output", required=True, help="label NIfTI to write (uint8, the input's shape and affine)")
    parser.add_argument("--prompt", default=None,
                        help="case description, e.g. 'A 3 cm tumour in the left kidney.' (label template prepended)")
    parser.add_argument("--uncertainty", default=None, help="also write the voxel-wise uncertainty (float32 NIfTI)")
    parser.add_argument("--steps", type=int, default=None, help="DDIM steps (diffusion models; default: the run's)")
    parser.add_argument("--samples", type=int, default=None,
                        help="ensemble size (diffusion models; default 1, or the run's with --uncertainty)")
    parser.add_argument("--start", default=None, choices=("noise", "aux"),
                        help="TextDiffSeg: sample from noise or from the aux head's latent (default: the run's)")
    parser.add_argument("--start-timestep", type=int, default=None,
                        help="TextDiffSeg with --start aux: timestep the aux latent is noised to (default: the run's)")
    parser.add_argument("--which", default="best", choices=("best", "last"), help="checkpoint to load")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampling noise")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def work_summary(model: Segmenter, windows: int, steps: int | None, samples: int | None,
                 patch: tuple[int, ...] | None = None) -> str:
    """One line: windows × DDIM steps × samples = denoiser passes, which factor dominates and how to cut it
    (``patch``: the run's window size, named in the hint when windows dominate)."""
    from tdseg_lite.segmenter import DiffusionSegmenter

    size = "×".join(map(str, patch)) if patch else "training"
    if not isinstance(model, DiffusionSegmenter):
        return f"{windows} window(s) of the run's {size} patch, one network pass each"
    steps, samples = steps or model.dcfg.inference_steps, samples or model.dcfg.samples
    calls = steps
    if model.dcfg.start == "aux":  # only the schedule's steps at or below the start timestep run
        scheduler = model.sample_scheduler
        scheduler.set_timesteps(steps)
        calls = int((scheduler.timesteps <= model.dcfg.start_timestep).sum())
    factors = {"windows": windows, "DDIM steps": calls, "samples": samples}
    top = max(factors, key=factors.get)
    hint = {"windows": f"the run's {size} patch (half-overlapping windows) sets it; a run trained with a larger "
                       "data.patch_size or a coarser data.spacing needs fewer",
            "DDIM steps": "--steps 5 --start aux runs fewer denoiser calls (benchmarks/results/frontier.md)",
            "samples": "--samples 1 is the fastest (the ensemble only sharpens the uncertainty)"}[top]
    return (f"{windows} window(s) × {calls} denoiser call(s) × {samples} sample(s) = {windows * calls * samples} "
            f"denoiser passes; {top} dominate{'s' if top == 'samples' else ''}: {hint}")


def cli_main(args: argparse.Namespace) -> int:
    """Run ``tdseg predict``; returns 0."""
    from tdseg_lite.prompts import validate_prompt

    check_positive(args.steps, "--steps")
    check_positive(args.samples, "--samples")
    check_device(args.device)
    output = check_output_path(args.output, "--output")
    unc_path = check_output_path(args.uncertainty, "--uncertainty") if args.uncertainty else None
    paths = [Path(args.input).expanduser().resolve(), output.resolve()] + ([unc_path.resolve()] if unc_path else [])
    require(len(set(paths)) == len(paths), "--input, --output and --uncertainty", "must be different files",
            args.output, "Choose new output names.", UserInputError)
    prompt = validate_prompt(args.prompt, arg="--prompt") if args.prompt is not None else None
    check_ct(args.input)  # header against the file and the size cap, then the voxels: before the model loads
    checkpoints = Path(args.run).expanduser() / "checkpoints"
    if not ((checkpoints / "last.pt").is_file() or (checkpoints / "best.pt").is_file()):
        raise UserInputError(f"`{checkpoints / 'last.pt'}` does not exist. Train first (tdseg train --out RUN) or "
                             "pass the run folder that holds checkpoints/last.pt.")
    check_sampling_flags(args.run, args.start, args.start_timestep)

    from tdseg_lite.utils import pick_device

    device = pick_device(args.device, arg="--device")  # imports torch only: a missing GPU is said before MONAI loads

    from tqdm.auto import tqdm

    from tdseg_lite.inference import predict_volume
    from tdseg_lite.runs import load_trained

    model, plan, _ = load_trained(args.run, args.which, device)
    apply_sampling_start(model, args.start, args.start_timestep)
    samples = args.samples or (None if unc_path else 1)  # an ensemble only when the uncertainty is asked for
    windows = [0]
    with tqdm(total=None, desc="windows", unit="win", disable=args.quiet, file=sys.stderr) as bar:

        def progress(done: int, total: int) -> None:
            if not windows[0]:  # the first call, before any window: say what the work is
                windows[0], bar.total = total, total
                print(f"tdseg predict: {work_summary(model, total, args.steps, samples, plan.data.patch_size)}",
                      file=sys.stderr)
            bar.update(done)

        res = predict_volume(model, plan.data, args.input, prompt=prompt, steps=args.steps, samples=samples,
                             seed=args.seed, uncertainty=unc_path is not None, progress=progress)
    windows = windows[0]
    save_nifti(res["label"], res["image"], output)
    if unc_path is not None:
        save_nifti(res["uncertainty"], res["image"], unc_path)
    import numpy as np

    counts = np.bincount(res["label"].ravel(), minlength=model.num_classes)
    print(f"tdseg predict: wrote {output} (shape {res['label'].shape}, voxels per class {counts.tolist()}, "
          f"{res['seconds']:.1f} s, {res['seconds'] / max(windows, 1):.2f} s per window)"
          + (f" and {unc_path}" if unc_path else ""), file=sys.stderr)
    return 0

