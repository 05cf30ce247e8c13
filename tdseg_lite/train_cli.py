"""``tdseg train``: a run folder with config, logs, a loss curve and resumable checkpoints.

    tdseg train --out runs/tds --preset smoke                          # the phantom, seconds on a CPU
    tdseg train --data data/kits19 --out runs/kits --preset full --max-minutes 120
    tdseg train --out runs/tds --resume                                # continue exactly where it stopped
    tdseg train --out runs/unet --model unet --set train.learning_rate=3e-3
    torchrun --nproc_per_node 2 -m tdseg_lite.cli train --data D --out R   # DDP, one process per GPU

The run folder::

    RUN/config.json            preset, every config field, data folder, command, versions
    RUN/splits.json            the train/val split used
    RUN/log.csv                step, seconds, lr and every loss term (rank-averaged)
    RUN/val.csv                step, Dice per class, mean Dice (validation with a fast DDIM setting)
    RUN/loss_curve.png         the loss terms and the validation Dice
    RUN/checkpoints/last.pt    written atomically; --resume reads it
    RUN/checkpoints/best.pt    the best validation mean Dice so far

Explained in notebooks/04_gpu_training.ipynb
"""

from __future__ import annotations

import argparse
import csv
import difflib
import json
import math
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tdseg_lite.config import (
    ConfigError,
    config_to_dict,
    parse_set_arguments,
    resolve_preset,
)
from tdseg_lite.errors import UserInputError
from tdseg_lite.utils import atomic_write_text

__all__ = ["RunLog", "add_cli_arguments", "cli_main", "plan_from_dict", "plan_run", "plan_to_dict"]

PARTS = ("data", "train", "model", "denoiser", "diffusion", "fusion", "image_encoder", "label_ae", "text")
#: what may change on --resume without breaking the run (the budget and the logging cadence)
RESUMABLE = ("train.max_steps", "train.log_every", "train.val_every", "train.checkpoint_every", "train.val_max_cases",
             "label_ae.reuse")
#: keys that were merged into another one: old -> the one to use (the old one is refused, naming the new)
MOVED = {"train.ae_steps": "label_ae.max_steps"}


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``tdseg train`` (DESIGN §6)."""
    parser.add_argument("--data", default="", help="MSD-layout dataset folder (default: the phantom under ARTIFACTS)")
    parser.add_argument("--out", required=True, help="run folder (created; holds config, logs, checkpoints)")
    parser.add_argument("--preset", default="auto", help="smoke | cpu | full | auto (full on a GPU, else cpu)")
    parser.add_argument("--model", default=None, choices=("textdiffseg", "unet", "text-unet", "pixel-diffusion"),
                        help="the model or a baseline (default textdiffseg)")
    parser.add_argument("--set", action="append", default=[], metavar="PART.FIELD=VALUE",
                        help=f"override a config field; parts: {', '.join(PARTS)} (repeatable)")
    parser.add_argument("--max-minutes", type=float, default=None, help="wall-clock budget incl. the AE phase")
    parser.add_argument("--resume", action="store_true", help="continue from RUN/checkpoints/last.pt")
    parser.add_argument("--device", default=None, help="auto | cpu | cuda (default: train.device)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _route(sets: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{"train.lr": v, "diffusion.eta": w}`` -> ``{"train": {...}, "data": {...}, "spec": {"diffusion.eta": w}}``."""
    out: dict[str, dict[str, Any]] = {"data": {}, "train": {}, "spec": {}}
    for key, value in sets.items():
        part, _, field = key.partition(".")
        if key in MOVED:
            raise ConfigError(f"`--set {key}` was merged into `{MOVED[key]}` (one knob), got {key}={value!r}. "
                              f"Write --set {MOVED[key]}={json.dumps(value)}.")
        if not field or part not in PARTS:
            near = difflib.get_close_matches(part, PARTS, n=1)
            hint = f"did you mean {near[0]}.{field or '...'}? " if near else ""
            raise ConfigError(f"`--set {key}` must name PART.FIELD with PART one of {', '.join(PARTS)}; {hint}"
                              "e.g. --set train.learning_rate=3e-4.")
        if part in ("data", "train"):
            out[part][field] = value
        else:
            out["spec"][key] = value
    return out


def plan_run(preset: str, model: str | None, sets: Mapping[str, Any], num_classes: int | None = None) -> dict[str, Any]:
    """Every config of a run, built and checked (unknown keys get a suggestion): ``{"preset", "data",
    "train", "spec"}`` as config objects."""
    from tdseg_lite.config import build_config
    from tdseg_lite.data import DataConfig
    from tdseg_lite.model import ModelSpec
    from tdseg_lite.train import TrainConfig

    routed = _route(sets)
    spec_sets = dict(routed["spec"])
    if model:
        spec_sets["model.model"] = model
    if num_classes is not None and "model.num_classes" not in spec_sets:
        spec_sets["model.num_classes"] = num_classes
    return {"preset": preset, "data": build_config(DataConfig, preset, routed["data"]),
            "train": build_config(TrainConfig, preset, routed["train"]), "spec": ModelSpec.build(preset, spec_sets)}


def plan_to_dict(plan: Mapping[str, Any]) -> dict[str, Any]:
    """JSON-ready form of a ``plan_run`` plan (what config.json and checkpoints store under ``"plan"``)."""
    return {"preset": plan["preset"], "data": config_to_dict(plan["data"]), "train": config_to_dict(plan["train"]),
            "spec": plan["spec"].to_dict()}


def plan_from_dict(d: Mapping[str, Any], sets: Mapping[str, Any]) -> dict[str, Any]:
    """The saved plan ``d`` with ``sets`` applied; on resume only the ``RESUMABLE`` fields may change
    (repeating the original command's other ``--set`` values is fine)."""
    from tdseg_lite.config import config_from_dict
    from tdseg_lite.data import DataConfig
    from tdseg_lite.model import ModelSpec
    from tdseg_lite.train import TrainConfig

    _route(sets)  # unknown parts and merged keys get their message first
    saved = json.loads(json.dumps({k: d[k] for k in ("data", "train", "spec")}))
    saved["train"].pop("ae_steps", None)  # runs saved before the knob moved to label_ae.max_steps
    merged = json.loads(json.dumps(saved))
    for key, value in sets.items():
        part, _, field = key.partition(".")
        if part in ("data", "train"):
            merged[part][field] = value
        elif part in PARTS and field:
            merged["spec"].setdefault(part, {})[field] = value
    plan = {"preset": d["preset"], "data": config_from_dict(DataConfig, merged["data"]),
            "train": config_from_dict(TrainConfig, merged["train"]), "spec": ModelSpec.from_dict(merged["spec"])}
    new, old = plan_to_dict(plan), plan_to_dict({"preset": d["preset"],
                                                   "data": config_from_dict(DataConfig, saved["data"]),
                                                   "train": config_from_dict(TrainConfig, saved["train"]),
                                                   "spec": ModelSpec.from_dict(saved["spec"])})
    for key in sets:
        part, _, field = key.partition(".")
        get = (lambda p, part=part, field=field: p[part][field] if part in ("data", "train")
               else p["spec"][part][field])
        if key not in RESUMABLE and get(new) != get(old):
            raise ConfigError(f"`--set {key}` cannot change on --resume (from {get(old)!r} to {get(new)!r}: the run "
                              f"would not continue the same training); only {', '.join(RESUMABLE)} can. Start a new "
                              "--out for other settings.")
    return plan


class RunLog:
    """Rows of a CSV file; a resumed run drops the rows written after its checkpoint."""

    def __init__(self, path: Path, keep_until_step: int | None = None) -> None:
        self.path, self.rows = path, []
        if keep_until_step is not None and path.is_file():
            with path.open(newline="") as fh:
                self.rows = [r for r in csv.DictReader(fh) if int(float(r["step"])) <= keep_until_step]
        self._write()

    def append(self, row: Mapping[str, Any]) -> None:
        self.rows.append({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        self._write()

    def _write(self) -> None:
        keys: list[str] = []
        for r in self.rows:
            keys += [k for k in r if k not in keys]
        lines = [",".join(keys)] + [",".join(str(r.get(k, "")) for k in keys) for r in self.rows]
        atomic_write_text(self.path, "\n".join(lines) + "\n")

    def column(self, key: str) -> list[float]:
        return [float(r[key]) for r in self.rows if r.get(key) not in (None, "")]


def plot_curves(log: RunLog, val: RunLog, path: Path, title: str) -> None:
    """Loss terms (log scale) and validation mean Dice against the step, saved atomically as PNG."""
    from matplotlib.figure import (
        Figure,  # no pyplot: works headless and leaves a notebook's backend alone
    )

    fig = Figure(figsize=(7, 3.8))
    ax = fig.subplots()
    steps = log.column("step")
    for key in (k for k in (log.rows[0] if log.rows else {}) if k not in ("step", "seconds", "lr")):
        values = log.column(key)
        if len(values) == len(steps) and all(v > 0 for v in values):
            ax.plot(steps, values, label=key, lw=1.2)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    if val.rows:
        ax2 = ax.twinx()
        ax2.plot(val.column("step"), val.column("mean_dice"), "ko-", ms=3, label="val mean Dice")
        ax2.set_ylim(0, 1)
        ax2.set_ylabel("val mean Dice")
        ax2.legend(loc="upper right", fontsize=8)
    ax.legend(loc="lower left", fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=100)
    os.replace(tmp, path)


def cli_main(args: argparse.Namespace) -> int:
    """Run ``tdseg train``; returns the exit status (errors raise ``UserInputError``)."""
    from tdseg_lite.train_run import train_run

    out = Path(args.out).expanduser()
    last = out / "checkpoints" / "last.pt"
    sets = parse_set_arguments(args.set)
    if args.max_minutes is not None and not (args.max_minutes > 0 and math.isfinite(args.max_minutes)):
        raise UserInputError(f"`--max-minutes` must be a positive number, got {args.max_minutes}. Use e.g. 10.")
    if last.exists() and not args.resume:
        raise UserInputError(f"`--out {out}` already holds a checkpoint ({last}). Pass --resume to continue it, "
                             "or choose a new --out.")
    if args.resume and last.exists():
        if args.model or args.data:
            saved = json.loads((out / "config.json").read_text()) if (out / "config.json").is_file() else {}
            if args.model and args.model != saved.get("spec", {}).get("model", {}).get("model", args.model):
                raise UserInputError(f"`--model {args.model}` differs from the run's model; --resume continues "
                                     "the saved run. Drop --model or choose a new --out.")
        return train_run(out, data_dir=args.data, resume=True, sets=sets, max_minutes=args.max_minutes,
                         device=args.device, quiet=args.quiet)
    if args.resume:
        print(f"tdseg train: no checkpoint in {out} yet; starting the run from the beginning.", file=sys.stderr)
    return train_run(out, data_dir=args.data, preset=resolve_preset(args.preset), model=args.model, sets=sets,
                     max_minutes=args.max_minutes, device=args.device, quiet=args.quiet)
