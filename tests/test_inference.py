"""Whole-volume inference and metrics (tdseg_lite.inference), with the tiny models of test_model."""

from __future__ import annotations

import math

import pytest
import torch
from test_model import fixed_batch, make, one_thread  # noqa: F401 - tests/ is on sys.path; fixture

from tdseg_lite.errors import UserInputError
from tdseg_lite.inference import evaluate, per_class_metrics, sliding_window_predict


@pytest.mark.parametrize("name", ["textdiffseg", "unet"])
def test_sliding_window_on_a_volume_larger_than_the_patch(name: str) -> None:
    model = make(name).eval()
    image = torch.rand(1, 1, 24, 20, 16)
    probs, unc = sliding_window_predict(model, image, "A kidney.", roi_size=(16, 16, 16), uncertainty=True, steps=2,
                                        generator=torch.Generator().manual_seed(0))
    assert probs.shape == (1, 3, 24, 20, 16) and unc.shape == (1, 1, 24, 20, 16)
    with pytest.raises(UserInputError, match="one volume"):
        sliding_window_predict(model, torch.rand(2, 1, 16, 16, 16), roi_size=(16, 16, 16))


def test_per_class_metrics_perfect_and_missing() -> None:
    label = fixed_batch()["label"][:1]
    perfect = per_class_metrics(label, label, 3, spacing=(3.0, 3.0, 3.0))
    assert perfect["dice"] == [1.0, 1.0] and perfect["hd95_mm"] == [0.0, 0.0] and perfect["surface_dice"] == [1.0, 1.0]
    empty = per_class_metrics(torch.zeros_like(label), label, 3)
    assert empty["dice"] == [0.0, 0.0] and all(math.isnan(v) for v in empty["hd95_mm"])


def test_evaluate_reports_means_per_class() -> None:
    model = make("unet").eval()
    batch = fixed_batch()
    loader = [{"image": batch["image"][:1], "label": batch["label"][:1], "case_id": ["a"]}]
    out = evaluate(model, loader, roi_size=(16, 16, 16), spacing=(3.0, 3.0, 3.0), class_names=["kidney", "tumor"])
    assert set(out["mean"]["dice"]) == {"kidney", "tumor"} and out["cases"][0]["case_id"] == "a"
    assert out["seconds_per_case"] >= 0 and set(out["undefined"]["hd95_mm"]) == {"kidney", "tumor"}
    assert out["space"] == "model" and out["steps"] is None and out["cases"][0]["spacing_mm"] == [3.0, 3.0, 3.0]
    with pytest.raises(UserInputError, match="at least one case"):
        evaluate(model, [], roi_size=(16, 16, 16))
