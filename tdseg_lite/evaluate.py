"""``tdseg evaluate``: score a trained run on a dataset — Dice, HD95 and surface Dice per case and class.

Each case goes through the run's ``val_transforms`` and a sliding-window prediction
(``predict.infer_case``). With ``--space original`` (default) the prediction is mapped back to the
label file's own grid (``Invertd``, nearest) and scored there with the file's voxel size; with
``--space model`` it is scored on the model grid (RAS, the run's ``DataConfig.spacing``) against the
resampled label, as the validation during training does. Metrics come from ``monai.metrics``:
``DiceMetric``, ``HausdorffDistanceMetric(percentile=95)`` and ``SurfaceDiceMetric`` (tolerance
``--tolerance-mm``), all with the voxel spacing in mm.

For a diffusion model with more than one sample the voxel-wise uncertainty is also judged on the
model grid: its AUROC for predicting the error voxels (``argmax != label``;
``monai.metrics.compute_roc_auc``) and the calibration of the confidence ``max_c p̄_c`` (10
reliability bins, ECE), on at most ``max_voxels`` random voxels per case.

``metrics.json`` (NaN is written as ``null``; ``CLASS`` = every foreground class name)::

    {
      "schema_version": 2,
      "run": str, "checkpoint": {"which": "best"|"last", "step": int}, "model": str,
      "data": str, "split": "val"|"all", "space": "original"|"model",
      "steps": int|null, "samples": int|null,        # DDIM steps / ensemble size; null: not a diffusion model
  "start": "noise"|"aux"|null, "start_timestep": int|null,  # where sampling starts (aux: SDEdit from the aux head)
      "seed": int, "tolerance_mm": float, "classes": [CLASS, ...], "num_cases": int,
      "seconds_per_case": float,                     # mean prediction time (sliding windows, no I/O)
      "cases": [{"case_id": str, "seconds": float, "spacing_mm": [float, float, float],
                 "dice": {CLASS: float|null},        # null: class absent from the label
                 "hd95_mm": {CLASS: float|null},     # null: class absent from the label or the prediction
                 "surface_dice": {CLASS: float|null},  # null: class absent from both
                 "uncertainty": null | {"auroc": float|null, "ece": float|null}}],
      "mean": {"dice": {CLASS: float|null}, "hd95_mm": {...}, "surface_dice": {...}},  # NaN-skipping means
      "undefined": {"dice": {CLASS: int}, "hd95_mm": {...}, "surface_dice": {...}},   # cases with null
      "mean_dice": float|null, "mean_hd95_mm": float|null, "mean_surface_dice": float|null,  # over classes
      "uncertainty": null | {"kind": "entropy"|"variance", "voxels": int, "error_rate": float,
                             "auroc": float|null, "ece": float,
                             "bins": [{"lower": float, "upper": float, "count": int,
                                       "confidence": float|null, "accuracy": float|null}]},  # 10 bins
      "versions": {package: version}
    }

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
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from tdseg_lite.errors import UserInputError

__all__ = ["METRICS", "case_metrics", "evaluate_cases", "select_cases", "uncertainty_quality",
           "uncertainty_voxels", "write_metrics"]

SCHEMA_VERSION = 2  # 2: + start, start_timestep
#: per-class metrics of every case, in ``metrics.json`` and the CSV
METRICS = ("dice", "hd95_mm", "surface_dice")


def case_metrics(pred: torch.Tensor, label: torch.Tensor, num_classes: int, spacing: Sequence[float],
                 tolerance_mm: float = 2.0) -> dict[str, list[float]]:
    """Dice, HD95 (mm) and surface Dice at ``tolerance_mm`` per foreground class for one case.

    Args:
        pred: (1, 1, X, Y, Z) class indices or (1, N, X, Y, Z) probabilities.
        label: (1, 1, X, Y, Z) class indices.
        num_classes: N.
        spacing: voxel size in mm along X, Y, Z.
        tolerance_mm: surface Dice tolerance (the same for every class).

    Returns:
        ``{"dice", "hd95_mm", "surface_dice"}``, each N − 1 floats; NaN where undefined (see the module docstring).
    """
    from monai.metrics import SurfaceDiceMetric
    from monai.networks.utils import one_hot

    from tdseg_lite.inference import per_class_metrics
    from tdseg_lite.segmenter import as_plain

    pred, label = as_plain(pred), as_plain(label).long()
    m = per_class_metrics(pred, label, num_classes, spacing)
    idx = pred.argmax(dim=1, keepdim=True) if pred.shape[1] > 1 else pred.long()
    p, y = one_hot(idx, num_classes, dim=1), one_hot(label, num_classes, dim=1)
    metric = SurfaceDiceMetric([float(tolerance_mm)] * (num_classes - 1), include_background=False, reduction="none")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI warns for every empty class
        nsd = metric(p, y, spacing=[float(s) for s in spacing])[0]
    return {"dice": m["dice"], "hd95_mm": m["hd95"], "surface_dice": nsd.tolist()}


def uncertainty_voxels(probs: torch.Tensor, unc: torch.Tensor, label: torch.Tensor, max_voxels: int = 20_000,
                       generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """A random subset of voxels for the uncertainty analysis.

    Args:
        probs: (N, X, Y, Z) mean class probabilities.
        unc: (1, X, Y, Z) voxel-wise uncertainty.
        label: (1, X, Y, Z) class indices on the same grid.
        max_voxels: keep at most this many voxels (uniformly at random).

    Returns:
        ``{"uncertainty": (V,), "confidence": (V,) max_c p_c, "error": (V,) bool argmax != label}``.
    """
    conf, pred = probs.float().max(dim=0)
    out = {"uncertainty": unc.float().reshape(-1), "confidence": conf.reshape(-1),
           "error": (pred != label.long()[0]).reshape(-1)}
    n = out["error"].numel()
    if n > max_voxels:
        keep = torch.randperm(n, generator=generator)[:max_voxels]
        out = {k: v[keep] for k, v in out.items()}
    return out


def uncertainty_quality(voxels: Mapping[str, torch.Tensor], bins: int = 10) -> dict[str, Any]:
    """AUROC of the uncertainty for the error voxels and the reliability of the confidence.

    Args:
        voxels: ``uncertainty_voxels`` output (or several concatenated), each (V,).
        bins: equal-width confidence bins on [0, 1].

    Returns:
        ``{"voxels", "error_rate", "auroc" (NaN if there are no errors or only errors), "ece",
        "bins": [{"lower", "upper", "count", "confidence", "accuracy"}]}``; ECE = Σ_b (n_b / V) |acc_b − conf_b|.
    """
    from monai.metrics import compute_roc_auc

    err, conf = voxels["error"].long(), voxels["confidence"].float()
    if err.numel() == 0:
        raise UserInputError("`voxels` must hold at least one voxel, got none. Pass uncertainty_voxels(...) output.")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # all-correct cases: MONAI warns and returns NaN
        auroc = float(compute_roc_auc(voxels["uncertainty"].float(), err))
    which = (conf * bins).long().clamp(0, bins - 1)
    table, ece = [], 0.0
    for b in range(bins):
        sel = which == b
        n = int(sel.sum())
        c = float(conf[sel].mean()) if n else math.nan
        a = float(1.0 - err[sel].float().mean()) if n else math.nan
        ece += n / err.numel() * abs(a - c) if n else 0.0
        table.append({"lower": b / bins, "upper": (b + 1) / bins, "count": n, "confidence": c, "accuracy": a})
    return {"voxels": int(err.numel()), "error_rate": float(err.float().mean()), "auroc": auroc, "ece": ece,
            "bins": table}


def _label_file(path: str) -> tuple[torch.Tensor, list[float]]:
    """A label file as (1, 1, X, Y, Z) int64 class indices in its own grid, and its voxel size (mm)."""
    import nibabel as nib
    import numpy as np

    img = nib.load(path)
    arr = np.asanyarray(img.dataobj)
    arr = arr.reshape(arr.shape[:3])  # MSD labels are 3D (a singleton 4th axis is dropped)
    return torch.from_numpy(arr.astype(np.int64))[None, None], [float(z) for z in img.header.get_zooms()[:3]]


def _score_case(model: Any, data_cfg: Any, transform: Any, item: Mapping[str, Any], opts: Mapping[str, Any],
                seed: int) -> tuple[dict[str, Any], dict[str, torch.Tensor] | None]:
    """Predict and score one case: (the case's entry in ``metrics.json``, uncertainty voxels or None)."""
    from tdseg_lite.predict import infer_case, to_input_space
    from tdseg_lite.segmenter import as_plain

    res = infer_case(model, data_cfg, transform, item, uncertainty=opts["measure_uncertainty"],
                     generator=torch.Generator().manual_seed(seed), **opts["predict"])
    idx = res["probs"].argmax(dim=0, keepdim=True)
    label = as_plain(res["data"]["label"]).long()
    if opts["space"] == "model":
        pred, target, spacing = idx[None], label[None], [float(s) for s in data_cfg.spacing]
    else:
        back = to_input_space(transform, res["data"], idx.float(), nearest=True)
        target, spacing = _label_file(item["label"])
        pred = back.round().long()[None]
    m = case_metrics(pred, target, model.num_classes, spacing, opts["tolerance_mm"])
    names = opts["classes"]
    case = {"case_id": item["case_id"], "seconds": res["seconds"], "spacing_mm": spacing,
            **{k: dict(zip(names, v)) for k, v in m.items()}, "uncertainty": None}
    voxels = None
    if opts["measure_uncertainty"]:
        voxels = uncertainty_voxels(res["probs"], res["unc"], label, opts["max_voxels"],
                                    torch.Generator().manual_seed(seed))
        q = uncertainty_quality(voxels)
        case["uncertainty"] = {"auroc": q["auroc"], "ece": q["ece"]}
    return case, voxels


def _summarise(cases: Sequence[Mapping[str, Any]], names: Sequence[str]) -> dict[str, Any]:
    """NaN-skipping means per metric and class, counts of undefined values, means over classes."""
    from tdseg_lite.inference import nanmean

    mean = {m: {n: nanmean(c[m][n] for c in cases) for n in names} for m in METRICS}
    undefined = {m: {n: sum(math.isnan(c[m][n]) for c in cases) for n in names} for m in METRICS}
    return {"mean": mean, "undefined": undefined, **{f"mean_{m}": nanmean(mean[m].values()) for m in METRICS},
            "seconds_per_case": sum(c["seconds"] for c in cases) / len(cases)}


def evaluate_cases(model: Any, data_cfg: Any, items: Sequence[Mapping[str, Any]], class_names: Sequence[str], *,
                   space: str = "original", steps: int | None = None, samples: int | None = None, seed: int = 0,
                   tolerance_mm: float = 2.0, max_voxels: int = 20_000,
                   log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Predict and score labelled cases (``{"image", "label", "case_id", "description"?}``, ``data.load_datalist``).

    Returns:
        Every ``metrics.json`` field from ``"space"`` to ``"uncertainty"`` (module docstring).
    """
    from tdseg_lite.data import val_transforms

    if space not in ("original", "model"):
        raise UserInputError(f"`space` must be 'original' or 'model', got {space!r}.")
    if not items:
        raise UserInputError("`items` must hold at least one labelled case, got none. Check the dataset and split.")
    if not tolerance_mm > 0:
        raise UserInputError(f"`--tolerance-mm` must be > 0, got {tolerance_mm}. Use e.g. 2.")
    diffusion = hasattr(model, "dcfg")
    steps = (steps or model.dcfg.inference_steps) if diffusion else None
    samples = (samples or model.dcfg.samples) if diffusion else None
    opts = {"space": space, "tolerance_mm": tolerance_mm, "classes": list(class_names), "max_voxels": max_voxels,
            "measure_uncertainty": bool(diffusion and samples > 1),
            "predict": {"steps": steps, "samples": samples} if diffusion else {}}
    transform, cases, voxels = val_transforms(data_cfg, with_label=True), [], []
    model.eval()
    for i, item in enumerate(items):
        case, vox = _score_case(model, data_cfg, transform, item, opts, seed + i)
        cases.append(case)
        voxels += [vox] if vox is not None else []
        if log is not None:
            log(f"{case['case_id']}: " + ", ".join(f"Dice {n} {case['dice'][n]:.3f}" for n in class_names)
                + f" ({case['seconds']:.1f} s)")
    unc = None
    if voxels:
        unc = {"kind": model.dcfg.uncertainty,
               **uncertainty_quality({k: torch.cat([v[k] for v in voxels]) for k in voxels[0]})}
    start = model.dcfg.start if diffusion else None
    return {"space": space, "steps": steps, "samples": samples, "start": start,
            "start_timestep": model.dcfg.start_timestep if start == "aux" else None, "seed": seed,
            "tolerance_mm": float(tolerance_mm),
            "classes": list(class_names), "num_cases": len(cases), "cases": cases, **_summarise(cases, class_names),
            "uncertainty": unc}


def select_cases(run: str | Path, checkpoint: Mapping[str, Any], data_cfg: Any, data: str | None,
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
    if got != want:
        raise UserInputError(f"`{root}/dataset.json` labels must match the run's {want}, got {got}. "
                             "Evaluate on a dataset with the same classes.")
    items = load_datalist(root)
    if split == "all":
        return root, items
    path = Path(run).expanduser() / "splits.json"
    try:
        val = list(json.loads(path.read_text())["val"])
    except (OSError, ValueError, KeyError, TypeError):
        raise UserInputError(f"`{path}` must be the run's split file with a 'val' list, got a missing or broken "
                             "file. Pass --split all, or the folder of a `tdseg train` run.") from None
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
    """Arguments of ``tdseg evaluate`` (DESIGN §6)."""
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
    parser.add_argument("--which", default="best", choices=("best", "last"), help="checkpoint to load")
    parser.add_argument("--space", default="original", choices=("original", "model"),
                        help="score in the label files' own grid or on the model grid")
    parser.add_argument("--tolerance-mm", type=float, default=2.0, help="surface Dice tolerance (mm)")
    parser.add_argument("--max-cases", type=int, default=None, help="score only the first N cases")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampling noise (case i uses seed + i)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--quiet", action="store_true", help="no per-case lines")


def cli_main(args: argparse.Namespace) -> int:
    """Run ``tdseg evaluate``; returns 0."""
    from tdseg_lite.predict import apply_sampling_start, check_output_path, check_positive
    from tdseg_lite.train_run import load_trained
    from tdseg_lite.utils import pick_device, versions

    for flag in ("steps", "samples", "max_cases"):
        check_positive(getattr(args, flag), "--" + flag.replace("_", "-"))
    out = check_output_path(args.out, "--out", (".json",))
    model, plan, ckpt = load_trained(args.run, args.which, pick_device(args.device))
    apply_sampling_start(model, args.start, args.start_timestep)
    root, items = select_cases(args.run, ckpt, plan["data"], args.data, args.split)
    labels = {int(k): v for k, v in ckpt["config"]["labels"].items()}
    names = [labels[k] for k in sorted(labels) if k > 0]
    log = None if args.quiet else (lambda line: print(f"tdseg evaluate: {line}", file=sys.stderr))
    res = evaluate_cases(model, plan["data"], items[: args.max_cases], names, space=args.space, steps=args.steps,
                         samples=args.samples, seed=args.seed, tolerance_mm=args.tolerance_mm, log=log)
    run = Path(args.run).expanduser().resolve()
    which = args.which if (run / "checkpoints" / f"{args.which}.pt").is_file() else "last"  # load_trained's fallback
    payload = {"schema_version": SCHEMA_VERSION, "run": str(run),
               "checkpoint": {"which": which, "step": int(ckpt["step"])},
               "model": plan["spec"].model.model, "data": str(root), "split": args.split, **res,
               "versions": versions()}
    json_path, csv_path = write_metrics(payload, out)
    print(f"tdseg evaluate: {res['num_cases']} case(s), mean Dice {res['mean_dice']:.3f}, mean HD95 "
          f"{res['mean_hd95_mm']:.1f} mm, mean surface Dice {res['mean_surface_dice']:.3f}; wrote {json_path} and "
          f"{csv_path}", file=sys.stderr)
    return 0
