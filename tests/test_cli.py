"""The tdseg command: registry, help, one-line errors."""

from __future__ import annotations

import subprocess
import sys

from tdseg_lite import cli


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
