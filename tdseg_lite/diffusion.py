"""Diffusion on the label latent: schedules, training targets, the sampling loop, guidance, ensembles.

Forward process (paper item 5; ``docs/design.md`` §2), with ᾱ_t = ∏_{s≤t} (1 − β_s) from a MONAI scheduler::

    z^(t) = sqrt(ᾱ_t) z^(0) + sqrt(1 − ᾱ_t) ε,   ε ~ N(0, I)                      (Eq. 5)

The denoiser predicts one of (``prediction_type``) ε, z^(0) ("sample") or v = sqrt(ᾱ_t) ε −
sqrt(1 − ᾱ_t) z^(0); each gives the clean estimate ẑ0 in closed form (``predicted_x0``). The
joint loss (``docs/design.md`` §5; as in LDSeg) decodes ẑ0 and adds Dice + CE to λ·MSE(output, target).

Sampling is an explicit DDIM loop (``ddim_sample``) over ``ddim_step`` (M steps, η), which
steps to the next *listed* timestep (MONAI 1.6's ``DDIMScheduler.step`` does not: see
``ddim_step``); ``classifier_free_guidance`` mixes the text-conditional and the unconditional
output, out = out_uncond + w (out_cond − out_uncond) (w = 1: conditional model, w = 0:
unconditional); ``ensemble_statistics`` turns S sampled probability maps into their mean and a
voxel-wise uncertainty (entropy of the mean, or the variance across samples).

``clip_sample=False`` always: MONAI's default clips ẑ0 to [−1, 1], which destroys unit-variance
latents (measured: Dice 0.01–0.03 instead of ~0.4 after the same training).

Explained in notebooks/03_conditional_unet_and_diffusion.ipynb
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch

from tdseg_lite.errors import UserInputError, require

__all__ = [
    "DiffusionConfig",
    "classifier_free_guidance",
    "ddim_sample",
    "ddim_step",
    "denoising_target",
    "ensemble_statistics",
    "entropy",
    "make_scheduler",
    "predicted_x0",
    "sample_timesteps",
    "sampling_timesteps",
]

PredictionType = Literal["epsilon", "sample", "v_prediction"]
DenoiseFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


@dataclass(frozen=True)
class DiffusionConfig:
    """Noise schedule, joint-loss weights, guidance and sampling (presets in ``PRESETS``)."""

    # cpu: one sample; on the phantom an ensemble of 4 measured no better in Dice nor uncertainty at 3x the time
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {"smoke": {"samples": 1}, "cpu": {"samples": 1},
                                                    "full": {"inference_steps": 5}}
    num_train_timesteps: int = 1000        # T
    schedule: Literal["linear_beta", "scaled_linear_beta", "cosine"] = "scaled_linear_beta"  # β_t schedule (MONAI name)
    beta_start: float = 0.0015             # β_1 (linear schedules)
    beta_end: float = 0.0195               # β_T (linear schedules)
    prediction_type: PredictionType = "sample"  # what the denoiser outputs: ε | z^(0) | v
    inference_steps: int = 2               # M DDIM steps at sampling (x0-prediction needs few; more trade organ for tumour Dice)
    eta: float = 0.0                       # DDIM η (0: deterministic given the start noise)
    dice_weight: float = 1.0               # Dice on the decoded ẑ0
    ce_weight: float = 1.0                 # cross-entropy on the decoded ẑ0
    mse_weight: float = 1.0                # λ: MSE(output, target) in the latent
    # --- beyond the paper: guidance, ensembles, the aux-head start and loss terms ---
    start: Literal["noise", "aux"] = "noise"  # sampling starts from N(0, I) at T-1, or from the aux latent noised to start_timestep
    start_timestep: int = 500              # first timestep when start == "aux"
    guidance_scale: float = 1.0            # w of classifier-free guidance (1: conditional, 0: unconditional)
    text_dropout: float = 0.1              # p: share of training samples whose text is replaced by the null prompt
    samples: int = 4                       # S samples per prediction, averaged as probabilities (ensemble)
    uncertainty: Literal["entropy", "variance"] = "entropy"  # voxel-wise uncertainty of the ensemble
    aux_blend: float = 0.0                 # w_a: prediction = (1 − w_a)·mean of the samples + w_a·softmax(D(ẑ_aux))
    aux_weight: float = 1.0                # Dice + CE of the image encoder's aux head (decoded)
    aux_latent_weight: float = 1.0         # MSE(aux latent, z^(0))
    decode_fraction: float = 0.5           # share of the batch decoded for the pixel losses (throughput)

    def __post_init__(self) -> None:
        require(self.num_train_timesteps >= 2, "DiffusionConfig.num_train_timesteps", "must be >= 2",
                self.num_train_timesteps, "Use 1000.")
        require(1 <= self.inference_steps <= self.num_train_timesteps, "DiffusionConfig.inference_steps",
                f"must be in [1, num_train_timesteps={self.num_train_timesteps}]", self.inference_steps, "Use e.g. 10.")
        require(0 <= self.start_timestep < self.num_train_timesteps, "DiffusionConfig.start_timestep",
                f"must be in [0, {self.num_train_timesteps})", self.start_timestep, "Use e.g. 500.")
        require(0.0 < self.beta_start < self.beta_end < 1.0, "DiffusionConfig.beta_start",
                "must satisfy 0 < beta_start < beta_end < 1", (self.beta_start, self.beta_end),
                "Use beta_start=0.0015, beta_end=0.0195.")
        for name in ("eta", "dice_weight", "ce_weight", "mse_weight", "aux_weight", "aux_latent_weight"):
            require(getattr(self, name) >= 0, f"DiffusionConfig.{name}", "must be >= 0",
                    getattr(self, name), "Use 0 to switch the term off.")
        require(0.0 <= self.text_dropout < 1.0, "DiffusionConfig.text_dropout", "must be in [0, 1)",
                self.text_dropout, "Use e.g. 0.1 (0: no guidance training).")
        require(0.0 < self.decode_fraction <= 1.0, "DiffusionConfig.decode_fraction", "must be in (0, 1]",
                self.decode_fraction, "Use 1.0 or e.g. 0.5.")
        require(self.samples >= 1, "DiffusionConfig.samples", "must be >= 1",
                self.samples, "Use 1, or e.g. 5 for an uncertainty map.")
        require(0.0 <= self.aux_blend <= 1.0, "DiffusionConfig.aux_blend", "must be in [0, 1]", self.aux_blend,
                "Use 0 (the samples alone) or e.g. 0.5.")


def make_scheduler(cfg: DiffusionConfig, kind: Literal["ddpm", "ddim"] = "ddim") -> Any:
    """A MONAI ``DDPMScheduler`` or ``DDIMScheduler`` for ``cfg`` with ``clip_sample=False``.

    Both hold the same ᾱ_t; training uses ``add_noise`` (Eq. 5), sampling the DDIM scheduler's list of
    timesteps and ᾱ table through ``ddim_step`` (not ``DDIMScheduler.step``, see there).
    """
    from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

    kwargs: dict[str, Any] = {"num_train_timesteps": cfg.num_train_timesteps, "schedule": cfg.schedule,
                              "prediction_type": cfg.prediction_type, "clip_sample": False}
    if cfg.schedule != "cosine":
        kwargs.update(beta_start=cfg.beta_start, beta_end=cfg.beta_end)
    if kind == "ddpm":
        return DDPMScheduler(**kwargs)
    if kind == "ddim":
        return DDIMScheduler(**kwargs)
    raise UserInputError(f"`kind` must be 'ddpm' or 'ddim', got {kind!r}. Use 'ddim' for sampling.")


def sample_timesteps(batch: int, num_train_timesteps: int, device: torch.device | str = "cpu",
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """t ~ U{0, ..., T−1} for each sample: (B,) int64."""
    return torch.randint(0, num_train_timesteps, (batch,), device=device, generator=generator)


def _alpha_bar(scheduler: Any, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """ᾱ_t broadcast to ``like``: (B,) -> (B, 1, 1, 1, 1)."""
    a = scheduler.alphas_cumprod.to(device=like.device, dtype=like.dtype)[t.to(like.device)]
    return a.view(-1, *([1] * (like.ndim - 1)))


def denoising_target(scheduler: Any, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                     prediction_type: PredictionType) -> torch.Tensor:
    """What the denoiser must output: ε, x0 or v = sqrt(ᾱ_t) ε − sqrt(1 − ᾱ_t) x0. Shapes (B, k, d, h, w)."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "sample":
        return x0
    if prediction_type == "v_prediction":
        return scheduler.get_velocity(x0, noise, t)
    raise UserInputError(f"`prediction_type` must be 'epsilon', 'sample' or 'v_prediction', got {prediction_type!r}. "
                         "Use 'sample' (x0) for few-step sampling.")


def predicted_x0(scheduler: Any, output: torch.Tensor, z_t: torch.Tensor, t: torch.Tensor,
                 prediction_type: PredictionType) -> torch.Tensor:
    """ẑ0 from the model output, differentiable and per-sample t (inverts Eq. 5).

    * ε:  ẑ0 = (z_t − sqrt(1 − ᾱ_t) ε̂) / sqrt(ᾱ_t)
    * x0: ẑ0 = output
    * v:  ẑ0 = sqrt(ᾱ_t) z_t − sqrt(1 − ᾱ_t) v̂

    Args:
        scheduler: a MONAI scheduler (for ᾱ_t).
        output: (B, k, d, h, w) denoiser output.
        z_t: (B, k, d, h, w) the noisy input z^(t) (a diffusion time, not the text).
        t: (B,) timesteps.
        prediction_type: what ``output`` is.
    """
    a = _alpha_bar(scheduler, t, z_t)
    if prediction_type == "epsilon":
        return (z_t - (1 - a).sqrt() * output) / a.sqrt()
    if prediction_type == "sample":
        return output
    if prediction_type == "v_prediction":
        return a.sqrt() * z_t - (1 - a).sqrt() * output
    return denoising_target(scheduler, z_t, z_t, t, prediction_type)  # raises the one-line error


def classifier_free_guidance(uncond: torch.Tensor, cond: torch.Tensor, scale: float) -> torch.Tensor:
    """out = out_uncond + w (out_cond − out_uncond) (Ho & Salimans 2022); exact at w = 0 and w = 1."""
    if scale == 0:
        return uncond
    if scale == 1:
        return cond
    return uncond + scale * (cond - uncond)


def sampling_timesteps(scheduler: Any, steps: int, start_timestep: int | None = None) -> list[int]:
    """The M DDIM timesteps, descending: MONAI's list ``round(linspace(T−1, 0, M))``, cut to ``<= start_timestep``.

    Args:
        scheduler: a ``DDIMScheduler`` (``set_timesteps(M)`` is called on it).
        steps: M.
        start_timestep: drop the timesteps above it (the aux start); ``None`` keeps all.

    Returns:
        ``[t_1 > t_2 > … > t_m]`` as Python ints (m = M without a start).
    """
    scheduler.set_timesteps(steps)
    timesteps = [int(t) for t in scheduler.timesteps]
    return timesteps if start_timestep is None else [t for t in timesteps if t <= start_timestep]


def ddim_step(scheduler: Any, output: torch.Tensor, t: int, t_next: int, z_t: torch.Tensor, eta: float = 0.0,
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One DDIM update from timestep ``t`` to the next *listed* timestep ``t_next`` (−1: the clean end).

    DDIM (Song et al. 2021, Eq. 12 and 16), with ᾱ read from ``scheduler.alphas_cumprod`` and
    ᾱ_{−1} = 1::

        ẑ0   = predicted_x0(output)                   ε̂ = (z_t − sqrt(ᾱ_t) ẑ0) / sqrt(1 − ᾱ_t)
        σ    = η · sqrt((1 − ᾱ_next) / (1 − ᾱ_t) · (1 − ᾱ_t / ᾱ_next))
        z_next = sqrt(ᾱ_next) ẑ0 + sqrt(1 − ᾱ_next − σ²) ε̂ + σ ξ,   ξ ~ N(0, I)

    Why not ``DDIMScheduler.step``: MONAI 1.6 lists the timesteps as ``round(linspace(T−1, 0, M))``
    but its ``step`` moves to ``t − T // M``, which is not the next listed timestep (M = 2 lists
    [999, 0], yet the first step lands on the noise level of t = 499 and the second call is told
    t = 0). Here the update goes exactly to ``t_next``, so z stays on the schedule the denoiser
    is called with. For eps/v outputs ε̂ is the closed form of the prediction; every formula is the
    same as MONAI's otherwise (``tests/test_diffusion.py`` checks both).

    Args:
        scheduler: a MONAI DDIM/DDPM scheduler (``alphas_cumprod``, ``prediction_type``).
        output: (B, k, d, h, w) denoiser output at ``t``.
        t: the current timestep.
        t_next: the next listed timestep (< t), or −1 for the last step.
        z_t: (B, k, d, h, w) the current noisy latent z^(t) (a diffusion time, not the text).
        eta: η (0: deterministic).
        generator: RNG for ξ when η > 0 (drawn on the CPU, like MONAI).

    Returns:
        ``(z_next, ẑ0)``, both (B, k, d, h, w).
    """
    if not -1 <= t_next < t:
        raise UserInputError(f"`t_next` must be in [-1, t={t}), got {t_next}. Pass the next listed timestep "
                             "(sampling_timesteps) or -1 for the last step.")
    table = scheduler.alphas_cumprod.to(device=z_t.device, dtype=z_t.dtype)
    a_t = table[t]
    a_next = table[t_next] if t_next >= 0 else torch.ones((), device=z_t.device, dtype=z_t.dtype)
    t_batch = torch.full((z_t.shape[0],), t, dtype=torch.long, device=z_t.device)
    x0 = predicted_x0(scheduler, output, z_t, t_batch, scheduler.prediction_type)
    eps = output if scheduler.prediction_type == "epsilon" else (z_t - a_t.sqrt() * x0) / (1 - a_t).sqrt()
    sigma = eta * ((1 - a_next) / (1 - a_t) * (1 - a_t / a_next)).sqrt()
    z_next = a_next.sqrt() * x0 + (1 - a_next - sigma**2).clamp_min(0).sqrt() * eps
    if eta > 0:
        xi = torch.randn(output.shape, dtype=output.dtype, generator=generator, device="cpu").to(output.device)
        z_next = z_next + sigma * xi
    return z_next, x0


@torch.no_grad()
def ddim_sample(denoise: DenoiseFn, noise: torch.Tensor, scheduler: Any, steps: int, eta: float = 0.0,
                generator: torch.Generator | None = None, start: torch.Tensor | None = None,
                start_timestep: int | None = None, return_trajectory: bool = False,
                ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
    """The reverse process written out: M DDIM steps from z^(T) (or a noised start) to ẑ0.

    Over the listed timesteps t_1 > … > t_m (``sampling_timesteps``)::

        z = noise                                 # or: z = add_noise(start, noise, t_1)  (SDEdit start)
        for i, t in enumerate(timesteps):
            out = denoise(z, t, ẑ0_prev)          # 1. one denoiser call (guidance inside ``denoise``)
            t_next = timesteps[i + 1] or −1       # 2. the next *listed* timestep
            z, ẑ0 = ddim_step(out, t → t_next)    # 3. DDIM Eq. 12 / 16 (``ddim_step``)
        return ẑ0

    Args:
        denoise: ``(z_t (B,k,...), t (B,), previous ẑ0 or None) -> output``, guidance included.
        noise: (B, k, d, h, w) ε of the start (pure noise when ``start`` is None).
        scheduler: a ``DDIMScheduler`` (its ``prediction_type`` must match the model).
        steps: M, DDIM steps over the full schedule.
        eta: η; > 0 adds fresh noise drawn from ``generator``.
        generator: RNG for the η noise.
        start: optional (B, k, d, h, w) latent (e.g. the aux head's) noised to the first listed
            timestep <= ``start_timestep`` by Eq. 5; only those steps run.
        start_timestep: see ``start``.
        return_trajectory: also return ẑ0 after every step.

    Returns:
        ẑ0 (B, k, d, h, w) [and the list of per-step ẑ0].
    """
    if not 1 <= steps <= scheduler.num_train_timesteps:
        raise UserInputError(f"`steps` must be in [1, {scheduler.num_train_timesteps}], got {steps}. Use e.g. 10.")
    timesteps = sampling_timesteps(scheduler, steps, start_timestep if start is not None else None)
    if start is not None and timesteps:
        t0 = torch.full((start.shape[0],), timesteps[0], dtype=torch.long, device=start.device)
        z = scheduler.add_noise(start, noise, t0)
    else:
        z = start if start is not None else noise
    x0, trajectory = None, []
    for i, t in enumerate(timesteps):
        out = denoise(z, torch.full((z.shape[0],), t, dtype=torch.long, device=z.device), x0)  # 1.
        t_next = timesteps[i + 1] if i + 1 < len(timesteps) else -1                              # 2.
        z, x0 = ddim_step(scheduler, out, t, t_next, z, eta, generator)                           # 3.
        trajectory.append(x0)
    result = x0 if x0 is not None else z
    return (result, trajectory) if return_trajectory else result


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Voxel-wise entropy −Σ_c p_c log p_c of class probabilities: (B, N, ...) -> (B, 1, ...) (nats, >= 0)."""
    return -(probs * probs.clamp_min(1e-12).log()).sum(dim=1, keepdim=True)


def ensemble_statistics(probabilities: torch.Tensor, kind: Literal["entropy", "variance"] = "entropy",
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean prediction and voxel-wise uncertainty of S samples.

    Args:
        probabilities: (S, B, N, D, H, W) softmax probabilities of S samples.
        kind: ``"entropy"``: H(p̄) = −Σ_c p̄_c log p̄_c of the mean (nats, 0 … log N);
            ``"variance"``: the across-sample variance, averaged over classes.

    Returns:
        (B, N, D, H, W) mean probabilities and (B, 1, D, H, W) uncertainty (>= 0).
    """
    if probabilities.ndim < 4:
        raise UserInputError(f"`probabilities` must be (S, B, N, ...) samples, got {tuple(probabilities.shape)}. "
                             "Stack the per-sample softmax maps along a new first axis.")
    mean = probabilities.mean(dim=0)
    if kind == "entropy":
        unc = entropy(mean)
    elif kind == "variance":
        unc = probabilities.var(dim=0, unbiased=False).mean(dim=1, keepdim=True)
    else:
        raise UserInputError(f"`kind` must be 'entropy' or 'variance', got {kind!r}. Use 'entropy'.")
    return mean, unc.clamp_min(0.0)
