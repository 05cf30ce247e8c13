"""`tdseg train`'s run (tdseg_lite.train_run): exact resume after SIGKILL, the run folder, a dataset refused
before training, training states that do not fit, the closing report."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import FAST, finish, one_line, run_env, snapshot, tdseg
from test_runs import rewrite

from tdseg_lite.checkpoint import load_checkpoint
from tdseg_lite.cli import main


@pytest.mark.parametrize(("change", "pattern"), [
    (lambda s: s["model"].pop(next(iter(s["model"]))), "must hold the weights of the run's model, got other weights"),
    (lambda s: s["rng"].update(torch=torch.zeros(3)), "must hold the training state tdseg train writes for this model"),
    (lambda s: s["optimizer"].update(param_groups=[]), "must hold the training state tdseg train writes for this model"),
    (lambda s: s.update(step="x"), "got a malformed 'step'"),
])
def test_resume_from_a_checkpoint_that_does_not_fit_is_one_line_and_writes_nothing(
        run_copy: tuple[Path, Path], change: Any, pattern: str, capsys) -> None:
    run, _ = run_copy
    rewrite(run / "checkpoints" / "last.pt", change)
    before = snapshot(run)
    assert main(["train", "--out", str(run), "--resume", "--quiet", "--device", "cpu"]) == 2
    assert pattern in one_line(capsys, "train")
    assert snapshot(run) == before  # config.json, log.csv, splits.json: byte for byte


def test_no_validation_case_is_said_plainly(capsys) -> None:
    import math

    from tdseg_lite.train_run import _report

    _report({"val": [], "steps": 3, "train_seconds": 1.0}, {"value": -math.inf, "step": -1}, Path("r"))
    err = capsys.readouterr().err
    assert "no validation Dice" in err and "val_fraction=0" in err and "-inf" not in err and "step -1" not in err


def test_sigkill_and_resume_end_with_identical_weights(dataset: Path, tmp_path: Path) -> None:
    env = run_env(tmp_path)
    common = ["train", "--data", str(dataset), *FAST, "--set", "train.max_steps=6", "--set", "train.checkpoint_every=1"]
    finish(tdseg([*common, "--out", str(tmp_path / "a")], env))
    killed = tdseg([*common, "--out", str(tmp_path / "b")], env)
    last, deadline, step = tmp_path / "b" / "checkpoints" / "last.pt", time.time() + 180, -1
    while time.time() < deadline and killed.poll() is None:
        if last.exists():
            step = load_checkpoint(last)["step"]
            if step >= 2:
                break
        time.sleep(0.05)
    assert killed.poll() is None, "the run ended before it could be killed; " + killed.communicate()[0]
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    stopped_at = load_checkpoint(last)["step"]
    assert 2 <= stopped_at < 6
    out = finish(tdseg([*common, "--out", str(tmp_path / "b"), "--resume"], env))
    a, b = (load_checkpoint(tmp_path / r / "checkpoints" / "last.pt") for r in ("a", "b"))
    assert a["step"] == b["step"] == 6 and a["batches"] == b["batches"]
    assert a["model"].keys() == b["model"].keys()
    different = [k for k in a["model"] if not torch.equal(a["model"][k], b["model"][k])]
    assert not different, f"resumed from step {stopped_at}; differing tensors: {different[:5]}\n{out}"
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])
    steps = [int(line.split(",")[0]) for line in (tmp_path / "b" / "log.csv").read_text().splitlines()[1:]]
    assert steps == sorted(set(steps)), "log rows after the checkpoint must not be duplicated on resume"


def test_smoke_run_writes_the_run_folder(dataset: Path, tmp_path: Path) -> None:
    out = finish(tdseg(["train", "--data", str(dataset), "--out", str(tmp_path / "r"), *FAST, "--model", "unet",
                        "--set", "train.max_steps=4", "--set", "train.val_every=2"], run_env(tmp_path)))
    run = tmp_path / "r"
    assert {"config.json", "log.csv", "val.csv", "loss_curve.png", "splits.json"} <= {p.name for p in run.iterdir()}
    assert "val mean Dice" in out
    val = (run / "val.csv").read_text().splitlines()
    assert val[0].startswith("step,dice_kidney,dice_tumor,mean_dice") and len(val) == 3
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    assert best["best"]["step"] in (2, 4) and best["config"]["plan"]["spec"]["model"]["model"] == "unet"


def test_a_dataset_failing_validate_is_refused_before_training(dataset: Path, tmp_path: Path, capsys) -> None:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(dataset, broken)
    (broken / "labelsTr" / "case_001.nii.gz").unlink()  # a listed label file is missing
    assert main(["train", "--data", str(broken), "--out", str(tmp_path / "r"), "--preset", "smoke", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "case_001.nii.gz" in err and err.startswith("tdseg train: error:")
    assert not (tmp_path / "r" / "checkpoints").exists()
