"""The tdseg command: registry, help, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import one_line
from test_predict import write_ct

from tdseg_lite import cli
from tdseg_lite.cli import main


def test_every_listed_command_module_has_the_two_entry_points() -> None:
    import importlib

    for (module, _) in cli.COMMANDS.values():
        mod = importlib.import_module(module)
        assert callable(getattr(mod, "add_cli_arguments", None)), f"{module} lacks add_cli_arguments"
        assert callable(getattr(mod, "cli_main", None)), f"{module} lacks cli_main"


def test_help_imports_no_command_module() -> None:
    code = ("import sys; from tdseg_lite import cli; cli.build_parser(); "
            "print(sorted(m for m in sys.modules if m.startswith(('tdseg_lite.', 'torch', 'monai'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "torch" not in out and "monai" not in out and "tdseg_lite.phantom" not in out, out


def test_no_command_prints_help_and_fails(capsys) -> None:
    assert cli.main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_console_script_version() -> None:
    out = subprocess.run([sys.executable, "-m", "tdseg_lite.cli", "--version"], capture_output=True, text=True,
                         check=False)
    assert out.returncode == 0 and out.stdout.startswith("tdseg_lite ")


def test_user_input_error_is_one_line_exit_2(monkeypatch, capsys) -> None:
    import argparse
    import types

    from tdseg_lite.errors import UserInputError

    fake = types.ModuleType("tdseg_lite._fake_cmd")
    fake.add_cli_arguments = lambda p: p.add_argument("--x")
    def run(args: argparse.Namespace) -> int:
        raise UserInputError(f"`--x` must be positive, got {args.x}. Pass --x 1.")
    fake.cli_main = run
    monkeypatch.setitem(sys.modules, "tdseg_lite._fake_cmd", fake)
    monkeypatch.setattr(cli, "COMMANDS", {"fake": ("tdseg_lite._fake_cmd", "test")})
    assert cli.main(["fake", "--x", "-3"]) == 2
    err = capsys.readouterr().err
    assert err == "tdseg fake: error: `--x` must be positive, got -3. Pass --x 1.\n"


def test_a_write_refused_by_the_file_system_is_one_line(tmp_path: Path, capsys,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> int:
        raise PermissionError(13, "Permission denied", str(tmp_path / "r" / "config.json"))

    monkeypatch.setattr("tdseg_lite.train_run.train_run", refuse)  # train_cli imports it lazily: gets the patch
    assert main(["train", "--out", str(tmp_path / "r"), "--preset", "smoke"]) == 2
    assert "config.json` could not be read or written, got Permission denied" in one_line(capsys, "train")


def fake_run(folder: Path, model: str) -> Path:
    """A run folder with a config.json (TextDiffSeg schedule of 1000 steps) and an empty last.pt."""
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "checkpoints" / "last.pt").write_bytes(b"")
    spec = {"model": {"model": model}, "diffusion": {"num_train_timesteps": 1000}}
    (folder / "config.json").write_text(json.dumps({"plan": {"preset": "smoke", "spec": spec}, "labels": {}}))
    return folder


def test_argument_errors_are_found_before_torch_or_monai_load(tmp_path: Path) -> None:
    """One fresh interpreter runs every bad command line; torch and MONAI must still be unloaded after them
    (``--device cuda`` on a machine without CUDA may load torch, not MONAI)."""
    run = fake_run(tmp_path / "tds", "textdiffseg")
    ct = tmp_path / "ct.nii.gz"
    write_ct(ct, shape=(12, 16, 16))
    cases = [["train", "--out", str(tmp_path / "r"), "--set", "train.ae_steps=5"],
             ["train", "--out", str(tmp_path / "r"), "--set", "trian.max_steps=5"],
             ["train", "--out", str(tmp_path / "r"), "--max-minutes", "-1"],
             ["train", "--out", str(tmp_path / "r"), "--device", "tpu"],
             ["train", "--out", str(tmp_path / "r"), "--preset", "huge"],
             ["evaluate", "--run", str(tmp_path / "nope"), "--out", str(tmp_path / "m.json")],
             ["evaluate", "--run", str(tmp_path / "nope"), "--out", str(tmp_path / "m.txt")],
             ["evaluate", "--run", str(tmp_path / "nope"), "--out", str(tmp_path / "m.json"), "--samples", "0"],
             ["predict", "--run", str(tmp_path / "nope"), "--input", str(tmp_path / "no.nii.gz"),
              "--output", str(tmp_path / "o.nii.gz")],
             ["train", "--out", str(tmp_path / "r"), "--set", "train.lr=0.1"],
             ["train", "--out", str(tmp_path / "r"), "--set", "train.batch_size=2"],
             ["evaluate", "--run", str(run), "--out", str(tmp_path / "m.json"), "--start-timestep", "5000"],
             ["predict", "--run", str(run), "--input", str(ct), "--output", str(tmp_path / "o.nii.gz"),
              "--start", "aux", "--start-timestep", "1000"]]
    cuda = [["predict", "--run", str(run), "--input", str(ct), "--output", str(tmp_path / "o.nii.gz"),
             "--device", "cuda"],
            ["train", "--out", str(tmp_path / "r"), "--preset", "smoke", "--device", "cuda"]]
    code = ("import json, sys; from tdseg_lite.cli import main\n"
            f"codes = [main(a) for a in {json.dumps(cases)}]\n"
            "heavy = sorted(m for m in ('torch', 'monai') if m in sys.modules)\n"
            f"cuda = [main(a) for a in {json.dumps(cuda)}] if not {torch.cuda.is_available()} else []\n"
            "print(json.dumps({'codes': codes, 'heavy': heavy, 'cuda': cuda, 'monai': 'monai' in sys.modules}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    n_cuda = 0 if torch.cuda.is_available() else len(cuda)
    assert result == {"codes": [2] * len(cases), "heavy": [], "cuda": [2] * n_cuda, "monai": False}, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == len(cases) + n_cuda, proc.stderr  # one line each
    assert "did you mean train.learning_rate?" in lines[9] and "did you mean data.batch_size?" in lines[10]
    assert "`--start-timestep` must be in [0, 1000) (the run's schedule), got 5000" in lines[11]
    assert "got 1000" in lines[12]
    assert all("without a CUDA GPU" in line for line in lines[13:]), lines[13:]
