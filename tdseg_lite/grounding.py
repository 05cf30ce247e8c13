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
   the aux head and the denoiser both read it (``FusionConfig.side_map``); with
   ``FusionConfig.side_prior`` it also adds log m to the lesion logit of every decoded prediction,
   so a half the report rules out gets no lesion (``DiffusionSegmenter.add_prior``) — measured, the
   learnt mix alone is not used in a CPU budget, the prior is (README, "Does the report matter?");
4. the reader learns from the labels, not from a parser: ``half_targets`` says which halves of a
   label volume hold lesion voxels. ``pretrain_side_reader`` trains it on the training cases'
   (report, halves) pairs before the joint phase (paraphrased as in training, and mirrored: the
   report with "left" and "right" exchanged goes with the halves exchanged, so the side word is the
   only thing that tells a report from its mirror); the joint phase then keeps it frozen. With
   ``FusionConfig.side_pretrain_steps = 0`` it learns inside the joint loss instead, by a BCE to
   the halves of each training patch (``FusionConfig.side_weight``). No left/right convention is
   built in: which word goes with which half is learnt from the labels.

Explained in notebooks/06_ablations.ipynb (§7, the side of the report)
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tdseg_lite.errors import UserInputError
from tdseg_lite.positions import volume_coordinates
from tdseg_lite.reports import swap_sides

__all__ = ["SideReader", "half_targets", "pretrain_side_reader", "side_loss", "side_map", "volume_half_targets"]


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
    if logits.ndim != 2 or logits.shape[1] != 2 or coords.ndim != 5 or coords.shape[:2] != (logits.shape[0], 1):
        raise UserInputError(f"`logits` must be (B, 2) and `coords` (B, 1, d, h, w), got {tuple(logits.shape)} and "
                             f"{tuple(coords.shape)}. Pass the reader's output and one coordinate channel.")
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


def volume_half_targets(volume: torch.Tensor, axis: int, lesion_class: int) -> torch.Tensor:
    """(2,) 0/1 ``half_targets`` of one whole label volume (X, Y, Z), split along ``axis``."""
    coords = volume_coordinates(volume.shape, volume.device)[axis]
    return half_targets(volume[None, None], coords[None, None], lesion_class)[0]


def pretrain_side_reader(reader: SideReader, text: Any, descriptions: Sequence[str | None], targets: torch.Tensor,
                         *, steps: int = 800, batch: int = 8, mirror: float = 0.5, null_prob: float = 0.1,
                         lr: float = 1e-3, seed: int = 0) -> dict[str, float]:
    """Teach ``reader`` which halves each training report puts a lesion in; returns a summary.

    Args:
        reader: the model's ``SideReader`` (trained in place, on the CPU).
        text: the model's ``TextConditioner`` (training prompts: template + paraphrased report).
        descriptions: the training cases' reports (``None``: no report).
        targets: (N, 2) ``volume_half_targets`` of the same cases.
        steps, batch: optimiser steps and reports per step.
        mirror: share of reports whose "left"/"right" are exchanged, their targets exchanged with them.
        null_prob: share shown without a report (half the label names only, half the null prompt):
            the reader then learns the training prior for them.
        lr, seed: AdamW learning rate; seed of the draws.

    Returns:
        ``{"steps", "seconds", "loss", "accuracy"}``: the last 50 steps' mean BCE and the share of the
        training reports (unmirrored, not paraphrased) whose two halves the reader gets right.
    """
    if len(descriptions) != len(targets) or not len(descriptions):
        raise UserInputError(f"`descriptions` and `targets` must be non-empty and of one length, got "
                             f"{len(descriptions)} and {len(targets)}. Pass one (2,) target per training case.")
    start, gen = time.perf_counter(), torch.Generator().manual_seed(seed)
    device = next(reader.parameters()).device
    targets = targets.float().to(device)
    opt = torch.optim.AdamW(reader.parameters(), lr=lr)
    reader.train()
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, len(descriptions), (batch,), generator=gen).tolist()
        flip = (torch.rand(batch, generator=gen) < mirror).tolist()
        blank = (torch.rand(batch, generator=gen) < null_prob / 2).tolist()  # label names only, no report
        reports = [None if b else swap_sides(descriptions[i]) if f and descriptions[i] else descriptions[i]
                   for i, f, b in zip(idx, flip, blank)]
        goal = torch.stack([targets[i].flip(0) if f else targets[i] for i, f in zip(idx, flip)])
        emb = text.embed(text.prompts(reports, train=True), batch, device)
        emb = text.drop(emb, null_prob / 2, gen)  # and the null prompt of the guidance dropout
        loss = side_loss(reader(emb.tokens, emb.mask), goal)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    reader.zero_grad(set_to_none=True)
    reader.eval()
    with torch.no_grad():
        emb = text.embed(text.prompts(list(descriptions)), len(descriptions), device)
        right = ((reader(emb.tokens, emb.mask) > 0).float() == targets).all(dim=1).float().mean()
    tail = losses[-50:]
    return {"steps": steps, "seconds": round(time.perf_counter() - start, 2), "loss": sum(tail) / len(tail),
            "accuracy": float(right)}
