"""The ``tdseg`` command.

Each sub-command lives in the module that owns its stage. That module defines two functions::

    def add_cli_arguments(parser: argparse.ArgumentParser) -> None: ...
    def cli_main(args: argparse.Namespace) -> int: ...          # exit status

and is listed in ``COMMANDS`` below (``tests/test_cli.py`` checks that each has both). A module is
imported only when its command runs, so ``tdseg --help`` stays fast. Bad input raises
``UserInputError``; this entry point prints it as one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from tdseg_lite import __version__
from tdseg_lite.errors import UserInputError

__all__ = ["COMMANDS", "build_parser", "main"]

#: command name -> (module that implements it, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "phantom": ("tdseg_lite.phantom.dataset", "write the synthetic abdominal CT phantom dataset (MSD layout)"),
    "validate": ("tdseg_lite.validate", "check an MSD-layout dataset; summary or one-line errors"),
    "prepare": ("tdseg_lite.datasets.prepare", "convert KiTS19 / MSD / BTCV into the common layout"),
    "train": ("tdseg_lite.train_cli", "train TextDiffSeg or a baseline"),
    "evaluate": ("tdseg_lite.evaluate", "score a trained run on a dataset (Dice, HD95, ...)"),
    "predict": ("tdseg_lite.predict", "segment one CT volume into a label NIfTI"),
    "bench": ("tdseg_lite.bench", "run the benchmarks in benchmarks/"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``tdseg`` parser; only ``command``'s module is imported to define its arguments."""
    parser = argparse.ArgumentParser(
        prog="tdseg",
        description="tdseg_lite: text-guided latent diffusion for 3D medical image segmentation.",
    )
    parser.add_argument("--version", action="version", version=f"tdseg_lite {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, helptext) in COMMANDS.items():
        p = sub.add_parser(name, help=helptext, description=helptext)
        if name == command:
            importlib.import_module(module).add_cli_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tdseg`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command)
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    module = importlib.import_module(args._module)
    try:
        return int(module.cli_main(args) or 0)
    except UserInputError as err:
        print(f"tdseg {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # the file system refused: a read-only folder, a full disk, a vanished file
        where = err.filename or "a file"
        print(f"tdseg {args.command}: error: `{where}` could not be read or written, got "
              f"{err.strerror or type(err).__name__}. Check the path, its permissions and the free disk space.",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tdseg {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
