"""A run on disk (tdseg_lite.runs): the run plan, `--resume` refusing another run before writing anything,
`--out` that cannot be a run folder, checkpoints that are not what `tdseg train` writes, misplaced `--set` keys."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import one_line, snapshot, write_msd_dataset

from tdseg_lite.cli import main
from tdseg_lite.config import ConfigError


@pytest.mark.parametrize(("extra", "pattern"), [
    (["--model", "textdiffseg"], "`--model` must be the run's model (unet) on --resume"),
    (["--preset", "cpu"], "`--preset` must be the run's preset (smoke) on --resume"),
    (["--data", "OTHER"], "`--data` must be the run's dataset"),
])
def test_resume_refuses_another_model_preset_or_dataset_before_writing(
        run_copy: tuple[Path, Path], extra: list[str], pattern: str, tmp_path: Path, capsys) -> None:
    run, _ = run_copy
    other = write_msd_dataset(tmp_path / "other", n_cases=3, labels={"0": "background", "1": "pancreas",
                                                                      "2": "cancer"})
    extra = [str(other) if a == "OTHER" else a for a in extra]
    before = snapshot(run)
    assert main(["train", "--out", str(run), "--resume", "--quiet", *extra]) == 2
    assert pattern in one_line(capsys, "train")
    assert snapshot(run) == before


def test_resume_refuses_a_dataset_whose_class_count_changed(run_copy: tuple[Path, Path], tmp_path: Path,
                                                            capsys) -> None:
    run, data = run_copy
    moved = shutil.copytree(data, tmp_path / "ds")
    config = json.loads((run / "config.json").read_text())
    config["data_dir"] = str(moved)
    (run / "config.json").write_text(json.dumps(config))
    meta = json.loads((moved / "dataset.json").read_text())
    meta["labels"] = {str(i): f"organ {i}" if i else "background" for i in range(10)}
    (moved / "dataset.json").write_text(json.dumps(meta))
    before = snapshot(run)
    assert main(["train", "--out", str(run), "--resume", "--data", str(moved), "--quiet"]) == 2
    assert "`--data` must have the run's 3 classes on --resume, got '10 classes'" in one_line(capsys, "train")
    assert snapshot(run) == before


def moved_dataset(run: Path, data: Path, tmp_path: Path) -> Path:
    """A copy of the run's dataset that the run's config.json points to (so that it can be changed in place)."""
    moved = shutil.copytree(data, tmp_path / "ds")
    config = json.loads((run / "config.json").read_text())
    config["data_dir"] = str(moved)
    (run / "config.json").write_text(json.dumps(config))
    return moved


def relabel(dataset: Path, labels: dict[str, str] | None = None, drop_cases: int = 0) -> None:
    meta = json.loads((dataset / "dataset.json").read_text())
    meta["labels"] = labels or meta["labels"]
    meta["training"] = meta["training"][: len(meta["training"]) - drop_cases]
    (dataset / "dataset.json").write_text(json.dumps(meta))


@pytest.mark.parametrize(("labels", "drop", "pattern"), [
    ({"0": "background", "1": "pancreas", "2": "cancer"}, 0,
     "must have the run's labels on --resume (1 kidney, 2 tumor), got '1 pancreas, 2 cancer'"),
    (None, 1, "must hold the run's 5 cases (splits.json) on --resume, got '0 new and 1 missing case(s)'"),
])
@pytest.mark.parametrize("config_json", [True, False], ids=["config.json", "checkpoint-only"])
def test_resume_refuses_a_dataset_changed_in_place(run_copy: tuple[Path, Path], tmp_path: Path, capsys,
                                                   labels: dict[str, str] | None, drop: int, pattern: str,
                                                   config_json: bool) -> None:
    """Same path, other dataset (e.g. the pancreas phantom written over the kidney one): refused, nothing written."""
    run, data = run_copy
    moved = moved_dataset(run, data, tmp_path)
    if not config_json:  # then only the checkpoint says which dataset the run trained on
        rewrite(run / "checkpoints" / "last.pt", lambda s: s["config"].update(data_dir=str(moved)))
        (run / "config.json").unlink()
    relabel(moved, labels, drop)
    before = snapshot(run)
    assert main(["train", "--out", str(run), "--resume", "--quiet", "--device", "cpu"]) == 2
    err = one_line(capsys, "train")
    assert f"`{moved / 'dataset.json'}` {pattern}" in err, err
    assert snapshot(run) == before


def test_resume_checks_the_checkpoint_itself_when_config_json_is_gone(run_copy: tuple[Path, Path], capsys) -> None:
    run, _ = run_copy
    (run / "config.json").unlink()
    before = snapshot(run)
    assert main(["train", "--out", str(run), "--resume", "--model", "textdiffseg", "--quiet", "--device", "cpu"]) == 2
    assert "`--model` must be the run's model (unet)" in one_line(capsys, "train")
    assert snapshot(run) == before and not (run / "config.json").exists()


@pytest.mark.parametrize("kind", ["file", "under-a-file", "read-only"])
def test_out_that_cannot_be_written_is_one_line_and_creates_nothing(kind: str, tmp_path: Path, capsys,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    out = {"file": blocker, "under-a-file": blocker / "run", "read-only": tmp_path / "ro" / "run"}[kind]
    if kind == "read-only":
        (tmp_path / "ro").mkdir()
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == tmp_path / "ro" else real(p, mode))
    assert main(["train", "--out", str(out), "--preset", "smoke"]) == 2
    err = one_line(capsys, "train")
    assert {"file": "must be a folder", "under-a-file": "is a file", "read-only": "is read-only"}[kind] in err
    assert sorted(p.name for p in tmp_path.iterdir()) == (["blocker", "ro"] if kind == "read-only" else ["blocker"])


def rewrite(path: Path, change: Any) -> None:
    state = torch.load(path, weights_only=True)
    change(state)
    torch.save(state, path)


@pytest.mark.parametrize(("change", "pattern"), [
    (lambda s: s.pop("config"), "must hold what tdseg train writes, got no 'config'"),
    (lambda s: s["config"].pop("plan"), "got no 'config.plan / config.labels'"),
    (lambda s: s["model"].pop(next(iter(s["model"]))), "got other weights (1 missing"),
    (lambda s: s["model"].update(extra=torch.zeros(1)), "(1 unexpected (e.g. 'extra')"),
    (lambda s: s.update(step="x"), "got a malformed 'step'"),
    (lambda s: s["config"]["plan"]["train"].update(learning_rate="abc"),
     "must hold a run plan this version can build, got one that breaks a rule (`TrainConfig.learning_rate`"),
])
def test_a_checkpoint_without_our_keys_is_one_line(run_copy: tuple[Path, Path], change: Any, pattern: str,
                                                   tmp_path: Path, capsys) -> None:
    run, _ = run_copy
    for name in ("best.pt", "last.pt"):
        if (run / "checkpoints" / name).is_file():
            rewrite(run / "checkpoints" / name, change)
    assert main(["evaluate", "--run", str(run), "--out", str(tmp_path / "m.json"), "--device", "cpu"]) == 2
    assert pattern in one_line(capsys, "evaluate")
    assert not (tmp_path / "m.json").exists()


def test_resume_from_a_checkpoint_without_the_optimizer_is_one_line(run_copy: tuple[Path, Path], capsys) -> None:
    run, _ = run_copy
    rewrite(run / "checkpoints" / "last.pt", lambda s: s.pop("optimizer"))
    before = snapshot(run)
    assert main(["train", "--out", str(run), "--resume", "--quiet", "--device", "cpu"]) == 2
    assert "got no 'optimizer'" in one_line(capsys, "train")
    assert snapshot(run) == before


@pytest.mark.parametrize(("key", "hint"), [("train.batch_size=2", "did you mean data.batch_size?"),
                                           ("train.lr=0.01", "did you mean train.learning_rate?"),
                                           ("model.label_encoder=false", "Write --model pixel-diffusion")])
def test_misplaced_keys_name_the_right_one(key: str, hint: str, tmp_path: Path, capsys) -> None:
    assert main(["train", "--out", str(tmp_path / "r"), "--preset", "smoke", "--set", key]) == 2
    assert hint in one_line(capsys, "train")
    assert not (tmp_path / "r").exists()


def test_set_field_names_are_read_without_importing_the_configs() -> None:
    """``runs.config_fields`` reads each part's class from source; it must list exactly the dataclass fields."""
    import dataclasses

    from tdseg_lite.runs import PARTS, _classes, config_fields

    classes = _classes()
    assert {p: config_fields(p) for p in PARTS} == {p: [f.name for f in dataclasses.fields(classes[p])] for p in PARTS}


def test_resume_refuses_changes_other_than_the_budget() -> None:
    from tdseg_lite.runs import RunPlan

    saved = RunPlan.build("smoke", "unet", {}).to_dict()
    assert RunPlan.from_dict(saved, {"train.max_steps": 50}).train.max_steps == 50
    assert RunPlan.from_dict(saved, {"train.learning_rate": 1e-3}).train.learning_rate == 1e-3  # unchanged: fine
    with pytest.raises(ConfigError, match="did you mean train"):
        RunPlan.from_dict(saved, {"trian.max_steps": 5})
    with pytest.raises(ConfigError, match="cannot change on --resume"):
        RunPlan.from_dict(saved, {"train.learning_rate": 0.1})
