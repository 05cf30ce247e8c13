"""TextDiffSeg assembled from its parts, the model configs, and ``build_model`` for all three models.

TextDiffSeg (paper items 1-7, ``docs/design.md`` §2 and §4) segments by denoising the label latent z_l, conditioned on the fused
image-text latent::

    z_i, aux = E_img(x)                       image feature extractor (+ aux head ẑ_aux ≈ z_l)
    z_fused  = CMA(z_i, z_t)                  3D cross-modal attention, z_t = E_te(prompt) (cached)
    z^(t)    = sqrt(ᾱ_t) z_l + sqrt(1−ᾱ_t) ε   forward diffusion of z_l = E_lab(y)       (Eq. 5)
    out      = f_θ(z^(t) ⊕ z_fused, t | z_t)  conditional denoiser -> ẑ0
    ŷ        = D_lab(ẑ0) [+ skip(D_lab(ẑ0), F_0(x))]   label decoder (+ full-resolution image skip)

Joint loss (``docs/design.md`` §5; as in LDSeg): Dice + CE on ŷ + λ·MSE(out, target) + the aux head's Dice + CE and
latent MSE; every weight in ``DiffusionConfig``. The label autoencoder is pre-trained and frozen.

``ModelConfig.model`` selects ``"textdiffseg"``, ``"unet"`` (``baselines.UNetSegmenter``) or
``"pixel-diffusion"`` (``baselines.PixelDiffusion``, TextDiffSeg without the label encoder); the
ablation switches are ``text_fusion`` (no text anywhere) and ``image_features`` (raw image,
space-to-depth to the latent grid, instead of the extractor). ``ModelSpec`` bundles the configs of
every part; ``ModelSpec.build(preset, {"diffusion.eta": 0.5, "model": "unet"})`` routes dotted keys
to the part's config (``config.split_keys``). Fields that follow another part (``ModelSpec.derived``:
e.g. ``image_encoder.downsample_factor`` = ``label_ae.downsample_factor``) are derived, and an
override that contradicts one is refused.

Explained in notebooks/03_conditional_unet_and_diffusion.ipynb
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from monai.networks.utils import pixelunshuffle
from torch import nn

from tdseg_lite.baselines import PixelDiffusion, TextUNetSegmenter, UNetSegmenter
from tdseg_lite.config import (
    ConfigError,
    build_config,
    config_from_dict,
    config_to_dict,
    resolve_preset,
    split_keys,
)
from tdseg_lite.denoiser import ConditionalDenoiser, DenoiserConfig
from tdseg_lite.diffusion import DiffusionConfig, entropy
from tdseg_lite.errors import UserInputError
from tdseg_lite.fusion import CrossModalAttention3d, FusionConfig
from tdseg_lite.grounding import (
    SideReader,
    half_targets,
    pretrain_side_reader,
    side_loss,
    side_map,
    volume_half_targets,
)
from tdseg_lite.image_encoder import ImageEncoder, ImageEncoderConfig
from tdseg_lite.label_ae import LabelAEConfig, LabelAutoencoder, train_label_autoencoder
from tdseg_lite.layout import channels_last
from tdseg_lite.positions import COORD_KEY
from tdseg_lite.segmenter import (
    DiffusionSegmenter,
    Segmenter,
    TextConditioner,
    as_plain,
)
from tdseg_lite.text import TextConfig, TextEmbedding

__all__ = ["SPEC_PRESETS", "AuxHeadView", "ImageSkipDecoder", "ModelConfig", "ModelSpec", "TextDiffSeg", "build_model"]


@dataclass(frozen=True)
class ModelConfig:
    """Which model, the ablation switches, and the baselines' networks (presets in ``PRESETS``)."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": {"unet_channels": (8, 16, 32, 64), "unet_res_units": 1, "pixel_channels": (8, 16, 16, 16),
                  "skip_width": 4},
        "cpu": {},
        "full": {"unet_channels": (32, 64, 128, 256), "skip_width": 32},
    }
    model: Literal["textdiffseg", "unet", "text-unet", "pixel-diffusion"] = "textdiffseg"  # the model or a baseline
    num_classes: int = 3                          # N, background included
    text_fusion: bool = True                      # ablation: False = no text anywhere (fusion, cross-attention, FiLM)
    image_features: bool = True                   # ablation: False = raw image (space-to-depth) instead of E_img
    # --- beyond the paper: our additions to TextDiffSeg ---
    coordinates: bool = True                      # the image input also carries each voxel's volume position
    aux_head: bool = True                         # supervise E_img through its aux head (aux_* weights)
    aux_condition: bool = True                    # the denoiser also reads the (detached) aux latent: a refiner
    aux_residual: bool = True                     # x0-prediction as aux + correction (needs aux_condition, "sample")
    decoder_image_skip: bool = True               # the label decoder also sees E_img's full-resolution features
    skip_width: int = 8                           # hidden width of the skip decoder
    skip_kernel: int = 1                          # its first conv's kernel (1: per-voxel, 3: 3x3x3)
    # --- the baselines' networks (not part of TextDiffSeg) ---
    unet_channels: tuple[int, ...] = (16, 32, 64, 128)    # UNet baseline widths
    unet_strides: tuple[int, ...] = (2, 2, 2)             # UNet baseline strides
    unet_res_units: int = 2                               # UNet baseline residual units
    pixel_channels: tuple[int, ...] = (16, 32, 64, 64)    # pixel-diffusion denoiser widths (64³ ... 8³)
    pixel_attention_levels: tuple[bool, ...] = (False, False, False, True)  # its attention levels

    def __post_init__(self) -> None:
        for name in ("unet_channels", "unet_strides", "pixel_channels", "pixel_attention_levels"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.num_classes < 2:
            raise ConfigError(f"`ModelConfig.num_classes` must be >= 2 (background + 1), got {self.num_classes}. "
                              "Use 3 for background, kidney, tumour.")
        if len(self.unet_strides) != len(self.unet_channels) - 1:
            raise ConfigError(f"`ModelConfig.unet_strides` must have len(unet_channels) - 1 = "
                              f"{len(self.unet_channels) - 1} entries, got {self.unet_strides}. Use e.g. (2, 2, 2).")
        if len(self.pixel_attention_levels) != len(self.pixel_channels):
            raise ConfigError(f"`ModelConfig.pixel_attention_levels` must have one entry per pixel_channels level, "
                              f"got {self.pixel_attention_levels}. Use e.g. (False, False, False, True).")
        if self.skip_width < 1 or self.skip_kernel not in (1, 3):
            raise ConfigError(f"`ModelConfig.skip_kernel` must be 1 or 3 and skip_width >= 1, got "
                              f"{(self.skip_kernel, self.skip_width)}. Use skip_kernel=1, skip_width=16.")


#: what the full model changes in its parts' own presets (``"part.field"`` keys, applied before overrides):
#: on a CPU the image extractor must stay light at full resolution, where every op is memory-bound
#: (measured: (16, 32, 64, 128) with a residual unit per scale costs 2.8 s fwd+bwd per batch of 4
#: on one thread, (4, 16, 32, 64) without 0.6 s, against 1.0 s for a whole MONAI UNet step).
#: The cpu preset's joint step is lean too: a denoiser of widths (8, 16, 32) instead of (16, 32, 64) and a
#: quarter of the batch decoded for the pixel losses instead of half (1.04 vs 1.25 s per step on one thread;
#: at equal wall clock more steps and a better tumour Dice on the phantom and on real kidney shapes:
#: README, "Equal budget with 3 seeds"). The GPU preset keeps the wider denoiser and decodes half. (Pixel
#: diffusion keeps its own denoiser widths, model.pixel_channels; its Dice + CE also sees a quarter of the batch.)
SPEC_PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {},
    "cpu": {"image_encoder.channels": (4, 16, 32, 64), "image_encoder.num_res_units": 0,
            "denoiser.channels": (8, 16, 32), "diffusion.decode_fraction": 0.25},
    "full": {},
}

_PARTS: dict[str, type] = {"model": ModelConfig, "denoiser": DenoiserConfig, "diffusion": DiffusionConfig,
                           "fusion": FusionConfig, "image_encoder": ImageEncoderConfig, "label_ae": LabelAEConfig,
                           "text": TextConfig}


@dataclass(frozen=True)
class ModelSpec:
    """The configs of every part of a model, built together from one preset."""

    model: ModelConfig
    denoiser: DenoiserConfig
    diffusion: DiffusionConfig
    fusion: FusionConfig
    image_encoder: ImageEncoderConfig
    label_ae: LabelAEConfig
    text: TextConfig

    def __post_init__(self) -> None:
        for part, values in self.derived().items():  # the fields that follow another part
            object.__setattr__(self, part, dataclasses.replace(getattr(self, part), **values))

    def derived(self) -> dict[str, dict[str, Any]]:
        """The fields that follow another part, ``{part: {field: value}}`` (``DERIVED_FROM`` names the sources)."""
        m, ae = self.model, self.label_ae
        out: dict[str, dict[str, Any]] = {
            "label_ae": {"num_classes": m.num_classes},
            "image_encoder": {"downsample_factor": ae.downsample_factor, "in_channels": 4 if m.coordinates else 1,
                              "aux_latent_channels": ae.latent_channels if m.aux_head else 0}}
        if m.model == "pixel-diffusion":
            out["denoiser"] = {"channels": m.pixel_channels, "attention_levels": m.pixel_attention_levels,
                               "multiscale": False}
        return out

    @classmethod
    def part_classes(cls) -> dict[str, type]:
        """``{part name: config class}`` of the model's parts."""
        return dict(_PARTS)

    @classmethod
    def build(cls, preset: str | None = "smoke", overrides: Mapping[str, Any] | None = None) -> ModelSpec:
        """Defaults -> preset -> overrides; ``"part.field"`` keys go to that part, plain keys to ``ModelConfig``."""
        return cls.from_parts(preset, split_keys(overrides or {}, tuple(_PARTS), default="model", arg=""))

    @classmethod
    def from_parts(cls, preset: str | None, parts: Mapping[str, Mapping[str, Any]]) -> ModelSpec:
        """Defaults -> ``SPEC_PRESETS`` and each part's preset -> ``parts`` (``{part: {field: value}}``).

        Raises:
            ConfigError: an override of a derived field that contradicts its source (``DERIVED_FROM``).
        """
        layered = split_keys(SPEC_PRESETS.get(resolve_preset(preset), {}), tuple(_PARTS))
        for part, values in parts.items():  # fields that always follow another part are compared afterwards
            layered.setdefault(part, {}).update({f: v for f, v in values.items() if f"{part}.{f}" not in _ALWAYS_DERIVED})
        spec = cls(**{name: build_config(c, preset, layered.get(name)) for name, c in _PARTS.items()})
        for part, values in spec.derived().items():
            for field, value in values.items():
                given = parts.get(part, {}).get(field, value)
                if json.loads(json.dumps(given)) != json.loads(json.dumps(value)):
                    raise ConfigError(f"`{part}.{field}` follows {DERIVED_FROM[f'{part}.{field}']} (here {value!r}), "
                                      f"got {given!r}. Set that instead, or leave {part}.{field} out.")
        return spec

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """JSON-ready ``{part: {field: value}}``."""
        return {name: config_to_dict(getattr(self, name)) for name in _PARTS}

    @classmethod
    def from_dict(cls, data: Mapping[str, Mapping[str, Any]]) -> ModelSpec:
        """Inverse of ``to_dict`` (every key checked; derived fields follow their source)."""
        data = {name: dict(values) for name, values in data.items()}
        model = data.setdefault("model", {})
        if model.pop("label_encoder", True) is False and model.get("model", "textdiffseg") == "textdiffseg":
            model["model"] = "pixel-diffusion"  # a run saved before the switch became --model pixel-diffusion
        return cls(**{name: config_from_dict(c, data.get(name, {})) for name, c in _PARTS.items()})


#: where each derived field of ``ModelSpec`` comes from
DERIVED_FROM = {
    "label_ae.num_classes": "model.num_classes (the dataset's classes)",
    "image_encoder.downsample_factor": "label_ae.downsample_factor",
    "image_encoder.in_channels": "model.coordinates (4 with coordinates, else 1)",
    "image_encoder.aux_latent_channels": "label_ae.latent_channels (0 with model.aux_head=false)",
    "denoiser.channels": "model.pixel_channels for --model pixel-diffusion",
    "denoiser.attention_levels": "model.pixel_attention_levels for --model pixel-diffusion",
    "denoiser.multiscale": "--model pixel-diffusion (no image features: false)",
}
#: the derived fields of every model kind (the denoiser's follow model.pixel_* only for pixel diffusion)
_ALWAYS_DERIVED = tuple(k for k in DERIVED_FROM if not k.startswith("denoiser."))


class ImageSkipDecoder(nn.Module):
    """Label decoder refinement that sees the image: logits + g([logits, F_0(x)]), g zero-initialised.

    The label latent at 1/f resolution bounds the label decoder (the "AE ceiling"); the skip lets
    full-resolution image features move boundaries. Shapes: logits (B, N, D, H, W), skip (B, C, D, H, W).
    """

    def __init__(self, num_classes: int, skip_channels: int, width: int = 16, kernel: int = 1) -> None:
        super().__init__()
        out = nn.Conv3d(width, num_classes, kernel_size=1)
        nn.init.zeros_(out.weight)
        nn.init.zeros_(out.bias)
        self.net = nn.Sequential(nn.Conv3d(num_classes + skip_channels, width, kernel, padding=kernel // 2),
                                 nn.SiLU(), out)

    def forward(self, logits: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        # channels-last with 2+ CPU threads, where oneDNN's 1×1×1 convolutions are otherwise slow (layout.py)
        return logits + self.net(channels_last(torch.cat([logits, skip], dim=1), threads=2)).contiguous()


class TextDiffSeg(DiffusionSegmenter):
    """Text-guided latent diffusion segmenter (paper items 1-7, ``docs/design.md`` §2).

    Args:
        spec: the configs (``ModelSpec.build``).
        label_ae: the label autoencoder (frozen here; train it first or call ``pretrain``).
        text: prompt embeddings (``None`` when ``spec.model.text_fusion`` is off).
        patch_size: training patch (D, H, W); fixes the latent grid checks.
    """

    def __init__(self, spec: ModelSpec, label_ae: LabelAutoencoder, text: TextConditioner | None,
                 patch_size: Sequence[int] = (64, 64, 64)) -> None:
        super().__init__(spec.diffusion, spec.model.num_classes)
        cfg, self.spec, self.text = spec.model, spec, text
        self.label_ae = label_ae.requires_grad_(False).eval()
        k, f = label_ae.cfg.latent_channels, label_ae.factor
        if label_ae.cfg.num_classes != cfg.num_classes:
            raise ConfigError(f"`label_ae.num_classes` must equal ModelConfig.num_classes={cfg.num_classes}, got "
                              f"{label_ae.cfg.num_classes}. Build both with the same number of classes.")
        self.factor, self.k = f, k
        grid = [s // f for s in patch_size]
        self.uses_coordinates = cfg.coordinates
        in_ch = 4 if cfg.coordinates else 1
        if cfg.image_features:
            icfg = dataclasses.replace(spec.image_encoder, downsample_factor=f, in_channels=in_ch,
                                       aux_latent_channels=k if cfg.aux_head else 0)
            self.image_encoder: ImageEncoder | None = ImageEncoder(icfg)
            c, skip_ch, scale = icfg.latent_channels, icfg.channels[0], int(math.log2(f))
            feature_channels: Sequence[int] = icfg.channels[scale:]
        else:
            self.image_encoder, c, skip_ch, feature_channels = None, in_ch * f**3, in_ch, ()
        self.fusion = CrossModalAttention3d(c, text.dim, spec.fusion) if text is not None else None
        self.side_reader: SideReader | None = None
        if spec.fusion.side_map:
            if text is None or not cfg.coordinates:
                raise ConfigError("`FusionConfig.side_map` needs the text pathway and the voxel coordinates, got "
                                  f"text_fusion={cfg.text_fusion}, coordinates={cfg.coordinates}. Turn both on "
                                  "or set fusion.side_map=false.")
            self.side_reader = SideReader(text.dim)
            if spec.fusion.side_pretrain_steps:  # taught before the joint phase (pretrain_side), then frozen
                self.side_reader.requires_grad_(False)
            self.register_buffer("side_taught", torch.tensor(not spec.fusion.side_pretrain_steps))
            self.side_mix = nn.Conv3d(c + 1, c, kernel_size=1)  # [z_fused, m] -> a residual on z_fused, starts at 0
            nn.init.zeros_(self.side_mix.weight)
            nn.init.zeros_(self.side_mix.bias)
        self.aux_condition = cfg.aux_condition and cfg.aux_head and cfg.image_features
        self.aux_residual = self.aux_condition and cfg.aux_residual and spec.diffusion.prediction_type == "sample"
        self.denoiser = ConditionalDenoiser(k, c + (k if self.aux_condition else 0),
                                            text.dim if text is not None else None, spec.denoiser,
                                            feature_channels=feature_channels, grid=grid)
        self.skip_decoder = ImageSkipDecoder(cfg.num_classes, skip_ch, cfg.skip_width, cfg.skip_kernel) \
            if cfg.decoder_image_skip else None
        self.self_condition = spec.denoiser.self_condition

    def train(self, mode: bool = True) -> TextDiffSeg:
        super().train(mode)
        self.label_ae.eval()  # frozen: always in inference mode
        return self

    def pretrain(self, label_volumes: Sequence[Any], *, max_seconds: float | None = None,
                 max_steps: int | None = None, seed: int = 0) -> dict[str, Any]:
        """Pre-train the label autoencoder on label volumes (``label_ae.train_label_autoencoder``)."""
        self.label_ae.requires_grad_(True)
        history = train_label_autoencoder(self.label_ae, label_volumes, max_seconds=max_seconds, max_steps=max_steps,
                                          seed=seed)
        self.label_ae.requires_grad_(False).eval()
        return history

    def pretrain_side(self, descriptions: Sequence[str | None], label_volumes: Sequence[torch.Tensor], *,
                      seed: int = 0) -> dict[str, float] | None:
        """Teach the side reader (``fusion.side_map``) on the training cases' reports and label volumes
        (X, Y, Z), then freeze it; ``None`` when the model has no reader or learns it jointly."""
        fcfg = self.spec.fusion
        if self.side_reader is None or not fcfg.side_pretrain_steps:
            return None
        targets = torch.stack([volume_half_targets(torch.as_tensor(v), fcfg.side_axis, self.num_classes - 1)
                               for v in label_volumes])
        self.side_reader.requires_grad_(True)
        try:
            summary = pretrain_side_reader(self.side_reader, self.text, descriptions, targets,
                                           steps=fcfg.side_pretrain_steps, seed=seed)
        finally:
            self.side_reader.requires_grad_(False)
        self.side_taught.fill_(True)
        return summary

    # --- the parts -------------------------------------------------------------------------------
    def encode_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """z_l = E_lab(y): (B, 1, D, H, W) -> (B, k, D/f, H/f, W/f), unit variance."""
        with torch.no_grad():
            return self.label_ae.encode(labels)

    def decode(self, z: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        """ŷ = D_lab(z) [+ image skip]: (B, k, d, h, w) -> logits (B, N, f·d, f·h, f·w)."""
        logits = self.label_ae.decode(z)
        return self.skip_decoder(logits, skip) if self.skip_decoder is not None and skip is not None else logits

    def image_features(self, image: torch.Tensor, coords: torch.Tensor | None = None) -> dict[str, Any]:
        """E_img(x) without the aux head: ``{"latent" (B, c, d, h, w), "features" [1/f, 1/2f], "skip",
        "positions" (B, 3, d, h, w), "coords" (B, 3, D, H, W)}``; ``coords`` are the voxels' volume
        coordinates (``None``: ``image`` is the whole volume)."""
        x = self.model_input(image, coords)
        positions = voxel_coords = None
        if self.uses_coordinates:  # the coordinates pooled to the latent grid: where each latent voxel is
            voxel_coords = x[:, 1:]
            positions = F.avg_pool3d(voxel_coords, self.factor)
        out = {"positions": positions, "coords": voxel_coords}
        if self.image_encoder is None:
            return {"latent": pixelunshuffle(x, 3, self.factor), "features": [], "skip": x, **out}
        latent, features = self.image_encoder.encode(x)
        scale = int(math.log2(self.factor))
        return {"latent": latent, "features": list(features[scale:]), "skip": features[0], **out}

    def condition(self, feats: dict[str, Any], emb: TextEmbedding | None) -> dict[str, Any]:
        """z_fused = CMA(z_i, z_t) (Eq. CMA), the aux head on it, and what the denoiser reads.

        The aux head reads the *fused* latent, so the report reaches the one-shot segmentation too;
        the denoiser gets z_fused ⊕ the detached aux latent, the tokens, the pooled text and the
        multi-scale image features. With ``fusion.side_map`` the reader's side map m joins z_fused
        first: z_fused += W_m [z_fused, m] (``grounding.py``).
        """
        fused, side_logits = feats["latent"], None
        if self.fusion is not None and emb is not None:
            fused = self.fusion(fused, emb.tokens, emb.mask, positions=feats["positions"])
        if self.side_reader is not None and emb is not None:  # m: the report's side on the latent grid
            side_logits = self.side_reader(emb.tokens, emb.mask)
            axis = self.spec.fusion.side_axis
            m = side_map(side_logits, feats["positions"][:, axis:axis + 1])
            fused = fused + self.side_mix(torch.cat([fused, m], dim=1))
        prior = self.side_prior(side_logits, feats) if side_logits is not None else None
        aux = self.image_encoder.aux_head(fused) if self.image_encoder is not None and \
            self.image_encoder.aux_head is not None else None
        cond = torch.cat([fused, aux.detach()], dim=1) if self.aux_condition else fused
        return {"cond": cond, "aux_latent": aux, "aux": aux.detach() if self.aux_residual else None,
                "features": feats["features"], "tokens": None if emb is None else emb.tokens,
                "pooled": None if emb is None else emb.pooled, "side_logits": side_logits, "prior": prior}

    def side_prior(self, side_logits: torch.Tensor, feats: dict[str, Any]) -> torch.Tensor | None:
        """log m at full resolution, (B, 1, D, H, W), with ``fusion.side_prior``; else ``None``.

        Added to the lesion logit, it leaves a voxel where the report puts a lesion (m ≈ 1, log m ≈ 0)
        to the image and suppresses one where the report says that half has none (m ≈ 0).
        """
        if not self.spec.fusion.side_prior:
            return None
        axis = self.spec.fusion.side_axis
        return torch.log(side_map(side_logits, feats["coords"][:, axis:axis + 1]).clamp_min(1e-4))

    def report_prior(self, feats: dict[str, Any], text: Any, image: torch.Tensor) -> torch.Tensor | None:
        if self.side_reader is None or not self.spec.fusion.side_prior:
            return None
        emb = self.text.embed(text, image.shape[0], image.device)
        return self.side_prior(self.side_reader(emb.tokens, emb.mask), feats)

    def denoise(self, z_t: torch.Tensor, t: torch.Tensor, cond: dict[str, Any],
                x0_prev: torch.Tensor | None = None) -> torch.Tensor:
        """f_θ(z^(t), t | cond); with ``aux_residual`` ẑ0 = ẑ_aux + f_θ (the output layer starts at 0, so ẑ0 = ẑ_aux)."""
        out = self.denoiser(z_t, t, cond["cond"], tokens=cond["tokens"], pooled=cond["pooled"],
                            features=cond["features"], self_cond=x0_prev)
        return out if cond.get("aux") is None else out + cond["aux"]

    def latent_shape(self, image: torch.Tensor) -> tuple[int, ...]:
        return (image.shape[0], self.k, *(s // self.factor for s in image.shape[2:]))

    def sample_start(self, feats: dict[str, Any], cond: dict[str, Any]) -> torch.Tensor | None:
        return cond["aux_latent"] if self.dcfg.start == "aux" else None

    # --- training and the aux head -----------------------------------------------------------------
    def loss(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Joint loss: Dice + CE on D(ẑ0) + λ·MSE + aux Dice + CE + aux latent MSE (weights in ``DiffusionConfig``)
        [+ the side reader's BCE with ``fusion.side_map``]."""
        device, cfg = self.device(), self.dcfg
        if self.side_reader is not None and not bool(self.side_taught):
            raise ConfigError("`fusion.side_map` with side_pretrain_steps > 0 needs the side reader taught before the "
                              "joint phase, got an untaught reader. Call model.pretrain_side(descriptions, "
                              "label_volumes) first (tdseg train does), or set fusion.side_pretrain_steps=0.")
        image, labels = self._check_image(batch["image"]).to(device), as_plain(batch["label"]).to(device)
        z0 = self.encode_labels(labels)                                  # 1. z_l^(0) = E_lab(y), frozen
        feats = self.image_features(image, batch.get(COORD_KEY))        # 2. z_i and the multi-scale features
        cond = self.condition(feats, self.text_embedding(batch, image.shape[0], train=True))  # 3. prompts (text
        #    dropout p: the null prompt), z_fused = CMA(z_i, z_t), the aux head ẑ_aux, what the denoiser reads
        terms = self.denoising_terms(z0, cond, labels, feats["skip"])   # 4. ε, t, Eq. 5, f_θ, MSE, Dice + CE
        total = cfg.mse_weight * terms["mse"] + terms.get("seg", torch.zeros((), device=device))  # 5. λ·MSE + seg
        aux = cond["aux_latent"]
        if aux is not None:                                              # 6. the aux head's own terms:
            terms["aux_mse"] = F.mse_loss(aux, z0)                       #    latent MSE to z_l^(0)
            idx = self.decode_subset(image.shape[0]).to(device)          #    Dice + CE of D(ẑ_aux) on a subset
            prior = None if cond["prior"] is None else cond["prior"][idx]
            terms["aux_seg"] = self.seg_loss(self.add_prior(self.decode(aux[idx], feats["skip"][idx]), prior), labels[idx])
            total = total + cfg.aux_latent_weight * terms["aux_mse"] + cfg.aux_weight * terms["aux_seg"]
        if cond["side_logits"] is not None and not self.spec.fusion.side_pretrain_steps:  # 7. a side reader that
            axis = self.spec.fusion.side_axis                            #    learns jointly: BCE to the halves of
            targets = half_targets(labels, feats["coords"][:, axis:axis + 1], self.num_classes - 1)  # the patch
            terms["side"] = side_loss(cond["side_logits"], targets)
            total = total + self.spec.fusion.side_weight * terms["side"]
        return {"loss": total, **{k: v.detach() for k, v in terms.items()}}  # 8. the total and each term (logged)

    def set_sampling_start(self, start: str | None = None, start_timestep: int | None = None) -> None:
        """Where DDIM sampling starts: ``"noise"`` (N(0, I) at T) or ``"aux"`` (SDEdit-style).

        ``"aux"`` noises the aux head's latent ẑ_aux to ``start_timestep`` by Eq. 5 and runs only the
        schedule's steps <= it: fewer denoiser calls for the same ``steps`` (``benchmarks/results/frontier.md``).
        ``None`` keeps the run's setting.
        """
        if start not in (None, "noise", "aux"):
            raise UserInputError(f"`--start` must be 'noise' or 'aux', got {start!r}. Use --start aux for the aux-head start.")
        has_aux = self.image_encoder is not None and self.image_encoder.cfg.aux_latent_channels > 0
        if start == "aux" and not has_aux:
            raise UserInputError("`--start aux` needs a TextDiffSeg with an aux head, got one trained with "
                                 "model.aux_head=false or model.image_features=false. Leave --start out for this run.")
        changes: dict[str, Any] = {k: v for k, v in (("start", start), ("start_timestep", start_timestep)) if v is not None}
        self.dcfg = dataclasses.replace(self.dcfg, **changes)  # DiffusionConfig checks the timestep's range

    @torch.no_grad()
    def predict_aux(self, image: torch.Tensor, text: Any = None, coords: torch.Tensor | None = None) -> torch.Tensor:
        """The aux head's own one-shot segmentation, softmax(D(ẑ_aux)): (B, N, D, H, W); no diffusion.

        ẑ_aux is read from the fused latent, so it depends on the report ``text`` too.
        """
        image = self._check_image(image)
        return self.aux_probabilities(self.image_features(image, coords), text, image)

    def aux_probabilities(self, feats: dict[str, Any], text: Any, image: torch.Tensor) -> torch.Tensor:
        """softmax(D(ẑ_aux)) (B, N, D, H, W) from ``image_features(image)`` and the report ``text``."""
        emb = None if self.text is None else self.text.embed(text, image.shape[0], image.device)
        cond = self.condition(feats, emb)
        if cond["aux_latent"] is None:
            raise ConfigError("`ModelConfig.aux_head` must be True (with image_features) for the aux head's "
                              "prediction, got no aux head. Build the model with aux_head=True.")
        return self.add_prior(self.decode(cond["aux_latent"], feats["skip"]), cond["prior"]).softmax(dim=1)

    @torch.no_grad()
    def ceiling(self, image: torch.Tensor, labels: torch.Tensor, coords: torch.Tensor | None = None) -> torch.Tensor:
        """softmax(D(E_lab(y))) with the image skip: the best any latent sample can decode to."""
        image = self._check_image(image)
        skip = self.image_features(image, coords)["skip"]
        return self.decode(self.encode_labels(as_plain(labels)), skip).softmax(dim=1)


class AuxHeadView(Segmenter):
    """A ``Segmenter`` whose ``predict`` is the TextDiffSeg aux head (to evaluate it like any model)."""

    def __init__(self, model: TextDiffSeg) -> None:
        super().__init__()
        self.model, self.num_classes, self.text = model, model.num_classes, model.text
        self.uses_coordinates = model.uses_coordinates

    def predict(self, image: torch.Tensor, text: Any = None, *, uncertainty: bool = False,
                coords: torch.Tensor | None = None, **_: Any) -> Any:
        probs = self.model.predict_aux(image, text, coords)
        return (probs, entropy(probs)) if uncertainty else probs


def build_model(spec: ModelSpec, *, label_ae: LabelAutoencoder | None = None, text_encoder: Any = None,
                phrases: Sequence[str] = ("kidney", "kidney tumor"),
                patch_size: Sequence[int] = (64, 64, 64)) -> Segmenter:
    """The model ``spec.model.model`` selects, with the ablation switches applied.

    Args:
        spec: the configs.
        label_ae: a trained label autoencoder (TextDiffSeg); ``None`` builds an untrained one
            (call ``model.pretrain(label_volumes, max_seconds=...)``).
        text_encoder: a ``TextEncoder``; ``None`` creates one from ``spec.text`` when text is used
            (``text.make_text_encoder``).
        phrases: foreground label phrases of the prompt template.
        patch_size: the training patch (D, H, W).
    """
    cfg = spec.model
    unet_args = (cfg.num_classes, cfg.unet_channels, cfg.unet_strides, cfg.unet_res_units)
    if cfg.model == "unet":
        return UNetSegmenter(*unet_args, coordinates=cfg.coordinates)
    text = None
    if cfg.text_fusion:
        from tdseg_lite.text import make_text_encoder

        encoder = text_encoder if text_encoder is not None else make_text_encoder(spec.text)
        text = TextConditioner(encoder, phrases, paraphrase=spec.text.paraphrase)
    if cfg.model == "text-unet":
        if text is None:
            raise ConfigError("`model.text_fusion` must be true for model='text-unet', got false. Use "
                              "--model unet for the UNet without text.")
        return TextUNetSegmenter(*unet_args, text, spec.fusion, spec.diffusion.text_dropout, cfg.coordinates)
    if cfg.model == "pixel-diffusion":
        den = dataclasses.replace(spec.denoiser, channels=cfg.pixel_channels,
                                  attention_levels=cfg.pixel_attention_levels, multiscale=False)
        return PixelDiffusion(cfg.num_classes, spec.diffusion, den, text, patch_size, cfg.coordinates)
    ae = label_ae if label_ae is not None else LabelAutoencoder(
        dataclasses.replace(spec.label_ae, num_classes=cfg.num_classes))
    return TextDiffSeg(spec, ae, text, patch_size)
