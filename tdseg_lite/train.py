"""The training engine of every ``Segmenter``: AMP, gradient accumulation, DDP, NaN guard, exact resume.

The engine never asks which model it trains: it calls ``model.loss(batch)`` (a dict whose
``"loss"`` entry is optimised; the other entries are logged), clips the gradient norm and steps
AdamW. The learning rate warms up linearly, then follows a cosine over whichever budget (steps or
wall-clock seconds) runs out first, so a short run still ends at a small rate.

    history = fit(model, train_loader, TrainConfig(), max_seconds=120)      # notebooks, benchmarks

    trainer = Trainer(model, cfg, info=init_distributed())                 # tdseg train (train_cli.py)
    trainer.load_state_dict(load_checkpoint("RUN/checkpoints/last.pt"))    # --resume
    trainer.run(endless_batches(loader, sampler, trainer.batches), on_checkpoint=save)

One optimiser step with ``A = accumulation_steps`` micro-batches of ``B`` patches on ``W`` processes
sees ``A·B·W`` patches: under DDP each process computes the gradient of its own micro-batches,
``DistributedDataParallel`` averages the gradients over processes during the last ``backward``
(``no_sync`` skips the all-reduce for the first ``A − 1``), and the loss of each micro-batch is
divided by ``A``, so the step equals one on the whole batch. AMP runs the forward pass in bf16
(or fp16 with a ``GradScaler`` that rescales the loss to keep small gradients representable).

Explained in notebooks/03_conditional_unet_and_diffusion.ipynb and 04_gpu_training.ipynb
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from tdseg_lite.checkpoint import rng_state, set_rng_state
from tdseg_lite.config import ConfigError
from tdseg_lite.distributed import DistInfo, reduce_mean, reduce_sum
from tdseg_lite.errors import UserInputError
from tdseg_lite.utils import pick_device

__all__ = ["NonFiniteLossError", "TrainConfig", "Trainer", "amp_setup", "fit", "learning_rate_at", "make_optimizer"]


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser, budget, AMP, logging and checkpoint settings (presets in ``PRESETS``)."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": {"max_steps": 20, "log_every": 5, "val_every": 10, "val_max_cases": 1},
        "cpu": {"max_steps": 3000, "val_every": 500},
        "full": {"max_steps": 20000, "val_every": 1000},
    }
    learning_rate: float = 1e-3            # peak AdamW learning rate
    weight_decay: float = 0.0              # AdamW weight decay
    grad_clip: float = 1.0                 # max gradient norm (0 = no clipping)
    warmup_steps: int = 20                 # linear warm-up
    schedule: Literal["cosine", "constant"] = "cosine"  # decay over the budget after the warm-up
    max_steps: int = 1_000_000             # optimiser-step budget (a time budget: --max-minutes / fit(max_seconds))
    accumulation_steps: int = 1            # micro-batches per optimiser step
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"  # auto: bf16 (or fp16) on CUDA, off on CPU
    compile: bool = False                  # torch.compile the loss computation
    log_every: int = 25                    # steps between log rows
    val_every: int = 0                     # steps between validations (0: only at the end)
    checkpoint_every: int = 0              # steps between "last" checkpoints (0: at each validation and the end)
    val_steps: int = 0                     # DDIM steps at validation (0: the model's inference_steps)
    val_samples: int = 1                   # samples per window at validation
    val_max_cases: int = 0                 # validation cases (0: all)
    seed: int = 0                          # seed of weights, data order and noise
    device: str = "auto"                   # "auto" -> CUDA if available, else CPU

    def __post_init__(self) -> None:
        checks = (("learning_rate", self.learning_rate > 0, "must be > 0", "Use e.g. 1e-3."),
                  ("weight_decay", self.weight_decay >= 0, "must be >= 0", "Use 0 or e.g. 1e-4."),
                  ("grad_clip", self.grad_clip >= 0, "must be >= 0", "Use 1.0 (0 = off)."),
                  ("warmup_steps", self.warmup_steps >= 0, "must be >= 0", "Use e.g. 20."),
                  ("max_steps", self.max_steps >= 1, "must be >= 1", "Use e.g. 1000."),
                  ("accumulation_steps", self.accumulation_steps >= 1, "must be >= 1", "Use 1 (off) or e.g. 4."),
                  ("log_every", self.log_every >= 1, "must be >= 1", "Use e.g. 25."),
                  ("val_every", self.val_every >= 0, "must be >= 0", "Use 0 (end only) or e.g. 200."),
                  ("checkpoint_every", self.checkpoint_every >= 0, "must be >= 0", "Use 0 or e.g. 100."),
                  ("val_steps", self.val_steps >= 0, "must be >= 0", "Use 0 (model default) or e.g. 2."),
                  ("val_samples", self.val_samples >= 1, "must be >= 1", "Use 1."),
                  ("val_max_cases", self.val_max_cases >= 0, "must be >= 0", "Use 0 (all) or e.g. 4."))
        for name, ok, rule, fix in checks:
            if not ok:
                raise ConfigError(f"`TrainConfig.{name}` {rule}, got {getattr(self, name)!r}. {fix}")


class NonFiniteLossError(UserInputError):
    """The loss became NaN or infinite; nothing was saved after the last good step."""


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over the parameters that require gradients (frozen parts, e.g. a label AE, are skipped)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)


def learning_rate_at(cfg: TrainConfig, step: int, progress: float) -> float:
    """Warm-up then cosine (or constant); ``progress`` in [0, 1] is the spent share of the budget."""
    warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    decay = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))) if cfg.schedule == "cosine" else 1.0
    return cfg.learning_rate * warm * decay


def amp_setup(amp: str, device: torch.device) -> tuple[torch.dtype | None, torch.amp.GradScaler | None]:
    """The autocast dtype (``None`` = fp32) and, for fp16, a ``GradScaler``.

    ``auto``: bf16 on GPUs that support it, fp16 + GradScaler on older GPUs, fp32 on CPU.
    """
    cuda = device.type == "cuda"
    if amp == "auto":
        amp = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if cuda else "off"
    if amp == "off":
        return None, None
    if amp == "fp16":
        if not cuda:
            raise ConfigError("`TrainConfig.amp` 'fp16' needs a CUDA device, got device "
                              f"{device}. Use amp=bf16 or amp=off on a CPU.")
        return torch.float16, torch.amp.GradScaler("cuda")
    return torch.bfloat16, None


class _LossModule(nn.Module):
    """``forward(batch) = model.loss(batch)``: what DDP and torch.compile wrap."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        return self.model.loss(batch)


class Trainer:
    """Optimiser, LR schedule, AMP and DDP around one model; its state is a checkpoint's core.

    Args:
        model: any ``Segmenter`` (moved to ``info.device``).
        cfg: ``TrainConfig``.
        info: this process's place in a DDP world (default: one CPU/GPU process from ``cfg.device``).
        max_steps: optimiser steps of the whole run (default ``cfg.max_steps``).
        max_seconds: wall-clock budget of the whole run (summed over resumes); ``None`` = steps only.
    """

    def __init__(self, model: nn.Module, cfg: TrainConfig, *, info: DistInfo | None = None,
                 max_steps: int | None = None, max_seconds: float | None = None) -> None:
        self.cfg, self.info = cfg, info or DistInfo(device=pick_device(cfg.device))
        self.model = model.to(self.info.device)
        self.max_steps = cfg.max_steps if max_steps is None else max_steps
        self.max_seconds = max_seconds
        net: nn.Module = _LossModule(self.model)
        if self.info.active:
            ids = [self.info.device.index] if self.info.device.type == "cuda" else None
            net = nn.parallel.DistributedDataParallel(net, device_ids=ids, find_unused_parameters=True)
        self.ddp = net if self.info.active else None
        # static shapes: with torch 2.13 the automatic dynamic-shape recompile of TextDiffSeg's loss fails in
        # Inductor's convolution lowering (ValueRangeError, measured on a CPU); a new shape recompiles instead
        self.net = torch.compile(net, dynamic=False) if cfg.compile else net
        self.optimizer = make_optimizer(self.model, cfg)
        self.amp_dtype, self.scaler = amp_setup(cfg.amp, self.info.device)
        self.progress = 0.0
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: learning_rate_at(cfg, s, self.progress) / cfg.learning_rate)
        self.step, self.batches, self.elapsed = 0, 0, 0.0
        self.history: dict[str, Any] = {"step": [], "seconds": [], "lr": [], "val": []}

    # --- state -----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Model, optimiser, LR scheduler, GradScaler, RNG states, step, batches consumed, seconds."""
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "lr_scheduler": self.lr_scheduler.state_dict(), "rng": rng_state(), "step": self.step,
                 "batches": self.batches, "elapsed_s": self.elapsed, "progress": self.progress}
        if self.scaler is not None:
            state["grad_scaler"] = self.scaler.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue exactly where ``state_dict`` was taken."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        if self.scaler is not None and "grad_scaler" in state:
            self.scaler.load_state_dict(state["grad_scaler"])
        self.step, self.batches = int(state["step"]), int(state["batches"])
        self.elapsed, self.progress = float(state["elapsed_s"]), float(state.get("progress", 0.0))
        set_rng_state(state["rng"])

    # --- one step --------------------------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.info.device.type, dtype=self.amp_dtype)

    def _check_finite(self, losses: Mapping[str, torch.Tensor]) -> None:
        bad = float(not torch.isfinite(losses["loss"].detach()).all())
        if self.info.active:  # every rank must stop together
            bad = reduce_sum({"bad": bad}, self.info)["bad"]
        if bad:
            terms = ", ".join(f"{k} {float(v.detach().float()):.4g}" for k, v in losses.items())
            raise NonFiniteLossError(
                f"the training loss became non-finite at step {self.step + 1} ({terms}); nothing after step "
                f"{self.step} was saved, the last checkpoint is intact. Lower --set train.learning_rate "
                f"(now {self.cfg.learning_rate:g}), keep train.grad_clip > 0, or try --set train.amp=off.")

    def train_step(self, batches: Iterator[Mapping[str, Any]]) -> dict[str, float]:
        """One optimiser step over ``accumulation_steps`` micro-batches; returns the mean loss terms."""
        self.model.train()
        acc, sums = self.cfg.accumulation_steps, {}
        self.optimizer.zero_grad(set_to_none=True)
        for micro in range(acc):
            sync = self.ddp is None or micro == acc - 1
            with (contextlib.nullcontext() if sync else self.ddp.no_sync()), self._autocast():
                losses = self.net(next(batches))
                self.batches += 1
                self._check_finite(losses)
                loss = losses["loss"].float() / acc
                (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach().float()) / acc
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]],
                                     self.cfg.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.step += 1
        return sums

    # --- the loop --------------------------------------------------------------------------------
    def _budget_left(self, start: float, elapsed0: float) -> bool:
        """Update ``elapsed`` and ``progress``; False once the step or time budget is spent."""
        self.elapsed = elapsed0 + time.perf_counter() - start
        over = float(self.max_seconds is not None and self.elapsed >= self.max_seconds)
        if self.info.active and self.max_seconds is not None:  # every rank stops together: rank 0 decides
            over = reduce_sum({"over": over if self.info.is_main else 0.0}, self.info)["over"]
        self.progress = max(self.step / self.max_steps,
                            min(1.0, self.elapsed / self.max_seconds) if self.max_seconds else 0.0)
        return not over and self.step < self.max_steps

    def run(self, batches: Iterator[Mapping[str, Any]], *,
            val_fn: Callable[[nn.Module], Mapping[str, float]] | None = None,
            on_log: Callable[[dict[str, float]], None] | None = None,
            on_val: Callable[[dict[str, float]], None] | None = None,
            on_checkpoint: Callable[[Trainer], None] | None = None,
            progress_bar: Any = None) -> dict[str, Any]:
        """Train until the budget is spent; returns the history (``fit`` documents its keys).

        ``on_checkpoint(trainer)`` is called every ``checkpoint_every`` steps, after each
        validation and at the end; ``on_log(row)`` with the
        rank-averaged loss terms every ``log_every`` steps; ``on_val(metrics)`` after validation.
        """
        cfg, start, elapsed0 = self.cfg, time.perf_counter(), self.elapsed
        losses: dict[str, float] = {}
        lr = 0.0
        while self._budget_left(start, elapsed0):
            lr = self.optimizer.param_groups[0]["lr"]
            losses = self.train_step(batches)
            self._budget_left(start, elapsed0)
            self.lr_scheduler.step()  # the rate of the next step, from the new step and progress
            if progress_bar is not None:
                progress_bar.update(1)
                progress_bar.set_postfix(loss=f"{losses['loss']:.4f}", lr=f"{lr:.2e}", refresh=False)
            if self.step % cfg.log_every == 0 or self.step == 1:
                self._log(lr, losses, on_log)
            validated = bool(val_fn is not None and cfg.val_every and self.step % cfg.val_every == 0)
            if validated:
                self._validate(val_fn, on_val)
            if on_checkpoint is not None and (validated or (cfg.checkpoint_every and
                                                            self.step % cfg.checkpoint_every == 0)):
                on_checkpoint(self)
        if losses and (not self.history["step"] or self.history["step"][-1] != self.step):  # always log the last step
            self._log(lr, losses, on_log)
        if val_fn is not None and (not self.history["val"] or self.history["val"][-1]["step"] != self.step):
            self._validate(val_fn, on_val)
        if on_checkpoint is not None:
            on_checkpoint(self)
        self.history["steps"], self.history["train_seconds"] = self.step, self.elapsed
        self.model.eval()
        return self.history

    def _log(self, lr: float, losses: Mapping[str, float], on_log: Callable[[dict[str, float]], None] | None) -> None:
        row = {"step": self.step, "seconds": self.elapsed, "lr": lr, **reduce_mean(losses, self.info)}
        if self.info.device.type == "cuda":
            row["gpu_peak_gib"] = torch.cuda.max_memory_allocated(self.info.device) / 2**30
        for key, value in row.items():
            self.history.setdefault(key, []).append(value)
        if on_log is not None:
            on_log(row)

    def _validate(self, val_fn: Callable[[nn.Module], Mapping[str, float]],
                  on_val: Callable[[dict[str, float]], None] | None) -> None:
        state = torch.get_rng_state()  # validation must not shift the training noise stream
        metrics = {"step": self.step, **val_fn(self.model)}
        torch.set_rng_state(state)
        self.history["val"].append(metrics)
        if on_val is not None:
            on_val(metrics)


def _forever(loader: Iterable[Any]) -> Iterator[Any]:
    while True:
        yield from loader


def fit(model: Any, train_loader: Iterable[Mapping[str, Any]], cfg: TrainConfig | None = None, *,
        max_seconds: float | None = None, max_steps: int | None = None,
        val_fn: Callable[[Any], Mapping[str, float]] | None = None, verbose: bool = False) -> dict[str, Any]:
    """Train ``model`` in this process until the step or the wall-clock budget is spent.

    Args:
        model: any ``Segmenter`` (moved to ``cfg.device``).
        train_loader: yields batches ``{"image", "label", "description", ...}``; cycled.
        cfg: optimiser settings (default ``TrainConfig()``).
        max_seconds: wall-clock budget of the loop (data loading included); ``None`` = steps only.
        max_steps: step budget (default ``cfg.max_steps``).
        val_fn: ``val_fn(model) -> {"name": value}``, called every ``cfg.val_every`` steps and at the end.
        verbose: print each history entry.

    Returns:
        ``{"step": [...], "seconds": [...], "lr": [...], "<loss term>": [...], "val": [{"step", ...}],
        "steps": n, "train_seconds": t}``.
    """
    trainer = Trainer(model, cfg or TrainConfig(), max_steps=max_steps, max_seconds=max_seconds)
    log = (lambda row: print(f"step {row['step']:5d}  {row['seconds']:7.1f} s  " + "  ".join(
        f"{k} {v:.4f}" for k, v in row.items() if k not in ("step", "seconds")), flush=True)) if verbose else None
    return trainer.run(_forever(train_loader), val_fn=val_fn, on_log=log)
