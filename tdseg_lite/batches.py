"""A training data order that a resumed run can replay exactly, on 1 or N processes.

Two things decide which patches a step sees: the order of the volumes, and the random crops and
augmentations applied to them. Both are made pure functions of ``(seed, epoch, position)``:

* ``ResumableSampler`` draws epoch ``e``'s permutation from ``torch.Generator(seed + e)`` (as
  ``DistributedSampler`` does), gives rank ``r`` every ``world``-th entry, and can start an epoch
  part-way (``set_epoch(e, skip=n)``) — a resumed run skips the batches it already trained on
  without loading them;
* it yields ``(index, sample_seed)`` pairs; ``SeededDataset`` reseeds the MONAI random transforms
  with ``sample_seed`` before each item, so crops do not depend on worker processes or on what ran
  before.

The loader never touches the global torch RNG (it gets its own generator), so the model's noise and
timestep draws are the same whether or not the run was interrupted.

Explained in notebooks/04_gpu_training.ipynb
"""

from __future__ import annotations

from collections.abc import Iterator, Sized
from typing import Any

import numpy as np
import torch
from monai.data import DataLoader
from torch.utils.data import Dataset, Sampler

from tdseg_lite.distributed import DistInfo

__all__ = ["ResumableSampler", "SeededDataset", "endless_batches", "make_train_loader"]


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """A 32-bit seed for the item at ``position`` of ``epoch`` (independent streams per triple)."""
    return int(np.random.SeedSequence([seed, epoch, position]).generate_state(1)[0])


class ResumableSampler(Sampler[tuple[int, int]]):
    """Seeded per-epoch shuffling, sharded over ranks, that can start an epoch part-way.

    Each rank gets ``ceil(n / world)`` items per epoch (the permutation is padded by wrapping, as
    ``DistributedSampler`` does) so every rank runs the same number of steps.
    """

    def __init__(self, data: Sized, seed: int = 0, rank: int = 0, world: int = 1, shuffle: bool = True) -> None:
        self.n, self.seed, self.rank, self.world, self.shuffle = len(data), seed, rank, world, shuffle
        self.per_rank = -(-self.n // world)
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Use epoch ``epoch``'s order, starting after its first ``skip`` items of this rank."""
        self.epoch, self.skip = epoch, skip

    def epoch_indices(self, epoch: int) -> list[int]:
        """This rank's dataset indices for ``epoch`` (length ``per_rank``)."""
        if self.shuffle:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()
        else:
            order = list(range(self.n))
        order = (order * (-(-self.per_rank * self.world // self.n)))[: self.per_rank * self.world]
        return order[self.rank :: self.world]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices = self.epoch_indices(self.epoch)
        for pos in range(self.skip, len(indices)):
            yield indices[pos], sample_seed(self.seed, self.epoch, pos * self.world + self.rank)

    def __len__(self) -> int:
        return self.per_rank - self.skip


class SeededDataset(Dataset):
    """Wraps a MONAI dataset: ``ds[(index, seed)]`` reseeds its random transforms, then returns ``ds[index]``."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        transform = getattr(self.dataset, "transform", None)
        if transform is not None and hasattr(transform, "set_random_state"):
            transform.set_random_state(seed=seed)
        return self.dataset[index]


def make_train_loader(dataset: Any, batch_size: int, info: DistInfo, seed: int, num_workers: int = 0,
                      pin_memory: bool = False) -> tuple[DataLoader, ResumableSampler]:
    """A MONAI ``DataLoader`` over ``SeededDataset(dataset)`` with a ``ResumableSampler`` (drop_last)."""
    sampler = ResumableSampler(dataset, seed=seed, rank=info.rank, world=info.world)
    if sampler.per_rank < batch_size:
        from tdseg_lite.errors import UserInputError

        raise UserInputError(f"`data.batch_size` {batch_size} is larger than the {sampler.per_rank} training "
                             f"volume(s) per process ({len(dataset)} cases over {info.world} process(es)). "
                             "Lower --set data.batch_size or add cases.")
    loader = DataLoader(SeededDataset(dataset), batch_size=batch_size, sampler=sampler, drop_last=True,
                        num_workers=num_workers, pin_memory=pin_memory,
                        generator=torch.Generator().manual_seed(seed), persistent_workers=num_workers > 0)
    return loader, sampler


def endless_batches(loader: DataLoader, sampler: ResumableSampler, consumed: int = 0) -> Iterator[Any]:
    """Batches forever, starting after ``consumed`` batches (epoch ``consumed // per_epoch``, part-way)."""
    per_epoch = sampler.per_rank // loader.batch_size
    while True:
        epoch, offset = divmod(consumed, per_epoch)
        sampler.set_epoch(epoch, skip=offset * loader.batch_size)
        for batch in loader:
            yield batch
            consumed += 1
