"""Argument checks shared by the commands (tdseg_lite.checks): `--device`, `--start-timestep`."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import one_line

from tdseg_lite.cli import main
from tdseg_lite.errors import UserInputError


@pytest.mark.parametrize("command", ["train", "evaluate", "predict"])
def test_an_unknown_device_is_one_line(command: str, tmp_path: Path, capsys) -> None:
    args = {"train": ["--out", str(tmp_path / "r")],
            "evaluate": ["--run", str(tmp_path), "--out", str(tmp_path / "m.json")],
            "predict": ["--run", str(tmp_path), "--input", "ct.nii.gz", "--output", str(tmp_path / "s.nii.gz")]}
    assert main([command, *args[command], "--device", "tpu"]) == 2
    assert "`--device` must be one of auto, cpu, cuda, cuda:N, got 'tpu'" in one_line(capsys, command)
    assert list(tmp_path.iterdir()) == []


def test_start_timestep_errors_name_the_flag(tmp_path: Path) -> None:
    from test_model import make

    from tdseg_lite.checks import apply_sampling_start

    with pytest.raises(UserInputError, match=r"`--start-timestep` must be in \[0, 1000\) \(the run's schedule\), "
                                             "got 5000"):
        apply_sampling_start(make("textdiffseg"), "aux", 5000)
