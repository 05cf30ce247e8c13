"""`tdseg evaluate`: Dice / HD95 / surface Dice in mm, uncertainty AUROC and calibration, the metrics.json
schema, case selection and the real CLI on a trained run."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import write_msd_dataset
from test_model import make, one_thread  # noqa: F401 - tests/ is on sys.path; autouse fixture
from test_predict import OBLIQUE_IPL, Oracle

from tdseg_lite.cli import main
from tdseg_lite.config import ConfigError
from tdseg_lite.data import DataConfig, load_datalist
from tdseg_lite.errors import UserInputError
from tdseg_lite.evaluate import (
    METRICS,
    case_metrics,
    evaluate_cases,
    pick_head,
    select_cases,
    uncertainty_quality,
    uncertainty_voxels,
)
from tdseg_lite.predict import apply_sampling_start

NAMES = ["kidney", "tumor"]
LABELS = {"0": "background", "1": "kidney", "2": "tumor"}
NUM = (int, float)
OPT_NUM = (int, float, type(None))


def check_schema(m: dict[str, Any], full: bool = True) -> None:
    """Every field of the metrics.json schema in evaluate.py's docstring, with its type."""
    top = {"space": str, "steps": (int, type(None)), "samples": (int, type(None)), "start": (str, type(None)),
           "start_timestep": (int, type(None)), "seed": int, "tolerance_mm": float,
           "classes": list, "num_cases": int, "cases": list, "mean": dict, "undefined": dict, "mean_dice": OPT_NUM,
           "mean_hd95_mm": OPT_NUM, "mean_surface_dice": OPT_NUM, "seconds_per_case": NUM,
           "uncertainty": (dict, type(None))}
    if full:
        top |= {"schema_version": int, "run": str, "checkpoint": dict, "model": str, "data": str, "split": str,
                "reports": str, "head": str, "versions": dict}
        assert set(m["checkpoint"]) == {"which", "step"} and m["split"] in ("val", "all")
        assert m["reports"] in ("own", "none") and m["head"] in ("sampler", "aux")
    assert set(m) == set(top), set(m) ^ set(top)
    for key, kind in top.items():
        assert isinstance(m[key], kind), (key, m[key])
    classes = m["classes"]
    assert m["num_cases"] == len(m["cases"]) >= 1 and m["space"] in ("original", "model")
    for case in m["cases"]:
        assert set(case) == {"case_id", "seconds", "spacing_mm", *METRICS, "uncertainty"}
        assert isinstance(case["case_id"], str) and case["seconds"] >= 0 and len(case["spacing_mm"]) == 3
        for metric in METRICS:
            assert set(case[metric]) == set(classes) and all(isinstance(v, OPT_NUM) for v in case[metric].values())
        assert case["uncertainty"] is None or set(case["uncertainty"]) == {"auroc", "auroc_foreground", "ece"}
    for part in ("mean", "undefined"):
        assert set(m[part]) == set(METRICS) and all(set(m[part][x]) == set(classes) for x in METRICS)
    assert all(isinstance(v, int) for x in METRICS for v in m["undefined"][x].values())
    if m["uncertainty"] is not None:
        u = m["uncertainty"]
        assert set(u) == {"kind", "voxels", "error_rate", "auroc", "auroc_foreground", "ece", "bins"}
        assert len(u["bins"]) == 10 and u["kind"] in ("entropy", "variance")
        assert sum(b["count"] for b in u["bins"]) == u["voxels"] and 0.0 <= u["ece"] <= 1.0
        assert all(set(b) == {"lower", "upper", "count", "confidence", "accuracy"} for b in u["bins"])


def box(shape: tuple[int, int, int], *boxes: tuple[int, tuple[slice, ...]]) -> torch.Tensor:
    out = torch.zeros(1, 1, *shape, dtype=torch.long)
    for cls, where in boxes:
        out[(0, 0, *where)] = cls
    return out


def test_case_metrics_use_the_spacing_in_mm() -> None:
    label = box((24, 24, 24), (1, (slice(4, 16),) * 3), (2, (slice(18, 22),) * 3))
    pred = box((24, 24, 24), (1, (slice(4, 16), slice(4, 16), slice(6, 18))), (2, (slice(18, 22),) * 3))  # 2 voxels up
    iso, along_x, along_z = (case_metrics(pred, label, 3, s, tolerance_mm=2.0)
                             for s in ((1.0, 1.0, 1.0), (3.0, 1.0, 1.0), (1.0, 1.0, 3.0)))
    assert iso["dice"] == [pytest.approx(10 / 12), 1.0] and iso["hd95_mm"] == [2.0, 0.0]
    assert along_x["hd95_mm"] == [2.0, 0.0] and along_z["hd95_mm"] == [6.0, 0.0]  # the shift is along axis 2
    assert iso["surface_dice"] == [1.0, 1.0] and along_z["surface_dice"][0] < 0.8  # 2 mm vs 6 mm > 2 mm tolerance
    assert case_metrics(pred, label, 3, (1.0, 1.0, 3.0), tolerance_mm=6.0)["surface_dice"][0] == 1.0


def test_case_metrics_undefined_values_are_nan() -> None:
    label = box((16, 16, 16), (1, (slice(4, 12),) * 3))
    both_absent = case_metrics(label, label, 3, (1.0, 1.0, 1.0))
    assert both_absent["dice"][0] == 1.0 and all(math.isnan(both_absent[m][1]) for m in METRICS)
    false_positive = case_metrics(box((16, 16, 16), (2, (slice(0, 2),) * 3)), label, 3, (1.0, 1.0, 1.0))
    assert math.isnan(false_positive["dice"][1]) and math.isnan(false_positive["hd95_mm"][1])
    assert false_positive["surface_dice"][1] == 0.0 and false_positive["dice"][0] == 0.0


def test_uncertainty_quality_auroc_and_calibration() -> None:
    error = torch.tensor([False] * 80 + [True] * 20)
    perfect = uncertainty_quality({"uncertainty": error.float(), "confidence": torch.full((100,), 0.8), "error": error})
    assert perfect["auroc"] == 1.0 and perfect["ece"] == pytest.approx(0.0, abs=1e-6)
    assert perfect["bins"][8]["count"] == 100 and perfect["bins"][8]["accuracy"] == pytest.approx(0.8)
    assert math.isnan(perfect["bins"][0]["confidence"]) and perfect["error_rate"] == pytest.approx(0.2)
    wrong = uncertainty_quality({"uncertainty": 1 - error.float(), "confidence": torch.ones(100), "error": error})
    assert wrong["auroc"] == 0.0 and wrong["ece"] == pytest.approx(0.2) and wrong["bins"][9]["count"] == 100
    no_errors = uncertainty_quality({"uncertainty": torch.rand(10), "confidence": torch.rand(10),
                                     "error": torch.zeros(10, dtype=torch.bool)})
    assert math.isnan(no_errors["auroc"]) and math.isnan(no_errors["auroc_foreground"])
    # inside the organs: 10 background voxels that a score ranks perfectly, 10 organ voxels it ranks backwards
    score = torch.cat([torch.zeros(10), torch.linspace(1, 2, 10)])
    err = torch.tensor([False] * 10 + [True] * 5 + [False] * 5)
    fg = torch.tensor([False] * 10 + [True] * 10)
    inside = uncertainty_quality({"uncertainty": score, "confidence": torch.ones(20), "error": err, "foreground": fg})
    assert inside["auroc"] == pytest.approx(10 / 15) and inside["auroc_foreground"] == 0.0
    with pytest.raises(UserInputError, match="at least one voxel"):
        uncertainty_quality({"uncertainty": torch.zeros(0), "confidence": torch.zeros(0), "error": torch.zeros(0)})


def test_uncertainty_voxels_subsample_reproducibly() -> None:
    probs = torch.softmax(torch.randn(3, 10, 10, 10), dim=0)
    label = probs.argmax(dim=0, keepdim=True)
    label[0, 0] = (label[0, 0] + 1) % 3  # one wrong slab
    unc = torch.rand(1, 10, 10, 10)
    full = uncertainty_voxels(probs, unc, label, max_voxels=10**6)
    assert full["error"].sum() == 100 and torch.equal(full["confidence"], probs.max(0).values.reshape(-1))
    a, b = (uncertainty_voxels(probs, unc, label, 50, torch.Generator().manual_seed(3)) for _ in range(2))
    assert a["uncertainty"].shape == (50,) and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(full["foreground"], ((probs.argmax(0) > 0) | (label[0] > 0)).reshape(-1))
    assert bool(full["foreground"][full["error"]].all())  # every error voxel is predicted or labelled foreground


def test_oracle_scores_perfectly_in_both_spaces(tmp_path: Path) -> None:
    data = write_msd_dataset(tmp_path / "ds", n_cases=2, shape=(24, 64, 64), affine=OBLIQUE_IPL)
    cfg, items = DataConfig(spacing=(0.8, 0.8, 5.0), patch_size=(32, 32, 32)), load_datalist(data)
    lines: list[str] = []
    for space in ("original", "model"):
        res = evaluate_cases(Oracle(), cfg, items, NAMES, space=space, log=lines.append)
        check_schema(res, full=False)
        assert res["mean"]["dice"] == {"kidney": 1.0, "tumor": 1.0} and res["mean_hd95_mm"] == 0.0
        assert res["mean_surface_dice"] == 1.0 and res["uncertainty"] is None and res["steps"] is None
    assert res["cases"][0]["spacing_mm"] == [0.8, 0.8, 5.0] and len(lines) == 4 and "Dice kidney 1.000" in lines[0]


def test_diffusion_model_reports_uncertainty_quality(tmp_path: Path) -> None:
    data = write_msd_dataset(tmp_path / "ds", n_cases=1, shape=(24, 24, 16))
    model = make("textdiffseg").eval()
    cfg = DataConfig(spacing=(3.0, 3.0, 3.0), patch_size=(16, 16, 16))
    res = evaluate_cases(model, cfg, load_datalist(data), NAMES, steps=1, samples=2, max_voxels=500)
    check_schema(res, full=False)
    assert res["uncertainty"]["voxels"] == 500 and res["uncertainty"]["kind"] == "entropy"
    assert res["steps"] == 1 and res["samples"] == 2 and set(res["cases"][0]["uncertainty"]) == {"auroc", "auroc_foreground", "ece"}
    assert res["start"] == "noise" and res["start_timestep"] is None
    single = evaluate_cases(model, cfg, load_datalist(data), NAMES, steps=1, samples=1)
    assert single["uncertainty"] is None and single["cases"][0]["uncertainty"] is None
    asked = evaluate_cases(model, cfg, load_datalist(data), NAMES, steps=1, samples=1, uncertainty=True)
    assert asked["uncertainty"]["kind"] == "entropy" and asked["uncertainty"]["voxels"] == 16 ** 3  # every voxel of the model grid
    assert asked["cases"][0]["dice"] == single["cases"][0]["dice"]  # the same prediction, only judged as well
    never = evaluate_cases(model, cfg, load_datalist(data), NAMES, steps=1, samples=2, uncertainty=False)
    assert never["uncertainty"] is None


def test_aux_head_is_scored_alone_and_refused_where_there_is_none(tmp_path: Path) -> None:
    data = write_msd_dataset(tmp_path / "ds", n_cases=1, shape=(24, 24, 16))
    model = make("textdiffseg").eval()
    calls: list[int] = []
    model.denoiser.register_forward_hook(lambda mod, args, out: calls.append(1))
    head = pick_head(model, "aux")
    image = torch.rand(1, 1, 16, 16, 16)
    torch.testing.assert_close(head.predict(image, ""), model.predict_aux(image, ""))
    cfg = DataConfig(spacing=(3.0, 3.0, 3.0), patch_size=(16, 16, 16))
    res = evaluate_cases(head, cfg, load_datalist(data), NAMES)
    check_schema(res, full=False)
    assert calls == [] and res["steps"] is None and res["samples"] is None and res["start"] is None
    assert pick_head(model, "sampler") is model
    with pytest.raises(UserInputError, match="`--head aux` needs a TextDiffSeg run with an aux head, got a "
                                             "UNetSegmenter run"):
        pick_head(make("unet"), "aux")
    with pytest.raises(UserInputError, match="got a TextDiffSeg without an aux head run"):
        pick_head(make("textdiffseg", aux_head=False), "aux")
    with pytest.raises(UserInputError, match="`--head` must be one of sampler, aux, got 'denoiser'"):
        pick_head(model, "denoiser")


def test_evaluate_cases_rejects_bad_options(tmp_path: Path) -> None:
    items = load_datalist(write_msd_dataset(tmp_path / "ds", n_cases=1))
    with pytest.raises(UserInputError, match="at least one labelled case"):
        evaluate_cases(Oracle(), DataConfig(), [], NAMES)
    with pytest.raises(UserInputError, match="`space` must be 'original' or 'model'"):
        evaluate_cases(Oracle(), DataConfig(), items, NAMES, space="world")
    with pytest.raises(UserInputError, match="`--tolerance-mm` must be > 0, got 0"):
        evaluate_cases(Oracle(), DataConfig(), items, NAMES, tolerance_mm=0)


def test_select_cases_reads_the_run_split(tmp_path: Path) -> None:
    data = write_msd_dataset(tmp_path / "ds", n_cases=3)
    ckpt = {"config": {"labels": LABELS, "data_dir": str(data)}}
    run = tmp_path / "run"
    run.mkdir()
    (run / "splits.json").write_text(json.dumps({"train": ["case_000", "case_001"], "val": ["case_002"]}))
    root, items = select_cases(run, ckpt, DataConfig(), None, "val")
    assert root == data.resolve() and [i["case_id"] for i in items] == ["case_002"]
    assert len(select_cases(run, ckpt, DataConfig(), str(data), "all")[1]) == 3
    (run / "splits.json").write_text(json.dumps({"val": ["case_009"]}))
    with pytest.raises(UserInputError, match="got 1 missing \\(e.g. 'case_009'\\)"):
        select_cases(run, ckpt, DataConfig(), str(data), "val")
    (run / "splits.json").write_text("{broken")
    with pytest.raises(UserInputError, match="splits.json` must be the run's split file"):
        select_cases(run, ckpt, DataConfig(), str(data), "val")
    other = write_msd_dataset(tmp_path / "other", n_cases=1, labels={"0": "background", "1": "liver", "2": "tumor"})
    with pytest.raises(UserInputError, match="labels must match the run's"):
        select_cases(run, ckpt, DataConfig(), str(other), "all")


def test_cli_end_to_end_writes_metrics_json_and_csv(tiny_unet_run: tuple[Path, Path], tmp_path: Path,
                                                     capsys) -> None:
    run, data = tiny_unet_run
    out = tmp_path / "eval" / "metrics.json"
    assert main(["evaluate", "--run", str(run), "--out", str(out), "--device", "cpu"]) == 0
    assert "mean Dice" in capsys.readouterr().err
    m = json.loads(out.read_text())
    check_schema(m)
    val = json.loads((run / "splits.json").read_text())["val"]
    assert [c["case_id"] for c in m["cases"]] == val and m["model"] == "unet" and m["split"] == "val"
    assert m["steps"] is None and m["classes"] == NAMES and m["cases"][0]["spacing_mm"] == [2.0, 2.0, 3.0]
    rows = list(csv.DictReader(out.with_suffix(".csv").open()))
    assert [(r["case_id"], r["class"]) for r in rows] == [(val[0], n) for n in NAMES]
    assert list(rows[0]) == ["case_id", "class", *METRICS, "seconds"]
    out2 = tmp_path / "all.json"
    assert main(["evaluate", "--run", str(run), "--data", str(data), "--split", "all", "--space", "model",
                 "--max-cases", "2", "--out", str(out2), "--quiet", "--device", "cpu", "--reports", "none"]) == 0
    m2 = json.loads(out2.read_text())
    check_schema(m2)
    assert m2["num_cases"] == 2 and m2["space"] == "model" and m2["cases"][0]["spacing_mm"] == [3.0, 3.0, 3.0]
    assert m["reports"] == "own" and m2["reports"] == "none"
    assert m["uncertainty"] is None  # a UNet is judged only when asked
    out3 = tmp_path / "unc.json"
    assert main(["evaluate", "--run", str(run), "--out", str(out3), "--quiet", "--device", "cpu", "--uncertainty"]) == 0
    m3 = json.loads(out3.read_text())
    check_schema(m3)
    assert m3["uncertainty"]["kind"] == "entropy" and m3["mean"] == m["mean"] and m3["schema_version"] == 5


def test_reports_none_drops_each_description_and_own_keeps_it() -> None:
    from tdseg_lite.evaluate import with_reports

    items = [{"image": "a.nii.gz", "label": "b.nii.gz", "case_id": "c0", "description": "A 3 cm tumour ..."},
             {"image": "d.nii.gz", "label": "e.nii.gz", "case_id": "c1"}]
    assert with_reports(items, "own") == items
    assert with_reports(items, "none") == [{"image": "a.nii.gz", "label": "b.nii.gz", "case_id": "c0"}, items[1]]
    assert "description" in items[0]  # the caller's list is not changed
    with pytest.raises(UserInputError, match="`--reports` must be one of own, none, got 'oracle'"):
        with_reports(items, "oracle")


@pytest.mark.parametrize(("extra", "pattern"), [
    (["--out", "m.txt"], r"`--out m.txt` must end with .json"),
    (["--out", "m.json", "--samples", "0"], "`--samples` must be >= 1, got 0"),
    (["--out", "m.json", "--max-cases", "-1"], "`--max-cases` must be >= 1, got -1"),
    (["--out", "m.json"], r"no_run/checkpoints/last.pt` does not exist"),
    (["--out", "m.json", "--head", "aux", "--steps", "2"], "`--steps` has no effect with --head aux"),
])
def test_cli_errors_exit_2_with_one_line(extra: list[str], pattern: str, tmp_path: Path, capsys,
                                         monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["evaluate", "--run", "no_run", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("tdseg evaluate: error:")
    assert __import__("re").search(pattern, err), err


def test_aux_start_runs_only_the_steps_below_its_timestep_and_is_reported(tmp_path: Path) -> None:
    data = write_msd_dataset(tmp_path / "ds", n_cases=1, shape=(24, 24, 16))
    model = make("textdiffseg", **{"diffusion.guidance_scale": 1.0}).eval()
    calls: list[int] = []
    model.denoiser.register_forward_hook(lambda mod, args, out: calls.append(int(args[1][0])))
    image = torch.rand(1, 1, 16, 16, 16)
    model.sample(image, "", steps=10)
    assert len(calls) == 10 and calls[0] == 999
    calls.clear()
    model.set_sampling_start("aux", 300)
    model.sample(image, "", steps=10)
    assert calls == [222, 111, 0]  # DDIM 10 over 1000 steps, only t <= 300 run, from the aux latent noised to 222
    cfg = DataConfig(spacing=(3.0, 3.0, 3.0), patch_size=(16, 16, 16))
    res = evaluate_cases(model, cfg, load_datalist(data), NAMES, steps=10, samples=1)
    check_schema(res, full=False)
    assert res["start"] == "aux" and res["start_timestep"] == 300
    model.set_sampling_start("noise")
    assert model.dcfg.start == "noise" and model.dcfg.start_timestep == 300


def test_aux_start_errors() -> None:
    with pytest.raises(UserInputError, match="`--start aux` needs a TextDiffSeg with an aux head"):
        make("textdiffseg", aux_head=False).set_sampling_start("aux")
    with pytest.raises(ConfigError, match="start_timestep"):
        make("textdiffseg").set_sampling_start("aux", 1000)
    with pytest.raises(UserInputError, match="apply to TextDiffSeg runs, got a UNetSegmenter run"):
        apply_sampling_start(make("unet"), "aux", None)
    apply_sampling_start(make("unet"), None, None)  # nothing asked: nothing to check


def test_cli_start_on_a_unet_run_is_a_one_line_error(tiny_unet_run: tuple[Path, Path], tmp_path: Path,
                                                     capsys) -> None:
    run, _ = tiny_unet_run
    assert main(["evaluate", "--run", str(run), "--out", str(tmp_path / "m.json"), "--start", "aux"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "apply to TextDiffSeg runs, got a UNetSegmenter run" in err
    assert not (tmp_path / "m.json").exists()


def test_small_windows_go_in_larger_batches_per_predict_call() -> None:
    """Smoke's 32³ windows: 16 per call (75 windows of a 96×96×64 volume in 5 calls, not 38); 64³ keeps 2."""
    from tdseg_lite.inference import default_sw_batch, sliding_window_predict

    assert [default_sw_batch((r,) * 3) for r in (32, 48, 64, 96)] == [16, 4, 2, 2]

    class Counting:  # the Segmenter surface sliding_window_predict uses
        text = None

        def __init__(self) -> None:
            self.calls: list[int] = []

        def device(self) -> torch.device:
            return torch.device("cpu")

        def predict(self, window: torch.Tensor, text: object = None, *, uncertainty: bool = False, **kw: object):
            self.calls.append(window.shape[0])
            b, _, *size = window.shape
            return torch.full((b, 3, *size), 1 / 3), torch.zeros(b, 1, *size)

    model = Counting()
    probs = sliding_window_predict(model, torch.zeros(1, 1, 96, 96, 64), roi_size=(32, 32, 32))
    assert sum(model.calls) == 75 and len(model.calls) == 5 and probs.shape == (1, 3, 96, 96, 64)
    model.calls.clear()
    sliding_window_predict(model, torch.zeros(1, 1, 96, 96, 64), roi_size=(32, 32, 32), sw_batch_size=2)
    assert len(model.calls) == 38
