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
from tdseg_lite.checkpoint import load_checkpoint, save_checkpoint
from tdseg_lite.distributed import (
    DistInfo,
    barrier,
    broadcast_module,
    cleanup,
    init_distributed,
    reduce_sum,
)
from tdseg_lite.train import Trainer
from tdseg_lite.train_cli import (
    RunLog,
    plan_from_dict,
    plan_run,
    plan_to_dict,
    plot_curves,
)
from tdseg_lite.utils import atomic_write_text, seed_everything, versions

__all__ = ["load_trained", "make_val_fn", "train_run"]


def _prepare_data(plan: Mapping[str, Any], data_dir: str, out: Path, info: DistInfo) -> dict[str, Any]:
    """Validated dataset, cached train/val datasets, class names and prompt phrases."""
    from tdseg_lite.data import default_dataset, load_labels, make_datasets
    from tdseg_lite.prompts import phrases_from_labels
    from tdseg_lite.validate import validate_dataset

    cfg = plan["data"]
    if data_dir and info.is_main:  # refuse a broken dataset before any training (the full `tdseg validate`)
        validate_dataset(data_dir).raise_if_invalid()
    barrier(info)
    root = default_dataset(cfg, data_dir) if info.is_main else None
    barrier(info)
    root = root or default_dataset(cfg, data_dir)
    train_ds, val_ds = make_datasets(cfg, root, splits_path=out / "splits.json")
    labels = load_labels(root)
    return {"root": root, "train": train_ds, "val": val_ds, "labels": labels,
            "class_names": [labels[i] for i in sorted(labels) if i > 0],
            "phrases": list(phrases_from_labels(labels).values())}


def make_val_fn(data: Mapping[str, Any], plan: Mapping[str, Any], info: DistInfo) -> Any:
    """``val_fn(model) -> {"dice_<class>", "mean_dice", "val_seconds"}`` over this rank's share of the
    validation cases, summed across ranks (a fast DDIM setting: ``train.val_steps`` × ``val_samples``)."""
    from monai.data import DataLoader
    from torch.utils.data import Subset

    from tdseg_lite.inference import evaluate

    tcfg, dcfg, names = plan["train"], plan["data"], data["class_names"]
    n = len(data["val"]) if not tcfg.val_max_cases else min(tcfg.val_max_cases, len(data["val"]))
    shard = list(range(info.rank, n, info.world))

    def val_fn(model: torch.nn.Module) -> dict[str, float]:
        sums: dict[str, float] = {"seconds": 0.0, "cases": 0.0}
        if shard:
            loader = DataLoader(Subset(data["val"], shard), batch_size=1, num_workers=0)
            kw = {"steps": tcfg.val_steps or None, "samples": tcfg.val_samples,
                  "generator": torch.Generator().manual_seed(tcfg.seed)} if hasattr(model, "dcfg") else {}
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

    def __init__(self, out: Path, config: dict[str, Any], info: DistInfo, best: dict[str, Any] | None) -> None:
        self.out, self.config, self.info = out / "checkpoints", config, info
        self.best = best or {"metric": "mean_dice", "value": -math.inf, "step": -1}

    def payload(self, trainer: Trainer, phase: str) -> dict[str, Any]:
        return {"config": self.config, "phase": phase, "best": dict(self.best), "versions": versions(),
                **trainer.state_dict()}

    def __call__(self, trainer: Trainer, why: str) -> None:
        if not self.info.is_main:
            return
        val = trainer.history["val"][-1] if trainer.history["val"] else None
        improved = (val is not None and val["step"] == trainer.step and not math.isnan(val["mean_dice"])
                    and val["mean_dice"] > self.best["value"])
        if improved:
            self.best = {"metric": "mean_dice", "value": float(val["mean_dice"]), "step": trainer.step}
        payload = self.payload(trainer, "joint")
        save_checkpoint(self.out / "last.pt", payload)
        if improved:
            save_checkpoint(self.out / "best.pt", payload)


def _build(plan: Mapping[str, Any], data: Mapping[str, Any]) -> torch.nn.Module:
    from tdseg_lite.model import build_model
    from tdseg_lite.text import make_text_encoder

    spec = plan["spec"]
    encoder = make_text_encoder(spec.text) if spec.model.text_fusion and spec.model.model != "unet" else None
    return build_model(spec, text_encoder=encoder, phrases=data["phrases"], patch_size=plan["data"].patch_size)


def load_trained(run: str | Path, which: str = "best", device: str | torch.device = "cpu"
                 ) -> tuple[torch.nn.Module, dict[str, Any], dict[str, Any]]:
    """A trained model from a ``tdseg train`` run folder: ``(model in eval mode, plan, checkpoint)``.

    Args:
        run: the run folder (holds ``checkpoints/best.pt`` and ``last.pt``).
        which: ``"best"`` (falls back to ``"last"`` when no validation improved) or ``"last"``.
        device: where to put the model.
    """
    from tdseg_lite.errors import UserInputError

    if which not in ("best", "last"):
        raise UserInputError(f"`which` must be 'best' or 'last', got {which!r}.")
    folder = Path(run).expanduser() / "checkpoints"
    path = folder / f"{which}.pt"
    if which == "best" and not path.is_file():
        path = folder / "last.pt"
    state = load_checkpoint(path)
    plan = plan_from_dict(state["config"]["plan"], {})
    model = _build(plan, {"phrases": state["config"].get("phrases", ["kidney", "kidney tumor"])})
    model.load_state_dict(state["model"])
    return model.to(device).eval(), plan, state


def _pretrain_phase(net: torch.nn.Module, data: Mapping[str, Any], plan: Mapping[str, Any],
                    info: DistInfo) -> tuple[float, dict[str, Any] | None]:
    """TextDiffSeg's label-AE phase on rank 0 (cached or trained: ``label_cache``), then broadcast.

    Returns:
        ``(seconds of the phase on this rank, config.json's "label_ae" entry or None without an AE)``.
    """
    from tdseg_lite.label_cache import pretrain_label_autoencoder, training_label_volumes
    from tdseg_lite.model import TextDiffSeg

    if not isinstance(net, TextDiffSeg):
        return 0.0, None
    start, summary = time.perf_counter(), None
    if info.is_main:
        volumes = training_label_volumes(plan["data"], data["train"].data)
        res = pretrain_label_autoencoder(net.label_ae, volumes, seed=plan["train"].seed)
        summary = res.summary()
        what = (f"reused {res.path}" if res.reused else
                f"trained {res.steps} steps" + (f", cached in {res.path}" if res.path else ""))
        print(f"label AE: {what} ({res.seconds:.1f} s)", file=sys.stderr)
    broadcast_module(net, info)
    seconds = time.perf_counter() - start
    if summary is not None:
        summary["phase_seconds"] = round(seconds, 3)
    return seconds, summary


def _report(history: Mapping[str, Any], best: Mapping[str, Any], out: Path) -> None:
    last = history["val"][-1] if history["val"] else {}
    print(f"trained {history['steps']} steps in {history['train_seconds']:.0f} s; val mean Dice "
          f"{last.get('mean_dice', float('nan')):.3f}; best {best['value']:.3f} at step {best['step']}; "
          f"run folder {out}", file=sys.stderr)


def train_run(out: Path, *, data_dir: str = "", preset: str = "smoke", model: str | None = None,
              sets: Mapping[str, Any] | None = None, max_minutes: float | None = None, resume: bool = False,
              device: str | None = None, quiet: bool = False) -> int:
    """Train one run into ``out`` (see the module docstring); returns 0."""
    from tqdm.auto import tqdm

    sets = dict(sets or {})
    state = load_checkpoint(out / "checkpoints" / "last.pt") if resume else None
    if state is not None:
        plan = plan_from_dict(state["config"]["plan"], sets)
        data_dir = data_dir or state["config"].get("data_dir", "")
        max_minutes = max_minutes or state["config"].get("max_minutes")
    else:
        from tdseg_lite.data import load_labels

        n_cls = len(load_labels(data_dir)) if data_dir else None
        plan = plan_run(preset, model, sets, num_classes=n_cls)
    tcfg = plan["train"]
    info = init_distributed(device or tcfg.device)
    try:
        out.mkdir(parents=True, exist_ok=True)
        seed_everything(tcfg.seed)
        data = _prepare_data(plan, data_dir, out, info)
        net = _build(plan, data)
        ae_seconds, ae_summary = _pretrain_phase(net, data, plan, info) if state is None else (0.0, None)
        if state is None:
            seed_everything(tcfg.seed)  # the joint phase starts alike whether the AE was trained or reused
        config = {"plan": plan_to_dict(plan), "data_dir": str(data["root"]) if data_dir else "",
                  "labels": {str(k): v for k, v in data["labels"].items()}, "phrases": data["phrases"],
                  "max_minutes": max_minutes, "world_size": info.world, "command": " ".join(sys.argv),
                  "label_ae": ae_summary if state is None else state["config"].get("label_ae"),
                  "versions": versions()}
        if info.is_main:
            atomic_write_text(out / "config.json", json.dumps(config, indent=2) + "\n")
        trainer = Trainer(net, tcfg, info=info, max_seconds=max_minutes * 60 if max_minutes else None)
        saver = _Saver(out, config, info, state.get("best") if state else None)
        if state is not None:
            trainer.load_state_dict(state)
        else:
            trainer.elapsed = ae_seconds  # the AE phase counts against the budget
            saver(trainer, "ae")
        loader, sampler = make_train_loader(data["train"], plan["data"].batch_size, info, tcfg.seed,
                                            plan["data"].num_workers, pin_memory=info.device.type == "cuda")
        log = RunLog(out / "log.csv", keep_until_step=trainer.step if state else None)
        val = RunLog(out / "val.csv", keep_until_step=trainer.step if state else None)
        title = f"{plan['spec'].model.model} ({plan['preset']}), {info.world} process(es)"

        def on_val(metrics: dict[str, float]) -> None:
            if info.is_main:
                val.append(metrics)
                plot_curves(log, val, out / "loss_curve.png", title)
                bar.write(f"step {metrics['step']}: val " + ", ".join(
                    f"{k} {v:.3f}" for k, v in metrics.items() if k.startswith(("dice_", "mean_"))))

        bar = tqdm(total=trainer.max_steps, initial=trainer.step, desc=plan["spec"].model.model,
                   disable=quiet or not info.is_main, dynamic_ncols=True, file=sys.stderr)
        history = trainer.run(endless_batches(loader, sampler, trainer.batches), val_fn=make_val_fn(data, plan, info),
                              on_log=lambda row: log.append(row) if info.is_main else None, on_val=on_val,
                              on_checkpoint=saver, progress_bar=bar)
        bar.close()
        if info.is_main:
            plot_curves(log, val, out / "loss_curve.png", title)
            _report(history, saver.best, out)
        return 0
    finally:
        cleanup(info)
