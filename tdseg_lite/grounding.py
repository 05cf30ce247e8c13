"""The report's side painted onto the volume: a reader of the text tokens and the map it makes.

Cross-attention can in principle tie the token "left" to voxels on the left, but on the phantom it
does not learn to in a CPU budget (``benchmarks/results/text_effect*.md``: swapping left and right
in the report leaves the prediction where it was), not even from an exact structured side. This
module gives the side a short path into the segmenter:

1. ``SideReader`` reads the token states z_t (B, L, d_text) and returns two logits,
   s = (s_a, s_b): "the lesion class is in half a" and "... in half b" of the volume along one
   axis (``FusionConfig.side_axis``, R-L in a RAS grid);
2. ``side_map`` paints m(v) = σ(s_a) where the voxel v lies in half a (coordinate < 0) and σ(s_b) in
   half b: one channel on the latent grid that says, per voxel, "the report puts a lesion on this side";
3. ``TextDiffSeg`` mixes m into z_fused (a zero-initialised 1×1×1 convolution of [z_fused, m]), so
   the aux head and the denoiser both read it;
4. the reader learns from the labels: ``half_targets`` says which halves of the training patch
   hold lesion voxels, and a BCE between s and that target joins the joint loss
   (``FusionConfig.side_weight``). No parser and no left/right convention: the reader learns which
   words go with which half from the image-label pairs (mirroring, ``data.mirror_prob``, shows it
   reports that differ only in the side word).

Explained in notebooks/06_ablations.ipynb (§7, the side of the report)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tdseg_lite.errors import UserInputError

__all__ = ["SideReader", "half_targets", "side_loss", "side_map"]


class SideReader(nn.Module):
    """Token states (B, L, d_text) + mask (B, L) -> logits (B, 2): a lesion in half a, in half b.

    One self-attention layer over the tokens (so "left" can colour the tokens after it), then
    attention pooling with a learned query, then a linear head.
    """

    def __init__(self, text_dim: int, width: int = 64, heads: int = 4) -> None:
        super().__init__()
        self.to_width = nn.Sequential(nn.LayerNorm(text_dim), nn.Linear(text_dim, width))
        self.layer = nn.TransformerEncoderLayer(width, heads, 2 * width, dropout=0.0, batch_first=True,
                                                norm_first=True)
        self.query = nn.Parameter(torch.randn(width) / width**0.5)
        self.head = nn.Linear(width, 2)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Logits (B, 2) from ``tokens`` (B, L, d_text) and ``mask`` (B, L), 1 = real token."""
        keep = mask.bool()
        x = self.layer(self.to_width(tokens), src_key_padding_mask=~keep)
        weights = (x @ self.query).masked_fill(~keep, float("-inf")).softmax(dim=-1)  # (B, L)
        return self.head((weights[..., None] * x).sum(dim=1))


def _check_axis_coords(coords: torch.Tensor, like: torch.Tensor, name: str) -> None:
    if coords.shape[0] != like.shape[0] or tuple(coords.shape[-3:]) != tuple(like.shape[-3:]):
        raise UserInputError(f"`{name}` must be (B, 1, D, H, W) = {(like.shape[0], 1, *like.shape[-3:])}, got "
                             f"{tuple(coords.shape)}. Pass one coordinate channel of the same grid.")


def side_map(logits: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """m = σ(s_a)·[x < 0] + σ(s_b)·[x ≥ 0]: (B, 1, d, h, w) from logits (B, 2) and coords x (B, 1, d, h, w)."""
    _check_axis_coords(coords, coords, "coords")
    p = torch.sigmoid(logits)[:, :, None, None, None]  # (B, 2, 1, 1, 1)
    half_b = (coords >= 0).to(p.dtype)
    return p[:, :1] * (1 - half_b) + p[:, 1:] * half_b


def half_targets(labels: torch.Tensor, coords: torch.Tensor, lesion_class: int) -> torch.Tensor:
    """(B, 2) 0/1: does half a (x < 0) / half b (x ≥ 0) of each patch hold a ``lesion_class`` voxel?

    ``labels`` (B, 1, D, H, W) class indices, ``coords`` (B, 1, D, H, W) the voxels' volume coordinate
    on the side axis.
    """
    _check_axis_coords(coords, labels, "coords")
    lesion = labels == lesion_class
    half_b = coords >= 0
    a = (lesion & ~half_b).flatten(1).any(dim=1)
    b = (lesion & half_b).flatten(1).any(dim=1)
    return torch.stack([a, b], dim=1).float()


def side_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """BCE between the reader's logits (B, 2) and ``half_targets`` (B, 2)."""
    return F.binary_cross_entropy_with_logits(logits, targets)
