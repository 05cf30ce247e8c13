"""Whole-volume prediction with MONAI sliding windows, and per-class Dice / HD95 with ``monai.metrics``.

A CT volume is larger than the training patch, so ``sliding_window_inference`` cuts it into
overlapping windows of ``roi_size``, calls ``model.predict`` on a batch of windows (the image, the
diffusion's condition, is windowed; the case's text embedding is broadcast to every window) and
blends the window outputs with Gaussian weights. The same call serves every model type.

Explained in notebooks/03_conditional_unet_and_diffusion.ipynb
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from tdseg_lite.errors import UserInputError
from tdseg_lite.positions import volume_coordinates
from tdseg_lite.segmenter import as_plain

__all__ = ["evaluate", "nanmean", "per_class_metrics", "sliding_window_predict"]


@torch.no_grad()
def sliding_window_predict(model: Any, image: torch.Tensor, text: Any = None, *, roi_size: Sequence[int],
                           sw_batch_size: int = 2, overlap: float = 0.5, uncertainty: bool = False,
                           **predict_kwargs: Any) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Class probabilities of a whole volume: (1, 1, X, Y, Z) -> (1, N, X, Y, Z) [+ (1, 1, X, Y, Z)].

    Args:
        model: a ``Segmenter``.
        image: one volume (batch 1; several cases go through one call each).
        text: the case's prompt (or ``TextEmbedding``), broadcast to every window.
        roi_size: window size (the training patch).
        sw_batch_size: windows per ``predict`` call.
        overlap: window overlap (0.5 as in the calibration).
        uncertainty: also return the blended voxel-wise uncertainty.
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

    def predictor(window: torch.Tensor) -> torch.Tensor:
        kw = {"coords": window[:, 1:]} if coords else {}  # the window's own slice of the volume coordinates
        out = model.predict(window[:, :1], emb.expand(window.shape[0]) if emb is not None else None,
                            uncertainty=True, **kw, **predict_kwargs)
        return torch.cat(out, dim=1)

    device = model.device()
    volume = as_plain(image).float().to(device)
    if coords:  # every voxel's position in the whole volume, windowed together with the image
        volume = torch.cat([volume, volume_coordinates(volume.shape[2:], device)[None]], dim=1)
    out = sliding_window_inference(volume, tuple(roi_size), sw_batch_size, predictor, overlap=overlap,
                                   mode="gaussian")
    out = as_plain(out)
    probs, unc = out[:, :-1], out[:, -1:]
    return (probs, unc) if uncertainty else probs


def per_class_metrics(pred: torch.Tensor, label: torch.Tensor, num_classes: int,
                      spacing: Sequence[float] | None = None) -> dict[str, list[float]]:
    """Dice and HD95 (mm) per foreground class for one case.

    Args:
        pred: (1, 1, X, Y, Z) or (1, N, ...) probabilities / class indices.
        label: (1, 1, X, Y, Z) class indices.
        num_classes: N.
        spacing: voxel size in mm for HD95.

    Returns:
        ``{"dice": [...], "hd95": [...]}`` with N − 1 entries; NaN where undefined (class absent
        from the label for Dice; absent from either for HD95).
    """
    import warnings

    from monai.metrics import DiceMetric, HausdorffDistanceMetric
    from monai.networks.utils import one_hot

    pred = as_plain(pred)
    idx = pred.argmax(dim=1, keepdim=True) if pred.shape[1] > 1 else pred.long()
    p, y = one_hot(idx, num_classes, dim=1), one_hot(as_plain(label).long(), num_classes, dim=1)
    dice = DiceMetric(include_background=False, reduction="none", ignore_empty=True)(p, y)[0]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hd = HausdorffDistanceMetric(include_background=False, percentile=95, reduction="none")(
                p, y, spacing=list(spacing) if spacing is not None else None)[0]
    except ModuleNotFoundError as err:  # MONAI's distance transform needs scipy (or cupy)
        warnings.warn(f"HD95 skipped ({err}); install scipy (pip install scipy) to compute it.", stacklevel=2)
        hd = torch.full((num_classes - 1,), math.nan)
    absent = (p[0, 1:].flatten(1).sum(1) == 0) | (y[0, 1:].flatten(1).sum(1) == 0)
    hd = torch.where(absent | ~torch.isfinite(hd), torch.full_like(hd, math.nan), hd)
    return {"dice": dice.tolist(), "hd95": hd.tolist()}


def nanmean(values: Iterable[float]) -> float:
    """Mean of the non-NaN values (NaN when there are none)."""
    vals = [v for v in values if not math.isnan(v)]
    return sum(vals) / len(vals) if vals else math.nan


def evaluate(model: Any, loader: Iterable[Mapping[str, Any]], *, roi_size: Sequence[int],
             spacing: Sequence[float] | None = None, class_names: Sequence[str] | None = None,
             sw_batch_size: int = 2, overlap: float = 0.5, max_cases: int | None = None,
             **predict_kwargs: Any) -> dict[str, Any]:
    """Sliding-window prediction of every case of ``loader`` (batch 1) and per-class Dice / HD95.

    Returns:
        ``{"cases": [{"case_id", "dice", "hd95", "seconds"}], "dice": {class: mean}, "hd95": {class: mean},
        "hd95_undefined": {class: cases with the class
        in the label but not predicted}, "mean_dice": m, "seconds_per_case": s}``; means skip NaN.
    """
    model.eval()
    names = list(class_names) if class_names else [f"class_{c}" for c in range(1, model.num_classes)]
    cases = []
    for i, batch in enumerate(loader):
        if max_cases is not None and i >= max_cases:
            break
        prompts = model.batch_prompts(batch) if getattr(model, "text", None) is not None else None
        start = time.perf_counter()
        probs = sliding_window_predict(model, batch["image"], prompts, roi_size=roi_size, sw_batch_size=sw_batch_size,
                                       overlap=overlap, **predict_kwargs)
        seconds = time.perf_counter() - start
        m = per_class_metrics(probs.cpu(), batch["label"], model.num_classes, spacing)
        case_id = batch.get("case_id", [f"case_{i}"])
        cases.append({"case_id": case_id[0] if isinstance(case_id, (list, tuple)) else str(case_id),
                      "dice": dict(zip(names, m["dice"])), "hd95": dict(zip(names, m["hd95"])), "seconds": seconds})
    if not cases:
        raise UserInputError("`loader` must yield at least one case, got none. Check the validation split.")
    dice = {n: nanmean(c["dice"][n] for c in cases) for n in names}
    return {"cases": cases, "dice": dice, "hd95": {n: nanmean(c["hd95"][n] for c in cases) for n in names},
            "hd95_undefined": {n: sum(not math.isnan(c["dice"][n]) and math.isnan(c["hd95"][n]) for c in cases)
                               for n in names},
            "mean_dice": nanmean(dice.values()), "seconds_per_case": sum(c["seconds"] for c in cases) / len(cases)}
