"""The label latent trained once per dataset: cache hits, misses, forced training, corrupt entries,
and ``tdseg train`` reusing the autoencoder of an earlier run on the same data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_msd_dataset

from tdseg_lite import label_cache
from tdseg_lite.checkpoint import load_checkpoint
from tdseg_lite.cli import main
from tdseg_lite.label_ae import LabelAEConfig, LabelAutoencoder
from tdseg_lite.label_cache import cache_dir, cache_key, cached_label_autoencoder, pretrain_label_autoencoder

CFG = LabelAEConfig(width=8, head_hidden=0, patch_size=(16, 16, 16), batch_size=2, max_steps=3)


def volumes(seed: int = 0) -> list[torch.Tensor]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(2):
        v = np.zeros((20, 16, 12), np.uint8)
        a = rng.integers(2, 8, 3)
        v[a[0]:a[0] + 8, a[1]:a[1] + 6, a[2]:a[2] + 4] = 1
        v[a[0]:a[0] + 3, a[1]:a[1] + 3, a[2]:a[2] + 2] = 2
        out.append(torch.from_numpy(v))
    return out


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TDSEG_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "label_ae"


def no_training(*args: object, **kwargs: object) -> None:
    raise AssertionError("the autoencoder was trained although the cache holds it")


def test_cache_dir_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TDSEG_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c" / "label_ae"
    monkeypatch.delenv("TDSEG_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert cache_dir() == tmp_path / "home" / ".cache" / "tdseg_lite" / "label_ae"


def test_second_call_reuses_the_same_weights_without_training(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = pretrain_label_autoencoder(LabelAutoencoder(CFG), volumes(), seed=1)
    assert first.source == "trained" and first.steps == 3 and first.path == cache / f"{first.key}.pt"
    monkeypatch.setattr("tdseg_lite.label_ae.train_label_autoencoder", no_training)
    second = pretrain_label_autoencoder(LabelAutoencoder(CFG), volumes(), seed=1)
    assert second.reused and second.key == first.key and not second.model.training
    a, b = first.model.state_dict(), second.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert float(second.model.scale_factor) != 1.0  # the latent scale travels with the weights


@pytest.mark.parametrize("change", ["config", "labels", "shape", "steps", "seed"])
def test_a_change_misses(change: str, cache: Path) -> None:
    base = cache_key(volumes(), CFG, 3, 1)
    vols = volumes()
    if change == "labels":
        vols[1][0, 0, 0] = 2  # one voxel
    if change == "shape":
        vols[0] = vols[0][:, :, :8]
    cfg = LabelAEConfig(**{**vars(CFG), "latent_channels": 16}) if change == "config" else CFG
    key = cache_key(vols, cfg, 4 if change == "steps" else 3, 2 if change == "seed" else 1)
    assert key != base
    pretrain_label_autoencoder(LabelAutoencoder(CFG), volumes(), seed=1)
    res = pretrain_label_autoencoder(LabelAutoencoder(cfg), vols, steps=4 if change == "steps" else 3,
                                     seed=2 if change == "seed" else 1)
    assert res.source == "trained" and res.key == key


def test_reuse_setting_is_not_part_of_the_key_and_false_retrains(cache: Path) -> None:
    assert cache_key(volumes(), CFG, 3, 1) == cache_key(volumes(), LabelAEConfig(**{**vars(CFG), "reuse": False}), 3, 1)
    pretrain_label_autoencoder(LabelAutoencoder(CFG), volumes())
    forced = pretrain_label_autoencoder(LabelAutoencoder(LabelAEConfig(**{**vars(CFG), "reuse": False})), volumes())
    assert forced.source == "trained"
    assert pretrain_label_autoencoder(LabelAutoencoder(CFG), volumes(), reuse=False).source == "trained"
    assert pretrain_label_autoencoder(LabelAutoencoder(CFG), volumes()).source == "reused"


@pytest.mark.parametrize("damage", [b"not a torch file", b""])
def test_a_corrupt_entry_is_retrained_with_a_one_line_warning(damage: bytes, cache: Path) -> None:
    first = pretrain_label_autoencoder(LabelAutoencoder(CFG), volumes())
    first.path.write_bytes(damage)
    with pytest.warns(UserWarning, match="ignoring unreadable .*; retraining") as caught:
        again = pretrain_label_autoencoder(LabelAutoencoder(CFG), volumes())
    assert again.source == "trained" and all("\n" not in str(w.message) for w in caught)
    assert "weights_only" not in str(caught[0].message)
    assert pretrain_label_autoencoder(LabelAutoencoder(CFG), volumes()).source == "reused"  # rewritten whole


def test_an_entry_with_pickled_code_is_refused(cache: Path) -> None:
    first = pretrain_label_autoencoder(LabelAutoencoder(CFG), volumes())
    torch.save({"format": 1, "key": first.key, "state_dict": first.model.state_dict(), "evil": Path("/")}, first.path)
    with pytest.warns(UserWarning, match="ignoring unreadable"):
        assert pretrain_label_autoencoder(LabelAutoencoder(CFG), volumes()).source == "trained"


def test_an_unwritable_cache_trains_and_warns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("TDSEG_CACHE", str(blocker))  # a file: the folder cannot be made
    with pytest.warns(UserWarning, match="could not write"):
        res = pretrain_label_autoencoder(LabelAutoencoder(CFG), volumes())
    assert res.source == "trained" and res.path is None


def test_dataset_helper_matches_the_dataset_and_refuses_a_class_mismatch(cache: Path, tmp_path: Path) -> None:
    from tdseg_lite.config import ConfigError, build_config
    from tdseg_lite.data import DataConfig

    root = write_msd_dataset(tmp_path / "ds", n_cases=3)
    data_cfg = build_config(DataConfig, "smoke")
    cfg = LabelAEConfig(**{**vars(CFG), "patch_size": (16, 16, 16)})
    first = cached_label_autoencoder(data_cfg, root, cfg, steps=2)
    assert first.source == "trained" and first.steps == 2
    assert cached_label_autoencoder(data_cfg, root, cfg, steps=2).reused
    with pytest.raises(ConfigError, match="num_classes` must equal the 3 classes"):
        cached_label_autoencoder(data_cfg, root, LabelAEConfig(**{**vars(CFG), "num_classes": 4}))


def test_volumes_come_from_the_training_cache_when_it_holds_every_case(tmp_path: Path) -> None:
    from tdseg_lite.config import build_config
    from tdseg_lite.data import DataConfig, make_datasets

    root = write_msd_dataset(tmp_path / "ds", n_cases=4)
    data_cfg = build_config(DataConfig, "smoke")
    train_ds, _ = make_datasets(data_cfg, root, splits_path=tmp_path / "splits.json")
    items = train_ds.data
    fresh = label_cache.training_label_volumes(data_cfg, items)
    assert len(fresh) == len(items) >= 2 and all(v.dtype == torch.uint8 and v.ndim == 3 for v in fresh)

    class OtherCache:  # a cache of some other preprocessing: its first volume disagrees, so all are loaded again
        def __init__(self) -> None:
            self._cache = [{"label": torch.zeros(1, *v.shape)} for v in fresh]

    again = label_cache.training_label_volumes(data_cfg, items, dataset=OtherCache())
    assert all(torch.equal(a, b) for a, b in zip(again, fresh))
    assert label_cache.cached_volumes(OtherCache(), len(items) + 1) is None
    assert label_cache.cached_volumes(object(), len(items)) is None
    for item in items[1:]:  # from here on only the first case can be loaded: the rest must come from the cache
        Path(item["label"]).unlink()
    cached = label_cache.training_label_volumes(data_cfg, items, dataset=train_ds)
    assert len(cached) == len(fresh) and all(torch.equal(a, b) for a, b in zip(cached, fresh))


# --- through tdseg train --------------------------------------------------------------------------------
FAST = ["--preset", "smoke", "--device", "cpu", "--quiet", "--set", "label_ae.max_steps=4", "--set",
        "train.max_steps=2", "--set", "train.val_max_cases=1", "--set", "train.val_steps=1", "--set",
        "train.val_every=0"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_msd_dataset(tmp_path_factory.mktemp("ds"), n_cases=4)


def train(run: Path, data: Path, *extra: str) -> dict:
    assert main(["train", "--data", str(data), "--out", str(run), *FAST, *extra]) == 0
    return json.loads((run / "config.json").read_text())


def test_tdseg_train_reuses_the_autoencoder_of_an_earlier_run(dataset: Path, tmp_path: Path, cache: Path,
                                                               monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("TDSEG_ARTIFACTS", str(tmp_path / "artifacts"))
    first = train(tmp_path / "a", dataset)["label_ae"]
    assert first["source"] == "trained" and first["steps"] == 4 and Path(first["cache_file"]).is_file()
    assert "label AE: trained 4 steps" in capsys.readouterr().err
    monkeypatch.setattr("tdseg_lite.label_ae.train_label_autoencoder", no_training)
    second = train(tmp_path / "b", dataset)["label_ae"]
    assert second["source"] == "reused" and second["key"] == first["key"]
    assert "label AE: reused" in capsys.readouterr().err
    a, b = (load_checkpoint(tmp_path / r / "checkpoints" / "last.pt")["model"] for r in ("a", "b"))
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"a reused AE must give the very same run; differing: {different[:5]}"
    monkeypatch.undo()
    monkeypatch.setenv("TDSEG_CACHE", str(cache.parent))
    monkeypatch.setenv("TDSEG_ARTIFACTS", str(tmp_path / "artifacts"))
    forced = train(tmp_path / "c", dataset, "--set", "label_ae.reuse=false")["label_ae"]
    assert forced["source"] == "trained"
    other = train(tmp_path / "d", dataset, "--set", "label_ae.latent_channels=8")["label_ae"]
    assert other["source"] == "trained" and other["key"] != first["key"]


def test_the_old_ae_steps_key_names_the_new_one(tmp_path: Path, capsys) -> None:
    assert main(["train", "--out", str(tmp_path / "r"), "--preset", "smoke", "--set", "train.ae_steps=5"]) == 2
    err = capsys.readouterr().err
    assert "label_ae.max_steps" in err and err.count("\n") == 1
    assert not (tmp_path / "r").exists()
    assert label_cache.FORMAT == 1
