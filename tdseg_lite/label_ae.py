"""Label latent space: the 3D shape-aware label autoencoder (paper item 4; ``docs/design.md`` §8).

TextDiffSeg diffuses a continuous label latent instead of the label map. The encoder maps the
one-hot labels Y (B, N, D, H, W) to z_l on a grid f times coarser per axis; the decoder maps a
latent back to N-class logits::

    z_l = s · E(Y)      (B, k, D/f, H/f, W/f)       ŷ = D(z_l / s)      (B, N, D, H, W) logits

``s`` (the ``scale_factor`` buffer) is 1/std of the raw latents, so z_l has unit variance like the
noise of the forward process z^(t) = sqrt(ᾱ_t) z^(0) + sqrt(1-ᾱ_t) ε (paper item 5), as in MONAI's
3d_ldm tutorial. Design (chosen with ``benchmarks/bench_label_ae.py``), every conv on the latent grid:

* encoder E = E_lin + E_nonlin on the ``pixelunshuffle`` blocks (lossless space-to-depth, N·f³
  channels): E_lin is a 1×1 conv to k channels, E_nonlin 1×1 conv, residual units, 1×1 conv; no tanh;
* decoder D = D_lin + D_nonlin: D_lin a 1×1 conv back to N·f³ block logits, D_nonlin a 3×3 conv,
  residual units and ``SubpixelHead`` (1×1 convs + ``pixelshuffle``, plus trilinearly upsampled
  coarse logits);
* ``pca_initialise`` sets E_lin/D_lin to the best linear block code (class-weighted PCA) and the
  nonlinear paths start at zero: training starts from a good autoencoder and refines it.

Pre-training decodes z + σ·std(z)·ε (robust to the denoiser's error). The conventional design
(stride-2 convs, transposed convs, tanh latent) lives in the benchmark, for comparison.

Explained in notebooks/02_label_latent_space.ipynb
"""

from __future__ import annotations

import io
import math
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from monai.metrics import DiceMetric
from monai.networks.blocks import Convolution, ResidualUnit
from monai.networks.utils import one_hot, pixelshuffle, pixelunshuffle
from torch import nn

from tdseg_lite.config import ConfigError, config_from_dict, config_to_dict
from tdseg_lite.errors import UserInputError, require

__all__ = [
    "LabelAEConfig", "LabelAutoencoder", "SubpixelHead", "latent_scale_factor", "load_label_autoencoder",
    "pad_to_factor", "pca_initialise", "reconstruct", "reconstruction_dice", "save_label_autoencoder", "structure_dice",
    "train_label_autoencoder",
]

ACT = "SWISH"  # SiLU


@dataclass(frozen=True)
class LabelAEConfig:
    """Label autoencoder architecture and its pre-training (presets in ``PRESETS``)."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": {"width": 16, "head_hidden": 0, "patch_size": (32, 32, 32), "max_steps": 60},
        "cpu": {"max_steps": 800},
        "full": {"width": 64, "num_res_units": 2, "head_hidden": 128, "batch_size": 8, "patch_size": (64, 64, 64),
                 "max_steps": 5000},
    }
    num_classes: int = 3                      # N: label classes including background
    latent_channels: int = 32                 # k: channels of z_l (k ≪ N·f³ = 192 at N=3, f=4)
    downsample_factor: int = 4                # f: latent grid = input grid / f per axis
    width: int = 32                           # channels of the convs on the latent grid
    num_res_units: int = 1                    # residual units in the encoder and in the decoder
    learning_rate: float = 1e-3               # Adam, cosine-decayed (6e-3 suits linear_path=False)
    batch_size: int = 4                       # label patches per step
    patch_size: tuple[int, int, int] | None = (48, 48, 48)  # training crops; None = whole volumes
    max_steps: int = 3000                     # pre-training steps (0: PCA initialisation only; time budget: argument)
    # --- beyond the paper: the sub-pixel + PCA design chosen with benchmarks/bench_label_ae.py ---
    head_hidden: int = 64                     # hidden 1×1 layer of the sub-pixel head (0: linear head)
    smooth_skip: bool = True                  # add trilinearly upsampled coarse logits to the sub-pixel head
    linear_path: bool = True                  # + a linear block code E_lin/D_lin, initialised by PCA
    pca_class_weights: tuple[float, ...] | None = None  # per-class PCA weights; None: rare classes up to 3x
    linear_lr_scale: float = 0.0              # learning rate of the linear path ÷ learning_rate (0: keep PCA)
    latent_noise: float = 0.1                 # σ: train on decode(z + σ·std(z)·ε)
    # --- tooling ---
    reuse: bool = True                        # tdseg train: load a cached AE for the same labels + config (label_cache.py)

    def __post_init__(self) -> None:
        for name in ("patch_size", "pca_class_weights"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, tuple(getattr(self, name)))
        w = self.pca_class_weights
        require(w is None or (len(w) == self.num_classes and min(w) > 0), "LabelAEConfig.pca_class_weights",
                f"must be None or num_classes={self.num_classes} positive weights", w, "Use e.g. (1, 1, 2) or None.")
        f = self.downsample_factor
        for name in ("num_classes", "latent_channels", "downsample_factor", "width", "batch_size"):
            require(getattr(self, name) >= 1, f"LabelAEConfig.{name}", "must be >= 1",
                    getattr(self, name), "Use e.g. the default.")
        require(self.num_classes >= 2, "LabelAEConfig.num_classes", "must be >= 2 (background + 1 class)",
                self.num_classes, "Use e.g. 3 for background, kidney, tumour.")
        for name in ("num_res_units", "head_hidden", "max_steps"):
            require(getattr(self, name) >= 0, f"LabelAEConfig.{name}", "must be >= 0",
                    getattr(self, name), "Use 0 to disable it.")
        require(self.latent_noise >= 0, "LabelAEConfig.latent_noise", "must be >= 0",
                self.latent_noise, "Use e.g. 0.1.")
        require(self.linear_lr_scale >= 0, "LabelAEConfig.linear_lr_scale", "must be >= 0",
                self.linear_lr_scale, "Use 0 (frozen).")
        require(self.learning_rate > 0, "LabelAEConfig.learning_rate", "must be > 0",
                self.learning_rate, "Use e.g. 1e-3.")
        if self.patch_size is not None:
            ok = len(self.patch_size) == 3 and all(p > 0 and p % f == 0 for p in self.patch_size)
            require(ok, "LabelAEConfig.patch_size", f"must be 3 positive sizes divisible by downsample_factor={f}",
                    self.patch_size, f"Use e.g. ({12 * f}, {12 * f}, {12 * f}) or None for whole volumes.")


def _conv(cin: int, cout: int, kernel: int = 3, act: bool = True, **kw: Any) -> Convolution:
    return Convolution(3, cin, cout, kernel_size=kernel, act=ACT if act else None, norm=None, conv_only=not act, **kw)


def _res_units(width: int, n: int) -> nn.Sequential:
    return nn.Sequential(*[ResidualUnit(3, width, width, subunits=2, act=ACT, norm=None) for _ in range(n)])


class SubpixelHead(nn.Module):
    """Latent-grid features (B, W, d, h, w) → logits (B, N, f·d, f·h, f·w) by sub-pixel convolution.

    1×1 convs to N·f³ channels, then ``pixelshuffle`` by f: each voxel of an f³ block reads its
    own channel. ``smooth`` adds the trilinear upsampling of coarse logits (a 1×1 conv W → N): a
    smooth level set that the sub-pixel part only has to correct.
    """

    def __init__(self, width: int, n: int, f: int, hidden: int, smooth: bool) -> None:
        super().__init__()
        self.f = f
        hid = [_conv(width, hidden, kernel=1)] if hidden else []
        self.body = nn.Sequential(*hid, _conv(hidden or width, n * f**3, kernel=1, act=False))
        self.coarse = _conv(width, n, kernel=1, act=False) if smooth else None

    def forward(self, h: torch.Tensor, blocks: torch.Tensor | None = None) -> torch.Tensor:
        """h (B, W, d, h, w) [+ ``blocks``, extra (B, N·f³, d, h, w) block logits] → (B, N, f·d, f·h, f·w)."""
        out = self.body(h)
        logits = pixelshuffle(out if blocks is None else out + blocks, 3, self.f)
        if self.coarse is not None:  # smooth level set + per-voxel detail
            logits = logits + F.interpolate(self.coarse(h), scale_factor=self.f, mode="trilinear")
        return logits


class LabelAutoencoder(nn.Module):
    """One-hot labels (B, N, D, H, W) ⇄ label latent z_l (B, k, D/f, H/f, W/f).

    No normalisation layers: the encoding of a voxel depends only on its neighbourhood, so
    encoding a patch or the whole volume gives the same latent there (up to border effects).
    """

    def __init__(self, cfg: LabelAEConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or LabelAEConfig()
        n, k, f, w = cfg.num_classes, cfg.latent_channels, cfg.downsample_factor, cfg.width
        self.encoder = nn.Sequential(_conv(n * f**3, w, kernel=1), _res_units(w, cfg.num_res_units),
                                     _conv(w, k, kernel=1, act=False))
        self.decoder = nn.Sequential(_conv(k, w), _res_units(w, cfg.num_res_units))
        self.head = SubpixelHead(w, n, f, cfg.head_hidden, cfg.smooth_skip)
        if cfg.linear_path:  # E_lin, D_lin; the nonlinear paths start at 0 (see pca_initialise)
            self.lin_in, self.lin_out = nn.Conv3d(n * f**3, k, 1), nn.Conv3d(k, n * f**3, 1)
            for conv in (self.encoder[-1], self.head.body[-1], self.head.coarse):
                for param in conv.parameters() if conv is not None else ():
                    nn.init.zeros_(param)
        self.register_buffer("scale_factor", torch.tensor(1.0))

    @property
    def has_linear_path(self) -> bool:
        """True when E = E_lin + E_nonlin and D = D_lin + D_nonlin (``cfg.linear_path``)."""
        return hasattr(self, "lin_in")

    @property
    def factor(self) -> int:
        """f, the downsampling factor per axis."""
        return self.cfg.downsample_factor

    def to_onehot(self, labels: torch.Tensor) -> torch.Tensor:
        """Class indices (B, 1, D, H, W) → float one-hot (B, N, D, H, W); (B, N, ...) passes through."""
        if not isinstance(labels, torch.Tensor) or labels.ndim != 5:
            got = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
            raise UserInputError(f"`labels` must be a 5D tensor (B, 1, D, H, W) of class indices or (B, N, D, H, W) "
                                 f"one-hot, got {got}. Add batch/channel axes, e.g. labels[None, None].")
        labels = labels.as_subclass(torch.Tensor)  # MetaTensor -> plain tensor (no meta bookkeeping)
        if labels.shape[1] == 1:
            return one_hot(labels.long(), self.cfg.num_classes, dtype=torch.float32, dim=1)
        if labels.shape[1] != self.cfg.num_classes:
            raise UserInputError(f"`labels` must have 1 or num_classes={self.cfg.num_classes} channels, got "
                                 f"{labels.shape[1]}. Pass class indices (B, 1, ...) or a matching one-hot.")
        return labels.float()

    def encode(self, labels: torch.Tensor) -> torch.Tensor:
        """z_l = s · E(onehot(y)) (paper item 4).

        Args:
            labels: (B, 1, D, H, W) class indices or (B, N, D, H, W) one-hot; D, H, W divisible by f.

        Returns:
            (B, k, D/f, H/f, W/f) latent, unit variance once ``latent_scale_factor`` has run.
        """
        x, f = self.to_onehot(labels), self.factor
        if any(n % f for n in x.shape[2:]):
            raise UserInputError(f"`labels` spatial size must be divisible by downsample_factor={f}, got "
                                 f"{tuple(x.shape[2:])}. Pad it (label_ae.pad_to_factor or monai DivisiblePad(k={f})) "
                                 "or use label_ae.reconstruct(), which pads for you.")
        x = pixelunshuffle(x, 3, f)  # (B, N·f³, D/f, H/f, W/f) lossless space-to-depth
        z = self.encoder(x) + self.lin_in(x) if self.has_linear_path else self.encoder(x)
        return z * self.scale_factor

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """ŷ = D(z_l / s): latent (B, k, d, h, w) → logits (B, N, f·d, f·h, f·w)."""
        if not isinstance(z, torch.Tensor) or z.ndim != 5 or z.shape[1] != self.cfg.latent_channels:
            got = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise UserInputError(f"`z` must be a (B, {self.cfg.latent_channels}, d, h, w) latent, got {got}. "
                                 "Pass the output of encode().")
        z = z / self.scale_factor
        if self.has_linear_path:
            return self.head(self.decoder(z), self.lin_out(z))
        return self.head(self.decoder(z))

    def forward(self, labels: torch.Tensor, noise: float = 0.0) -> torch.Tensor:
        """decode(z + noise·std(z)·ε) with z = encode(labels): (B, 1|N, D, H, W) → logits (B, N, D, H, W)."""
        z = self.encode(labels)
        if noise > 0:
            z = z + noise * z.detach().std() * torch.randn_like(z)
        return self.decode(z)


def _as_label_tensor(volume: Any, index: int) -> torch.Tensor:
    """One label volume (D, H, W) or (1, D, H, W), array or tensor → uint8 tensor (D, H, W)."""
    t = torch.as_tensor(np.asarray(volume) if not isinstance(volume, torch.Tensor) else volume)
    t = t.squeeze(0) if t.ndim == 4 and t.shape[0] == 1 else t
    if t.ndim != 3:
        raise UserInputError(f"`label_volumes[{index}]` must be (D, H, W) or (1, D, H, W), got {tuple(t.shape)}. "
                             "Pass class-index volumes, e.g. batch['label'][0].")
    return t.as_subclass(torch.Tensor).to(torch.uint8) if t.dtype != torch.uint8 else t.as_subclass(torch.Tensor)


class _PatchSampler:
    """Class-balanced random crops: each crop is centred on a voxel of a class drawn uniformly."""

    def __init__(self, volumes: list[torch.Tensor], cfg: LabelAEConfig, seed: int) -> None:
        self.cfg, self.gen = cfg, torch.Generator().manual_seed(seed)
        size = cfg.patch_size
        if size is None:  # whole volumes, background-padded to a common shape divisible by f
            f = cfg.downsample_factor
            size = tuple(math.ceil(max(v.shape[i] for v in volumes) / f) * f for i in range(3))
        self.size = size
        self.volumes = [F.pad(v, [p for i in (2, 1, 0) for p in (0, max(size[i] - v.shape[i], 0))]) for v in volumes]
        self.coords = [[torch.nonzero(v == c) for c in range(1, cfg.num_classes)] for v in self.volumes]

    def _randint(self, high: int) -> int:
        return int(torch.randint(high, (1,), generator=self.gen))

    def crop(self, i: int) -> torch.Tensor:
        v = self.volumes[i]
        if self.cfg.patch_size is None:
            return v
        present = [c for c in self.coords[i] if len(c)]
        pick = self._randint(len(present) + 1)
        centre = present[pick - 1][self._randint(len(present[pick - 1]))] if pick else \
            torch.tensor([self._randint(s) for s in v.shape])
        start = [int(min(max(int(centre[a]) - self.size[a] // 2, 0), v.shape[a] - self.size[a])) for a in range(3)]
        return v[tuple(slice(s, s + n) for s, n in zip(start, self.size))]

    def batch(self) -> torch.Tensor:
        """(B, 1, *size) int64 class indices."""
        idx = torch.randint(len(self.volumes), (self.cfg.batch_size,), generator=self.gen).tolist()
        return torch.stack([self.crop(i) for i in idx])[:, None].long()


@torch.no_grad()
def pca_initialise(model: LabelAutoencoder, label_volumes: Sequence[Any], gain: float = 10.0) -> torch.Tensor:
    """Set the linear path to the best linear block code: (weighted) PCA of the space-to-depth blocks.

    Each f³ block of one-hot labels is a vector x ∈ R^{N·f³}; x' = w ⊙ x weights each class (rare
    classes count more: ``cfg.pca_class_weights``, default w_c = min(3, sqrt(n_max / n_c)) for
    foreground classes with voxel counts n_c). With μ' the mean of x' and V_k its top-k principal
    directions, E_lin(x) = V_k (w ⊙ x - μ') and D_lin(z) = gain · (V_kᵀ z + μ') / w (block
    logits). The nonlinear paths start at zero, so training starts from the PCA reconstruction.

    Args:
        model: a ``LabelAutoencoder`` with ``has_linear_path``.
        label_volumes: class-index volumes (D, H, W) or (1, D, H, W).
        gain: logit scale of the linear decoder (softmax of gain · one-hot ≈ one-hot).

    Returns:
        (k,) share of the block variance that each kept component explains.
    """
    if not model.has_linear_path:
        raise UserInputError("`model` must have a linear path (LabelAEConfig.linear_path=True), got one without. "
                             "Build it with linear_path=True.")
    device, f = model.lin_in.weight.device, model.factor
    total, outer, count = 0.0, 0.0, 0
    for i, vol in enumerate(label_volumes):
        y = pad_to_factor(_as_label_tensor(vol, i)[None, None].long().to(device), f)
        x = pixelunshuffle(model.to_onehot(y), 3, f).flatten(2)[0]  # (N·f³, cells) of 0/1: float32 sums are exact
        total, outer, count = total + x.sum(1).double(), outer + (x @ x.T).double(), count + x.shape[1]
    n_c = total.reshape(model.cfg.num_classes, -1).sum(1)  # voxels per class
    w_c = torch.tensor(model.cfg.pca_class_weights or [1.0] + [
        min(3.0, math.sqrt(n_c[1:].max() / n)) if n > 0 else 1.0 for n in n_c[1:].tolist()], dtype=torch.float64)
    w = w_c.to(device).repeat_interleave(f**3)  # (N·f³,)
    mean = w * total / count
    eigval, eigvec = torch.linalg.eigh(torch.outer(w, w) * outer / count - torch.outer(mean, mean))
    order = eigval.argsort(descending=True)[: model.cfg.latent_channels]
    basis = eigvec[:, order].T  # (k, N·f³)
    model.lin_in.weight.copy_((basis * w)[..., None, None, None])
    model.lin_in.bias.copy_(-basis @ mean)
    model.lin_out.weight.copy_((gain * basis.T / w[:, None])[..., None, None, None])
    model.lin_out.bias.copy_(gain * mean / w)
    return (eigval[order] / eigval.clamp_min(0).sum()).float().cpu()


def _optimizer(model: LabelAutoencoder, cfg: LabelAEConfig) -> torch.optim.Adam:
    """Adam; the linear path gets ``learning_rate · linear_lr_scale`` (left out when 0: frozen)."""
    linear = {id(p) for m in (model.lin_in, model.lin_out) for p in m.parameters()} if model.has_linear_path else set()
    groups = [{"params": [p for p in model.parameters() if id(p) not in linear], "scale": 1.0},
              {"params": [p for p in model.parameters() if id(p) in linear], "scale": cfg.linear_lr_scale}]
    return torch.optim.Adam([g for g in groups if g["params"] and g["scale"] > 0], lr=cfg.learning_rate)


def train_label_autoencoder(model: LabelAutoencoder, label_volumes: Sequence[Any], cfg: LabelAEConfig | None = None,
                            *, max_seconds: float | None = None, max_steps: int | None = None, seed: int = 0,
                            log_every: int = 25, val_volumes: Sequence[Any] = (), pca_init: bool = True
                            ) -> dict[str, Any]:
    """Pre-train the label autoencoder alone: DiceCE(decode(z + σ·std(z)·ε), y), then set the scale.

    ``pca_initialise`` first (if the model has a linear path and ``pca_init``; pass False to continue
    training). Adam, 20-step warm-up, cosine decay over whichever budget (steps, seconds) runs out
    first, gradients clipped at 1. Then ``latent_scale_factor`` on ``label_volumes``.

    Args:
        model: the autoencoder (trained in place, left in eval mode).
        label_volumes: class-index volumes (D, H, W) or (1, D, H, W), numpy or torch.
        cfg: training settings (default ``model.cfg``); ``max_steps`` defaults to ``cfg.max_steps``.
        max_seconds: wall-clock budget (``None``: steps only).
        seed: seeds the patch sampler and the latent noise; ``log_every``: steps between history entries.
        val_volumes: held-out volumes; their mean reconstruction Dice per class goes to ``"val_dice"``.

    Returns:
        ``{"step", "loss", "seconds"}`` lists and ``steps``, ``train_seconds``, ``scale_factor``[, ``val_dice``].
    """
    cfg = cfg or model.cfg
    volumes = [_as_label_tensor(v, i) for i, v in enumerate(label_volumes)]
    if not volumes:
        raise UserInputError("`label_volumes` must hold at least one volume, got 0. Pass the training labels.")
    steps = max_steps if max_steps is not None else cfg.max_steps
    if pca_init and model.has_linear_path:
        pca_initialise(model, volumes)
    sampler, device = _PatchSampler(volumes, cfg, seed), next(model.parameters()).device
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    opt = _optimizer(model, cfg)
    torch.manual_seed(seed)
    history: dict[str, Any] = {"step": [], "loss": [], "seconds": []}
    model.train()
    start, step = time.perf_counter(), 0
    while step < steps:
        elapsed = time.perf_counter() - start
        progress = max(step / steps, elapsed / max_seconds if max_seconds else 0.0)
        if progress >= 1.0:
            break
        lr = cfg.learning_rate * min(1.0, (step + 1) / 20) * 0.5 * (1 + math.cos(math.pi * progress))
        for group in opt.param_groups:
            group["lr"] = lr * group["scale"]
        y = sampler.batch().to(device)
        loss = loss_fn(model(y, noise=cfg.latent_noise), y)
        model.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], 1.0)
        opt.step()
        step += 1
        if step % log_every == 0 or step == 1:
            for key, value in (("step", step), ("loss", loss.item()), ("seconds", elapsed)):
                history[key].append(value)
    history["steps"], history["train_seconds"] = step, time.perf_counter() - start
    model.eval()
    history["scale_factor"] = latent_scale_factor(model, volumes)
    if len(val_volumes):
        history["val_dice"] = reconstruction_dice(model, val_volumes).nanmean(0).tolist()
    return history


def _batches(data: Iterable[Any] | Any) -> Iterable[torch.Tensor]:
    """Yield (1|B, 1, D, H, W) label tensors from a tensor, a list of volumes or a loader of dicts."""
    if isinstance(data, torch.Tensor) and data.ndim == 5:
        yield data
        return
    for item in data:
        item = item["label"] if isinstance(item, dict) else item
        t = torch.as_tensor(item).as_subclass(torch.Tensor)
        yield t if t.ndim == 5 else _as_label_tensor(t, 0)[None, None]


@torch.no_grad()
def latent_scale_factor(model: LabelAutoencoder, data: Iterable[Any] | torch.Tensor, set_buffer: bool = True) -> float:
    """s = 1 / std(E(y)) over all raw latent values of ``data``, stored in ``model.scale_factor``.

    Args:
        model: the label autoencoder.
        data: a (B, 1, D, H, W) tensor, a sequence of label volumes, or a loader yielding
            dicts with ``"label"``; sizes not divisible by f are background-padded.
        set_buffer: write s into the model (then ``encode`` returns unit-variance latents).

    Returns:
        s as a float.
    """
    was_training, old = model.training, model.scale_factor.clone()
    model.eval()
    model.scale_factor.fill_(1.0)
    total = total_sq = count = 0.0
    for labels in _batches(data):
        z = model.encode(pad_to_factor(labels.to(model.scale_factor.device), model.factor)).double()
        total, total_sq, count = total + z.sum().item(), total_sq + (z * z).sum().item(), count + z.numel()
    std = math.sqrt(max(total_sq / count - (total / count) ** 2, 1e-12))
    model.scale_factor.copy_(torch.tensor(1.0 / std) if set_buffer else old)
    model.train(was_training)
    return 1.0 / std


def pad_to_factor(labels: torch.Tensor, factor: int) -> torch.Tensor:
    """Pad (B, C, D, H, W) with zeros (background) at the far end of each axis to multiples of ``factor``."""
    pads = [p for s in reversed(labels.shape[2:]) for p in (0, (-s) % factor)]
    return F.pad(labels, pads) if any(pads) else labels


@torch.no_grad()
def reconstruct(model: LabelAutoencoder, labels: torch.Tensor, noise: float = 0.0) -> torch.Tensor:
    """argmax D(E(y) [+ noise·ε]) for any size: (B, 1, D, H, W) → (B, 1, D, H, W) class indices.

    The volume is background-padded to a multiple of f and the result cropped back. ``noise``
    is added in the unit-variance latent (σ of the denoiser's error you want to simulate).
    """
    padded = pad_to_factor(model.to_onehot(labels), model.factor)
    z = model.encode(padded)
    if noise > 0:
        z = z + noise * z.std() * torch.randn_like(z)
    out = model.decode(z).argmax(1, keepdim=True)
    return out[(..., *[slice(0, s) for s in labels.shape[2:]])]


def reconstruction_dice(model: LabelAutoencoder, label_volumes: Sequence[Any], noise: float = 0.0) -> torch.Tensor:
    """Per-case, per-foreground-class Dice of ``reconstruct`` (MONAI ``DiceMetric``).

    Returns:
        (n_cases, N - 1) tensor; NaN where a class is absent from a case.
    """
    metric = DiceMetric(include_background=False, reduction="none", ignore_empty=True)
    model.eval()
    n = model.cfg.num_classes
    device = model.scale_factor.device
    for i, vol in enumerate(label_volumes):
        y = _as_label_tensor(vol, i)[None, None].long().to(device)
        pred = reconstruct(model, y, noise=noise)
        metric(one_hot(pred, n, dim=1), one_hot(y, n, dim=1))
    return metric.aggregate().cpu()


def structure_dice(pred: Any, target: Any, class_index: int, spacing_mm: Sequence[float] = (3.0, 3.0, 3.0),
                   margin: int = 3) -> list[tuple[float, float]]:
    """Dice of each connected structure (e.g. each tumour) of ``class_index`` in ``target``.

    Each target component is compared with the predicted class voxels within ``margin`` voxels
    of it (other target components excluded), so one case with two tumours gives two points.

    Args:
        pred, target: class-index volumes (D, H, W), numpy or torch.
        class_index: the class to analyse (e.g. 2 = tumour).
        spacing_mm: voxel size, for the equivalent diameter d = (6 V / π)^(1/3).
        margin: neighbourhood (voxels) in which predicted voxels count for a component.

    Returns:
        ``[(diameter_mm, dice), ...]`` sorted by diameter.
    """
    from scipy import ndimage

    p = np.asarray(pred.cpu() if isinstance(pred, torch.Tensor) else pred).squeeze() == class_index
    t = np.asarray(target.cpu() if isinstance(target, torch.Tensor) else target).squeeze() == class_index
    comps, n = ndimage.label(t)
    voxel_ml = float(np.prod(spacing_mm))
    out = []
    for c in range(1, n + 1):
        g = comps == c
        region = ndimage.binary_dilation(g, iterations=margin) & ((comps == 0) | g)
        inter, size_p = (p & g).sum(), (p & region).sum()
        diameter = (6 * g.sum() * voxel_ml / math.pi) ** (1 / 3)
        out.append((float(diameter), float(2 * inter / (size_p + g.sum()))))
    return sorted(out)


def save_label_autoencoder(model: LabelAutoencoder, path: str | os.PathLike[str]) -> Path:
    """Write ``{config, state_dict, scale_factor, versions}`` atomically (``torch.load(weights_only=True)``)."""
    from tdseg_lite.utils import atomic_write_bytes, versions

    buffer = io.BytesIO()
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"config": config_to_dict(model.cfg), "state_dict": state,
                "scale_factor": float(model.scale_factor), "versions": versions()}, buffer)
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


def load_label_autoencoder(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> LabelAutoencoder:
    """Rebuild a ``LabelAutoencoder`` saved by ``save_label_autoencoder`` (eval mode)."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"`path` must be a saved label autoencoder, got {str(path)!r} (no such file). "
                             "Run notebooks/02_label_latent_space.ipynb or save_label_autoencoder() first.")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
        model = LabelAutoencoder(config_from_dict(LabelAEConfig, ckpt["config"]))
        model.load_state_dict(ckpt["state_dict"])
    except (KeyError, TypeError, RuntimeError, ConfigError) as err:
        raise UserInputError(f"`path` must hold {{config, state_dict, scale_factor, versions}} of a label "
                             f"autoencoder, got {str(path)!r} ({type(err).__name__}: {str(err)[:120]}). "
                             "Re-create it with save_label_autoencoder().") from err
    return model.eval()
