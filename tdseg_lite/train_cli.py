"""``tdseg train``: the arguments, checked before anything heavy loads; the run itself is ``train_run``.

    tdseg train --out runs/tds --preset smoke                          # the phantom, seconds on a CPU
    tdseg train --data data/kits19 --out runs/kits --preset full --max-minutes 120
    tdseg train --out runs/tds --resume                                # continue exactly where it stopped
    tdseg train --out runs/unet --model unet --set train.learning_rate=3e-3
    torchrun --nproc_per_node 2 -m tdseg_lite.cli train --data D --out R   # DDP, one process per GPU

The run folder is described in ``runs.py``. Every argument error is one line, found before torch and
MONAI are imported (a fraction of a second) and before anything is written: ``--out`` (a file, under
a file, read-only, an existing run without ``--resume``), ``--max-minutes``, ``--device``, ``--preset``,
the ``--set`` syntax, parts, merged keys and field names, and ``--resume`` with another model, preset
or dataset (another ``--data``, other labels or other cases than ``splits.json``, even at the same
path). ``--device cuda`` costs the torch import; config values are checked when the configs are built,
still before anything is written.

Explained in notebooks/04_gpu_training.ipynb
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from tdseg_lite.checks import check_device
from tdseg_lite.config import PRESET_NAMES, parse_set_arguments, resolve_preset
from tdseg_lite.errors import UserInputError, require
from tdseg_lite.runs import PARTS, RunFolder, check_set_keys

__all__ = ["MODELS", "add_cli_arguments", "cli_main"]

#: what --model accepts (``ModelConfig.model``)
MODELS = ("textdiffseg", "unet", "text-unet", "pixel-diffusion")


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``tdseg train``."""
    parser.add_argument("--data", default="", help="MSD-layout dataset folder (default: the phantom under ARTIFACTS)")
    parser.add_argument("--out", required=True, help="run folder (created; holds config, logs, checkpoints)")
    parser.add_argument("--preset", default=None,
                        help="smoke | cpu | full | auto (default auto: full on a GPU, else cpu; a resumed run keeps its own)")
    parser.add_argument("--model", default=None, choices=MODELS, help="the model or a baseline (default textdiffseg)")
    parser.add_argument("--set", action="append", default=[], metavar="PART.FIELD=VALUE",
                        help=f"override a config field; parts: {', '.join(PARTS)} (repeatable)")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="wall-clock budget incl. the label-AE phase (a reused AE counts its load time)")
    parser.add_argument("--resume", action="store_true", help="continue from RUN/checkpoints/last.pt")
    parser.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N (default: train.device)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _dataset_classes(data_dir: str) -> int | None:
    """Classes in ``data_dir/dataset.json`` (None without --data); a missing folder is a one-line error."""
    if not data_dir:
        return None
    from tdseg_lite.validate import read_dataset_json

    labels = read_dataset_json(Path(data_dir).expanduser()).get("labels")
    return len(labels) if isinstance(labels, dict) else None


def cli_main(args: argparse.Namespace) -> int:
    """Run ``tdseg train``; returns the exit status (errors raise ``UserInputError``)."""
    folder = RunFolder(args.out)
    sets = parse_set_arguments(args.set)
    check_set_keys(sets)
    require(args.max_minutes is None or (args.max_minutes > 0 and math.isfinite(args.max_minutes)), "--max-minutes",
            "must be a positive number", args.max_minutes, "Use e.g. 10.", UserInputError)
    check_device(args.device)
    require(args.preset is None or str(args.preset).strip().lower() in (*PRESET_NAMES, "auto"), "--preset",
            f"must be one of {', '.join(PRESET_NAMES)} or auto", args.preset, "Use e.g. --preset smoke.", UserInputError)
    folder.check_writable()
    resume = bool(args.resume and folder.last.exists())
    if folder.last.exists() and not args.resume:
        raise UserInputError(f"`--out {folder.root}` already holds a checkpoint ({folder.last}). Pass --resume to "
                             "continue it, or choose a new --out.")
    n_classes = _dataset_classes(args.data)
    if resume:
        saved = folder.saved_config()
        if saved is not None:  # the checkpoint's copy is checked again once it loads, before anything is written
            preset = resolve_preset(args.preset) if args.preset not in (None, "auto") else None
            folder.check_resume(saved, model=args.model, data_dir=args.data, preset=preset, num_classes=n_classes)
            root = args.data or saved.get("data_dir") or ""
            if root:  # the same path may hold another dataset by now
                folder.check_dataset(saved, Path(root), "--data" if args.data else str(Path(root) / "dataset.json"))
            if args.preset is not None and preset is None:
                print(f"tdseg train: --preset {args.preset} on --resume keeps the run's preset "
                      f"({saved['plan'].get('preset')}).", file=sys.stderr)
    elif args.resume:
        print(f"tdseg train: no checkpoint in {folder.root} yet; starting the run from the beginning.",
              file=sys.stderr)
    if args.device is not None and args.device.startswith("cuda"):  # needs torch, not the whole training stack
        from tdseg_lite.utils import pick_device

        pick_device(args.device, arg="--device")

    from tdseg_lite.train_run import train_run

    if resume:
        return train_run(folder.root, data_dir=args.data, resume=True, sets=sets, max_minutes=args.max_minutes,
                         device=args.device, quiet=args.quiet, model=args.model, preset=args.preset)
    return train_run(folder.root, data_dir=args.data, preset=resolve_preset(args.preset), model=args.model, sets=sets,
                     max_minutes=args.max_minutes, device=args.device, quiet=args.quiet)
