"""3D cross-modal attention (tdseg_lite.fusion), checked against a hand-written Eq. CMA."""

from __future__ import annotations

import math

import pytest
import torch

from tdseg_lite.config import ConfigError, build_config
from tdseg_lite.errors import UserInputError
from tdseg_lite.fusion import CrossModalAttention3d, FusionConfig, attention_weights

C, D = 8, 12  # image channels c, text width D


def inputs(batch: int = 2, length: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """z_i (B, c, 3, 4, 5), z_t (B, L, D), mask (B, L) with padding in sample 0."""
    gen = torch.Generator().manual_seed(seed)
    image = torch.randn(batch, C, 3, 4, 5, generator=gen)
    tokens = torch.randn(batch, length, D, generator=gen)
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[0, length // 2:] = False
    return image, tokens, mask


def block(**overrides) -> CrossModalAttention3d:
    torch.manual_seed(0)
    cfg = FusionConfig(**{"num_heads": 2, "head_dim": 4, "norm_groups": 4, "zero_init": False, "positional": 0,
                          **overrides})
    return CrossModalAttention3d(C, D, cfg)


def naive_cross_attention(image, tokens, mask, blk):
    """Eq. CMA written out head by head with plain matrix products (no pre-norm)."""
    b, c, d, h, w = image.shape
    voxels = image.flatten(2).transpose(1, 2)                       # z'_i (B, N, c)
    dk = blk.cfg.head_dim
    heads = []
    for i in range(blk.cfg.num_heads):
        rows = slice(i * dk, (i + 1) * dk)
        q = voxels @ blk.to_q.weight[rows].T                        # (B, N, d_k)
        k = tokens @ blk.to_k.weight[rows].T                        # (B, L, d_k)
        v = tokens @ blk.to_v.weight[rows].T
        scores = q @ k.transpose(1, 2) / math.sqrt(dk)
        scores = scores.masked_fill(~mask[:, None, :], float("-inf"))
        heads.append(scores.softmax(-1) @ v)
    out = torch.cat(heads, dim=-1) @ blk.to_out.weight.T + blk.to_out.bias
    return image + out.transpose(1, 2).reshape(b, c, d, h, w)


def test_shapes_and_attention_maps() -> None:
    image, tokens, mask = inputs()
    fused, weights = block()(image, tokens, mask, return_attention=True)
    assert fused.shape == image.shape and fused.dtype == image.dtype
    assert weights.shape == (2, 2, 3 * 4 * 5, 6)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 2, 60))


@pytest.mark.parametrize("heads", [1, 2])
def test_module_equals_naive_equation(heads: int) -> None:
    image, tokens, mask = inputs()
    blk = block(num_heads=heads, pre_norm=False)
    with torch.no_grad():
        torch.testing.assert_close(blk(image, tokens, mask), naive_cross_attention(image, tokens, mask, blk),
                                   atol=1e-5, rtol=1e-5)


def test_padding_tokens_get_exactly_zero_attention() -> None:
    image, tokens, mask = inputs()
    blk = block()
    fused, weights = blk(image, tokens, mask, return_attention=True)
    assert torch.count_nonzero(weights[0, :, :, 3:]) == 0
    noisy = tokens.clone()
    noisy[0, 3:] = 1e3 * torch.randn(3, D)  # whatever sits in the padding slots does not matter
    torch.testing.assert_close(blk(image, noisy, mask), fused)


def test_fast_path_equals_explicit_path() -> None:
    image, tokens, mask = inputs()
    blk = block()
    fused, _ = blk(image, tokens, mask, return_attention=True)
    torch.testing.assert_close(blk(image, tokens, mask), fused, atol=1e-6, rtol=1e-5)


def test_no_mask_equals_all_ones_and_integer_masks_work() -> None:
    image, tokens, mask = inputs()
    blk = block()
    ones = torch.ones_like(mask)
    torch.testing.assert_close(blk(image, tokens), blk(image, tokens, ones))
    torch.testing.assert_close(blk(image, tokens, mask.long()), blk(image, tokens, mask))


def test_zero_init_starts_as_identity_and_still_learns() -> None:
    image, tokens, mask = inputs()
    blk = CrossModalAttention3d(C, D, FusionConfig(norm_groups=4))
    fused = blk(image, tokens, mask)
    assert torch.equal(fused, image)
    fused.square().sum().backward()
    assert blk.to_out.weight.grad.abs().sum() > 0


def test_gradients_reach_every_projection() -> None:
    image, tokens, mask = inputs()
    blk = block()
    blk(image, tokens, mask).square().sum().backward()
    for name, p in blk.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_one_prompt_broadcasts_over_the_batch() -> None:
    image, tokens, mask = inputs()
    blk = block()
    torch.testing.assert_close(blk(image, tokens[1:], mask[1:]), blk(image, tokens[[1, 1]], mask[[1, 1]]))


def test_deterministic() -> None:
    image, tokens, mask = inputs()
    assert torch.equal(block()(image, tokens, mask), block()(image, tokens, mask))


def test_pooled_mode_is_a_broadcast_bias() -> None:
    """With one key the softmax is 1: every voxel gets the same vector W_o W_v LN(pooled) + b_o."""
    image, tokens, mask = inputs()
    blk = block(mode="pooled")
    fused, weights = blk(image, tokens, mask, return_attention=True)
    assert weights.shape == (2, 2, 60, 1) and torch.equal(weights, torch.ones_like(weights))
    pooled = (tokens * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    bias = blk.to_out(blk.to_v(blk.norm_text(pooled)))                      # (B, c)
    torch.testing.assert_close(fused, image + bias[:, :, None, None, None], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(blk(image, pooled), fused)                  # a (B, D) vector works too


def test_none_mode_has_no_parameters_and_returns_the_image() -> None:
    image, tokens, mask = inputs()
    blk = CrossModalAttention3d(C, D, FusionConfig(mode="none"))
    assert sum(p.numel() for p in blk.parameters()) == 0
    fused, weights = blk(image, tokens, mask, return_attention=True)
    assert fused is image and weights is None


def test_attention_dropout_only_while_training() -> None:
    image, tokens, mask = inputs()
    blk = block(attn_dropout=0.5).eval()
    torch.testing.assert_close(blk(image, tokens, mask), blk(image, tokens, mask, return_attention=True)[0])


def test_attention_weights_function() -> None:
    q, k = torch.randn(1, 1, 4, 3), torch.randn(1, 1, 5, 3)
    mask = torch.tensor([[True, False, True, False, False]])
    w = attention_weights(q, k, mask)
    assert torch.count_nonzero(w[..., [1, 3, 4]]) == 0
    torch.testing.assert_close(w.sum(-1), torch.ones(1, 1, 4))


def test_presets() -> None:
    assert build_config(FusionConfig, "smoke").num_heads == 2
    full = build_config(FusionConfig, "full")
    assert (full.num_heads, full.head_dim, full.mode) == (8, 64, "tokens")


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"mode": "text"}, r"`FusionConfig.mode` must be one of \['tokens', 'pooled', 'none'\]"),
    ({"num_heads": 0}, r"`FusionConfig.num_heads` must be a positive integer"),
    ({"head_dim": -4}, r"`FusionConfig.head_dim` must be a positive integer"),
    ({"norm_groups": True}, r"`FusionConfig.norm_groups` must be a positive integer"),
    ({"attn_dropout": 1.0}, r"`FusionConfig.attn_dropout` must be in \[0, 1\)"),
])
def test_config_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        FusionConfig(**kwargs)


def test_construction_errors() -> None:
    with pytest.raises(UserInputError, match="divisible by FusionConfig.norm_groups=8, got 12"):
        CrossModalAttention3d(12, D)
    with pytest.raises(UserInputError, match="`text_dim` must be a positive integer"):
        CrossModalAttention3d(C, 0)
    with pytest.raises(UserInputError, match="`image_channels` must be a positive integer"):
        CrossModalAttention3d(8.0, D)


@pytest.mark.parametrize(("case", "match"), [
    ("channels", r"`image` must be a \(B, 8, d, h, w\) latent, got \(2, 4, 3, 4, 5\)"),
    ("image_2d", r"`image` must be a \(B, 8, d, h, w\) latent, got \(2, 8, 4, 5\)"),
    ("text_width", r"`text` must be \(B, L, 12\) token states, got \(2, 6, 5\)"),
    ("text_2d", r"`text` must be \(B, L, 12\) token states, got \(2, 12\)"),
    ("batch", r"`text` batch must be 1 or match the image batch 2, got 3"),
    ("mask_shape", r"`mask` must be \(B, L\) = \(2, 6\) like the text, got \(2, 5\)"),
    ("all_padding", r"`mask` must keep at least one token per prompt"),
])
def test_forward_errors(case: str, match: str) -> None:
    image, tokens, mask = inputs()
    args = {
        "channels": (image[:, :4], tokens, mask),
        "image_2d": (image[:, :, 0], tokens, mask),
        "text_width": (image, tokens[..., :5], mask),
        "text_2d": (image, tokens[:, 0], mask),  # a pooled vector needs mode="pooled"
        "batch": (image, tokens[[0, 1, 1]], mask[[0, 1, 1]]),
        "mask_shape": (image, tokens, mask[:, :5]),
        "all_padding": (image, tokens, torch.zeros_like(mask)),
    }[case]
    with pytest.raises(UserInputError, match=match):
        block()(*args)


def test_fourier_features_shapes_and_values() -> None:
    from tdseg_lite.positions import fourier_features, volume_coordinates

    coords = volume_coordinates((3, 4, 5))
    assert coords.shape == (3, 3, 4, 5)
    assert float(coords[0, 0].min()) == -1.0 and float(coords[0, -1].max()) == 1.0
    pe = fourier_features(coords[None], 2)
    assert pe.shape == (1, 3 + 6 * 2, 3, 4, 5)
    torch.testing.assert_close(pe[:, 3:6], torch.sin(torch.pi * coords[None]))
    with pytest.raises(UserInputError, match="coords"):
        fourier_features(coords[None, :2], 2)


def test_positions_change_the_output_for_permuted_voxels() -> None:
    """Without positions the attention is permutation-equivariant over voxels; with them it is not:
    the same feature at another place gets another query (what lets "left" mean a place)."""
    from tdseg_lite.positions import volume_coordinates

    image, tokens, mask = inputs()
    perm = torch.randperm(3 * 4 * 5, generator=torch.Generator().manual_seed(1))
    shuffle = lambda x: x.flatten(2)[..., perm].reshape(x.shape)
    positions = volume_coordinates((3, 4, 5))[None].expand(2, -1, -1, -1, -1)
    with torch.no_grad():
        plain = block()
        torch.testing.assert_close(plain(shuffle(image), tokens, mask), shuffle(plain(image, tokens, mask)))
        placed = block(positional=3)
        moved = placed(shuffle(image), tokens, mask, positions=positions)
        assert not torch.allclose(moved, shuffle(placed(image, tokens, mask, positions=positions)), atol=1e-4)
        # moving the coordinates with the voxels restores equivariance: only where a voxel is matters
        torch.testing.assert_close(placed(shuffle(image), tokens, mask, positions=shuffle(positions)),
                                   shuffle(placed(image, tokens, mask, positions=positions)))


def test_positions_must_match_the_grid() -> None:
    image, tokens, mask = inputs()
    with pytest.raises(UserInputError, match="positions"):
        block(positional=2)(image, tokens, mask, positions=torch.zeros(2, 3, 2, 2, 2))
    with pytest.raises(ConfigError, match="positional"):
        FusionConfig(positional=-1)
