"""The resumable data order (tdseg_lite.batches): sharded, replayable sampling, reseeded MONAI transforms,
mid-epoch resume."""

from __future__ import annotations

import torch

from tdseg_lite.batches import ResumableSampler, SeededDataset, endless_batches


def test_resumable_sampler_skips_shards_and_replays() -> None:
    data = list(range(10))
    full = ResumableSampler(data, seed=3)
    full.set_epoch(1)
    whole = list(full)
    full.set_epoch(1, skip=4)
    assert list(full) == whole[4:]
    ranks = [ResumableSampler(data, seed=3, rank=r, world=3) for r in range(3)]
    for s in ranks:
        s.set_epoch(1)
    shards = [[i for i, _ in s] for s in ranks]
    assert all(len(s) == 4 for s in shards) and {i for s in shards for i in s} == set(data)
    assert [i for i, _ in whole] != list(range(10))  # shuffled
    assert len({seed for _, seed in whole}) == 10


def test_seeded_dataset_reseeds_monai_transforms() -> None:
    from monai import transforms as mt
    from monai.data import Dataset

    ds = SeededDataset(Dataset([{"x": torch.arange(64.0).reshape(1, 4, 4, 4)}],
                               mt.RandSpatialCropd("x", roi_size=(2, 2, 2), random_size=False)))
    a, b, c = ds[(0, 7)]["x"], ds[(0, 8)]["x"], ds[(0, 7)]["x"]
    assert torch.equal(a, c) and a.shape == (1, 2, 2, 2)
    assert any(not torch.equal(ds[(0, s)]["x"], a) for s in range(9, 20)) and b is not None


def test_endless_batches_resume_mid_epoch() -> None:
    from monai.data import DataLoader

    data = list(range(6))
    sampler = ResumableSampler(data, seed=0)
    loader = DataLoader(SeededDataset(data), batch_size=2, sampler=sampler, drop_last=True)
    stream = endless_batches(loader, sampler)
    first = [next(stream).tolist() for _ in range(7)]
    resumed = endless_batches(loader, sampler, consumed=4)
    assert [next(resumed).tolist() for _ in range(3)] == first[4:]
