"""Prediction and scoring of whole volumes: MONAI sliding windows, the way back to the file's grid, and
the one evaluator with the one result format.

A CT volume is larger than the training patch, so ``sliding_window_inference`` cuts it into
overlapping windows of ``roi_size``, calls ``model.predict`` on a batch of windows (the image, the
diffusion's condition, is windowed; the case's text embedding is broadcast to every window) and
blends the window outputs with Gaussian weights. The same call serves every model type::

    probs = sliding_window_predict(model, image, prompt, roi_size=(64, 64, 64))     # (1, N, X, Y, Z)
    res = infer_case(model, data_cfg, transform, {"image": "ct.nii.gz"})             # one file, model grid
    labels = to_input_space(transform, res["data"], idx, nearest=True)              # back to the file's grid
    metrics = evaluate(model, cases, class_names=["kidney", "tumor"], roi_size=(64, 64, 64))

``evaluate`` takes preprocessed batches of one case (``{"image": (1, C, X, Y, Z), "label", ...}``,
scored on that grid) or file items (``{"image": path, "label": path, "case_id"}``, preprocessed with
``transform`` and scored on the model grid or, ``space="original"``, in the label file's own grid).
Its result is what ``tdseg evaluate`` writes into ``metrics.json`` (``CLASS`` = every foreground class)::

    {"space", "steps", "samples", "start", "start_timestep", "seed", "tolerance_mm", "classes", "num_cases",
     "cases": [{"case_id", "seconds", "spacing_mm", "dice": {CLASS: v}, "hd95_mm": {...}, "surface_dice": {...},
                "uncertainty": null | {"auroc", "auroc_foreground", "ece"}}],
     "mean": {"dice": {CLASS: v}, "hd95_mm": {...}, "surface_dice": {...}},   # NaN-skipping means over cases
     "undefined": {"dice": {CLASS: n}, ...},                                   # cases where the value is NaN
     "mean_dice", "mean_hd95_mm", "mean_surface_dice", "seconds_per_case",
     "uncertainty": null | {"kind", "voxels", "error_rate", "auroc", "auroc_foreground", "ece", "bins": [...]}}

A value is NaN where it is undefined: Dice when the class is absent from the label, HD95 when it is
absent from the label or the prediction, surface Dice when it is absent from both.

Explained in notebooks/03_conditional_unet_and_diffusion.ipynb and 05_evaluation.ipynb
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from tdseg_lite.errors import UserInputError, require
from tdseg_lite.positions import volume_coordinates
from tdseg_lite.segmenter import DiffusionSegmenter, Segmenter, as_plain

if TYPE_CHECKING:
    from tdseg_lite.data import DataConfig

__all__ = ["METRICS", "case_metrics", "count_windows", "evaluate", "evaluate_cases", "infer_case", "nanmean",
           "per_class_metrics", "predict_volume", "sliding_window_predict", "summarise", "to_input_space",
           "uncertainty_quality", "uncertainty_voxels"]

#: per-class metrics of every case, in the result and in ``metrics.csv``
METRICS = ("dice", "hd95_mm", "surface_dice")


# --- prediction ----------------------------------------------------------------------------------------

def count_windows(shape: Sequence[int], roi_size: Sequence[int], overlap: float = 0.5) -> int:
    """Sliding windows MONAI cuts a (X, Y, Z) volume into (``sliding_window_inference``'s scan grid)."""
    total = 1
    for size, roi in zip(shape, roi_size):
        roi = min(roi, size)
        step = max(int(roi * (1 - overlap)), 1) if roi < size else 1
        total *= math.ceil((size - roi) / step) + 1 if roi < size else 1
    return total


#: voxels per ``predict`` call when ``sw_batch_size`` is not given: two 64³ windows (the cpu preset's)
WINDOW_VOXELS_PER_CALL = 2 * 64**3


def default_sw_batch(roi_size: Sequence[int]) -> int:
    """Windows per ``predict`` call: as many as hold ``WINDOW_VOXELS_PER_CALL`` voxels, 2 to 16.

    Small windows are cheap and each call has a fixed cost (Python, the text's keys/values, MONAI's
    stitching), so they go in larger batches: 16 windows of 32³ (the smoke preset) predict a
    96×96×64 volume in 2.6 s instead of 3.7–4.4 s with 2 per call (2 CPU threads); 64³ and larger
    windows keep 2 per call.
    """
    return max(2, min(16, WINDOW_VOXELS_PER_CALL // math.prod(int(r) for r in roi_size)))


@torch.no_grad()
def sliding_window_predict(model: Segmenter, image: torch.Tensor, text: Any = None, *, roi_size: Sequence[int],
                           sw_batch_size: int | None = None, overlap: float = 0.5, uncertainty: bool = False,
                           progress: Callable[[int, int], None] | None = None,
                           **predict_kwargs: Any) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Class probabilities of a whole volume: (1, 1, X, Y, Z) -> (1, N, X, Y, Z) [+ (1, 1, X, Y, Z)].

    Args:
        model: a ``Segmenter``.
        image: one volume (batch 1; several cases go through one call each).
        text: the case's prompt (or ``TextEmbedding``), broadcast to every window.
        roi_size: window size (the training patch).
        sw_batch_size: windows per ``predict`` call (None: ``default_sw_batch(roi_size)``).
        overlap: window overlap (0.5).
        uncertainty: also return the blended voxel-wise uncertainty.
        progress: ``progress(done, total)``: once with ``done=0`` before the first window, then with the
            windows each ``predict`` call finished; ``total`` = ``count_windows`` of the volume.
        **predict_kwargs: ``steps``, ``samples``, ``guidance``, ``eta``, ``generator``.
    """
    from monai.inferers import sliding_window_inference

    if not isinstance(image, torch.Tensor) or image.ndim != 5 or image.shape[0] != 1:
        got = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise UserInputError(f"`image` must be one volume (1, 1, X, Y, Z), got {got}. Loop over cases.")
    if isinstance(text, (list, tuple)) and len(text) == 1:
        text = text[0]
    emb = model.text.embed(text, 1, "cpu") if getattr(model, "text", None) is not None else None

    coords = getattr(model, "uses_coordinates", False)
    total = count_windows(image.shape[2:], roi_size, overlap)

    def predictor(window: torch.Tensor) -> torch.Tensor:
        kw = {"coords": window[:, 1:]} if coords else {}  # the window's own slice of the volume coordinates
        out = model.predict(window[:, :1], emb.expand(window.shape[0]) if emb is not None else None,
                            uncertainty=True, **kw, **predict_kwargs)
        if progress is not None:
            progress(int(window.shape[0]), total)
        return torch.cat(out, dim=1)

    device = model.device()
    volume = as_plain(image).float().to(device)
    if coords:  # every voxel's position in the whole volume, windowed together with the image
        volume = torch.cat([volume, volume_coordinates(volume.shape[2:], device)[None]], dim=1)
    if progress is not None:
        progress(0, total)
    batch = sw_batch_size or default_sw_batch(roi_size)
    out = sliding_window_inference(volume, tuple(roi_size), batch, predictor, overlap=overlap,
                                   mode="gaussian")
    out = as_plain(out)
    probs, unc = out[:, :-1], out[:, -1:]
    return (probs, unc) if uncertainty else probs


def infer_case(model: Segmenter, data_cfg: DataConfig, transform: Any, item: Mapping[str, Any], *, prompt: str | None = None,
               uncertainty: bool = False, sw_batch_size: int | None = None, progress: Callable[[int, int], None] | None = None,
               **predict_kwargs: Any) -> dict[str, Any]:
    """Preprocess one case file and predict it on the model grid.

    Args:
        model: a ``Segmenter``.
        data_cfg: the run's ``DataConfig`` (``patch_size`` = window size).
        transform: a ``val_transforms`` instance (keep it to invert the outputs).
        item: ``{"image": path, ["label": path], ["description": str]}``.
        prompt: the case description (overrides ``item["description"]``); the label template is
            prepended as in training (``Segmenter.batch_prompts``).
        uncertainty: also return the voxel-wise uncertainty.
        progress: see ``sliding_window_predict``.
        **predict_kwargs: ``steps``, ``samples``, ``generator`` (``sliding_window_predict``).

    Returns:
        ``{"data": the transformed item (MetaTensors), "probs": (N, X, Y, Z), "unc": (1, X, Y, Z) or None,
        "seconds": prediction time}``.
    """
    data = transform(dict(item))
    image = data["image"].unsqueeze(0)
    description = prompt if prompt is not None else item.get("description") or None
    prompts = model.batch_prompts({"image": image, "description": [description]}) if model.text is not None else None
    start = time.perf_counter()
    probs, unc = sliding_window_predict(model, image, prompts, roi_size=data_cfg.patch_size,
                                        sw_batch_size=sw_batch_size, uncertainty=True, progress=progress,
                                        **predict_kwargs)
    seconds = time.perf_counter() - start
    return {"data": data, "probs": probs[0].cpu(), "unc": unc[0].cpu() if uncertainty else None, "seconds": seconds}


def to_input_space(transform: Any, data: Mapping[str, Any], values: torch.Tensor, nearest: bool) -> torch.Tensor:
    """Map ``values`` (K, X, Y, Z) on the model grid back to the input's grid -> (K, X0, Y0, Z0) tensor.

    ``nearest=True`` for class indices, ``False`` (bilinear) for continuous maps.
    """
    from monai.data import MetaTensor

    from tdseg_lite.data import make_inverter

    pred = MetaTensor(values)  # Invertd copies the image's trace onto a MetaTensor (a plain tensor is skipped)
    inverted = make_inverter(transform, keys="pred", nearest=nearest)({**data, "pred": pred})["pred"]
    return as_plain(inverted)


def predict_volume(model: Segmenter, data_cfg: DataConfig, image_path: str | os.PathLike[str], *, prompt: str | None = None,
                   steps: int | None = None, samples: int | None = None, seed: int = 0, uncertainty: bool = False,
                   progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Segment one CT file in its own grid (checked with ``nifti_io.check_ct``).

    Returns:
        ``{"label": uint8 (X0, Y0, Z0), "uncertainty": float32 (X0, Y0, Z0) or None, "image": the
        nibabel input image, "seconds": prediction time}``.
    """
    from pathlib import Path

    from tdseg_lite.data import val_transforms
    from tdseg_lite.nifti_io import check_ct

    img = check_ct(image_path)
    if prompt is not None:
        from tdseg_lite.prompts import validate_prompt

        prompt = validate_prompt(prompt, arg="--prompt")
    transform = val_transforms(data_cfg, with_label=False)
    kw = {"steps": steps, "samples": samples, "generator": torch.Generator().manual_seed(seed)}
    res = infer_case(model, data_cfg, transform, {"image": str(Path(image_path).expanduser())}, prompt=prompt,
                     uncertainty=uncertainty, progress=progress, **{k: v for k, v in kw.items() if v is not None})
    pred = res["probs"].argmax(dim=0, keepdim=True).to(torch.float32)
    label = to_input_space(transform, res["data"], pred, nearest=True)[0].round().to(torch.uint8).numpy()
    unc = None
    if uncertainty:
        unc = to_input_space(transform, res["data"], res["unc"], nearest=False)[0].to(torch.float32).numpy()
    if label.shape != tuple(img.shape[:3]):
        raise RuntimeError(f"inverted label has shape {label.shape}, expected {tuple(img.shape[:3])}")
    return {"label": label, "uncertainty": unc, "image": img, "seconds": res["seconds"]}


# --- metrics -------------------------------------------------------------------------------------------

def case_metrics(pred: torch.Tensor, label: torch.Tensor, num_classes: int, spacing: Sequence[float] | None = None,
                 tolerance_mm: float = 2.0) -> dict[str, list[float]]:
    """Dice, HD95 (mm) and surface Dice at ``tolerance_mm`` per foreground class for one case.

    Args:
        pred: (1, 1, X, Y, Z) class indices or (1, N, X, Y, Z) probabilities.
        label: (1, 1, X, Y, Z) class indices.
        num_classes: N.
        spacing: voxel size in mm along X, Y, Z (``None``: 1 mm, i.e. voxel units).
        tolerance_mm: surface Dice tolerance (the same for every class).

    Returns:
        ``{"dice", "hd95_mm", "surface_dice"}``, each N − 1 floats; NaN where undefined (module docstring).
    """
    from monai.metrics import DiceMetric, HausdorffDistanceMetric, SurfaceDiceMetric
    from monai.networks.utils import one_hot

    pred, label = as_plain(pred), as_plain(label).long()
    spacing = [float(s) for s in spacing] if spacing is not None else [1.0, 1.0, 1.0]
    idx = pred.argmax(dim=1, keepdim=True) if pred.shape[1] > 1 else pred.long()
    p, y = one_hot(idx, num_classes, dim=1), one_hot(label, num_classes, dim=1)
    dice = DiceMetric(include_background=False, reduction="none", ignore_empty=True)(p, y)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI warns for every empty class
        try:
            hd = HausdorffDistanceMetric(include_background=False, percentile=95, reduction="none")(
                p, y, spacing=spacing)[0]
        except ModuleNotFoundError:  # MONAI's distance transform needs scipy (or cupy)
            hd = torch.full((num_classes - 1,), math.nan)
        nsd = SurfaceDiceMetric([float(tolerance_mm)] * (num_classes - 1), include_background=False,
                                reduction="none")(p, y, spacing=spacing)[0]
    absent = (p[0, 1:].flatten(1).sum(1) == 0) | (y[0, 1:].flatten(1).sum(1) == 0)
    hd = torch.where(absent | ~torch.isfinite(hd), torch.full_like(hd, math.nan), hd)
    return {"dice": dice.tolist(), "hd95_mm": hd.tolist(), "surface_dice": nsd.tolist()}


#: the name scripts used before ``case_metrics`` also gave surface Dice (same function)
per_class_metrics = case_metrics


def nanmean(values: Iterable[float]) -> float:
    """Mean of the non-NaN values (NaN when there are none)."""
    vals = [v for v in values if not math.isnan(v)]
    return sum(vals) / len(vals) if vals else math.nan


def uncertainty_voxels(probs: torch.Tensor, unc: torch.Tensor, label: torch.Tensor, max_voxels: int = 20_000,
                       generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """A random subset of voxels for the uncertainty analysis.

    Args:
        probs: (N, X, Y, Z) mean class probabilities.
        unc: (1, X, Y, Z) voxel-wise uncertainty.
        label: (1, X, Y, Z) class indices on the same grid.
        max_voxels: keep at most this many voxels (uniformly at random).

    Returns:
        ``{"uncertainty": (V,), "confidence": (V,) max_c p_c, "error": (V,) bool argmax != label,
        "foreground": (V,) bool, predicted or labelled foreground (every error voxel is one)}``.
    """
    conf, pred = probs.float().max(dim=0)
    target = label.long()[0]
    out = {"uncertainty": unc.float().reshape(-1), "confidence": conf.reshape(-1),
           "error": (pred != target).reshape(-1), "foreground": ((pred > 0) | (target > 0)).reshape(-1)}
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
        ``{"voxels", "error_rate", "auroc" (NaN if there are no errors or only errors), "auroc_foreground",
        "ece", "bins": [{"lower", "upper", "count", "confidence", "accuracy"}]}``; ECE = Σ_b (n_b / V)
        |acc_b − conf_b|. ``auroc_foreground`` is the AUROC among the voxels flagged ``"foreground"``
        (NaN without that key): the whole-volume AUROC is mostly "organ vs far background", which any
        softmax gets right; inside the organs it asks whether the uncertainty ranks the wrong voxels first.
    """
    err, conf = voxels["error"].long(), voxels["confidence"].float()
    require(err.numel() > 0, "voxels", "must hold at least one voxel", "none",
            "Pass uncertainty_voxels(...) output.", UserInputError)
    auroc = _auroc(voxels["uncertainty"], err)
    fg = voxels.get("foreground")
    auroc_fg = _auroc(voxels["uncertainty"][fg], err[fg]) if fg is not None and bool(fg.any()) else math.nan
    which = (conf * bins).long().clamp(0, bins - 1)
    table, ece = [], 0.0
    for b in range(bins):
        sel = which == b
        n = int(sel.sum())
        c = float(conf[sel].mean()) if n else math.nan
        a = float(1.0 - err[sel].float().mean()) if n else math.nan
        ece += n / err.numel() * abs(a - c) if n else 0.0
        table.append({"lower": b / bins, "upper": (b + 1) / bins, "count": n, "confidence": c, "accuracy": a})
    return {"voxels": int(err.numel()), "error_rate": float(err.float().mean()), "auroc": auroc,
            "auroc_foreground": auroc_fg, "ece": ece, "bins": table}


def _auroc(score: torch.Tensor, error: torch.Tensor) -> float:
    """AUROC of ``score`` (V,) for ``error`` (V,) with ``monai.metrics.compute_roc_auc``; NaN for one class only."""
    from monai.metrics import compute_roc_auc

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # all-correct voxels: MONAI warns and returns NaN
        return float(compute_roc_auc(score.float(), error.long()))


def summarise(cases: Sequence[Mapping[str, Any]], names: Sequence[str]) -> dict[str, Any]:
    """NaN-skipping means per metric and class, counts of undefined values, means over classes."""
    mean = {m: {n: nanmean(c[m][n] for c in cases) for n in names} for m in METRICS}
    undefined = {m: {n: sum(math.isnan(c[m][n]) for c in cases) for n in names} for m in METRICS}
    return {"mean": mean, "undefined": undefined, **{f"mean_{m}": nanmean(mean[m].values()) for m in METRICS},
            "seconds_per_case": sum(c["seconds"] for c in cases) / len(cases)}


# --- the evaluator -------------------------------------------------------------------------------------

def _first(value: Any, default: str) -> str:
    """The first entry of a collated field (a list of one) or the value itself."""
    if isinstance(value, (list, tuple)):
        value = value[0] if value else default
    return str(value) if value is not None else default


def evaluate(model: Segmenter, cases: Iterable[Mapping[str, Any]], *, roi_size: Sequence[int],
             class_names: Sequence[str] | None = None, spacing: Sequence[float] | None = None,
             space: str = "model", data_cfg: DataConfig | None = None, tolerance_mm: float = 2.0, seed: int = 0,
             max_voxels: int = 20_000, max_cases: int | None = None, sw_batch_size: int | None = None, overlap: float = 0.5,
             uncertainty: bool | None = None, log: Callable[[str], None] | None = None,
             **predict_kwargs: Any) -> dict[str, Any]:
    """Predict every case with sliding windows and score it: the one evaluator (result in the module docstring).

    Args:
        model: any ``Segmenter`` (put in eval mode).
        cases: batches of one preprocessed case ``{"image": (1, C, X, Y, Z), "label": (1, 1, X, Y, Z),
            "description"?, "case_id"?}`` (a loader or a list), or file items ``{"image": path, "label": path,
            "case_id"}`` (``data.load_datalist``), preprocessed with ``val_transforms(data_cfg)``.
        roi_size: the sliding window (the training patch).
        class_names: foreground class names (default ``class_1`` ...).
        spacing: voxel size (mm) of the model grid (default 1 mm).
        space: ``"model"`` (score on the model grid) or ``"original"`` (file items: in the label file's grid).
        data_cfg: the run's ``DataConfig`` (needed for file items).
        tolerance_mm: surface Dice tolerance.
        seed: case ``i`` samples with ``torch.Generator().manual_seed(seed + i)`` (unless ``generator`` is given).
        max_voxels: voxels per case for the uncertainty analysis.
        max_cases: score only the first cases.
        uncertainty: judge the voxel-wise uncertainty (AUROC for the error voxels, calibration). ``None``:
            for ensembles (a diffusion model with more than one sample) only; ``True``: for every model,
            where a single prediction's uncertainty is the entropy of its class probabilities (one UNet
            pass, the aux head, one diffusion sample); ``False``: never.
        log: called with one line per scored case.
        **predict_kwargs: ``steps``, ``samples``, ``guidance``, ``eta``, ``generator`` (diffusion models).
    """
    require(space in ("original", "model"), "space", "must be 'original' or 'model'", space,
            "Use --space original or --space model.", UserInputError)
    require(tolerance_mm > 0, "--tolerance-mm", "must be > 0", tolerance_mm, "Use e.g. 2.", UserInputError)
    diffusion = isinstance(model, DiffusionSegmenter)
    kw = dict(predict_kwargs)
    if diffusion:
        kw["steps"] = kw.get("steps") or model.dcfg.inference_steps
        kw["samples"] = kw.get("samples") or model.dcfg.samples
    else:
        kw = {k: v for k, v in kw.items() if k not in ("steps", "samples", "guidance", "eta", "generator")}
    ensemble = bool(diffusion and kw["samples"] > 1)
    measure = ensemble if uncertainty is None else bool(uncertainty)
    names = list(class_names) if class_names else [f"class_{c}" for c in range(1, model.num_classes)]
    grid_spacing = [float(s) for s in spacing] if spacing is not None else [1.0, 1.0, 1.0]
    transform = None
    if data_cfg is not None:
        from tdseg_lite.data import val_transforms

        transform = val_transforms(data_cfg, with_label=True)
    model.eval()
    scored, voxels = [], []
    for i, case in enumerate(cases):
        if max_cases is not None and i >= max_cases:
            break
        gen = predict_kwargs.get("generator") or torch.Generator().manual_seed(seed + i)
        run_kw = {**kw, "generator": gen} if diffusion else kw
        case_id = _first(case.get("case_id"), f"case_{i}")
        if isinstance(case.get("image"), (str, os.PathLike)):  # a file item
            require(transform is not None, "data_cfg", "must be given for file items", None,
                    "Pass the run's DataConfig (plan.data).", UserInputError)
            res = infer_case(model, data_cfg, transform, case, uncertainty=measure,
                             sw_batch_size=sw_batch_size, **run_kw)
            probs, unc, seconds, label = res["probs"], res["unc"], res["seconds"], as_plain(res["data"]["label"]).long()
        else:
            require(space == "model", "space", "must be 'model' for preprocessed batches", space,
                    "Pass file items (data.load_datalist) to score in the label file's grid.", UserInputError)
            prompts = model.batch_prompts(case) if model.text is not None else None
            start = time.perf_counter()
            out = sliding_window_predict(model, case["image"], prompts, roi_size=roi_size, sw_batch_size=sw_batch_size,
                                         overlap=overlap, uncertainty=True, **run_kw)
            seconds = time.perf_counter() - start
            probs, unc, label = out[0][0].cpu(), out[1][0].cpu(), as_plain(case["label"])[0].long().cpu()
        idx = probs.argmax(dim=0, keepdim=True)
        if space == "model":
            pred, target, case_spacing = idx[None], label[None], grid_spacing
        else:
            from tdseg_lite.nifti_io import read_label

            back = to_input_space(transform, res["data"], idx.float(), nearest=True)
            target, case_spacing = read_label(case["label"])
            pred = back.round().long()[None]
        m = case_metrics(pred, target, model.num_classes, case_spacing, tolerance_mm)
        entry = {"case_id": case_id, "seconds": seconds, "spacing_mm": case_spacing,
                 **{k: dict(zip(names, v)) for k, v in m.items()}, "uncertainty": None}
        if measure:
            vox = uncertainty_voxels(probs, unc, label, max_voxels, torch.Generator().manual_seed(seed + i))
            q = uncertainty_quality(vox)
            entry["uncertainty"] = {k: q[k] for k in ("auroc", "auroc_foreground", "ece")}
            voxels.append(vox)
        scored.append(entry)
        if log is not None:
            log(f"{case_id}: " + ", ".join(f"Dice {n} {entry['dice'][n]:.3f}" for n in names)
                + f" ({seconds:.1f} s)")
    require(scored, "cases", "must hold at least one case", 0, "Check the dataset and the split.", UserInputError)
    unc_summary = None
    if voxels:
        unc_summary = {"kind": model.dcfg.uncertainty if ensemble else "entropy",
                       **uncertainty_quality({k: torch.cat([v[k] for v in voxels]) for k in voxels[0]})}
    start_kind = model.dcfg.start if diffusion else None
    return {"space": space, "steps": kw.get("steps"), "samples": kw.get("samples"), "start": start_kind,
            "start_timestep": model.dcfg.start_timestep if start_kind == "aux" else None, "seed": seed,
            "tolerance_mm": float(tolerance_mm), "classes": names, "num_cases": len(scored), "cases": scored,
            **summarise(scored, names), "uncertainty": unc_summary}


def evaluate_cases(model: Segmenter, data_cfg: DataConfig, items: Sequence[Mapping[str, Any]], class_names: Sequence[str], *,
                   space: str = "original", steps: int | None = None, samples: int | None = None, seed: int = 0,
                   tolerance_mm: float = 2.0, max_voxels: int = 20_000, uncertainty: bool | None = None,
                   log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """``evaluate`` on labelled case files (``data.load_datalist``) with the run's ``DataConfig``: what
    ``tdseg evaluate`` runs (default: scored in each label file's own grid)."""
    require(len(items) > 0, "items", "must hold at least one labelled case", 0, "Check the dataset and split.",
            UserInputError)
    return evaluate(model, items, roi_size=data_cfg.patch_size, class_names=class_names, spacing=data_cfg.spacing,
                    space=space, data_cfg=data_cfg, tolerance_mm=tolerance_mm,
                    seed=seed, max_voxels=max_voxels, uncertainty=uncertainty, log=log, steps=steps, samples=samples)
