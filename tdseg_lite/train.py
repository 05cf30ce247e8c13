"""A minimal training loop for every ``Segmenter``: one step, and ``fit`` under a step/time budget.

The loop never asks which model it trains: it calls ``model.loss(batch)`` (a dict whose
``"loss"`` entry is optimised; the other entries are logged), clips the gradient norm and steps
AdamW. The learning rate warms up linearly and then follows a cosine over whichever budget
(steps or wall-clock seconds) runs out first, so a short run still ends at a small rate.

    history = fit(model, train_loader, TrainConfig(), max_seconds=120)

Explained in notebooks/03_conditional_unet_and_diffusion.ipynb
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch

from tdseg_lite.config import ConfigError
from tdseg_lite.utils import pick_device

__all__ = ["TrainConfig", "fit", "learning_rate_at", "make_optimizer", "training_step"]


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser and budget of ``fit`` (presets in ``PRESETS``)."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {"smoke": {"max_steps": 20, "log_every": 5}, "cpu": {}, "full": {}}
    learning_rate: float = 1e-3            # peak AdamW learning rate
    weight_decay: float = 0.0              # AdamW weight decay
    grad_clip: float = 1.0                 # max gradient norm (0 = no clipping)
    warmup_steps: int = 20                 # linear warm-up
    schedule: Literal["cosine", "constant"] = "cosine"  # decay over the budget after the warm-up
    max_steps: int = 1_000_000             # step budget (the time budget is an argument of fit)
    log_every: int = 25                    # steps between history entries
    val_every: int = 0                     # steps between calls of val_fn (0: only at the end)
    device: str = "auto"                   # "auto" -> CUDA if available, else CPU

    def __post_init__(self) -> None:
        checks = (("learning_rate", self.learning_rate > 0, "must be > 0", "Use e.g. 1e-3."),
                  ("weight_decay", self.weight_decay >= 0, "must be >= 0", "Use 0 or e.g. 1e-4."),
                  ("grad_clip", self.grad_clip >= 0, "must be >= 0", "Use 1.0 (0 = off)."),
                  ("warmup_steps", self.warmup_steps >= 0, "must be >= 0", "Use e.g. 20."),
                  ("max_steps", self.max_steps >= 1, "must be >= 1", "Use e.g. 1000."),
                  ("log_every", self.log_every >= 1, "must be >= 1", "Use e.g. 25."),
                  ("val_every", self.val_every >= 0, "must be >= 0", "Use 0 (end only) or e.g. 200."))
        for name, ok, rule, fix in checks:
            if not ok:
                raise ConfigError(f"`TrainConfig.{name}` {rule}, got {getattr(self, name)!r}. {fix}")


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over the parameters that require gradients (frozen parts, e.g. a label AE, are skipped)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)


def learning_rate_at(cfg: TrainConfig, step: int, progress: float) -> float:
    """Warm-up then cosine (or constant); ``progress`` in [0, 1] is the spent share of the budget."""
    warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    decay = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))) if cfg.schedule == "cosine" else 1.0
    return cfg.learning_rate * warm * decay


def training_step(model: Any, batch: Mapping[str, Any], optimizer: torch.optim.Optimizer,
                  grad_clip: float = 1.0) -> dict[str, float]:
    """One optimisation step on ``model.loss(batch)["loss"]``; returns every loss entry as a float."""
    model.train()
    losses = model.loss(batch)
    optimizer.zero_grad(set_to_none=True)
    losses["loss"].backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], grad_clip)
    optimizer.step()
    return {k: float(v.detach()) for k, v in losses.items()}


def _forever(loader: Iterable[Any]) -> Iterator[Any]:
    while True:
        yield from loader


def fit(model: Any, train_loader: Iterable[Mapping[str, Any]], cfg: TrainConfig | None = None, *,
        max_seconds: float | None = None, max_steps: int | None = None,
        val_fn: Callable[[Any], Mapping[str, float]] | None = None, optimizer: torch.optim.Optimizer | None = None,
        verbose: bool = False) -> dict[str, Any]:
    """Train ``model`` until the step or the wall-clock budget is spent.

    Args:
        model: any ``Segmenter`` (moved to ``cfg.device``).
        train_loader: yields batches ``{"image", "label", "description", ...}``; cycled.
        cfg: optimiser settings (default ``TrainConfig()``).
        max_seconds: wall-clock budget of the loop (data loading included); ``None`` = steps only.
        max_steps: step budget (default ``cfg.max_steps``).
        val_fn: ``val_fn(model) -> {"name": value}``, called every ``cfg.val_every`` steps and at the end.
        optimizer: continue with this optimiser instead of a fresh AdamW.
        verbose: print each history entry.

    Returns:
        ``{"step": [...], "seconds": [...], "lr": [...], "<loss term>": [...], "val": [{"step", ...}],
        "steps": n, "train_seconds": t}``.
    """
    cfg = cfg or TrainConfig()
    steps = cfg.max_steps if max_steps is None else max_steps
    model.to(pick_device(cfg.device))
    optimizer = optimizer or make_optimizer(model, cfg)
    history: dict[str, Any] = {"step": [], "seconds": [], "lr": [], "val": []}
    start, step, batches = time.perf_counter(), 0, _forever(train_loader)
    while step < steps:
        elapsed = time.perf_counter() - start
        if max_seconds is not None and elapsed >= max_seconds:
            break
        progress = max(step / steps, elapsed / max_seconds if max_seconds else 0.0)
        if progress >= 1.0:
            break
        lr = learning_rate_at(cfg, step, progress)
        for group in optimizer.param_groups:
            group["lr"] = lr
        losses = training_step(model, next(batches), optimizer, cfg.grad_clip)
        step += 1
        if step % cfg.log_every == 0 or step == 1:
            for key, value in (("step", step), ("seconds", time.perf_counter() - start), ("lr", lr), *losses.items()):
                history.setdefault(key, []).append(value)
            if verbose:
                print(f"step {step:5d}  {history['seconds'][-1]:7.1f} s  " +
                      "  ".join(f"{k} {v:.4f}" for k, v in losses.items()), flush=True)
        if val_fn is not None and cfg.val_every and step % cfg.val_every == 0:
            history["val"].append({"step": step, **val_fn(model)})
    history["steps"], history["train_seconds"] = step, time.perf_counter() - start
    if val_fn is not None and (not history["val"] or history["val"][-1]["step"] != step):
        history["val"].append({"step": step, **val_fn(model)})
    model.eval()
    return history
