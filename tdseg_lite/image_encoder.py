"""Image feature extractor: CT volume → image latent z_i on the label latent's grid (paper item 1; ``docs/design.md`` §4).

The paper's 3D image encoder maps x ∈ R^{C×D×H×W} to z_i ∈ R^{c×d×h×w} with the same grid as
the label latent z_l (d = D/f, ...), so that the denoiser can concatenate or cross-attend them.
The ablation calls it the "image feature extractor". Ours is a small residual U-Net encoder (one plain
conv at full resolution -- 3D convs with few channels are slow on CPUs -- then strided residual
units, MONAI ``ResidualUnit``):

    x (B, 1, D, H, W) ─ conv ─ F_0 (1) ─ down ─ F_1 (1/2) ─ … ─ F_s (1/f) ─ down ─ F_{s+1} (1/2f)
                                                    z_i (B, c, D/f, H/f, W/f) = unit(concat(F_s, up(F_{s+1})))

``ImageFeatures`` holds ``latent`` (z_i), ``features`` (F_0 … F_{s+1}, fine to coarse, for a
multi-scale denoiser or a full-resolution skip) and ``aux_latent`` (B, k, D/f, H/f, W/f): an
auxiliary head that predicts the *label latent* z_l. Decoded by the (frozen) label decoder it
is a segmentation, so the extractor can be supervised or pre-trained on its own
(``aux_loss``: DiceCE on ``label_ae.decode(aux_latent)`` + MSE to ``label_ae.encode(y)``), and it
is a starting point for sampling (``--start aux``). How well the head segments on its own is the
aux-head row of ``benchmarks/results/quality.md``.

Explained in notebooks/02_label_latent_space.ipynb
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, ClassVar, Literal, NamedTuple

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from monai.networks.blocks import Convolution, ResidualUnit
from torch import nn

from tdseg_lite.config import ConfigError
from tdseg_lite.errors import UserInputError
from tdseg_lite.layout import module_channels_last

__all__ = ["ImageEncoder", "ImageEncoderConfig", "ImageFeatures", "aux_loss"]


@dataclass(frozen=True)
class ImageEncoderConfig:
    """Image feature extractor (paper item 1); presets in ``PRESETS``."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": {"channels": (8, 16, 16, 32), "latent_channels": 16},
        "cpu": {},
        "full": {"channels": (32, 64, 128, 256), "latent_channels": 64, "num_res_units": 2},
    }
    in_channels: int = 1                                 # CT channels
    downsample_factor: int = 4                           # f (a power of 2): must match the label autoencoder
    channels: tuple[int, ...] = (16, 32, 64, 128)        # widths at 1, 1/2, …, 1/f, 1/2f: log2(f) + 2 values
    latent_channels: int = 32                            # c: channels of z_i
    num_res_units: int = 1                               # extra residual units per scale
    norm: Literal["instance", "batch", "group"] = "instance"  # normalisation in every unit
    # --- beyond the paper: the aux head that predicts the label latent ---
    aux_latent_channels: int = 32                        # k of the label latent (= LabelAEConfig's; 0: none)

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(self.channels))
        f = self.downsample_factor
        if not (isinstance(f, int) and f >= 1 and f & (f - 1) == 0):
            raise ConfigError(f"`ImageEncoderConfig.downsample_factor` must be a power of 2, got {f!r}. "
                              "Use the label autoencoder's factor, e.g. 4.")
        need = int(math.log2(f)) + 2
        if len(self.channels) != need or any(c < 1 for c in self.channels):
            raise ConfigError(f"`ImageEncoderConfig.channels` must be {need} positive widths (scales 1 … 1/{2 * f}) "
                              f"for downsample_factor={f}, got {self.channels!r}. "
                              f"Use e.g. {tuple(16 * 2**i for i in range(need))}.")
        for name in ("in_channels", "latent_channels"):
            if getattr(self, name) < 1:
                raise ConfigError(f"`ImageEncoderConfig.{name}` must be >= 1, got {getattr(self, name)!r}. "
                                  "Use e.g. the default.")
        for name in ("aux_latent_channels", "num_res_units"):
            if getattr(self, name) < 0:
                raise ConfigError(f"`ImageEncoderConfig.{name}` must be >= 0, got {getattr(self, name)!r}. "
                                  "Use 0 to disable it.")


class ImageFeatures(NamedTuple):
    """What ``ImageEncoder`` returns.

    Attributes:
        latent: z_i, (B, c, D/f, H/f, W/f).
        features: per-scale maps F_0 … F_{s+1}, fine to coarse: (B, channels[i], D/2^i, H/2^i, W/2^i).
        aux_latent: predicted label latent (B, k, D/f, H/f, W/f), or ``None`` when k = 0;
            ``label_ae.decode(aux_latent)`` gives (B, N, D, H, W) logits.
    """

    latent: torch.Tensor
    features: list[torch.Tensor]
    aux_latent: torch.Tensor | None


def _unit(cin: int, cout: int, norm: str, stride: int = 1) -> ResidualUnit:
    norm_arg: Any = ("group", {"num_groups": min(8, cout)}) if norm == "group" else norm
    return ResidualUnit(3, cin, cout, strides=stride, subunits=2, act="SWISH", norm=norm_arg)


class ImageEncoder(nn.Module):
    """CT (B, C, D, H, W) → ``ImageFeatures`` on the latent grid D/f × H/f × W/f (paper item 1)."""

    def __init__(self, cfg: ImageEncoderConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or ImageEncoderConfig()
        ch, extra = cfg.channels, cfg.num_res_units

        def stage(cin: int, cout: int, stride: int) -> nn.Sequential:
            units = [_unit(cout, cout, cfg.norm) for _ in range(extra)]
            return nn.Sequential(_unit(cin, cout, cfg.norm, stride), *units)

        norm: Any = ("group", {"num_groups": min(8, ch[0])}) if cfg.norm == "group" else cfg.norm
        stem = Convolution(3, cfg.in_channels, ch[0], act="SWISH", norm=norm)  # one conv at full resolution
        self.stages = nn.ModuleList([stem] + [stage(a, b, 2) for a, b in pairwise(ch)])
        self.up = Convolution(3, ch[-1], ch[-2], strides=2, kernel_size=3, is_transposed=True, output_padding=1,
                              act="SWISH", norm=None)
        self.fuse = _unit(2 * ch[-2], cfg.latent_channels, cfg.norm)
        self.aux_head = nn.Sequential(
            Convolution(3, cfg.latent_channels, cfg.latent_channels, act="SWISH", norm=None),
            Convolution(3, cfg.latent_channels, cfg.aux_latent_channels, kernel_size=1, conv_only=True),
        ) if cfg.aux_latent_channels else None

    def encode(self, image: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The encoder without the aux head: ``(z_i (B, c, D/f, H/f, W/f), [F_0, …, F_{s+1}])``.

        TextDiffSeg fuses the report into z_i first and applies ``aux_head`` to the fused latent.
        """
        f2 = 2 * self.cfg.downsample_factor
        if not isinstance(image, torch.Tensor) or image.ndim != 5 or image.shape[1] != self.cfg.in_channels:
            got = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise UserInputError(f"`image` must be (B, {self.cfg.in_channels}, D, H, W), got {got}. "
                                 "Add batch/channel axes, e.g. image[None, None].")
        if any(s % f2 for s in image.shape[2:]):
            raise UserInputError(f"`image` spatial size must be divisible by 2 * downsample_factor = {f2}, got "
                                 f"{tuple(image.shape[2:])}. Pad it, e.g. monai.transforms.DivisiblePad(k={f2}).")
        features, x = [], image
        for i, stage in enumerate(self.stages):  # 1. encoder path, fine to coarse; on a CPU the stages that read
            # full resolution run channels-last, the coarser ones channels-first (faster for each: layout.py)
            x = module_channels_last(stage, x) if i < 2 else x.contiguous()
            x = stage(x)
            features.append(x)
        features[0] = features[0].contiguous()
        deep = self.up(features[-1])  # 2. bring the 1/2f context back to the latent grid and merge
        return self.fuse(torch.cat([features[-2], deep], dim=1)), features

    def forward(self, image: torch.Tensor) -> ImageFeatures:
        """Encode a CT batch.

        Args:
            image: (B, C, D, H, W) intensities (e.g. HU window scaled to [0, 1]); D, H, W divisible by 2f.

        Returns:
            ``ImageFeatures(latent, features, aux_latent)`` (shapes in its docstring).
        """
        latent, features = self.encode(image)
        aux = self.aux_head(latent) if self.aux_head is not None else None  # 3. predicted label latent
        return ImageFeatures(latent, features, aux)


def aux_loss(out: ImageFeatures, labels: torch.Tensor, label_ae: nn.Module, latent_weight: float = 1.0,
             dice_ce: DiceCELoss | None = None) -> torch.Tensor:
    """Supervise the image feature extractor alone through the frozen label autoencoder.

    loss = DiceCE(D(ẑ), y) + λ · MSE(ẑ, E(y)), with ẑ = ``out.aux_latent`` in the label latent
    space (unit variance) and E, D the label encoder/decoder. Freeze the autoencoder first
    (``label_ae.requires_grad_(False)``): gradients pass through D into ẑ only.

    Args:
        out: the encoder's output; needs ``aux_latent``.
        labels: (B, 1, D, H, W) class indices.
        label_ae: a ``tdseg_lite.label_ae.LabelAutoencoder`` with the same k and f.
        latent_weight: λ.
        dice_ce: the segmentation loss; default ``DiceCELoss(to_onehot_y=True, softmax=True)``.

    Returns:
        The scalar loss.
    """
    if out.aux_latent is None:
        raise UserInputError("`out.aux_latent` must be a tensor, got None (aux_latent_channels=0). "
                             "Build the encoder with aux_latent_channels = the label latent's k.")
    with torch.no_grad():
        target = label_ae.encode(labels)
    if target.shape != out.aux_latent.shape:
        raise UserInputError(f"`out.aux_latent` must match the label latent {tuple(target.shape)}, got "
                             f"{tuple(out.aux_latent.shape)}. Use the same k and downsample_factor in both configs.")
    dice_ce = dice_ce or DiceCELoss(to_onehot_y=True, softmax=True)
    return dice_ce(label_ae.decode(out.aux_latent), labels) + latent_weight * F.mse_loss(out.aux_latent, target)
