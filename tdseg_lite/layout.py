"""Memory layout of 3D activations: channels-last where a CPU's oneDNN convolutions run faster.

PyTorch stores a (B, C, D, H, W) tensor channels-first by default. On a CPU, oneDNN's 3D
convolutions with few channels at full resolution run much faster on channels-last memory
(``torch.channels_last_3d``: the C values of a voxel side by side). Measured on a 2-core AVX-512
EPYC, one optimiser step of the cpu preset (4 patches of 64³; ``benchmarks/results/step_layout_*``,
both layouts stepped in turns in one process):

* the MONAI UNet, input and weights channels-last: 1.06 → 0.76 s on one thread, 0.61 → 0.41 s on two
  (with the input alone channels-last it stayed at 1.01 s: the weights must change too);
* TextDiffSeg with its image encoder's two full-resolution stages channels-last: 1.38 → 1.28 s on
  one thread, 1.05 → 0.76 s on two (with the skip decoder below). Converting the whole model
  instead gained about 1 %: its GroupNorm, attention and element-wise layers on the latent grid
  then pay a layout conversion each;
* the skip decoder's 1×1×1 convolutions at 64³ (7 → 8 channels, forward + backward): 22 ms
  channels-first on one thread (PyTorch's own GEMM path), 74 ms on two (oneDNN, which PyTorch picks
  once it has more than one thread), 11 ms channels-last on two; so it goes channels-last only with
  two or more threads.

``TDSEG_CHANNELS_LAST=0`` in the environment switches the layout off (channels-first everywhere,
as before; ``benchmarks/bench_step.py`` compares both with ``@layout=first``).
GPUs are left alone (``channels_last`` returns the tensor unchanged off the CPU): cuDNN's choices
there were not measured here. The layout changes no value beyond float rounding (different
summation order); tests check both layouts give the same outputs and gradients.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from tdseg_lite.errors import UserInputError

__all__ = ["channels_last", "enabled", "module_channels_last"]


def enabled() -> bool:
    """Whether CPU tensors may go channels-last: ``TDSEG_CHANNELS_LAST`` unset or ``1`` (read at each call)."""
    value = os.environ.get("TDSEG_CHANNELS_LAST", "1").strip()
    if value not in ("0", "1", ""):
        raise UserInputError(f"environment variable TDSEG_CHANNELS_LAST must be 0 or 1, got {value!r}. "
                             "Unset it (channels-last on a CPU) or set it to 0 (channels-first everywhere).")
    return value != "0"


def channels_last(x: torch.Tensor, *, threads: int = 1) -> torch.Tensor:
    """``x`` (B, C, D, H, W) in channels-last-3d memory when it lives on a CPU and PyTorch runs with
    at least ``threads`` threads (and ``enabled()``); otherwise ``x`` itself. Same shape and values."""
    if x.device.type != "cpu" or x.ndim != 5 or torch.get_num_threads() < threads or not enabled():
        return x
    return x.contiguous(memory_format=torch.channels_last_3d)


def module_channels_last(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``channels_last(x)``, with ``module``'s 5D weights moved to the same layout as ``x`` first.

    With the input alone channels-last the UNet's step stayed at 1.01 s (module docstring): both must
    change. The weights move in place (the same ``Parameter`` objects: an optimiser built earlier still
    holds them), once per change of device type or setting: channels-last on a CPU, channels-first
    elsewhere and when switched off.
    """
    x = channels_last(x)
    cpu = x.device.type == "cpu" and x.ndim == 5 and enabled()
    if getattr(module, "_channels_last", False) != cpu:
        module.to(memory_format=torch.channels_last_3d if cpu else torch.contiguous_format)
        module._channels_last = cpu  # type: ignore[assignment]
    return x
