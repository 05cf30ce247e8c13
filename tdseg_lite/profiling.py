"""Throughput and memory of a training step, measured through the real engine (``Trainer.train_step``).

    row = measure_training(model, synthetic_batch(2, 64, 3, device), TrainConfig(amp="bf16"), steps=10)
    # {"step_s", "it_per_s", "patches_per_s", "peak_memory_gib", "memory_kind", "amp", ...}

Peak memory is ``torch.cuda.max_memory_allocated`` on a GPU (tensors only, this measurement) and
the process's peak resident set size on a CPU (everything the process ever held, a coarser number).
Used by notebooks/04_gpu_training.ipynb and benchmarks/bench_step.py.
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
from typing import Any

import torch

from tdseg_lite.train import TrainConfig, Trainer, amp_setup

__all__ = ["measure_training", "peak_memory_gib", "synthetic_batch"]


def synthetic_batch(batch: int, patch: int, num_classes: int, device: torch.device | str = "cpu") -> dict[str, Any]:
    """A kidney-like training batch: image (B, 1, P, P, P) in [0, 1], label (B, 1, P, P, P), descriptions."""
    gen = torch.Generator().manual_seed(0)
    label = torch.zeros(batch, 1, patch, patch, patch, dtype=torch.long)
    c, q, s = patch // 2, patch // 4, patch // 6
    label[:, :, c - q:c + q, c - s:c + s, c - q:c + q] = 1
    label[:, :, c - 3:c + 3, c - 3:c + 3, c - 3:c + 3] = num_classes - 1
    image = (0.3 + 0.4 * label.float() / (num_classes - 1) + 0.05 * torch.randn(label.shape, generator=gen)).clamp(0, 1)
    return {"image": image.to(device), "label": label.to(device),
            "description": ["A 2 cm tumour in the upper pole of the left kidney; the right kidney is normal."] * batch}


def peak_memory_gib(device: torch.device) -> tuple[float, str]:
    """``(GiB, what it counts)``: CUDA peak allocated tensors, or the process's peak RSS on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30, "GPU peak allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**30 if sys.platform == "darwin" else 2**20), "process peak RSS"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_training(model: torch.nn.Module, batch: dict[str, Any], cfg: TrainConfig, *, steps: int = 5,
                     warmup: int = 2) -> dict[str, Any]:
    """Median seconds of ``Trainer.train_step`` on ``batch`` (after ``warmup`` steps) and peak memory.

    Each optimiser step reads ``cfg.accumulation_steps`` copies of ``batch``.
    """
    trainer = Trainer(model, cfg)
    device = trainer.info.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(warmup + steps):
        _sync(device)
        start = time.perf_counter()
        losses = trainer.train_step(iter([batch] * cfg.accumulation_steps))
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    step_s = statistics.median(times)
    memory, kind = peak_memory_gib(device)
    dtype = amp_setup(cfg.amp, device)[0]
    patches = int(batch["image"].shape[0]) * cfg.accumulation_steps
    return {"device": str(device), "amp": str(dtype).replace("torch.", "") if dtype else "fp32",
            "accumulation_steps": cfg.accumulation_steps, "patches_per_step": patches, "step_s": step_s,
            "it_per_s": 1.0 / step_s, "patches_per_s": patches / step_s, "peak_memory_gib": memory,
            "memory_kind": kind, "final_loss": losses["loss"]}
