"""`tdseg train`'s arguments (tdseg_lite.train_cli): one-line errors, an existing run needs `--resume`,
`--preset auto` on `--resume`."""

from __future__ import annotations

from pathlib import Path

import pytest

from tdseg_lite.checkpoint import save_checkpoint
from tdseg_lite.cli import main


def test_preset_auto_on_resume_says_that_the_run_keeps_its_preset(run_copy: tuple[Path, Path], capsys,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    run, _ = run_copy
    monkeypatch.setattr("tdseg_lite.train_run.train_run", lambda *a, **kw: 0)
    assert main(["train", "--out", str(run), "--resume", "--preset", "auto"]) == 0
    assert "--preset auto on --resume keeps the run's preset (smoke)" in capsys.readouterr().err


@pytest.mark.parametrize(("args", "pattern"), [
    (["--set", "train.learnig_rate=1e-3"], "did you mean train.learning_rate"),
    (["--set", "trian.max_steps=3"], "did you mean train"),
    (["--set", "train.max_steps"], "must look like part.field=value"),
    (["--set", "data.patch_size=[30,30,30]"], "divisible by 16"),
    (["--max-minutes", "-1"], "--max-minutes"),
])
def test_bad_arguments_are_one_line_errors(args: list[str], pattern: str, tmp_path: Path, capsys) -> None:
    assert main(["train", "--out", str(tmp_path / "r"), "--preset", "smoke", *args]) == 2
    err = capsys.readouterr().err
    assert pattern in err and err.count("\n") == 1


def test_existing_run_needs_resume_and_resume_keeps_the_model(tmp_path: Path, capsys) -> None:
    run = tmp_path / "r"
    save_checkpoint(run / "checkpoints" / "last.pt", {"model": {}, "config": {}})
    assert main(["train", "--out", str(run), "--preset", "smoke"]) == 2
    assert "Pass --resume" in capsys.readouterr().err
    (run / "config.json").write_text('{"plan": {"preset": "smoke", "spec": {"model": {"model": "textdiffseg"}}}}')
    assert main(["train", "--out", str(run), "--resume", "--model", "unet"]) == 2
    assert "`--model` must be the run's model (textdiffseg) on --resume" in capsys.readouterr().err
