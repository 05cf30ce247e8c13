"""3D cross-modal attention: fuse the text embedding into the image latent (paper item 3; ``docs/design.md`` §2, §7).

The paper's equation, with the voxels of z_i flattened to a sequence z'_i (V = d·h·w voxels, c channels)
as queries and the text tokens z_t (L tokens of width d_text) as keys and values::

    z_fused = z_i + reshape( softmax( z'_i W_q (z_t W_k)^T / sqrt(d_k) ) z_t W_v )      (Eq. CMA)

``CrossModalAttention3d`` is the multi-head version (h heads of width d_k) with what every
practical implementation adds: an output projection W_o back to c channels (zero-initialised
so that the block starts as the identity), a key-padding mask so that padding tokens get exactly
zero attention, and optional pre-normalisation (GroupNorm on z_i, LayerNorm on z_t).

``FusionConfig.mode`` selects the ablation:

* ``"tokens"`` -- attend over the L token states (TextDiff's choice; ``docs/design.md`` §7);
* ``"pooled"`` -- one pooled text vector as the only key: softmax over one key is identically 1,
  so the block adds the same vector W_o W_v z_t to every voxel -- a learned, text-dependent bias;
* ``"none"``   -- no text: z_fused = z_i (the block has no parameters).

Explained in notebooks/01_text_encoder.ipynb
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from tdseg_lite.config import ConfigError
from tdseg_lite.errors import UserInputError
from tdseg_lite.positions import fourier_features, volume_coordinates
from tdseg_lite.text import masked_mean

__all__ = ["FUSION_MODES", "CrossModalAttention3d", "FusionConfig", "attention_weights"]

FUSION_MODES: tuple[str, ...] = ("tokens", "pooled", "none")


@dataclass(frozen=True)
class FusionConfig:
    """3D cross-modal attention (paper item 3, Eq. CMA)."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": {"num_heads": 2, "head_dim": 16},
        "cpu": {},
        "full": {"num_heads": 8, "head_dim": 64},
    }
    mode: Literal["tokens", "pooled", "none"] = "tokens"  # text as L tokens | one pooled key | no text
    num_heads: int = 4           # h: attention heads
    head_dim: int = 32           # d_k: width of each head (W_q, W_k, W_v map to h*d_k)
    qkv_bias: bool = False       # biases in W_q, W_k, W_v (the paper's equation has none)
    # --- beyond the paper's equation: normalisation, output projection, dropout, voxel positions ---
    pre_norm: bool = True        # GroupNorm on z_i and LayerNorm on z_t before the projections
    norm_groups: int = 8         # GroupNorm groups; must divide the image channels c
    zero_init: bool = True       # W_o starts at zero, so z_fused = z_i at initialisation
    attn_dropout: float = 0.0    # dropout on the attention weights while training
    positional: int = 4          # F: Fourier octaves of the voxel position added to the queries (0: none)
    side_map: bool = False       # a reader of the tokens paints p(lesion) per R-L half onto z_fused (grounding.py)
    side_prior: bool = False     # with side_map: log m added to the lesion logit of every decoded prediction
    side_pretrain_steps: int = 800  # reader steps on (report, halves) pairs before the joint phase, then frozen
    side_weight: float = 1.0     # with side_pretrain_steps=0: weight of the joint BCE to the patch's halves
    side_axis: int = 0           # the spatial axis split into halves (0: R-L in a RAS grid)

    def __post_init__(self) -> None:
        if self.mode not in FUSION_MODES:
            raise ConfigError(f"`FusionConfig.mode` must be one of {list(FUSION_MODES)}, got {self.mode!r}. "
                              "Use 'tokens' (the paper's cross-attention over text tokens).")
        for name in ("num_heads", "head_dim", "norm_groups"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"`FusionConfig.{name}` must be a positive integer, got {value!r}. "
                                  f"Use e.g. {name}={getattr(FusionConfig, name)}.")
        if isinstance(self.positional, bool) or not isinstance(self.positional, int) or not 0 <= self.positional <= 8:
            raise ConfigError(f"`FusionConfig.positional` must be an integer in [0, 8] (Fourier octaves), got "
                              f"{self.positional!r}. Use 4, or 0 for queries without position.")
        if self.side_axis not in (0, 1, 2) or not self.side_weight >= 0 or self.side_pretrain_steps < 0:
            raise ConfigError(f"`FusionConfig.side_axis` must be 0, 1 or 2, side_weight >= 0 and side_pretrain_steps "
                              f">= 0, got {(self.side_axis, self.side_weight, self.side_pretrain_steps)}. Use "
                              "side_axis=0 (R-L), side_weight=1.0, side_pretrain_steps=800.")
        if self.side_prior and not self.side_map:
            raise ConfigError("`FusionConfig.side_prior` needs the side reader, got side_map=False. Set "
                              "fusion.side_map=true too, or side_prior=false.")
        if not 0.0 <= self.attn_dropout < 1.0:
            raise ConfigError(f"`FusionConfig.attn_dropout` must be in [0, 1), got {self.attn_dropout!r}. "
                              "Use 0.0 (no dropout) or e.g. 0.1.")


def attention_weights(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d_k)) with padding keys removed (Eq. CMA, the bracket).

    Args:
        q: (B, h, V, d_k) queries (one per voxel).
        k: (B, h, L, d_k) keys (one per text token).
        mask: (B, L) bool, True for real tokens; padding gets exactly zero weight.

    Returns:
        (B, h, V, L) attention weights; each row sums to 1 over the real tokens.
    """
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
    return scores.softmax(dim=-1)


class CrossModalAttention3d(nn.Module):
    """z_fused = z_i + W_o · MultiHead(softmax(z'_i W_q (z_t W_k)^T / sqrt(d_k)) z_t W_v) (Eq. CMA).

    Args:
        image_channels: c, channels of the image latent z_i.
        text_dim: D, width of the text token states (384 for MiniLM, 768 for Clinical BERT).
        cfg: the fusion configuration (default ``FusionConfig()``).

    Example::

        block = CrossModalAttention3d(image_channels=16, text_dim=384)
        z_fused = block(z_i, emb.tokens, emb.mask)        # (B, 16, d, h, w)
    """

    def __init__(self, image_channels: int, text_dim: int, cfg: FusionConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg if cfg is not None else FusionConfig()
        for name, value in (("image_channels", image_channels), ("text_dim", text_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserInputError(f"`{name}` must be a positive integer, got {value!r}. "
                                     "Pass the channel count of the tensor you will feed.")
        self.image_channels, self.text_dim = image_channels, text_dim
        if self.cfg.mode == "none":
            return  # no parameters: nothing to train, nothing unused under DDP
        if self.cfg.pre_norm and image_channels % self.cfg.norm_groups:
            raise UserInputError(
                f"`image_channels` must be divisible by FusionConfig.norm_groups={self.cfg.norm_groups}, got "
                f"{image_channels}. Set norm_groups to a divisor of {image_channels} (or pre_norm=False).")
        inner = self.cfg.num_heads * self.cfg.head_dim
        self.norm_image = nn.GroupNorm(self.cfg.norm_groups, image_channels) if self.cfg.pre_norm else nn.Identity()
        self.norm_text = nn.LayerNorm(text_dim) if self.cfg.pre_norm else nn.Identity()
        self.to_q = nn.Linear(image_channels, inner, bias=self.cfg.qkv_bias)  # W_q
        self.to_k = nn.Linear(text_dim, inner, bias=self.cfg.qkv_bias)        # W_k
        self.to_v = nn.Linear(text_dim, inner, bias=self.cfg.qkv_bias)        # W_v
        self.to_out = nn.Linear(inner, image_channels)                        # W_o: back to c channels
        # P: where each voxel is (positions.fourier_features of its volume coordinates) -> added to the queries
        self.to_pos = nn.Linear(3 + 6 * self.cfg.positional, image_channels) if self.cfg.positional else None
        if self.cfg.zero_init:
            nn.init.zeros_(self.to_out.weight)
            nn.init.zeros_(self.to_out.bias)

    def extra_repr(self) -> str:
        c = self.cfg
        return (f"c={self.image_channels}, D={self.text_dim}, mode={c.mode!r}, heads={c.num_heads}, "
                f"head_dim={c.head_dim}, pre_norm={c.pre_norm}")

    def _check(self, image: Any, text: Any, mask: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Validate shapes; return (text as (B, L, d_text), mask as (B, L) bool or None)."""
        if not isinstance(image, torch.Tensor) or image.ndim != 5 or image.shape[1] != self.image_channels:
            shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise UserInputError(f"`image` must be a (B, {self.image_channels}, d, h, w) latent, got {shape}. "
                                 "Pass z_i with the channel count this block was built for.")
        pooled_ok = self.cfg.mode == "pooled" and isinstance(text, torch.Tensor) and text.ndim == 2
        if not isinstance(text, torch.Tensor) or not (text.ndim == 3 or pooled_ok) or text.shape[-1] != self.text_dim:
            shape = tuple(text.shape) if isinstance(text, torch.Tensor) else type(text).__name__
            raise UserInputError(f"`text` must be (B, L, {self.text_dim}) token states, got {shape}. "
                                 "Pass TextEmbedding.tokens from an encoder of that width.")
        text = text[:, None, :] if text.ndim == 2 else text
        if text.shape[0] not in (1, image.shape[0]):
            raise UserInputError(f"`text` batch must be 1 or match the image batch {image.shape[0]}, got "
                                 f"{text.shape[0]}. Pass one prompt per case (or one for all).")
        if mask is None:
            return text, None
        if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != tuple(text.shape[:2]):
            shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise UserInputError(f"`mask` must be (B, L) = {tuple(text.shape[:2])} like the text, got {shape}. "
                                 "Pass TextEmbedding.mask (or the tokenizer's attention_mask).")
        mask = mask.bool()
        if not bool(mask.any(dim=1).all()):
            raise UserInputError("`mask` must keep at least one token per prompt, got a row of only padding. "
                                 "Encode a prompt (or TextEncoder.null_embedding()) instead of an empty one.")
        return text, mask

    def forward(
        self,
        image: torch.Tensor,
        text: torch.Tensor,
        mask: torch.Tensor | None = None,
        return_attention: bool = False,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
        """Fuse text into the image latent (Eq. CMA).

        Args:
            image: (B, c, d, h, w) image latent z_i.
            text: (B, L, d_text) token states z_t (B may be 1 for one prompt for all); mode ``"pooled"``
                also takes a (B, d_text) vector.
            mask: (B, L) bool or 0/1, True for real tokens; ``None`` attends to every token.
            return_attention: also return the attention maps.
            positions: (B, 3, d, h, w) normalised volume coordinates of the voxels
                (``positions.volume_coordinates``, pooled to this grid); with ``cfg.positional`` the
                queries become W_q (norm(z_i) + P(positions)). ``None``: the grid of ``image`` itself
                is taken as the whole volume.

        Returns:
            z_fused (B, c, d, h, w); with ``return_attention`` also the weights (B, h, V, L')
            with N = d·h·w voxels and L' = L (``tokens``), 1 (``pooled``), or ``None`` (``none``).
        """
        text, mask = self._check(image, text, mask)
        if self.cfg.mode == "none":
            return (image, None) if return_attention else image
        if self.cfg.mode == "pooled" and text.shape[1] > 1:  # one key: the masked mean of the tokens
            pooled = masked_mean(text, mask) if mask is not None else text.mean(dim=1)
            text, mask = pooled[:, None, :], None
        b, c, d, h, w = image.shape
        heads, dk = self.cfg.num_heads, self.cfg.head_dim
        # 1. queries from the voxels z'_i (B, V, c); keys and values from the tokens z_t (B, L, d_text)
        voxels = self.norm_image(image)
        if self.to_pos is not None:  # the queries know where each voxel is; keys and values do not change
            if positions is None:
                positions = volume_coordinates(image.shape[2:], image.device, image.dtype)[None]
            if tuple(positions.shape[2:]) != (d, h, w) or positions.shape[1] != 3:
                raise UserInputError(f"`positions` must be (B, 3, {d}, {h}, {w}) like the image grid, got "
                                     f"{tuple(positions.shape)}. Pool the volume coordinates to the latent grid.")
            pe = fourier_features(positions.to(image.dtype), self.cfg.positional)
            voxels = voxels + self.to_pos(pe.movedim(1, -1)).movedim(-1, 1)
        voxels = voxels.flatten(2).transpose(1, 2)
        tokens = self.norm_text(text).expand(b, -1, -1)
        q = self.to_q(voxels).view(b, -1, heads, dk).transpose(1, 2)   # (B, h, V, d_k)
        k = self.to_k(tokens).view(b, -1, heads, dk).transpose(1, 2)   # (B, h, L, d_k)
        v = self.to_v(tokens).view(b, -1, heads, dk).transpose(1, 2)   # (B, h, L, d_k)
        keep = None if mask is None else mask.expand(b, -1)
        dropout = self.cfg.attn_dropout if self.training else 0.0
        # 2. softmax(q k^T / sqrt(d_k)) v, padding keys masked out
        weights = None
        if return_attention:
            weights = attention_weights(q, k, keep)
            out = F.dropout(weights, dropout, self.training) @ v
        else:
            attn_mask = None if keep is None else keep[:, None, None, :]
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout)
        # 3. merge heads, project back to c channels, reshape to the grid, add the residual
        out = self.to_out(out.transpose(1, 2).reshape(b, -1, heads * dk))   # (B, V, c)
        fused = image + out.transpose(1, 2).reshape(b, c, d, h, w)
        return (fused, weights) if return_attention else fused
