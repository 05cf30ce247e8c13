"""The body of ``tdseg train`` (arguments in ``train_cli.py``): data, model, phases, checkpoints.

A run has two phases. TextDiffSeg first gets its pre-trained label autoencoder
(``label_ae.max_steps`` steps on the training labels, or the cached one trained on the same labels
with the same settings: ``label_cache.py``; ``--set label_ae.reuse=false`` always trains; the
baselines skip the phase), saves a step-0 checkpoint, then trains everything else end to end with
the joint loss. Both phases count against ``--max-minutes`` (a reused autoencoder counts its load
time); ``config.json["label_ae"]`` says whether it was trained or reused and what it cost.
``--resume`` loads ``last.pt`` and continues the joint phase exactly: model, optimiser, LR
scheduler, GradScaler, every RNG, the step and the number of batches consumed (the data order).
A run killed during the AE phase starts that phase again.

Explained in notebooks/04_gpu_training.ipynb
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from tdseg_lite.batches import endless_batches, make_train_loader
from tdseg_lite.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from tdseg_lite.distributed import (
    DistInfo,
    barrier,
    broadcast_module,
    cleanup,
    init_distributed,
    reduce_sum,
)
from tdseg_lite.runs import (
    RunFolder,
    RunLog,
    RunPlan,
    build_run_model,
    check_checkpoint,
    load_trained,
    load_weights,
    plan_of_checkpoint,
    plot_curves,
)
from tdseg_lite.train import Trainer
from tdseg_lite.utils import atomic_write_text, seed_everything, versions

__all__ = ["load_trained", "make_val_fn", "train_run"]  # load_trained: from runs (its old home)


def _prepare_data(plan: RunPlan, data_dir: str, out: Path, info: DistInfo,
                  resumed: Mapping[str, Any] | None = None, where: str | None = None) -> dict[str, Any]:
    """Validated dataset, cached train/val datasets, class names and prompt phrases.

    ``resumed``: the stored config of a resumed run; its dataset (labels, cases) is checked before anything
    is written (``where`` names it in the message; default: the folder's ``dataset.json``).
    """
    from tdseg_lite.data import default_dataset, load_labels, make_datasets
    from tdseg_lite.prompts import phrases_from_labels
    from tdseg_lite.validate import validate_dataset

    cfg = plan.data
    if data_dir and info.is_main:  # refuse a broken dataset before any training (the full `tdseg validate`)
        validate_dataset(data_dir).raise_if_invalid()
    barrier(info)
    root = default_dataset(cfg, data_dir) if info.is_main else None
    barrier(info)
    root = root or default_dataset(cfg, data_dir)
    if resumed is not None:  # the same path (or the phantom folder) may hold another dataset by now
        RunFolder(out).check_dataset(resumed, Path(root), where or str(Path(root) / "dataset.json"))
    out.mkdir(parents=True, exist_ok=True)  # only now: a refused dataset leaves no run folder behind
    train_ds, val_ds = make_datasets(cfg, root, splits_path=out / "splits.json")
    labels = load_labels(root)
    return {"root": root, "train": train_ds, "val": val_ds, "labels": labels,
            "class_names": [labels[i] for i in sorted(labels) if i > 0],
            "phrases": list(phrases_from_labels(labels).values())}


def make_val_fn(data: Mapping[str, Any], plan: RunPlan, info: DistInfo) -> Any:
    """``val_fn(model) -> {"dice_<class>", "mean_dice", "val_seconds"}`` over this rank's share of the
    validation cases, summed across ranks (a fast DDIM setting: ``train.val_steps`` × ``val_samples``)."""
    from monai.data import DataLoader
    from torch.utils.data import Subset

    from tdseg_lite.inference import evaluate

    tcfg, dcfg, names = plan.train, plan.data, data["class_names"]
    n = len(data["val"]) if not tcfg.val_max_cases else min(tcfg.val_max_cases, len(data["val"]))
    shard = list(range(info.rank, n, info.world))

    def val_fn(model: torch.nn.Module) -> dict[str, float]:
        sums: dict[str, float] = {"seconds": 0.0, "cases": 0.0}
        if shard:
            loader = DataLoader(Subset(data["val"], shard), batch_size=1, num_workers=0)
            kw = {"steps": tcfg.val_steps or None, "samples": tcfg.val_samples,
                  "generator": torch.Generator().manual_seed(tcfg.seed)}
            with torch.no_grad():
                res = evaluate(model, loader, roi_size=dcfg.patch_size, spacing=dcfg.spacing, class_names=names, **kw)
            for case in res["cases"]:
                sums["seconds"] += case["seconds"]
                sums["cases"] += 1
                for c in names:
                    if not math.isnan(case["dice"][c]):
                        sums[f"sum_{c}"] = sums.get(f"sum_{c}", 0.0) + case["dice"][c]
                        sums[f"n_{c}"] = sums.get(f"n_{c}", 0.0) + 1
        for c in names:  # every rank must send the same keys
            sums.setdefault(f"sum_{c}", 0.0)
            sums.setdefault(f"n_{c}", 0.0)
        total = reduce_sum(sums, info)
        dice = {c: total[f"sum_{c}"] / total[f"n_{c}"] if total[f"n_{c}"] else math.nan for c in names}
        defined = [v for v in dice.values() if not math.isnan(v)]
        return {**{f"dice_{c}": v for c, v in dice.items()},
                "mean_dice": sum(defined) / len(defined) if defined else math.nan,
                "val_seconds_per_case": total["seconds"] / max(1.0, total["cases"])}

    return val_fn


class _Saver:
    """``on_checkpoint`` of the trainer: rank 0 writes last.pt (and best.pt when validation improved)."""

    def __init__(self, folder: RunFolder, config: dict[str, Any], info: DistInfo, best: dict[str, Any] | None) -> None:
        self.folder, self.config, self.info = folder, config, info
        self.best = best or {"metric": "mean_dice", "value": -math.inf, "step": -1}

    def __call__(self, trainer: Trainer) -> None:
        if not self.info.is_main:
            return
        val = trainer.history["val"][-1] if trainer.history["val"] else None
        improved = (val is not None and val["step"] == trainer.step and not math.isnan(val["mean_dice"])
                    and val["mean_dice"] > self.best["value"])
        if improved:
            self.best = {"metric": "mean_dice", "value": float(val["mean_dice"]), "step": trainer.step}
        payload = {"config": self.config, "best": dict(self.best), "versions": versions(), **trainer.state_dict()}
        save_checkpoint(self.folder.last, payload)
        if improved:
            save_checkpoint(self.folder.best, payload)


def _pretrain_phase(net: torch.nn.Module, data: Mapping[str, Any], plan: RunPlan,
                    info: DistInfo) -> tuple[float, dict[str, Any] | None]:
    """TextDiffSeg's label-AE phase (cached or trained: ``label_cache``) and, with ``fusion.side_map``,
    the side reader's, on rank 0, then broadcast.

    Returns:
        ``(seconds of the phase on this rank, config.json's "label_ae" entry or None without an AE)``.
    """
    from tdseg_lite.label_cache import pretrain_label_autoencoder, training_label_volumes
    from tdseg_lite.model import TextDiffSeg

    if not isinstance(net, TextDiffSeg):
        return 0.0, None
    start, summary = time.perf_counter(), None
    if info.is_main:
        volumes = training_label_volumes(plan.data, data["train"].data, dataset=data["train"])
        res = pretrain_label_autoencoder(net.label_ae, volumes, seed=plan.train.seed)
        summary = res.summary()
        what = (f"reused {res.path}" if res.reused else
                f"trained {res.steps} steps" + (f", cached in {res.path}" if res.path else ""))
        print(f"label AE: {what} ({res.seconds:.1f} s)", file=sys.stderr)
        side = net.pretrain_side([item.get("description") for item in data["train"].data], volumes,
                                 seed=plan.train.seed)
        if side is not None:  # fusion.side_map: the report reader, taught on (report, label halves) pairs
            summary["side_reader"] = side
            print(f"side reader: {side['steps']} steps, {side['accuracy']:.2f} of the training reports' halves "
                  f"right ({side['seconds']:.1f} s)", file=sys.stderr)
    broadcast_module(net, info)
    seconds = time.perf_counter() - start
    if summary is not None:
        summary["phase_seconds"] = round(seconds, 3)
    return seconds, summary


def _report(history: Mapping[str, Any], best: Mapping[str, Any], out: Path) -> None:
    last = history["val"][-1] if history["val"] else {}
    if not last or math.isnan(last.get("mean_dice", math.nan)) and best["step"] < 0:
        val = ("no validation Dice (no validation case, e.g. data.val_fraction=0, or no labelled class in them): "
               "best.pt was not written, use last.pt")
    else:
        val = f"val mean Dice {last['mean_dice']:.3f}; best {best['value']:.3f} at step {best['step']}"
    print(f"trained {history['steps']} steps in {history['train_seconds']:.0f} s; {val}; run folder {out}",
          file=sys.stderr)


def _load_resume_state(folder: RunFolder, *, sets: Mapping[str, Any], data_dir: str, model: str | None,
                       preset: str | None) -> tuple[dict[str, Any], RunPlan]:
    """The checkpoint to continue and its plan, refused (before anything is written) when it is not a
    complete ``tdseg train`` checkpoint or when ``--model``/``--data``/``--preset`` name another run."""
    from tdseg_lite.config import resolve_preset
    from tdseg_lite.data import load_labels

    state = load_checkpoint(folder.last)
    check_checkpoint(state, folder.last)
    saved = state["config"]
    n_classes = len(load_labels(data_dir)) if data_dir else None
    folder.check_resume(saved, model=model, data_dir=data_dir,
                        preset=resolve_preset(preset) if preset not in (None, "auto") else None, num_classes=n_classes)
    return state, plan_of_checkpoint(state, folder.last, sets)  # the dataset is checked once it is found


def _restore(trainer: Trainer, state: Mapping[str, Any], path: Path) -> None:
    """``trainer.load_state_dict(state)`` with one-line errors: other weights, or a training state (optimiser,
    scheduler, RNG) that does not fit the run's model."""
    load_weights(trainer.model, state["model"], path)
    try:
        trainer.load_state_dict(state)
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as err:
        raise CheckpointError(f"`{path}` must hold the training state tdseg train writes for this model, got one "
                              f"that does not fit ({type(err).__name__} while restoring it). Retrain, or restore "
                              "the run's own last.pt.") from None


def train_run(out: Path, *, data_dir: str = "", preset: str | None = "smoke", model: str | None = None,
              sets: Mapping[str, Any] | None = None, max_minutes: float | None = None, resume: bool = False,
              device: str | None = None, quiet: bool = False) -> int:
    """Train one run into ``out`` (see the module docstring); returns 0.

    With ``resume``, ``model``/``preset``/``data_dir`` may repeat the run's own (anything else is refused
    before anything is written); otherwise ``preset`` is the new run's preset.
    """
    from tqdm.auto import tqdm

    from tdseg_lite.utils import pick_device

    sets, folder = dict(sets or {}), RunFolder(out)
    state: dict[str, Any] | None = None
    where = "--data" if data_dir else None  # how a refused dataset is named
    if resume:
        state, plan = _load_resume_state(folder, sets=sets, data_dir=data_dir, model=model, preset=preset)
        data_dir = data_dir or state["config"].get("data_dir", "")
        max_minutes = max_minutes or state["config"].get("max_minutes")
    else:
        from tdseg_lite.data import load_labels

        n_cls = len(load_labels(data_dir)) if data_dir else None
        plan = RunPlan.build(preset or "smoke", model, sets, num_classes=n_cls)
    tcfg = plan.train
    pick_device(device or tcfg.device, arg="--device" if device else "train.device")  # one line, before any write
    info = init_distributed(device or tcfg.device)
    try:
        seed_everything(tcfg.seed)
        data = _prepare_data(plan, data_dir, out, info, state["config"] if state else None, where)
        net = build_run_model(plan, data["phrases"])
        ae_seconds, ae_summary = _pretrain_phase(net, data, plan, info) if state is None else (0.0, None)
        if state is None:
            seed_everything(tcfg.seed)  # the joint phase starts alike whether the AE was trained or reused
        config = {"plan": plan.to_dict(), "data_dir": str(data["root"]) if data_dir else "",
                  "labels": {str(k): v for k, v in data["labels"].items()}, "phrases": data["phrases"],
                  "max_minutes": max_minutes, "world_size": info.world, "command": " ".join(sys.argv),
                  "label_ae": ae_summary if state is None else state["config"].get("label_ae"),
                  "versions": versions()}
        trainer = Trainer(net, tcfg, info=info, max_seconds=max_minutes * 60 if max_minutes else None)
        if state is not None:
            _restore(trainer, state, folder.last)  # before config.json is rewritten
        if info.is_main:
            atomic_write_text(folder.config, json.dumps(config, indent=2) + "\n")
        saver = _Saver(folder, config, info, state.get("best") if state else None)
        if state is None:
            trainer.elapsed = ae_seconds  # the AE phase counts against the budget
            saver(trainer)  # step 0: the pre-trained label AE, before the joint phase
        loader, sampler = make_train_loader(data["train"], plan.data.batch_size, info, tcfg.seed,
                                            plan.data.num_workers, pin_memory=info.device.type == "cuda")
        log = RunLog(folder.log, keep_until_step=trainer.step if state else None)
        val = RunLog(folder.val, keep_until_step=trainer.step if state else None)
        title = f"{plan.spec.model.model} ({plan.preset}), {info.world} process(es)"

        def on_val(metrics: dict[str, float]) -> None:
            if info.is_main:
                val.append(metrics)
                plot_curves(log, val, folder.curve, title)
                bar.write(f"step {metrics['step']}: val " + ", ".join(
                    f"{k} {v:.3f}" for k, v in metrics.items() if k.startswith(("dice_", "mean_"))))

        bar = tqdm(total=trainer.max_steps, initial=trainer.step, desc=plan.spec.model.model,
                   disable=quiet or not info.is_main, dynamic_ncols=True, file=sys.stderr)
        history = trainer.run(endless_batches(loader, sampler, trainer.batches), val_fn=make_val_fn(data, plan, info),
                              on_log=lambda row: log.append(row) if info.is_main else None, on_val=on_val,
                              on_checkpoint=saver, progress_bar=bar)
        bar.close()
        if info.is_main:
            plot_curves(log, val, folder.curve, title)
            _report(history, saver.best, out)
        return 0
    finally:
        cleanup(info)
