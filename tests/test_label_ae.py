"""Label autoencoder: shapes, latent scale, a quick overfit, errors and the checkpoint round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tdseg_lite.config import PRESET_NAMES, ConfigError, build_config
from tdseg_lite.errors import UserInputError
from tdseg_lite.label_ae import (
    LabelAEConfig,
    LabelAutoencoder,
    latent_scale_factor,
    load_label_autoencoder,
    pca_initialise,
    reconstruct,
    reconstruction_dice,
    save_label_autoencoder,
    structure_dice,
    train_label_autoencoder,
)


def phantom_like_label(shape: tuple[int, int, int] = (32, 32, 16), seed: int = 0) -> np.ndarray:
    """An ellipsoidal 'kidney' (1) with a spherical 'tumour' (2) on its surface, uint8 (X, Y, Z)."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij"), -1)
    centre = np.array(shape) / 2 + rng.uniform(-1, 1, 3)
    semi = np.array([shape[0] * 0.3, shape[1] * 0.2, shape[2] * 0.35])
    label = np.zeros(shape, np.uint8)
    label[(((grid - centre) / semi) ** 2).sum(-1) < 1] = 1
    tumour = centre + np.array([semi[0] * 0.8, 0, 0])
    label[((grid - tumour) ** 2).sum(-1) < 3.5**2] = 2
    return label


@pytest.mark.parametrize(("factor", "k"), [(2, 2), (3, 4), (4, 4), (4, 32), (8, 8)])
@pytest.mark.parametrize("linear_path", [True, False])
def test_shapes(factor: int, k: int, linear_path: bool) -> None:
    model = LabelAutoencoder(LabelAEConfig(latent_channels=k, downsample_factor=factor, width=8, head_hidden=8,
                                           patch_size=None, linear_path=linear_path))
    labels = torch.randint(0, 3, (2, 1, 24, 24, 48))
    z = model.encode(labels)
    assert z.shape == (2, k, 24 // factor, 24 // factor, 48 // factor)
    assert model.decode(z).shape == (2, 3, 24, 24, 48)
    onehot = torch.nn.functional.one_hot(labels[:, 0], 3).permute(0, 4, 1, 2, 3).float()
    torch.testing.assert_close(model.encode(onehot), z)  # class indices and one-hot give the same latent


def test_latent_scale_factor_gives_unit_variance() -> None:
    torch.manual_seed(0)
    model = LabelAutoencoder(LabelAEConfig(width=8, head_hidden=0))
    volumes = [phantom_like_label(seed=s) for s in range(3)]
    s = latent_scale_factor(model, volumes)
    assert float(model.scale_factor) == pytest.approx(s)
    z = torch.cat([model.encode(torch.from_numpy(v)[None, None].long()).flatten() for v in volumes])
    assert z.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-3)
    # decode undoes the scale: the same logits whatever s is
    y = torch.from_numpy(volumes[0])[None, None].long()
    logits = model.decode(model.encode(y))
    model.scale_factor.fill_(1.0)
    torch.testing.assert_close(model.decode(model.encode(y)), logits, atol=1e-4, rtol=1e-4)


@pytest.fixture
def one_thread():
    """Tiny convolutions run fastest on one thread (and do not fight other processes for cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_tiny_autoencoder_overfits_one_volume(one_thread) -> None:
    torch.manual_seed(0)
    label = phantom_like_label()
    cfg = LabelAEConfig(latent_channels=4, linear_path=False, width=16, num_res_units=1, head_hidden=32,
                        patch_size=None, batch_size=1, learning_rate=1e-2, latent_noise=0.0)  # learnt from scratch
    model = LabelAutoencoder(cfg)
    history = train_label_autoencoder(model, [label], max_steps=100, seed=0)
    dice = reconstruction_dice(model, [label])
    assert dice.shape == (1, 2)
    assert dice.min().item() >= 0.99, f"reconstruction Dice {dice.tolist()} after {history['steps']} steps"
    assert history["loss"][-1] < history["loss"][0]
    assert not model.training


def test_pca_initialise_is_the_best_linear_block_code() -> None:
    volumes = [phantom_like_label(seed=s) for s in range(2)]
    # k = N·f³ keeps every principal direction: the linear code alone reconstructs exactly
    full = LabelAutoencoder(LabelAEConfig(latent_channels=24, downsample_factor=2, width=8, head_hidden=0))
    explained = pca_initialise(full, volumes)
    assert explained.shape == (24,) and explained.sum().item() == pytest.approx(1.0, abs=1e-4)
    assert torch.all(explained[:-1] >= explained[1:])
    assert reconstruction_dice(full, volumes).min().item() == 1.0
    small = LabelAutoencoder(LabelAEConfig(latent_channels=2, width=8, head_hidden=0))
    assert pca_initialise(small, volumes).sum().item() < 1.0
    with pytest.raises(UserInputError, match="linear path"):
        pca_initialise(LabelAutoencoder(LabelAEConfig(linear_path=False, width=8)), volumes)


def test_train_respects_time_budget_and_reports() -> None:
    model = LabelAutoencoder(build_config(LabelAEConfig, "smoke"))
    history = train_label_autoencoder(model, [phantom_like_label()], max_seconds=0.5, max_steps=10_000)
    assert history["train_seconds"] < 5.0 and history["steps"] >= 1
    assert set(history) >= {"step", "loss", "seconds", "steps", "train_seconds", "scale_factor"}


def test_reconstruct_pads_any_size_and_structure_dice() -> None:
    model = LabelAutoencoder(LabelAEConfig(width=8, head_hidden=0))
    y = torch.randint(0, 3, (1, 1, 18, 17, 9))
    assert reconstruct(model, y).shape == y.shape
    label = phantom_like_label()
    points = structure_dice(label, label, class_index=2, spacing_mm=(3.0, 3.0, 3.0))
    assert len(points) == 1 and points[0][1] == pytest.approx(1.0)
    volume_ml = (label == 2).sum() * 27.0
    assert points[0][0] == pytest.approx((6 * volume_ml / np.pi) ** (1 / 3))
    assert structure_dice(np.zeros_like(label), label, 2)[0][1] == 0.0


def test_save_load_round_trip(tmp_path) -> None:
    torch.manual_seed(0)
    model = LabelAutoencoder(LabelAEConfig(width=8, head_hidden=8, latent_channels=4)).eval()
    latent_scale_factor(model, [phantom_like_label()])
    path = save_label_autoencoder(model, tmp_path / "sub" / "label_ae.pt")
    loaded = load_label_autoencoder(path)
    y = torch.from_numpy(phantom_like_label(seed=1))[None, None].long()
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode(y), model.encode(y), rtol=0, atol=0)
        torch.testing.assert_close(loaded.decode(model.encode(y)), model.decode(model.encode(y)), rtol=0, atol=0)
    ckpt = torch.load(path, weights_only=True)
    assert set(ckpt) == {"config", "state_dict", "scale_factor", "versions"}
    assert loaded.cfg == model.cfg and ckpt["scale_factor"] == pytest.approx(float(model.scale_factor))


@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_presets_build(preset: str) -> None:
    cfg = build_config(LabelAEConfig, preset)
    model = LabelAutoencoder(cfg)
    assert model.encode(torch.zeros(1, 1, 16, 16, 16, dtype=torch.long)).shape[1] == cfg.latent_channels


@pytest.mark.parametrize(("overrides", "match"), [
    ({"patch_size": (30, 32, 32)}, "patch_size.*divisible by downsample_factor=4"),
    ({"downsample_factor": 0}, "downsample_factor.*>= 1"),
    ({"num_classes": 1}, "num_classes.*>= 2"),
    ({"latent_noise": -0.1}, "latent_noise.*>= 0"),
    ({"width": 0}, "width.*>= 1"),
    ({"max_steps": -1}, "max_steps.*>= 0"),
    ({"pca_class_weights": (1.0, 2.0)}, r"pca_class_weights.*num_classes=3 positive weights, got \(1.0, 2.0\)"),
    ({"linear_lr_scale": -1.0}, "linear_lr_scale.*>= 0"),
])
def test_config_errors(overrides: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        LabelAEConfig(**overrides)


def test_input_errors(tmp_path) -> None:
    model = LabelAutoencoder(LabelAEConfig(width=8, head_hidden=0))
    with pytest.raises(UserInputError, match=r"divisible by downsample_factor=4, got \(18, 16, 16\)"):
        model.encode(torch.zeros(1, 1, 18, 16, 16, dtype=torch.long))
    with pytest.raises(UserInputError, match="5D tensor"):
        model.encode(torch.zeros(16, 16, 16, dtype=torch.long))
    with pytest.raises(UserInputError, match="1 or num_classes=3 channels, got 2"):
        model.encode(torch.zeros(1, 2, 16, 16, 16))
    with pytest.raises(UserInputError, match=r"\(B, 32, d, h, w\) latent"):
        model.decode(torch.zeros(1, 4, 4, 4, 4))
    with pytest.raises(UserInputError, match=r"label_volumes\[0\]"):
        train_label_autoencoder(model, [np.zeros((4, 4))], max_steps=1)
    with pytest.raises(UserInputError, match="at least one volume"):
        train_label_autoencoder(model, [], max_steps=1)
    with pytest.raises(UserInputError, match="no such file"):
        load_label_autoencoder(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    torch.save({"config": {"width": 8}}, bad)
    with pytest.raises(UserInputError, match="state_dict"):
        load_label_autoencoder(bad)
