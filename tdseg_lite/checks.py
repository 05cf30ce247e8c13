"""Checks of command-line arguments shared by ``tdseg train``, ``evaluate`` and ``predict``.

Light on purpose (no torch, no MONAI): every command runs them before its heavy imports, so a bad
argument costs a fraction of a second and leaves nothing on disk. Each failure is one
``UserInputError`` line naming the flag, the value, the rule and the fix.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from tdseg_lite.errors import UserInputError, require

if TYPE_CHECKING:
    from tdseg_lite.segmenter import Segmenter

__all__ = ["DEVICE_NAMES", "apply_sampling_start", "check_device", "check_output_path", "check_positive",
           "check_sampling_flags", "check_writable_folder"]

#: what --device accepts
DEVICE_NAMES = ("auto", "cpu", "cuda", "cuda:N")


def check_positive(value: float | None, flag: str) -> None:
    """Raise unless ``value`` is ``None`` or >= 1."""
    require(value is None or value >= 1, flag, "must be >= 1", value, "Omit it to use the run's setting.",
            UserInputError)


def check_device(device: str | None, flag: str = "--device") -> None:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (CUDA being present is checked when torch is loaded)."""
    ok = device is None or device in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", str(device)) is not None
    require(ok, flag, f"must be one of {', '.join(DEVICE_NAMES)}", device, "Use --device auto (CUDA when present).",
            UserInputError)


def check_writable_folder(folder: Path, flag: str) -> None:
    """``folder`` is, or can be created as, a writable directory; nothing is created."""
    parent = folder
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    require(parent.is_dir(), flag, f"must be under a folder, but {parent} is a file", str(folder),
            "Choose a path that is not under a file.", UserInputError)
    require(os.access(parent, os.W_OK | os.X_OK), flag, f"must be writable, but {parent} is read-only", str(folder),
            "Choose a folder you can write to.", UserInputError)


def check_output_path(path: str | os.PathLike[str], flag: str, suffixes: tuple[str, ...] = (".nii", ".nii.gz")) -> Path:
    """``path`` as a ``Path`` after checking its suffix and that its folder exists or can be made, writable.

    Nothing is created here: the file (and a missing folder) appears only when the result is written.
    """
    p = Path(path).expanduser()
    require(p.name.lower().endswith(suffixes), f"{flag} {p}", f"must end with {' or '.join(suffixes)}", p.name,
            f"Use e.g. {flag} out{suffixes[-1]}.", UserInputError)
    require(not p.is_dir(), f"{flag} {p}", "must be a file path", "a folder", "Add a file name.", UserInputError)
    check_writable_folder(p.parent, flag)
    require(not p.exists() or os.access(p, os.W_OK), flag, "must be writable", f"read-only {p}",
            "Choose another output file.", UserInputError)
    return p


def _check_start(is_textdiffseg: bool, kind: str, start_timestep: int | None, total: int) -> None:
    if not is_textdiffseg:
        raise UserInputError(f"`--start` and `--start-timestep` apply to TextDiffSeg runs, got a {kind} run. "
                             "Leave them out for this run.")
    require(start_timestep is None or 0 <= start_timestep < total, "--start-timestep",
            f"must be in [0, {total}) (the run's schedule)", start_timestep, "Use e.g. --start-timestep 500.",
            UserInputError)


def check_sampling_flags(run: str | os.PathLike[str], start: str | None, start_timestep: int | None) -> None:
    """``--start`` / ``--start-timestep`` against the run's ``config.json``, before torch loads.

    Checks the timestep range of a TextDiffSeg run; without a readable ``config.json``, and for the
    other models (named by their class), ``apply_sampling_start`` decides once the model is loaded.
    """
    if start is None and start_timestep is None:
        return
    try:
        spec = json.loads((Path(run).expanduser() / "config.json").read_text())["plan"]["spec"]
        model, total = str(spec["model"]["model"]), int(spec["diffusion"]["num_train_timesteps"])
    except (OSError, ValueError, KeyError, TypeError):
        return
    if model == "textdiffseg":
        _check_start(True, model, start_timestep, total)


def apply_sampling_start(model: Segmenter, start: str | None, start_timestep: int | None) -> None:
    """``--start`` / ``--start-timestep`` of ``tdseg predict`` and ``tdseg evaluate`` (TextDiffSeg runs only)."""
    if start is None and start_timestep is None:
        return
    from tdseg_lite.model import TextDiffSeg  # the model is loaded by now: no extra import cost

    textdiffseg = isinstance(model, TextDiffSeg)
    _check_start(textdiffseg, type(model).__name__, start_timestep,
                 model.dcfg.num_train_timesteps if textdiffseg else 0)
    model.set_sampling_start(start, start_timestep)
