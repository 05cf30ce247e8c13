"""A training run on disk: its plan (every config), its folder, its logs and curves, and the trained model.

``tdseg train`` writes one run folder::

    RUN/config.json            {"plan": RunPlan.to_dict(), "data_dir", "labels", "phrases", "max_minutes",
                                "world_size", "command", "label_ae": {"source", "seconds", ...} | null, "versions"}
    RUN/splits.json            the train/val split used
    RUN/log.csv                step, seconds, lr and every loss term (rank-averaged)
    RUN/val.csv                step, Dice per class, mean Dice (validation with a fast DDIM setting)
    RUN/loss_curve.png         the loss terms and the validation Dice
    RUN/checkpoints/last.pt    written atomically; --resume reads it
    RUN/checkpoints/best.pt    the best validation mean Dice so far

and everything that reads a run goes through this module::

    plan = RunPlan.build("smoke", "unet", {"train.max_steps": 50}, num_classes=3)   # every config, checked
    RunFolder(Path("runs/unet")).check_resume(model="unet", data_dir="", preset=None)  # before writing anything
    model, plan, state = load_trained("runs/unet", "best")                        # a model to score or predict

Importing it is light (no torch, no MONAI): ``tdseg train`` checks its arguments with it first.

Explained in notebooks/04_gpu_training.ipynb
"""

from __future__ import annotations

import ast
import csv
import difflib
import importlib.util
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tdseg_lite.config import (
    build_config,
    config_from_dict,
    config_to_dict,
    moved_key_error,
    split_keys,
)
from tdseg_lite.errors import ConfigError, UserInputError, require
from tdseg_lite.utils import atomic_write_text

if TYPE_CHECKING:
    import torch

    from tdseg_lite.data import DataConfig
    from tdseg_lite.model import ModelSpec
    from tdseg_lite.train import TrainConfig

__all__ = ["PARTS", "RESUMABLE", "RunFolder", "RunLog", "RunPlan", "build_run_model", "check_set_keys",
           "load_trained", "plot_curves"]

#: the parts a ``--set part.field=value`` key may name (data and train, then the model's parts)
PARTS = ("data", "train", "model", "denoiser", "diffusion", "fusion", "image_encoder", "label_ae", "text")
#: the class of each part (``config.moved_key_error`` knows keys by class name)
PART_CLASSES = {"data": "DataConfig", "train": "TrainConfig", "model": "ModelConfig", "denoiser": "DenoiserConfig",
                "diffusion": "DiffusionConfig", "fusion": "FusionConfig", "image_encoder": "ImageEncoderConfig",
                "label_ae": "LabelAEConfig", "text": "TextConfig"}
#: the module that defines each part's class (read as source by ``config_fields``: no torch/MONAI import)
PART_MODULES = {"data": "tdseg_lite.data", "train": "tdseg_lite.train", "model": "tdseg_lite.model",
                "denoiser": "tdseg_lite.denoiser", "diffusion": "tdseg_lite.diffusion", "fusion": "tdseg_lite.fusion",
                "image_encoder": "tdseg_lite.image_encoder", "label_ae": "tdseg_lite.label_ae", "text": "tdseg_lite.text"}
#: what may change on --resume without breaking the run (the budget, the logging cadence, the AE cache use)
RESUMABLE = ("train.max_steps", "train.log_every", "train.val_every", "train.checkpoint_every", "train.val_max_cases",
             "label_ae.reuse")


def check_set_keys(sets: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``--set`` keys split by part, checked without importing any config class (fast).

    Unknown parts get the nearest part; keys that were merged into another one name it; unknown
    fields get the nearest field (``train.lr`` -> ``train.learning_rate``, ``train.batch_size`` ->
    ``data.batch_size``). Values are checked later, when the configs are built.
    """
    parts = split_keys(sets, PARTS, arg="--set")
    for part, fields in parts.items():
        for field, value in fields.items():
            moved_key_error(PART_CLASSES[part], field, value, arg="--set", part=part)
    if parts:
        _check_fields(parts, {p: config_fields(p) for p in PARTS})
    return parts


def config_fields(part: str) -> list[str]:
    """The field names of ``part``'s config class, read from its module's source (nothing is imported).

    ``tests/test_runs.py`` checks them against ``dataclasses.fields`` of the real class.
    """
    spec = importlib.util.find_spec(PART_MODULES[part])
    tree = ast.parse(Path(str(spec.origin)).read_text(encoding="utf-8"))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == PART_CLASSES[part])
    return [n.target.id for n in cls.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)
            and "ClassVar" not in ast.unparse(n.annotation)]


def _check_fields(parts: Mapping[str, Mapping[str, Any]], fields: Mapping[str, list[str]]) -> None:
    """Unknown fields: the nearest field of the same part, or the part that has this field."""
    aliases = {"lr": "learning_rate", "bs": "batch_size", "wd": "weight_decay", "steps": "max_steps"}
    for part, values in parts.items():
        for field in values:
            if field in fields[part]:
                continue
            want = aliases.get(field, field)
            elsewhere = [p for p in PARTS if want in fields[p] and p != part]
            near = ([f"{part}.{want}"] if want in fields[part] else [f"{p}.{want}" for p in elsewhere]
                    or [f"{part}.{n}" for n in difflib.get_close_matches(field, fields[part], n=1)])
            hint = f"did you mean {near[0]}? " if near else ""
            raise ConfigError(f"`--set {part}.{field}` names no field of {PART_CLASSES[part]}, got {field!r}; "
                              f"{hint}valid: {', '.join(sorted(fields[part]))}.")


def _classes() -> dict[str, type]:
    from tdseg_lite.data import DataConfig
    from tdseg_lite.model import ModelSpec
    from tdseg_lite.train import TrainConfig

    return {"data": DataConfig, "train": TrainConfig, **ModelSpec.part_classes()}


@dataclass(frozen=True)
class RunPlan:
    """Every config of a run: the preset, the data, the training engine and the model's parts.

    ``plan["data"]`` works like ``plan.data`` (the dict form older code and the notebooks use).
    """

    preset: str
    data: DataConfig
    train: TrainConfig
    spec: ModelSpec

    @classmethod
    def build(cls, preset: str, model: str | None = None, sets: Mapping[str, Any] | None = None,
              num_classes: int | None = None) -> RunPlan:
        """Defaults -> ``preset`` -> ``sets`` (``{"part.field": value}``), ``--model`` and the dataset's class count.

        Raises:
            ConfigError: an unknown part or field (with the nearest valid name), a merged key (naming the
                new one), a value breaking a rule, or a conflict between ``--model``/``num_classes`` and ``sets``.
        """
        from tdseg_lite.model import ModelSpec

        parts = check_set_keys(sets or {})  # parts, merged keys and field names
        classes = _classes()
        spec_parts = {p: dict(parts.get(p, {})) for p in ModelSpec.part_classes()}
        for field, value, flag in (("model", model, "--model"), ("num_classes", num_classes, "the dataset")):
            if value is None:
                continue
            given = spec_parts["model"].get(field, value)
            require(given == value, f"--set model.{field}", f"must agree with {flag} ({value!r})", given,
                    f"Leave --set model.{field} out.")
            spec_parts["model"][field] = value
        return cls(preset, build_config(classes["data"], preset, parts.get("data")),
                   build_config(classes["train"], preset, parts.get("train")), ModelSpec.from_parts(preset, spec_parts))

    def __getitem__(self, key: str) -> Any:
        require(key in ("preset", "data", "train", "spec"), "plan[key]", "must be preset, data, train or spec", key,
                "Use plan.data, plan.train, plan.spec or plan.preset.")
        return getattr(self, key)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready ``{"preset", "data", "train", "spec"}`` (what config.json and checkpoints store under "plan")."""
        return {"preset": self.preset, "data": config_to_dict(self.data), "train": config_to_dict(self.train),
                "spec": self.spec.to_dict()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], sets: Mapping[str, Any] | None = None) -> RunPlan:
        """The saved plan ``d`` with ``sets`` applied; on resume only the ``RESUMABLE`` fields may change
        (repeating the original command's other ``--set`` values is fine)."""
        from tdseg_lite.model import ModelSpec

        sets = dict(sets or {})
        parts = check_set_keys(sets)
        classes = _classes()
        saved = json.loads(json.dumps({k: d[k] for k in ("data", "train", "spec")}))
        saved["train"].pop("ae_steps", None)  # runs saved before the knob moved to label_ae.max_steps

        def make(tree: Mapping[str, Any]) -> RunPlan:
            return cls(str(d["preset"]), config_from_dict(classes["data"], tree["data"]),
                       config_from_dict(classes["train"], tree["train"]), ModelSpec.from_dict(tree["spec"]))

        merged = json.loads(json.dumps(saved))
        for part, fields in parts.items():
            (merged[part] if part in ("data", "train") else merged["spec"].setdefault(part, {})).update(fields)
        old, new = make(saved).to_dict(), make(merged)
        fresh = new.to_dict()
        for part, fields in parts.items():
            for field in fields:
                tree_old, tree_new = ((old[part], fresh[part]) if part in ("data", "train")
                                      else (old["spec"][part], fresh["spec"][part]))
                if f"{part}.{field}" not in RESUMABLE and tree_old[field] != tree_new[field]:
                    raise ConfigError(f"`--set {part}.{field}` cannot change on --resume (from {tree_old[field]!r} "
                                      f"to {tree_new[field]!r}: the run would not continue the same training); only "
                                      f"{', '.join(RESUMABLE)} can. Start a new --out for other settings.")
        return new


class RunFolder:
    """The paths of a run folder and the checks made before anything is written into it."""

    def __init__(self, root: str | os.PathLike[str], flag: str = "--out") -> None:
        self.root, self.flag = Path(root).expanduser(), flag
        self.config, self.splits = self.root / "config.json", self.root / "splits.json"
        self.log, self.val, self.curve = self.root / "log.csv", self.root / "val.csv", self.root / "loss_curve.png"
        self.checkpoints = self.root / "checkpoints"
        self.last, self.best = self.checkpoints / "last.pt", self.checkpoints / "best.pt"

    def check_writable(self) -> None:
        """The folder is, or can become, a writable directory (checked without creating anything)."""
        p, flag = self.root, self.flag
        require(not p.exists() or p.is_dir(), flag, "must be a folder (the run folder)", str(p),
                "Choose a new folder name; it is an existing file.", UserInputError)
        parent = p
        while not parent.exists():
            parent = parent.parent
        require(parent.is_dir(), flag, f"must be creatable, but {parent} is a file", str(p),
                "Choose a folder that is not under a file.", UserInputError)
        writable = os.access(parent, os.W_OK | os.X_OK) and (parent == p or not p.exists())
        require(writable or (p.exists() and os.access(p, os.W_OK | os.X_OK)), flag,
                f"must be writable, but {parent} is read-only", str(p),
                "Choose a folder you can write to (or fix its permissions).", UserInputError)
        for sub in (self.checkpoints, self.last, self.config):
            require(not sub.exists() or os.access(sub, os.W_OK), flag, f"must be writable, but {sub} is read-only",
                    str(p), "Fix its permissions or choose a new --out.", UserInputError)

    def saved_config(self) -> dict[str, Any] | None:
        """``config.json`` of an earlier start, or None (missing); an unreadable file is a one-line error."""
        if not self.config.is_file():
            return None
        try:
            saved = json.loads(self.config.read_text())
        except (OSError, ValueError):
            saved = None
        require(isinstance(saved, dict) and isinstance(saved.get("plan"), dict), str(self.config),
                "must be the run's config (JSON with a 'plan' object)", "an unreadable file",
                "Restore it, or start a new --out.", UserInputError)
        return saved

    def check_resume(self, saved: Mapping[str, Any], *, model: str | None, data_dir: str, preset: str | None,
                     num_classes: int | None) -> None:
        """Refuse a ``--resume`` that would continue the run with another model, dataset, class count or preset.

        Args:
            saved: the run's stored config (``config.json`` or the checkpoint's ``"config"``).
            model: ``--model`` (None: not given).
            data_dir: ``--data`` ("" : not given).
            preset: ``--preset`` resolved (None: not given).
            num_classes: classes of ``--data``'s dataset.json (None: not given).
        """
        plan = saved.get("plan", {})
        old_model = plan.get("spec", {}).get("model", {}).get("model", "textdiffseg")
        require(model is None or model == old_model, "--model", f"must be the run's model ({old_model}) on --resume",
                model, "Drop --model, or choose a new --out for another model.", UserInputError)
        require(preset is None or preset == plan.get("preset"), "--preset",
                f"must be the run's preset ({plan.get('preset')}) on --resume", preset,
                "Drop --preset (a resumed run keeps its preset), or choose a new --out.", UserInputError)
        old_data = str(saved.get("data_dir") or "")
        if data_dir:
            new = str(Path(data_dir).expanduser().resolve())
            require(new == (str(Path(old_data).resolve()) if old_data else ""), "--data",
                    f"must be the run's dataset ({old_data or 'the phantom'}) on --resume", data_dir,
                    "Drop --data, or choose a new --out to train on another dataset.", UserInputError)
        labels = saved.get("labels") or {}
        require(num_classes is None or not labels or num_classes == len(labels), "--data",
                f"must have the run's {len(labels)} classes on --resume", f"{num_classes} classes",
                "Use the run's dataset, or choose a new --out.", UserInputError)

    def check_dataset(self, saved: Mapping[str, Any], root: Path, where: str) -> None:
        """Refuse a ``--resume`` on a dataset that is not the run's, even at the same path: other labels, or
        other cases than the run's ``splits.json`` (the data order could not continue).

        Args:
            saved: the run's stored config (``config.json`` or the checkpoint's ``"config"``).
            root: the dataset folder the resumed run would read.
            where: how the message names it (``--data``, or the folder's ``dataset.json``).
        """
        from tdseg_lite.validate import parse_section, read_dataset_json

        root = root.expanduser().resolve()
        meta = read_dataset_json(root)
        labels = meta.get("labels")
        got = {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {}
        want = {str(k): str(v) for k, v in (saved.get("labels") or {}).items()}
        if want:
            fix = "Use the run's dataset, or choose a new --out to train on this one."
            require(len(got) == len(want), where, f"must have the run's {len(want)} classes on --resume",
                    f"{len(got)} classes", fix, UserInputError)
            require(got == want, where, f"must have the run's labels on --resume ({_labels_text(want)})",
                    _labels_text(got), fix, UserInputError)
        try:
            split = json.loads(self.splits.read_text())
            cases = set(split["train"]) | set(split["val"])
        except (OSError, ValueError, KeyError, TypeError):
            return  # no split yet: the run stopped before it read its data
        now = {e["case_id"] for e in parse_section(root, meta, "training")[0]}
        require(now == cases, where, f"must hold the run's {len(cases)} cases ({self.splits.name}) on --resume",
                f"{len(now - cases)} new and {len(cases - now)} missing case(s)",
                "Restore the dataset as it was, or choose a new --out to train on the changed one.", UserInputError)


def _labels_text(labels: Mapping[str, str]) -> str:
    """``"1 kidney, 2 tumor"``: the foreground classes of a ``dataset.json`` "labels" object."""
    return ", ".join(f"{k} {v}" for k, v in sorted(labels.items(), key=lambda kv: (len(kv[0]), kv[0])) if k != "0")


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
    from matplotlib.figure import Figure  # no pyplot: works headless and leaves a notebook's backend alone

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


def build_run_model(plan: RunPlan, phrases: list[str]) -> torch.nn.Module:
    """The (untrained) model of a plan: ``model.build_model`` with the run's text encoder and patch size."""
    from tdseg_lite.model import build_model

    return build_model(plan.spec, phrases=phrases, patch_size=plan.data.patch_size)


#: what every checkpoint written by ``tdseg train`` holds (``load_trained`` needs the first four)
CHECKPOINT_KEYS = ("config", "model", "step", "best", "optimizer", "lr_scheduler", "rng", "batches", "elapsed_s")


def check_checkpoint(state: Mapping[str, Any], path: Path, keys: tuple[str, ...] = CHECKPOINT_KEYS) -> None:
    """One-line ``CheckpointError`` when ``state`` lacks an entry ``tdseg train`` writes."""
    from tdseg_lite.checkpoint import CheckpointError

    missing = [k for k in keys if k not in state]
    config = state.get("config")
    labels = config.get("labels") if isinstance(config, Mapping) else None
    if not missing and not (isinstance(config, Mapping) and isinstance(config.get("plan"), Mapping)
                            and isinstance(labels, Mapping) and all(str(k).isdigit() for k in labels)):
        missing = ["config.plan / config.labels"]
    kinds = {"model": Mapping, "optimizer": Mapping, "lr_scheduler": Mapping, "rng": Mapping, "step": int,
             "batches": int, "elapsed_s": (int, float)}
    wrong = [k for k, kind in kinds.items() if k in keys and k in state and not isinstance(state[k], kind)]
    if missing or wrong:
        what = f"no {', '.join(map(repr, missing))}" if missing else f"a malformed {', '.join(map(repr, wrong))}"
        raise CheckpointError(f"`{path}` must hold what tdseg train writes, got {what}. "
                              "Use RUN/checkpoints/last.pt or best.pt of a tdseg train run, or retrain.")


def load_weights(model: torch.nn.Module, weights: Mapping[str, Any], path: Path) -> None:
    """``model.load_state_dict(weights)`` with a one-line ``CheckpointError`` for missing/unexpected/misshaped keys."""
    from tdseg_lite.checkpoint import CheckpointError

    own = model.state_dict()
    missing = [k for k in own if k not in weights]
    extra = [k for k in weights if k not in own]
    shapes = [k for k in own if k in weights and tuple(own[k].shape) != tuple(getattr(weights[k], "shape", ()))]
    if missing or extra or shapes:
        what = "; ".join(f"{n} {kind} (e.g. {keys[0]!r})" for n, kind, keys in (
            (len(missing), "missing", missing), (len(extra), "unexpected", extra), (len(shapes), "misshaped", shapes))
            if keys)
        raise CheckpointError(f"`{path}` must hold the weights of the run's model, got other weights ({what}). "
                              "Use the checkpoint written with this run's config.json, or retrain.")
    model.load_state_dict(weights)


def plan_of_checkpoint(state: Mapping[str, Any], path: Path, sets: Mapping[str, Any] | None = None) -> RunPlan:
    """The ``RunPlan`` a checkpoint stores, then with ``sets`` applied as on ``--resume``.

    Raises:
        CheckpointError: the stored plan is incomplete or breaks a config rule (one line naming the file).
        ConfigError: ``sets`` break a rule or change what cannot change on ``--resume``.
    """
    from tdseg_lite.checkpoint import CheckpointError

    plan = state["config"]["plan"]
    missing = [k for k in ("preset", "data", "train", "spec") if k not in plan]
    if missing:
        raise CheckpointError(f"`{path}` must hold a complete run plan, got one without {missing[0]!r}. Retrain the run.")
    try:
        stored = RunPlan.from_dict(plan)
    except ConfigError as err:
        raise CheckpointError(f"`{path}` must hold a run plan this version can build, got one that breaks a rule "
                              f"({str(err).split('. ')[0].rstrip('.')}). Retrain the run, or use the tdseg_lite version that "
                              "wrote it.") from None
    except (KeyError, TypeError, AttributeError, ValueError):
        raise CheckpointError(f"`{path}` must hold a run plan this version can build, got one with a missing or "
                              "malformed field. Retrain the run.") from None
    return RunPlan.from_dict(plan, sets) if sets else stored


def load_trained(run: str | os.PathLike[str], which: str = "best", device: str | torch.device = "cpu"
                 ) -> tuple[torch.nn.Module, RunPlan, dict[str, Any]]:
    """A trained model from a ``tdseg train`` run folder: ``(model in eval mode, plan, checkpoint)``.

    Args:
        run: the run folder (holds ``checkpoints/best.pt`` and ``last.pt``).
        which: ``"best"`` (falls back to ``"last"`` when no validation improved) or ``"last"``.
        device: where to put the model.

    Raises:
        CheckpointError: no checkpoint, an unreadable one, or one without the entries/weights ``tdseg train`` writes.
    """
    from tdseg_lite.checkpoint import load_checkpoint

    require(which in ("best", "last"), "which", "must be 'best' or 'last'", which, "Use --which best or last.",
            UserInputError)
    folder = RunFolder(run, "--run")
    path = folder.best if which == "best" and folder.best.is_file() else folder.last
    state = load_checkpoint(path)
    check_checkpoint(state, path, keys=("config", "model", "step"))
    plan = plan_of_checkpoint(state, path)
    model = build_run_model(plan, list(state["config"].get("phrases") or ["kidney", "kidney tumor"]))
    load_weights(model, state["model"], path)
    return model.to(device).eval(), plan, state
