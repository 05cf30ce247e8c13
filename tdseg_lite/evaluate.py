"""``tdseg evaluate``: score a trained run on a dataset — Dice, HD95 and surface Dice per case and class.

Each case goes through the run's ``val_transforms`` and a sliding-window prediction, scored by
``inference.evaluate`` (the one evaluator; its result is the body of ``metrics.json`` below). With
``--space original`` (default) the prediction is mapped back to the label file's own grid
(``Invertd``, nearest) and scored there with the file's voxel size; with ``--space model`` it is scored on the model grid (RAS, the run's ``DataConfig.spacing``) against the
resampled label, as the validation during training does. Metrics come from ``monai.metrics``:
``DiceMetric``, ``HausdorffDistanceMetric(percentile=95)`` and ``SurfaceDiceMetric`` (tolerance
``--tolerance-mm``), all with the voxel spacing in mm.

For a diffusion model with more than one sample (and, with ``--uncertainty``, for every model) the
voxel-wise uncertainty is also judged on the model grid: its AUROC for predicting the error voxels
(``argmax != label``; ``monai.metrics.compute_roc_auc``) over the whole volume and among the voxels
predicted or labelled foreground (where every error lies), and the calibration of the confidence
``max_c p̄_c`` (10 reliability bins, ECE), on at most ``max_voxels`` random voxels per case. An
ensemble's uncertainty is ``DiffusionConfig.uncertainty`` of its samples; a single prediction's (one
UNet pass, the aux head, one diffusion sample) is the entropy of its class probabilities, so
``--uncertainty`` measures what the sampling adds to the uncertainty a softmax gives for free.

``metrics.json`` (NaN is written as ``null``; ``CLASS`` = every foreground class name)::

    {
      "schema_version": 5,
      "run": str, "checkpoint": {"which": "best"|"last", "step": int}, "model": str,
      "data": str, "split": "val"|"all", "space": "original"|"model",
      "reports": "own"|"none",                       # the prompts: each case's description, or the label names only
      "head": "sampler"|"aux",                       # the model's prediction, or TextDiffSeg's aux head alone
      "steps": int|null, "samples": int|null,        # DDIM steps / ensemble size; null: not a diffusion model
      "start": "noise"|"aux"|null, "start_timestep": int|null,  # where sampling starts (aux: SDEdit from the aux head)
      "seed": int, "tolerance_mm": float, "classes": [CLASS, ...], "num_cases": int,
      "seconds_per_case": float,                     # mean prediction time (sliding windows, no I/O)
      "cases": [{"case_id": str, "seconds": float, "spacing_mm": [float, float, float],
                 "dice": {CLASS: float|null},        # null: class absent from the label
                 "hd95_mm": {CLASS: float|null},     # null: class absent from the label or the prediction
                 "surface_dice": {CLASS: float|null},  # null: class absent from both
                 "uncertainty": null | {"auroc": float|null, "auroc_foreground": float|null, "ece": float|null}}],
      "mean": {"dice": {CLASS: float|null}, "hd95_mm": {...}, "surface_dice": {...}},  # NaN-skipping means
      "undefined": {"dice": {CLASS: int}, "hd95_mm": {...}, "surface_dice": {...}},   # cases with null
      "mean_dice": float|null, "mean_hd95_mm": float|null, "mean_surface_dice": float|null,  # over classes
      "uncertainty": null | {"kind": "entropy"|"variance", "voxels": int, "error_rate": float,
                             "auroc": float|null, "auroc_foreground": float|null, "ece": float,
                             "bins": [{"lower": float, "upper": float, "count": int,
                                       "confidence": float|null, "accuracy": float|null}]},  # 10 bins
      "versions": {package: version}
    }

``--reports none`` scores the same cases with the label names as the only prompt. On real data the
descriptions that ``tdseg prepare`` and ``tdseg phantom --labels-from`` write are oracle reports
(measured on the reference masks), so a real-data number is reported with both.

``--head aux`` scores TextDiffSeg's aux head alone (``model.AuxHeadView``: softmax(D(ẑ_aux)), no
denoiser call; ``steps``, ``samples`` and ``start`` are then null): what the diffusion adds is the
difference to the default ``--head sampler`` on the same cases.

``metrics.csv`` next to it has one row per case and class: ``case_id,class,dice,hd95_mm,surface_dice,seconds``
(empty cells for NaN).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from collections.abc import Mapping
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

if TYPE_CHECKING:
    from tdseg_lite.data import DataConfig

__all__ = ["HEADS", "METRICS", "REPORTS", "SCHEMA_VERSION", "add_cli_arguments", "cli_main", "pick_head", "select_cases", "with_reports",
           "write_metrics"]

SCHEMA_VERSION = 5  # 2: + start, start_timestep; 3: + reports; 4: + head; 5: + auroc_foreground, --uncertainty
#: per-class metrics of every case, in ``metrics.json`` and the CSV (= ``inference.METRICS``)
METRICS = ("dice", "hd95_mm", "surface_dice")


def __getattr__(name: str) -> Any:
    """Old import paths: the evaluator and its metrics live in ``inference`` (imported on first use, so that
    ``tdseg evaluate`` checks its arguments before torch and MONAI load)."""
    if name in ("case_metrics", "evaluate_cases", "uncertainty_quality", "uncertainty_voxels"):
        from tdseg_lite import inference

        return getattr(inference, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


REPORTS = ("own", "none")


def with_reports(items: list[dict[str, Any]], reports: str) -> list[dict[str, Any]]:
    """The cases with the reports the model reads: ``"own"`` keeps each ``description``, ``"none"``
    drops it (the prompt is then the label template alone)."""
    require(reports in REPORTS, "--reports", f"must be one of {', '.join(REPORTS)}", reports,
            "Pass --reports own or --reports none.", UserInputError)
    return items if reports == "own" else [{k: v for k, v in e.items() if k != "description"} for e in items]


HEADS = ("sampler", "aux")


def check_head_flags(head: str, flags: Mapping[str, Any]) -> None:
    """``--head aux`` calls no denoiser: a sampler flag given with it is a one-line error (before torch loads)."""
    require(head in HEADS, "--head", f"must be one of {', '.join(HEADS)}", head, "Pass --head sampler or --head aux.",
            UserInputError)
    if head == "aux":
        for flag, value in flags.items():
            require(value is None, flag, "has no effect with --head aux (the aux head calls no denoiser)", value,
                    f"Leave {flag} out, or pass --head sampler.", UserInputError)


def pick_head(model: Any, head: str) -> Any:
    """The ``Segmenter`` to score: ``model`` itself (``"sampler"``) or TextDiffSeg's aux head alone (``"aux"``)."""
    check_head_flags(head, {})
    if head == "sampler":
        return model
    from tdseg_lite.model import AuxHeadView, TextDiffSeg

    has_aux = (isinstance(model, TextDiffSeg) and model.image_encoder is not None
               and model.image_encoder.cfg.aux_latent_channels > 0)
    if not has_aux:
        kind = type(model).__name__ + (" without an aux head" if isinstance(model, TextDiffSeg) else "")
        raise UserInputError(f"`--head aux` needs a TextDiffSeg run with an aux head, got a {kind} run. "
                             "Leave --head out for this run.")
    return AuxHeadView(model)


def select_cases(run: str | Path, checkpoint: Mapping[str, Any], data_cfg: DataConfig, data: str | None,
                 split: str) -> tuple[Path, list[dict[str, str]]]:
    """The dataset folder and its cases to score: ``split="val"`` -> the run's ``splits.json`` val cases,
    ``"all"`` -> every labelled (``"training"``) case. ``data=None`` -> the run's training dataset."""
    from tdseg_lite.data import default_dataset, load_datalist, load_labels
    from tdseg_lite.validate import validate_dataset

    if data:
        root = Path(data).expanduser().resolve()
        validate_dataset(root).raise_if_invalid()
    else:
        root = default_dataset(data_cfg, checkpoint["config"].get("data_dir", ""))
    want = {str(k): v for k, v in checkpoint["config"]["labels"].items()}
    got = {str(k): v for k, v in load_labels(root).items()}
    require(got == want, f"{root}/dataset.json", f"labels must match the run's {want}", got,
            "Evaluate on a dataset with the same classes.", UserInputError)
    items = load_datalist(root)
    if split == "all":
        return root, items
    path = Path(run).expanduser() / "splits.json"
    try:
        val = list(json.loads(path.read_text())["val"])
    except (OSError, ValueError, KeyError, TypeError):
        raise UserInputError(f"`{path}` must be the run's split file with a 'val' list, got a missing or broken "
                             "file. Pass --split all, or the folder of a `tdseg train` run.") from None
    require(val, "--split val", "needs validation cases", "an empty 'val' list in splits.json (val_fraction=0)",
            "Pass --split all.", UserInputError)
    by_id = {e["case_id"]: e for e in items}
    missing = [c for c in val if c not in by_id]
    if missing:
        raise UserInputError(f"`--split val` needs the run's validation cases in {root}, got {len(missing)} missing "
                             f"(e.g. {missing[0]!r}). Pass the run's training dataset as --data, or --split all.")
    return root, [by_id[c] for c in val]


def write_metrics(payload: Mapping[str, Any], path: str | Path) -> tuple[Path, Path]:
    """Write ``payload`` as ``path`` (JSON, NaN -> null) and ``path`` with ``.csv`` (case × class rows), atomically."""
    from tdseg_lite.utils import atomic_write_text, jsonable

    path = Path(path)
    atomic_write_text(path, json.dumps(jsonable(payload), indent=2, allow_nan=False) + "\n")
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["case_id", "class", *METRICS, "seconds"])
    cell = lambda v: "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.6g}"
    for case in payload["cases"]:
        for name in payload["classes"]:
            writer.writerow([case["case_id"], name, *(cell(case[m][name]) for m in METRICS), cell(case["seconds"])])
    csv_path = path.with_suffix(".csv")
    atomic_write_text(csv_path, buf.getvalue())
    return path, csv_path


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``tdseg evaluate``."""
    parser.add_argument("--run", required=True, help="a `tdseg train` run folder")
    parser.add_argument("--data", default=None, help="MSD-layout dataset (default: the run's training data)")
    parser.add_argument("--split", default="val", choices=("val", "all"),
                        help="val: the run's validation cases; all: every labelled case of --data")
    parser.add_argument("--out", required=True, help="metrics JSON to write (a .csv is written next to it)")
    parser.add_argument("--steps", type=int, default=None, help="DDIM steps (diffusion models; default: the run's)")
    parser.add_argument("--samples", type=int, default=None,
                        help="ensemble size (diffusion models; > 1 adds the uncertainty analysis)")
    parser.add_argument("--start", default=None, choices=("noise", "aux"),
                        help="TextDiffSeg: sample from noise or from the aux head's latent (default: the run's)")
    parser.add_argument("--start-timestep", type=int, default=None,
                        help="TextDiffSeg with --start aux: timestep the aux latent is noised to (default: the run's)")
    parser.add_argument("--reports", default="own", choices=REPORTS,
                        help="own: each case's description from dataset.json (on real data an oracle report made "
                             "from the masks); none: the label names only")
    parser.add_argument("--head", default="sampler", choices=HEADS,
                        help="sampler: the model's prediction (diffusion: DDIM); aux: TextDiffSeg's aux head alone "
                             "(no denoiser call)")
    parser.add_argument("--uncertainty", action="store_true",
                        help="judge the uncertainty of every model (a single prediction: the entropy of its "
                             "probabilities); without it, of ensembles (--samples > 1) only")
    parser.add_argument("--which", default="best", choices=("best", "last"), help="checkpoint to load")
    parser.add_argument("--space", default="original", choices=("original", "model"),
                        help="score in the label files' own grid or on the model grid")
    parser.add_argument("--tolerance-mm", type=float, default=2.0, help="surface Dice tolerance (mm)")
    parser.add_argument("--max-cases", type=int, default=None, help="score only the first N cases")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampling noise (case i uses seed + i)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--quiet", action="store_true", help="no per-case lines")


def cli_main(args: argparse.Namespace) -> int:
    """Run ``tdseg evaluate``; returns 0 (arguments are checked before torch and MONAI load)."""
    for flag in ("steps", "samples", "max_cases"):
        check_positive(getattr(args, flag), "--" + flag.replace("_", "-"))
    check_head_flags(args.head, {"--steps": args.steps, "--samples": args.samples, "--start": args.start,
                                 "--start-timestep": args.start_timestep})
    require(args.tolerance_mm > 0 and math.isfinite(args.tolerance_mm), "--tolerance-mm", "must be a positive number",
            args.tolerance_mm, "Use e.g. 2.", UserInputError)
    check_device(args.device)
    out = check_output_path(args.out, "--out", (".json",))
    run = Path(args.run).expanduser()
    last = run / "checkpoints" / "last.pt"
    if not (last.is_file() or (run / "checkpoints" / "best.pt").is_file()):
        raise UserInputError(f"`{last}` does not exist. Train first (tdseg train --out RUN) or pass the run folder "
                             "that holds checkpoints/last.pt.")
    if args.data:
        require(Path(args.data).expanduser().is_dir(), "--data", "must be a dataset folder", args.data,
                "Pass the folder that holds dataset.json.", UserInputError)
    check_sampling_flags(run, args.start, args.start_timestep)

    from tdseg_lite.utils import pick_device, versions

    device = pick_device(args.device, arg="--device")  # imports torch only: a missing GPU is said before MONAI loads

    from tdseg_lite.inference import evaluate_cases
    from tdseg_lite.runs import load_trained

    model, plan, ckpt = load_trained(args.run, args.which, device)
    apply_sampling_start(model, args.start, args.start_timestep)
    model = pick_head(model, args.head)
    root, items = select_cases(args.run, ckpt, plan.data, args.data, args.split)
    items = with_reports(items, args.reports)
    labels = {int(k): v for k, v in ckpt["config"]["labels"].items()}
    names = [labels[k] for k in sorted(labels) if k > 0]
    log = None if args.quiet else (lambda line: print(f"tdseg evaluate: {line}", file=sys.stderr))
    res = evaluate_cases(model, plan.data, items[: args.max_cases], names, space=args.space, steps=args.steps,
                         samples=args.samples, seed=args.seed, tolerance_mm=args.tolerance_mm,
                         uncertainty=True if args.uncertainty else None, log=log)
    run = run.resolve()
    which = args.which if (run / "checkpoints" / f"{args.which}.pt").is_file() else "last"  # load_trained's fallback
    payload = {"schema_version": SCHEMA_VERSION, "run": str(run),
               "checkpoint": {"which": which, "step": int(ckpt["step"])},
               "model": plan.spec.model.model, "data": str(root), "split": args.split, "reports": args.reports,
               "head": args.head, **res,
               "versions": versions()}
    json_path, csv_path = write_metrics(payload, out)
    print(f"tdseg evaluate: {res['num_cases']} case(s), mean Dice {res['mean_dice']:.3f}, mean HD95 "
          f"{res['mean_hd95_mm']:.1f} mm, mean surface Dice {res['mean_surface_dice']:.3f}; wrote {json_path} and "
          f"{csv_path}", file=sys.stderr)
    return 0
