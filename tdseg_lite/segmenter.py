"""The one interface of every model (TextDiffSeg and the baselines) and the shared diffusion machinery.

Training and evaluation code never asks which model it holds; every model is a ``Segmenter``::

    losses = model.loss(batch)            # {"loss": total, "<term>": ...}, batch = {"image", "label", "description"}
    probs = model.predict(image, text)    # (B, N, D, H, W) class probabilities
    probs, unc = model.predict(image, text, samples=5, uncertainty=True)   # + (B, 1, D, H, W)

``TextConditioner`` turns case descriptions into prompts and prompts into cached embeddings
(``TextEncoder`` runs once per distinct prompt, never per step), applies the text dropout of
classifier-free guidance and provides the null ("no text") embedding.

``DiffusionSegmenter`` holds what TextDiffSeg and the pixel-space baseline share: the schedules,
the denoising terms of the joint loss (Eq. 5 noising, MSE on the target, Dice + CE on the
decoded ẑ0), the guided denoiser call and the DDIM sampling of an ensemble. A subclass says how
labels enter the diffusion space (``encode_labels``), how a sample leaves it (``decode``), how the
image and text condition the denoiser (``image_features``, ``condition``) and how the denoiser is
called (``denoise``).

Explained in notebooks/03_conditional_unet_and_diffusion.ipynb
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tdseg_lite.diffusion import (
    DiffusionConfig,
    classifier_free_guidance,
    ddim_sample,
    denoising_target,
    ensemble_statistics,
    entropy,
    make_scheduler,
    predicted_x0,
    sample_timesteps,
)
from tdseg_lite.errors import UserInputError
from tdseg_lite.positions import volume_coordinates
from tdseg_lite.prompts import case_prompt
from tdseg_lite.text import TextEmbedding

__all__ = ["DiffusionSegmenter", "Segmenter", "TextConditioner", "as_plain", "batch_descriptions"]


def as_plain(x: torch.Tensor) -> torch.Tensor:
    """MetaTensor -> plain tensor (drops MONAI's meta bookkeeping, which slows every op)."""
    return x.as_subclass(torch.Tensor) if isinstance(x, torch.Tensor) else torch.as_tensor(x)


def batch_descriptions(batch: Mapping[str, Any], size: int) -> list[str | None]:
    """The per-case ``description`` strings of a collated batch (``None`` where absent)."""
    desc = batch.get("description")
    if desc is None:
        return [None] * size
    desc = [desc] if isinstance(desc, str) else list(desc)
    if len(desc) != size:
        raise UserInputError(f"`batch['description']` must hold one entry per case ({size}), got {len(desc)}. "
                             "Collate the datalist's description field with the images.")
    return [d if isinstance(d, str) and d.strip() else None for d in desc]


class TextConditioner:
    """Prompts -> cached text embeddings on the model's device, with dropout and the null prompt.

    Args:
        encoder: a ``TextEncoder`` (its cache makes a repeated prompt a dictionary lookup).
        phrases: foreground label phrases for the prompt template, e.g. ``["kidney", "kidney tumor"]``.
    """

    def __init__(self, encoder: Any, phrases: Sequence[str], paraphrase: float = 0.0) -> None:
        self.encoder, self.phrases, self.paraphrase = encoder, list(phrases), float(paraphrase)
        self._null: TextEmbedding | None = None

    @property
    def dim(self) -> int:
        """d_text, the token width."""
        return int(self.null(1, "cpu").tokens.shape[-1])

    def prompts(self, descriptions: Sequence[str | None], train: bool = False) -> list[str]:
        """One prompt per case: the label template plus the case description (``prompts.case_prompt``).

        With ``train``, a share ``paraphrase`` of the descriptions is rewritten in another phrasing of
        the same facts (``reports.paraphrase``; the draw comes from torch's RNG, so a resumed run
        repeats it).
        """
        if train and self.paraphrase > 0:
            from tdseg_lite.reports import paraphrase

            seeds = torch.randint(0, 2**31 - 1, (len(descriptions),)).tolist()
            rolls = torch.rand(len(descriptions)).tolist()
            descriptions = [paraphrase(d, random.Random(seed)) if roll < self.paraphrase else d
                            for d, seed, roll in zip(descriptions, seeds, rolls)]
        return [case_prompt(self.phrases, d) for d in descriptions]

    @staticmethod
    def _clean(emb: TextEmbedding, device: torch.device | str) -> TextEmbedding:
        """Zero the padding tokens (MONAI's cross-attention has no key mask) and move to ``device``."""
        tokens = emb.tokens * emb.mask.unsqueeze(-1).to(emb.tokens.dtype)
        return TextEmbedding(tokens, emb.mask, emb.pooled, emb.input_ids).to(device)

    def null(self, batch: int, device: torch.device | str) -> TextEmbedding:
        """The null-prompt embedding repeated ``batch`` times."""
        if self._null is None:
            self._null = self._clean(self.encoder.null_embedding(1), "cpu")
        return self._null.to(device).map(lambda t: t.expand(batch, *t.shape[1:]).contiguous())

    def embed(self, text: Any, batch: int, device: torch.device | str) -> TextEmbedding:
        """Embedding for ``text``: ``None`` (label template only), a prompt, ``batch`` prompts, or a ``TextEmbedding``."""
        if isinstance(text, TextEmbedding):
            emb = text if len(text) == batch else text.expand(batch) if len(text) == 1 else None
            if emb is None:
                raise UserInputError(f"`text` must hold 1 or {batch} embeddings, got {len(text)}. "
                                     "Pass one prompt per image.")
            return self._clean(emb, device)
        if text is None:
            text = self.prompts([None])
        texts = [text] if isinstance(text, str) else list(text)
        if len(texts) == 1 and batch > 1:
            texts = texts * batch
        if len(texts) != batch:
            raise UserInputError(f"`text` must be one prompt or {batch} prompts, got {len(texts)}. "
                                 "Pass one prompt per image (or one for all).")
        return self._clean(self.encoder.encode(texts), device)

    def drop(self, emb: TextEmbedding, p: float, generator: torch.Generator | None = None) -> TextEmbedding:
        """Replace each row by the null prompt with probability ``p`` (classifier-free guidance training)."""
        if p <= 0:
            return emb
        keep = torch.rand(len(emb), generator=generator) >= p
        null = self.null(len(emb), emb.tokens.device)
        k = keep.to(emb.tokens.device)
        pick = lambda a, b: torch.where(k.view(-1, *([1] * (a.ndim - 1))), a, b)
        return TextEmbedding(*(pick(getattr(emb, f), getattr(null, f)) for f in TextEmbedding.FIELDS))


class Segmenter(nn.Module):
    """Common interface of all models: ``loss(batch)`` for training, ``predict(image, text)`` for inference."""

    num_classes: int
    text: TextConditioner | None = None
    #: the model reads the voxels' volume coordinates (``positions.py``) next to the image
    uses_coordinates: bool = False

    def device(self) -> torch.device:
        """Where the parameters live."""
        return next(self.parameters()).device

    def batch_prompts(self, batch: Mapping[str, Any], train: bool = False) -> list[str] | None:
        """The prompts of a collated batch (``batch['prompt']`` if given, else built from descriptions)."""
        if self.text is None:
            return None
        n = int(batch["image"].shape[0])
        if "prompt" in batch:
            return [batch["prompt"]] * n if isinstance(batch["prompt"], str) else list(batch["prompt"])
        return self.text.prompts(batch_descriptions(batch, n), train=train)

    def model_input(self, image: torch.Tensor, coords: torch.Tensor | None = None) -> torch.Tensor:
        """The network input: the image (B, 1, D, H, W), with ``uses_coordinates`` followed by the
        voxels' volume coordinates (B, 3, D, H, W) -> (B, 4, D, H, W).

        ``coords=None`` takes ``image`` as the whole volume (``positions.volume_coordinates``); a patch
        or a sliding window must pass the coordinates it was cut with (``batch["coords"]``).
        """
        if not self.uses_coordinates:
            return image
        if coords is None:
            coords = volume_coordinates(image.shape[2:], image.device, image.dtype)[None].expand(
                image.shape[0], -1, -1, -1, -1)
        coords = as_plain(coords).to(device=image.device, dtype=image.dtype)
        if coords.shape != (image.shape[0], 3, *image.shape[2:]):
            raise UserInputError(f"`coords` must be (B, 3, D, H, W) = {(image.shape[0], 3, *image.shape[2:])} like the "
                                 f"image, got {tuple(coords.shape)}. Pass the batch's 'coords' or None for a whole volume.")
        return torch.cat([image, coords], dim=1)

    def pretrain(self, label_volumes: Sequence[Any], *, max_seconds: float | None = None,
                 max_steps: int | None = None, seed: int = 0) -> dict[str, Any]:
        """Stage-1 training before ``loss`` (TextDiffSeg: the label autoencoder); a no-op here."""
        return {}

    def loss(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Training losses on a batch: ``{"loss": total, ...}`` (every entry a scalar tensor)."""
        raise NotImplementedError

    def predict(self, image: torch.Tensor, text: Any = None, *, steps: int | None = None, samples: int | None = None,
                guidance: float | None = None, eta: float | None = None, generator: torch.Generator | None = None,
                uncertainty: bool = False, coords: torch.Tensor | None = None,
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Class probabilities (B, N, D, H, W) for images (B, 1, D, H, W) [+ uncertainty (B, 1, D, H, W)];
        ``coords`` (B, 3, D, H, W): where the voxels lie in the whole volume (``model_input``)."""
        raise NotImplementedError

    @staticmethod
    def _check_image(image: Any) -> torch.Tensor:
        if not isinstance(image, torch.Tensor) or image.ndim != 5:
            got = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise UserInputError(f"`image` must be a (B, 1, D, H, W) tensor, got {got}. Add batch/channel axes.")
        return as_plain(image).float()


class DiffusionSegmenter(Segmenter):
    """Shared machinery of the diffusion models (subclasses define the space and the conditioning)."""

    def __init__(self, diffusion: DiffusionConfig, num_classes: int) -> None:
        super().__init__()
        self.dcfg, self.num_classes = diffusion, num_classes
        self.train_scheduler = make_scheduler(diffusion, "ddpm")
        self.sample_scheduler = make_scheduler(diffusion, "ddim")
        from monai.losses import DiceCELoss

        self.seg_loss = DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=diffusion.dice_weight,
                                   lambda_ce=diffusion.ce_weight)

    # --- what a subclass defines -------------------------------------------------------------
    def encode_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """Class indices (B, 1, D, H, W) -> the clean sample z^(0) of the diffusion."""
        raise NotImplementedError

    def decode(self, z: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        """A sample of the diffusion space (+ the image skip of ``image_features``) -> logits (B, N, D, H, W)."""
        raise NotImplementedError

    def image_features(self, image: torch.Tensor, coords: torch.Tensor | None = None) -> dict[str, Any]:
        """Image-only work, done once per image: a dict with at least ``"skip"`` (for ``decode``)."""
        raise NotImplementedError

    def condition(self, feats: dict[str, Any], emb: TextEmbedding | None) -> dict[str, Any]:
        """Everything the denoiser reads besides z^(t) and t, for one text embedding."""
        raise NotImplementedError

    def denoise(self, z_t: torch.Tensor, t: torch.Tensor, cond: dict[str, Any],
                x0_prev: torch.Tensor | None = None) -> torch.Tensor:
        """One denoiser call: (B, k, ...) -> ε̂, ẑ0 or v̂."""
        raise NotImplementedError

    def report_prior(self, feats: dict[str, Any], text: Any, image: torch.Tensor) -> torch.Tensor | None:
        """log P(lesion in this voxel's region | report), (B, 1, D, H, W), added to the lesion logit of the
        decoded prediction (``add_prior``); ``None`` (the default): the report sets no prior."""
        return None

    @staticmethod
    def add_prior(logits: torch.Tensor, prior: torch.Tensor | None) -> torch.Tensor:
        """Logits (B, N, D, H, W) with ``prior`` (B, 1, D, H, W) added to the last class (the lesion)."""
        return logits if prior is None else torch.cat([logits[:, :-1], logits[:, -1:] + prior], dim=1)

    # --- training ------------------------------------------------------------------------------
    def text_embedding(self, batch: Mapping[str, Any], size: int, train: bool) -> TextEmbedding | None:
        """The batch's prompt embeddings, with the guidance dropout while training."""
        if self.text is None:
            return None
        emb = self.text.embed(self.batch_prompts(batch, train=train), size, self.device())
        return self.text.drop(emb, self.dcfg.text_dropout) if train else emb

    def decode_subset(self, size: int) -> torch.Tensor:
        """Indices of the samples decoded for the pixel losses (``decode_fraction`` of the batch)."""
        n = max(1, round(size * self.dcfg.decode_fraction))
        return torch.arange(size) if n >= size else torch.randperm(size)[:n]

    def denoising_terms(self, z0: torch.Tensor, cond: dict[str, Any], labels: torch.Tensor,
                        skip: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Eq. 5 noising, the denoiser, MSE on the target and Dice + CE on the decoded ẑ0."""
        cfg, sched = self.dcfg, self.train_scheduler
        noise = torch.randn_like(z0)                                                  # 1. ε ~ N(0, I)
        t = sample_timesteps(z0.shape[0], cfg.num_train_timesteps, z0.device)         # 2. t ~ U{0, …, T−1}
        z_noisy = sched.add_noise(z0, noise, t)                                       # 3. z^(t), Eq. 5 (add_noise)
        x0_prev = None
        if getattr(self, "self_condition", False) and torch.rand(()) < 0.5:          # (optional self-conditioning)
            with torch.no_grad():
                x0_prev = predicted_x0(sched, self.denoise(z_noisy, t, cond), z_noisy, t, cfg.prediction_type)
        out = self.denoise(z_noisy, t, cond, x0_prev)                                 # 4. one denoiser call
        # 5. λ's term: MSE between the output and its target (ε, z0 or v)
        terms = {"mse": F.mse_loss(out, denoising_target(sched, z0, noise, t, cfg.prediction_type))}
        if cfg.dice_weight or cfg.ce_weight:
            idx = self.decode_subset(z0.shape[0]).to(z0.device)                       # 6. decode_fraction of the batch
            x0_hat = predicted_x0(sched, out, z_noisy, t, cfg.prediction_type)        # 7. ẑ0 from the output
            # 8. Dice + CE of the decoded ẑ0 against the labels
            logits = self.decode(x0_hat[idx], None if skip is None else skip[idx])
            prior = cond.get("prior")                                                 #    (+ the report's prior)
            terms["seg"] = self.seg_loss(self.add_prior(logits, None if prior is None else prior[idx]), labels[idx])
        return terms

    # --- sampling ------------------------------------------------------------------------------
    def guided_denoiser(self, cond: dict[str, Any] | None, uncond: dict[str, Any] | None, scale: float) -> Any:
        """``denoise(z, t, x0_prev)`` with classifier-free guidance (one batched call when 0 < w != 1)."""
        if uncond is None:
            return lambda z, t, x0: self.denoise(z, t, cond, x0)
        if cond is None:
            return lambda z, t, x0: self.denoise(z, t, uncond, x0)
        both = {k: _cat(cond[k], uncond[k]) for k in cond}

        def fn(z: torch.Tensor, t: torch.Tensor, x0: torch.Tensor | None) -> torch.Tensor:
            out = self.denoise(torch.cat([z, z]), torch.cat([t, t]), both, None if x0 is None else torch.cat([x0, x0]))
            c, u = out.chunk(2)
            return classifier_free_guidance(u, c, scale)

        return fn

    def sample_start(self, feats: dict[str, Any], cond: dict[str, Any]) -> torch.Tensor | None:
        """Latent to start sampling from (``start='aux'``), given the image and the condition; ``None`` = noise."""
        return None

    @torch.no_grad()
    def sample(self, image: torch.Tensor, text: Any = None, *, steps: int | None = None, guidance: float | None = None,
               eta: float | None = None, generator: torch.Generator | None = None, return_trajectory: bool = False,
               feats: dict[str, Any] | None = None, coords: torch.Tensor | None = None) -> Any:
        """One DDIM sample ẑ0 (and the per-step ẑ0 trajectory) for images (B, 1, D, H, W).

        ``feats`` reuses ``image_features(image, coords)`` (an ensemble computes them once).
        """
        image = self._check_image(image)
        cfg = self.dcfg
        steps = cfg.inference_steps if steps is None else steps
        scale = cfg.guidance_scale if guidance is None else float(guidance)
        feats = self.image_features(image, coords) if feats is None else feats      # 1. image features, once
        cond = uncond = None
        if self.text is None:
            cond = self.condition(feats, None)
        else:                                                                       # 2. the condition with the
            if scale != 0:                                                          #    prompt (w ≠ 0) and with the
                cond = self.condition(feats, self.text.embed(text, image.shape[0], image.device))
            if scale != 1:                                                          #    null prompt (w ≠ 1)
                uncond = self.condition(feats, self.text.null(image.shape[0], image.device))
        shape = self.latent_shape(image)
        noise = torch.randn(shape, generator=generator, device="cpu").to(image.device)  # 3. ε, drawn on the CPU
        start = self.sample_start(feats, cond if cond is not None else uncond)       # 4. None, or ẑ_aux (start='aux')
        return ddim_sample(self.guided_denoiser(cond, uncond, scale), noise, self.sample_scheduler, steps,  # 5. DDIM
                           cfg.eta if eta is None else eta, generator, start=start,
                           start_timestep=cfg.start_timestep if start is not None else None,
                           return_trajectory=return_trajectory)

    def latent_shape(self, image: torch.Tensor) -> tuple[int, ...]:
        """Shape of z for ``image``."""
        raise NotImplementedError

    @torch.no_grad()
    def predict(self, image: torch.Tensor, text: Any = None, *, steps: int | None = None, samples: int | None = None,
                guidance: float | None = None, eta: float | None = None, generator: torch.Generator | None = None,
                uncertainty: bool = False, coords: torch.Tensor | None = None,
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Mean class probabilities of S DDIM samples [+ voxel-wise uncertainty] (``ensemble_statistics``).

        With ``dcfg.aux_blend`` = w_a > 0 the result is (1 − w_a)·(mean of the samples) + w_a·(the aux
        head's probabilities), and an entropy uncertainty is that of the blend.
        """
        image = self._check_image(image)
        samples = self.dcfg.samples if samples is None else samples
        if samples < 1:
            raise UserInputError(f"`samples` must be >= 1, got {samples}. Use 1, or e.g. 5 for an uncertainty map.")
        feats, probs = self.image_features(image, coords), []
        prior = self.report_prior(feats, text, image)
        for _ in range(samples):
            z = self.sample(image, text, steps=steps, guidance=guidance, eta=eta, generator=generator, feats=feats)
            probs.append(self.add_prior(self.decode(z, feats["skip"]), prior).softmax(dim=1))
        mean, unc = ensemble_statistics(torch.stack(probs), self.dcfg.uncertainty)
        blend = self.dcfg.aux_blend
        if blend > 0:
            mean = (1.0 - blend) * mean + blend * self.aux_probabilities(feats, text, image)
            if self.dcfg.uncertainty == "entropy":
                unc = entropy(mean)
        return (mean, unc) if uncertainty else mean

    def aux_probabilities(self, feats: dict[str, Any], text: Any, image: torch.Tensor) -> torch.Tensor:
        """The aux head's class probabilities softmax(D(ẑ_aux)) (B, N, D, H, W) from ``image_features``."""
        raise UserInputError(f"`DiffusionConfig.aux_blend` needs a model with an aux head, got a {type(self).__name__}. "
                             "Set diffusion.aux_blend=0.")


def _cat(a: Any, b: Any) -> Any:
    """Concatenate a conditioning entry of the conditional and unconditional branch along the batch."""
    if a is None:
        return None
    if isinstance(a, torch.Tensor):
        return torch.cat([a, b])
    if isinstance(a, (list, tuple)):
        return type(a)(_cat(x, y) for x, y in zip(a, b))
    return a
