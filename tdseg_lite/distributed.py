"""One code path for 1 or N processes: PyTorch DDP under ``torchrun``.

``torchrun --nproc_per_node N -m tdseg_lite.cli train ...`` starts N processes and sets
``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; a plain ``tdseg train`` sets none of them and runs as
a world of one. Nothing else in the training code asks which case it is in:

* ``init_distributed`` joins the process group (NCCL on GPUs, gloo on CPUs) and picks the device;
* each rank reads its own shard of every epoch (``batches.ResumableSampler``);
* ``DistributedDataParallel`` averages the gradients during ``backward``;
* ``reduce_mean`` / ``reduce_sum`` combine logged losses and validation counts across ranks;
* only rank 0 writes logs, pictures and checkpoints (``is_main``).

Explained in notebooks/04_gpu_training.ipynb
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from tdseg_lite.errors import UserInputError
from tdseg_lite.utils import pick_device

__all__ = ["DistInfo", "barrier", "broadcast_module", "cleanup", "init_distributed", "reduce_mean", "reduce_sum"]


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world`` processes, on ``device``."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that logs and saves."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """A process group of more than one process is running."""
        return self.world > 1


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, str(default))
    try:
        return int(raw)
    except ValueError:
        raise UserInputError(f"environment variable `{name}` must be an integer, got {raw!r}. "
                             "Start multi-process runs with torchrun, which sets it.") from None


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the ``torchrun`` process group if there is one; otherwise a world of one.

    Args:
        device: ``"auto"`` (CUDA if available, else CPU), ``"cpu"`` or ``"cuda"``; under DDP on GPUs
            each process takes ``cuda:LOCAL_RANK``.
    """
    world, rank, local = _env_int("WORLD_SIZE", 1), _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    dev = pick_device(device)
    if world <= 1:
        return DistInfo(device=dev)
    if dev.type == "cuda":
        if local >= torch.cuda.device_count():
            raise UserInputError(f"`LOCAL_RANK` {local} needs GPU {local}, but only {torch.cuda.device_count()} "
                                 "are visible. Use --nproc_per_node <= the number of GPUs.")
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank=rank, world=world, local_rank=local, device=dev)


def reduce_sum(values: Mapping[str, float], info: DistInfo) -> dict[str, float]:
    """Sum of each value over all ranks (identity for a world of one)."""
    if not info.active or not values:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64,
                     device=info.device if info.device.type == "cuda" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return dict(zip(keys, t.tolist()))


def reduce_mean(values: Mapping[str, float], info: DistInfo) -> dict[str, float]:
    """Mean of each value over all ranks."""
    return {k: v / info.world for k, v in reduce_sum(values, info).items()}


def broadcast_module(module: torch.nn.Module, info: DistInfo) -> None:
    """Copy rank 0's parameters and buffers (frozen ones included) to every rank."""
    if info.active:
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, src=0)


def barrier(info: DistInfo) -> None:
    """Wait for every rank (no-op for a world of one)."""
    if info.active:
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    """Leave the process group."""
    if info.active and dist.is_initialized():
        dist.destroy_process_group()
