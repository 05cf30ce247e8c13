"""Conditional 3D denoiser: a MONAI ``DiffusionModelUNet`` that reads the image and the text.

The denoiser ε_θ (or x0_θ, v_θ; see ``diffusion.py``) of TextDiffSeg (paper item 6; ``docs/design.md`` §2, §4) gets

* the noisy label latent z_l^(t) (B, k, d, h, w) **concatenated** along channels with the fused
  image-text latent z_fused (B, c, d, h, w) (channel concatenation is how MONAI conditions on an
  image; LDSeg does the same), optionally also with its own previous estimate x̂0 (self-conditioning);
* the timestep t through MONAI's sinusoidal embedding + MLP, added inside every residual block;
* the text tokens z_t (B, L, d_text) as keys/values of **cross-attention**, only at the coarse levels
  (``attention_levels``; at most ``max_attention_tokens`` voxels, e.g. 8³, because attention over
  16³ = 4096 voxels dominates the CPU cost);
* optionally the pooled text vector p (B, d_text) as **FiLM** on the time embedding,
  emb ← emb ⊙ (1 + γ(p)) + β(p), with γ, β zero-initialised (the block starts as the identity);
* optionally multi-scale image features added to the UNet's skip connections through
  zero-initialised 1×1×1 convs, the ControlNet mechanism of ``DiffusionModelUNet.forward``.

``TextFiLMUNet`` is ``DiffusionModelUNet`` with one change in ``forward`` (the FiLM line);
``ConditionalDenoiser`` builds it from a ``DenoiserConfig`` and adds the input concatenation and
the feature projections.

Explained in notebooks/03_conditional_unet_and_diffusion.ipynb
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from monai.networks.nets import DiffusionModelUNet
from monai.networks.nets.diffusion_model_unet import get_timestep_embedding
from torch import nn

from tdseg_lite.config import ConfigError
from tdseg_lite.errors import UserInputError, require

__all__ = ["ConditionalDenoiser", "DenoiserConfig", "TextFiLMUNet", "attention_tokens"]


@dataclass(frozen=True)
class DenoiserConfig:
    """The conditional 3D UNet (paper item 6); presets in ``PRESETS``."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": {"channels": (8, 16, 16), "num_head_channels": 8},
        "cpu": {},
        "full": {"channels": (64, 128, 128), "num_res_blocks": 2, "norm_num_groups": 16, "num_head_channels": 32,
                 "max_attention_tokens": 4096},  # a 96³ patch gives a 24³ latent: attention on 12³ (GPU),
    }
    channels: tuple[int, ...] = (16, 32, 64)                   # width per level (each level halves the grid)
    attention_levels: tuple[bool, ...] = (False, True, True)   # (cross-)attention per level; the middle block always has it
    num_res_blocks: int = 1                                    # residual blocks per level
    norm_num_groups: int = 8                                   # GroupNorm groups; must divide every width
    num_head_channels: int = 16                                # width of each attention head
    cross_attention: bool = True                               # text tokens are the keys/values of the attention levels
    # --- beyond the paper: more ways for the text and the image to reach the denoiser ---
    film: bool = True                                          # pooled text -> zero-init (scale, shift) of the time embedding
    multiscale: bool = True                                    # image features added to the skips (zero-init 1x1x1 convs)
    self_condition: bool = False                               # previous x̂0 as extra input channels (Chen et al. 2022)
    # --- implementation: speed and memory, not the method ---
    max_attention_tokens: int = 512                            # attention only where the grid has <= this many voxels (8³)
    use_flash_attention: bool = True                           # torch SDPA attention (also on CPU)

    def __post_init__(self) -> None:
        for name in ("channels", "attention_levels"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        require(self.channels and all(c >= 1 for c in self.channels), "DenoiserConfig.channels",
                "must be a non-empty tuple of positive widths", self.channels, "Use e.g. (32, 64, 64).")
        require(len(self.attention_levels) == len(self.channels), "DenoiserConfig.attention_levels",
                f"must have one entry per level ({len(self.channels)})", self.attention_levels,
                "Use e.g. (False, True, True) for channels (32, 64, 64).")
        require(self.norm_num_groups >= 1 and not any(c % self.norm_num_groups for c in self.channels),
                "DenoiserConfig.norm_num_groups", f"must divide every width of channels={self.channels}",
                self.norm_num_groups, "Use e.g. 8 or 16.")
        for name in ("num_res_blocks", "num_head_channels", "max_attention_tokens"):
            require(getattr(self, name) >= 1, f"DenoiserConfig.{name}", "must be >= 1",
                    getattr(self, name), f"Use e.g. {getattr(DenoiserConfig, name)}.")


def attention_tokens(grid: Sequence[int], levels: int) -> list[int]:
    """Voxels (= attention tokens) per UNet level for an input grid: level i has grid / 2^i per axis."""
    return [math.prod(max(1, s // 2**i) for s in grid) for i in range(levels)]


class TextFiLMUNet(DiffusionModelUNet):
    """``DiffusionModelUNet`` whose time embedding is modulated by the pooled text (FiLM).

    Args:
        film_dim: d_text, the width of the pooled text vector; ``None`` builds no FiLM layer.
        **kwargs: ``DiffusionModelUNet`` arguments (``spatial_dims=3``, ``in_channels``, ...).
    """

    def __init__(self, film_dim: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        emb_dim = self.block_out_channels[0] * 4
        self.film = nn.Linear(film_dim, 2 * emb_dim) if film_dim else None
        if self.film is not None:  # zero init: emb * (1 + 0) + 0 = emb at the start
            nn.init.zeros_(self.film.weight)
            nn.init.zeros_(self.film.bias)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None = None,
                pooled: torch.Tensor | None = None, skip_residuals: Sequence[torch.Tensor | None] | None = None,
                mid_residual: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        """MONAI's forward (time, down, mid, up, out) with FiLM on the time embedding.

        Args:
            x: (B, C_in, d, h, w) input.
            timesteps: (B,) integer timesteps.
            context: (B, L, d_text) cross-attention tokens (``None`` without conditioning).
            pooled: (B, d_text) pooled text for FiLM (ignored without a FiLM layer).
            skip_residuals: one tensor (or ``None``) per skip connection, added to it (ControlNet).
            mid_residual: added to the middle block's output.

        Returns:
            (B, C_out, d, h, w).
        """
        emb = self.time_embed(get_timestep_embedding(timesteps, self.block_out_channels[0]).to(x.dtype))
        if self.film is not None and pooled is not None:
            scale, shift = self.film(pooled.to(x.dtype)).chunk(2, dim=1)
            emb = emb * (1 + scale) + shift
        h = self.conv_in(x)
        skips: list[torch.Tensor] = [h]
        for block in self.down_blocks:
            h, res = block(hidden_states=h, temb=emb, context=context)
            skips.extend(res)
        if skip_residuals is not None:
            skips = [s if r is None else s + r for s, r in zip(skips, skip_residuals)]
        h = self.middle_block(hidden_states=h, temb=emb, context=context)
        if mid_residual is not None:
            h = h + mid_residual
        for block in self.up_blocks:
            n = len(block.resnets)
            h = block(hidden_states=h, res_hidden_states_list=skips[-n:], temb=emb, context=context)
            skips = skips[:-n]
        return self.out(h)

    def skip_shapes(self, grid: Sequence[int]) -> list[tuple[int, tuple[int, ...]]]:
        """(channels, grid) of every skip connection for an input grid, in ``forward``'s order."""
        out = [(self.block_out_channels[0], tuple(grid))]
        size = tuple(grid)
        for i, block in enumerate(self.down_blocks):
            out += [(self.block_out_channels[i], size)] * len(block.resnets)
            if block.downsampler is not None:
                size = tuple(max(1, s // 2) for s in size)
                out.append((self.block_out_channels[i], size))
        return out


class ConditionalDenoiser(nn.Module):
    """f_θ(z^(t), t | z_fused, z_t): the conditional denoiser of the label latent (paper item 6).

    Args:
        latent_channels: k, channels of the noisy latent and of the output.
        cond_channels: c, channels of the fused image-text latent concatenated to the input.
        text_dim: D of the text tokens/pooled vector; ``None`` (or text switched off in ``cfg``)
            builds an unconditional UNet.
        cfg: the architecture.
        feature_channels: channels of the multi-scale image features (one per scale, finest
            first, the finest on the latent grid, each next one half its size); used when
            ``cfg.multiscale``.
        grid: the latent grid (d, h, w) of training patches; checks divisibility and the
            attention-token limit up front.

    Example::

        den = ConditionalDenoiser(8, 32, 384, DenoiserConfig(), grid=(16, 16, 16))
        out = den(z_t, t, z_fused, tokens=emb.tokens, pooled=emb.pooled)   # (B, 8, 16, 16, 16)
    """

    def __init__(self, latent_channels: int, cond_channels: int, text_dim: int | None, cfg: DenoiserConfig | None = None,
                 feature_channels: Sequence[int] = (), grid: Sequence[int] | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or DenoiserConfig()
        self.latent_channels, self.cond_channels = latent_channels, cond_channels
        if grid is not None:
            self.check_grid(grid)
        crossattn = bool(text_dim) and cfg.cross_attention
        in_channels = latent_channels * (2 if cfg.self_condition else 1) + cond_channels
        self.unet = TextFiLMUNet(
            film_dim=text_dim if (text_dim and cfg.film) else None, spatial_dims=3, in_channels=in_channels,
            out_channels=latent_channels, channels=cfg.channels, attention_levels=cfg.attention_levels,
            num_res_blocks=cfg.num_res_blocks, norm_num_groups=cfg.norm_num_groups,
            num_head_channels=cfg.num_head_channels, with_conditioning=crossattn,
            cross_attention_dim=text_dim if crossattn else None, use_flash_attention=cfg.use_flash_attention)
        self.uses_tokens = crossattn
        self.projections = nn.ModuleList()
        if cfg.multiscale and feature_channels:
            self._build_projections(list(feature_channels))

    def _build_projections(self, feature_channels: list[int]) -> None:
        """One zero-init 1×1×1 conv per skip connection whose scale has an image feature."""
        scales = self.unet.skip_shapes((64, 64, 64))  # any grid: only the relative scale matters here
        self.skip_scale = [round(math.log2(64 / g[0])) for _, g in scales]
        for ch, scale in zip((c for c, _ in scales), self.skip_scale):
            if scale < len(feature_channels):
                conv = nn.Conv3d(feature_channels[scale], ch, kernel_size=1)
                nn.init.zeros_(conv.weight)
                nn.init.zeros_(conv.bias)
                self.projections.append(conv)
            else:
                self.projections.append(nn.Identity())  # placeholder: no feature at this scale

    def check_grid(self, grid: Sequence[int]) -> None:
        """Raise ``ConfigError`` if ``grid`` cannot pass the UNet or puts attention on too many voxels."""
        levels = len(self.cfg.channels)
        if any(s % 2 ** (levels - 1) for s in grid):
            raise ConfigError(f"`DenoiserConfig.channels` has {levels} levels, so the latent grid must be divisible by "
                              f"{2 ** (levels - 1)}, got {tuple(grid)}. Use fewer levels or a larger patch.")
        tokens = attention_tokens(grid, levels)
        for i, (on, n) in enumerate(zip(self.cfg.attention_levels, tokens)):
            if (on or i == levels - 1) and n > self.cfg.max_attention_tokens:
                raise ConfigError(
                    f"`DenoiserConfig.attention_levels` puts attention on {n} voxels at level {i} of grid {tuple(grid)}, "
                    f"got more than max_attention_tokens={self.cfg.max_attention_tokens}. Switch that level off or "
                    "add a level (the middle block always attends).")

    def forward(self, z_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, tokens: torch.Tensor | None = None,
                pooled: torch.Tensor | None = None, features: Sequence[torch.Tensor] = (),
                self_cond: torch.Tensor | None = None) -> torch.Tensor:
        """Predict ε, x0 or v (the diffusion's ``prediction_type``) for the noisy latent.

        Args:
            z_t: (B, k, d, h, w) noisy latent z_l^(t).
            t: (B,) integer timesteps.
            cond: (B, c, d, h, w) fused image-text latent (concatenated to ``z_t``).
            tokens: (B, L, d_text) text tokens for cross-attention.
            pooled: (B, d_text) pooled text for FiLM.
            features: multi-scale image features, finest (d, h, w) first.
            self_cond: (B, k, d, h, w) previous x̂0 (zeros if ``None``) when ``cfg.self_condition``.

        Returns:
            (B, k, d, h, w) model output.
        """
        if z_t.ndim != 5 or z_t.shape[1] != self.latent_channels or cond.shape[1] != self.cond_channels \
                or cond.shape[2:] != z_t.shape[2:]:
            raise UserInputError(f"`z_t`/`cond` must be (B, {self.latent_channels}, d, h, w) and (B, "
                                 f"{self.cond_channels}, d, h, w) on one grid, got {tuple(z_t.shape)} and "
                                 f"{tuple(cond.shape)}. Pass the noisy latent and the fused latent of the same patch.")
        parts = [z_t]
        if self.cfg.self_condition:
            parts.append(torch.zeros_like(z_t) if self_cond is None else self_cond)
        x = torch.cat(parts + [cond], dim=1)
        skips = None
        if len(self.projections) and features:
            skips = [None if isinstance(p, nn.Identity) else p(features[s])
                     for p, s in zip(self.projections, self.skip_scale)]
        context = tokens if self.uses_tokens else None
        return self.unet(x, t, context=context, pooled=pooled, skip_residuals=skips)
