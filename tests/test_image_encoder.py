"""Image feature extractor: shapes on the latent grid, the auxiliary head trains, errors."""

from __future__ import annotations

import pytest
import torch

from tdseg_lite.config import PRESET_NAMES, ConfigError, build_config
from tdseg_lite.errors import UserInputError
from tdseg_lite.image_encoder import (
    ImageEncoder,
    ImageEncoderConfig,
    ImageFeatures,
    aux_loss,
)
from tdseg_lite.label_ae import LabelAEConfig, LabelAutoencoder, pca_initialise


@pytest.fixture
def one_thread():
    """Tiny 3D convolutions run fastest on one thread (and do not fight other processes for cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_shapes_on_the_latent_grid(factor: int) -> None:
    n = factor.bit_length() + 1  # log2(f) + 2 scales
    cfg = ImageEncoderConfig(downsample_factor=factor, channels=tuple(4 * 2**i for i in range(n)),
                             latent_channels=6, aux_latent_channels=3)
    out = ImageEncoder(cfg)(torch.randn(2, 1, 32, 32, 16))
    assert isinstance(out, ImageFeatures)
    assert out.latent.shape == (2, 6, 32 // factor, 32 // factor, 16 // factor)
    assert out.aux_latent.shape == (2, 3, 32 // factor, 32 // factor, 16 // factor)
    assert [f.shape[2:] for f in out.features] == [(32 // 2**i, 32 // 2**i, 16 // 2**i) for i in range(n)]
    assert [f.shape[1] for f in out.features] == list(cfg.channels)


def test_no_aux_head() -> None:
    out = ImageEncoder(ImageEncoderConfig(channels=(4, 8, 8, 8), aux_latent_channels=0))(torch.randn(1, 1, 16, 16, 16))
    assert out.aux_latent is None
    with pytest.raises(UserInputError, match="aux_latent_channels=0"):
        aux_loss(out, torch.zeros(1, 1, 16, 16, 16, dtype=torch.long), LabelAutoencoder())


def test_aux_head_trains_through_frozen_label_decoder(one_thread) -> None:
    torch.manual_seed(0)
    labels = torch.zeros(2, 1, 16, 16, 16, dtype=torch.long)
    labels[:, :, 4:12, 4:12, 4:12] = 1
    labels[:, :, 6:9, 6:9, 6:9] = 2
    label_ae = LabelAutoencoder(LabelAEConfig(latent_channels=4, width=8, head_hidden=0))
    pca_initialise(label_ae, labels[:, 0])  # a label decoder that works (its linear code)
    label_ae.requires_grad_(False)
    encoder = ImageEncoder(ImageEncoderConfig(channels=(4, 8, 16, 16), latent_channels=8, aux_latent_channels=4))
    image = labels.float() / 2 + 0.05 * torch.randn(2, 1, 16, 16, 16)  # brighter where the labels are

    def latent_error() -> float:
        with torch.no_grad():
            return torch.nn.functional.mse_loss(encoder(image).aux_latent, label_ae.encode(labels)).item()

    before = latent_error()
    opt = torch.optim.Adam(encoder.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):
        loss = aux_loss(encoder(image), labels, label_ae)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses
    assert latent_error() < 0.2 * before
    assert all(p.grad is None for p in label_ae.parameters())  # the label autoencoder stays frozen


@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_presets_build(preset: str) -> None:
    cfg = build_config(ImageEncoderConfig, preset)
    out = ImageEncoder(cfg)(torch.randn(1, 1, 16, 16, 16))
    assert out.latent.shape[1] == cfg.latent_channels


@pytest.mark.parametrize(("overrides", "match"), [
    ({"downsample_factor": 3}, "downsample_factor.*power of 2"),
    ({"channels": (8, 16, 32)}, r"channels.*must be 4 positive widths"),
    ({"latent_channels": 0}, "latent_channels.*>= 1"),
    ({"aux_latent_channels": -1}, "aux_latent_channels.*>= 0"),
])
def test_config_errors(overrides: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ImageEncoderConfig(**overrides)


def test_input_errors() -> None:
    encoder = ImageEncoder(ImageEncoderConfig(channels=(4, 8, 8, 8), latent_channels=4, aux_latent_channels=4))
    with pytest.raises(UserInputError, match=r"divisible by 2 \* downsample_factor = 8, got \(12, 16, 16\)"):
        encoder(torch.randn(1, 1, 12, 16, 16))
    with pytest.raises(UserInputError, match=r"must be \(B, 1, D, H, W\)"):
        encoder(torch.randn(16, 16, 16))
    out = encoder(torch.randn(1, 1, 16, 16, 16))
    with pytest.raises(UserInputError, match="same k and downsample_factor"):
        other_k = LabelAutoencoder(LabelAEConfig(latent_channels=8))
        aux_loss(out, torch.zeros(1, 1, 16, 16, 16, dtype=torch.long), other_k)
