"""The two baselines of TextDiffSeg behind the same ``Segmenter`` interface.

* ``UNetSegmenter`` -- MONAI ``UNet`` trained with Dice + CE: the discriminative anchor that a
  diffusion segmenter has to match under the same budget.
* ``TextUNetSegmenter`` -- the same UNet with TextDiffSeg's report pathway (the cross-modal
  attention with voxel positions, ``fusion.py``) at its bottleneck, trained with the same text
  dropout and paraphrases: it separates what the report buys from what the diffusion buys.
* ``PixelDiffusion`` -- diffusion directly on the one-hot label map (x0 = 2·onehot − 1, N channels
  at full resolution), conditioned on the raw CT (channel concatenation, as Diff-UNet does) and on
  the text (cross-attention at the coarse levels, pooled FiLM). It is TextDiffSeg with the label
  encoder switched off, and shows what the label latent buys: each denoiser step costs ~f³ = 64×
  more voxels (``benchmarks/bench_denoiser_cost.py``).

Explained in notebooks/03_conditional_unet_and_diffusion.ipynb
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.utils import one_hot
from torch import nn

from tdseg_lite.denoiser import ConditionalDenoiser, DenoiserConfig
from tdseg_lite.diffusion import DiffusionConfig, entropy
from tdseg_lite.fusion import CrossModalAttention3d, FusionConfig
from tdseg_lite.layout import module_channels_last
from tdseg_lite.positions import COORD_KEY
from tdseg_lite.segmenter import (
    DiffusionSegmenter,
    Segmenter,
    TextConditioner,
    as_plain,
)
from tdseg_lite.text import TextEmbedding

__all__ = ["PixelDiffusion", "TextUNetSegmenter", "UNetSegmenter"]

#: logits = LOGIT_SCALE · x̂0 for the pixel-space sample x̂0 ≈ ±1 (softmax(±3) ≈ 0.998 / 0.002)
LOGIT_SCALE = 3.0


class UNetSegmenter(Segmenter):
    """MONAI ``UNet`` + ``DiceCELoss``; ignores the text (``predict``'s diffusion arguments too).

    Args:
        num_classes: N.
        channels: widths per level, e.g. (16, 32, 64, 128).
        strides: downsampling per level transition, e.g. (2, 2, 2).
        num_res_units: residual units per block.
        coordinates: the input also carries the voxels' volume coordinates (4 channels).
    """

    def __init__(self, num_classes: int, channels: Sequence[int] = (16, 32, 64, 128),
                 strides: Sequence[int] = (2, 2, 2), num_res_units: int = 2, coordinates: bool = False) -> None:
        super().__init__()
        from monai.losses import DiceCELoss
        from monai.networks.nets import UNet

        self.num_classes, self.uses_coordinates = num_classes, coordinates
        self.net = UNet(spatial_dims=3, in_channels=4 if coordinates else 1, out_channels=num_classes,
                        channels=tuple(channels), strides=tuple(strides), num_res_units=num_res_units)
        self.seg_loss = DiceCELoss(to_onehot_y=True, softmax=True)

    def logits(self, image: torch.Tensor, text: Any = None, coords: torch.Tensor | None = None,
               train: bool = False) -> torch.Tensor:
        """UNet logits (B, N, D, H, W) for images (B, 1, D, H, W) (the plain UNet ignores ``text``)."""
        return self.net(module_channels_last(self.net, self.model_input(image, coords))).contiguous()  # layout.py

    def loss(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Dice + CE of the UNet logits: ``{"loss", "seg"}``."""
        image, labels = self._check_image(batch["image"]).to(self.device()), as_plain(batch["label"]).to(self.device())
        text = self.batch_prompts(batch, train=True) if self.text is not None else None
        seg = self.seg_loss(self.logits(image, text, batch.get(COORD_KEY), train=True), labels)
        return {"loss": seg, "seg": seg.detach()}

    @torch.no_grad()
    def predict(self, image: torch.Tensor, text: Any = None, *, steps: int | None = None, samples: int | None = None,
                guidance: float | None = None, eta: float | None = None, generator: torch.Generator | None = None,
                uncertainty: bool = False, coords: torch.Tensor | None = None,
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """softmax(UNet(image)) (B, N, D, H, W) [+ its entropy (B, 1, D, H, W)]."""
        probs = self.logits(self._check_image(image), text, coords).softmax(dim=1)
        if not uncertainty:
            return probs
        return probs, entropy(probs)


class _FusedBottleneck(nn.Module):
    """The UNet's bottom block followed by the cross-modal attention; the text arrives through ``context``."""

    def __init__(self, bottom: nn.Module, fusion: CrossModalAttention3d) -> None:
        super().__init__()
        self.bottom, self.fusion = bottom, fusion
        self.context: tuple[TextEmbedding, torch.Tensor | None] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bottom(x)
        if self.context is None:
            return out
        emb, coords = self.context
        positions = None if coords is None else F.adaptive_avg_pool3d(coords, out.shape[2:])
        return self.fusion(out, emb.tokens, emb.mask, positions=positions)


class TextUNetSegmenter(UNetSegmenter):
    """``UNetSegmenter`` + the report: CMA(bottleneck features, text tokens, voxel positions).

    The MONAI UNet's innermost block (at 1/8 resolution for three strides of 2) is followed by a
    ``CrossModalAttention3d`` over the prompt's token states, zero-initialised (it starts as the
    plain UNet). Training replaces a share ``text_dropout`` of the prompts by the null prompt and
    paraphrases descriptions like TextDiffSeg, so "no report" is a condition it has seen.

    Args:
        num_classes, channels, strides, num_res_units, coordinates: as ``UNetSegmenter``.
        text: prompt embeddings.
        fusion: the cross-modal attention settings (``FusionConfig``).
        text_dropout: share of training prompts replaced by the null prompt.
    """

    def __init__(self, num_classes: int, channels: Sequence[int], strides: Sequence[int], num_res_units: int,
                 text: TextConditioner, fusion: FusionConfig, text_dropout: float = 0.1,
                 coordinates: bool = True) -> None:
        super().__init__(num_classes, channels, strides, num_res_units, coordinates)
        from monai.networks.layers import SkipConnection

        self.text, self.text_dropout = text, text_dropout
        node: nn.Module = self.net.model
        while True:  # the innermost SkipConnection holds the bottom block
            skip = next((m for m in node.children() if isinstance(m, SkipConnection)), None)
            if skip is None:
                break
            inner, node = skip, skip.submodule
        self.bottleneck = _FusedBottleneck(inner.submodule, CrossModalAttention3d(int(channels[-1]), text.dim, fusion))
        inner.submodule = self.bottleneck

    def logits(self, image: torch.Tensor, text: Any = None, coords: torch.Tensor | None = None,
               train: bool = False) -> torch.Tensor:
        emb = self.text.embed(text, image.shape[0], image.device)
        if train:
            emb = self.text.drop(emb, self.text_dropout)
        x = self.model_input(image, coords)
        self.bottleneck.context = (emb, x[:, 1:] if self.uses_coordinates else None)
        try:
            return self.net(x)
        finally:
            self.bottleneck.context = None


class PixelDiffusion(DiffusionSegmenter):
    """Pixel-space conditional diffusion on one-hot labels (TextDiffSeg without the label encoder).

    Args:
        num_classes: N (the diffusion has N channels).
        diffusion: schedule, loss weights and sampling.
        denoiser: UNet settings; its grid is the full patch, so it needs more levels than the
            latent denoiser (e.g. channels (16, 32, 64, 64), attention only at the 8³ level).
        text: prompt embeddings, or ``None`` for an image-only model.
        patch_size: training patch (checks the attention-token limit).
    """

    def __init__(self, num_classes: int, diffusion: DiffusionConfig, denoiser: DenoiserConfig,
                 text: TextConditioner | None = None, patch_size: Sequence[int] | None = None,
                 coordinates: bool = False) -> None:
        super().__init__(diffusion, num_classes)
        self.text, self.uses_coordinates = text, coordinates
        self.denoiser = ConditionalDenoiser(num_classes, 4 if coordinates else 1, text.dim if text is not None else None,
                                            denoiser, grid=patch_size)
        self.self_condition = denoiser.self_condition

    def encode_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """x0 = 2 · onehot(y) − 1: (B, 1, D, H, W) -> (B, N, D, H, W) in {−1, 1}."""
        return one_hot(labels.long(), self.num_classes, dtype=torch.float32, dim=1) * 2 - 1

    def decode(self, z: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        """Logits = LOGIT_SCALE · x̂0 (the sample already lives in label space)."""
        return z * LOGIT_SCALE

    def image_features(self, image: torch.Tensor, coords: torch.Tensor | None = None) -> dict[str, Any]:
        return {"image": self.model_input(image, coords), "skip": None}

    def condition(self, feats: dict[str, Any], emb: TextEmbedding | None) -> dict[str, Any]:
        return {"cond": feats["image"], "tokens": None if emb is None else emb.tokens,
                "pooled": None if emb is None else emb.pooled}

    def denoise(self, z_t: torch.Tensor, t: torch.Tensor, cond: dict[str, Any],
                x0_prev: torch.Tensor | None = None) -> torch.Tensor:
        return self.denoiser(z_t, t, cond["cond"], tokens=cond["tokens"], pooled=cond["pooled"], self_cond=x0_prev)

    def latent_shape(self, image: torch.Tensor) -> tuple[int, ...]:
        return (image.shape[0], self.num_classes, *image.shape[2:])

    def loss(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Joint loss: λ·MSE(output, target) + Dice + CE of the decoded x̂0: ``{"loss", "mse", "seg"}``."""
        device = self.device()
        image, labels = self._check_image(batch["image"]).to(device), as_plain(batch["label"]).to(device)
        emb = self.text_embedding(batch, image.shape[0], train=True)
        feats = self.image_features(image, batch.get(COORD_KEY))
        terms = self.denoising_terms(self.encode_labels(labels), self.condition(feats, emb), labels)
        total = self.dcfg.mse_weight * terms["mse"] + terms.get("seg", torch.zeros((), device=device))
        return {"loss": total, **{k: v.detach() for k, v in terms.items()}}

