"""Schedules, targets, the DDIM loop, guidance and ensembles (no networks: analytic denoisers)."""

from __future__ import annotations

import pytest
import torch

from tdseg_lite.config import ConfigError
from tdseg_lite.diffusion import (
    DiffusionConfig,
    classifier_free_guidance,
    ddim_sample,
    denoising_target,
    ensemble_statistics,
    make_scheduler,
    predicted_x0,
)
from tdseg_lite.errors import UserInputError

PREDICTIONS = ("epsilon", "sample", "v_prediction")

@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one thread avoids OpenMP barrier stalls on a busy 2-core machine (10-100x)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)



@pytest.mark.parametrize("schedule", ["linear_beta", "scaled_linear_beta", "cosine"])
def test_alpha_bar_decreases_from_near_one(schedule: str) -> None:
    sched = make_scheduler(DiffusionConfig(schedule=schedule), "ddpm")
    a = sched.alphas_cumprod
    assert not sched.clip_sample
    assert bool((a[1:] < a[:-1]).all()) and 0.99 < float(a[0]) <= 1.0 and float(a[-1]) < 0.01


def test_add_noise_is_the_closed_form() -> None:
    sched = make_scheduler(DiffusionConfig(), "ddpm")
    x0, eps, t = torch.randn(3, 2, 4, 4, 4), torch.randn(3, 2, 4, 4, 4), torch.tensor([0, 499, 999])
    a = sched.alphas_cumprod[t].view(-1, 1, 1, 1, 1)
    torch.testing.assert_close(sched.add_noise(x0, eps, t), a.sqrt() * x0 + (1 - a).sqrt() * eps)


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_predicted_x0_inverts_the_target(prediction: str) -> None:
    sched = make_scheduler(DiffusionConfig(prediction_type=prediction), "ddpm")
    x0, eps, t = torch.randn(3, 2, 4, 4, 4), torch.randn(3, 2, 4, 4, 4), torch.tensor([5, 300, 800])
    z_t = sched.add_noise(x0, eps, t)
    target = denoising_target(sched, x0, eps, t, prediction)
    torch.testing.assert_close(predicted_x0(sched, target, z_t, t, prediction), x0, atol=2e-4, rtol=1e-4)


def _perfect(sched, x0: torch.Tensor, prediction: str):
    """The denoiser that knows x0: returns the exact target for any z_t."""
    def fn(z_t: torch.Tensor, t: torch.Tensor, _prev: torch.Tensor | None) -> torch.Tensor:
        a = sched.alphas_cumprod[t].view(-1, 1, 1, 1, 1)
        eps = (z_t - a.sqrt() * x0) / (1 - a).sqrt()
        return denoising_target(sched, x0, eps, t, prediction)
    return fn


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_ddim_eta0_with_a_perfect_predictor_recovers_x0(prediction: str) -> None:
    cfg = DiffusionConfig(prediction_type=prediction)
    sched = make_scheduler(cfg, "ddim")
    x0 = torch.randn(2, 3, 4, 4, 4)
    out, traj = ddim_sample(_perfect(sched, x0, prediction), torch.randn_like(x0), sched, steps=5, eta=0.0,
                            return_trajectory=True)
    assert len(traj) == 5
    torch.testing.assert_close(out, x0, atol=1e-3, rtol=1e-3)


def test_start_from_a_latent_runs_only_the_late_steps() -> None:
    sched = make_scheduler(DiffusionConfig(prediction_type="sample"), "ddim")
    x0 = torch.randn(1, 2, 4, 4, 4)
    out, traj = ddim_sample(_perfect(sched, x0, "sample"), torch.randn_like(x0), sched, steps=10, start=x0 + 0.1,
                            start_timestep=500, return_trajectory=True)
    assert len(traj) == int((sched.timesteps <= 500).sum()) < 10
    torch.testing.assert_close(out, x0)


def test_seeded_sampling_with_eta_is_deterministic() -> None:
    sched = make_scheduler(DiffusionConfig(prediction_type="sample"), "ddim")
    fn = lambda z, t, _p: 0.5 * z
    runs = [ddim_sample(fn, torch.randn(1, 2, 4, 4, 4, generator=torch.Generator().manual_seed(3)), sched, 4, eta=1.0,
                        generator=torch.Generator().manual_seed(7)) for _ in range(2)]
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)


def test_guidance_is_exact_at_zero_and_one_and_linear_between() -> None:
    u, c = torch.randn(2, 3), torch.randn(2, 3)
    assert classifier_free_guidance(u, c, 0.0) is u and classifier_free_guidance(u, c, 1.0) is c
    torch.testing.assert_close(classifier_free_guidance(u, c, 3.0), u + 3.0 * (c - u))


@pytest.mark.parametrize("kind", ["entropy", "variance"])
def test_ensemble_statistics(kind: str) -> None:
    probs = torch.rand(4, 2, 3, 5, 5, 5).softmax(dim=2)
    mean, unc = ensemble_statistics(probs, kind)
    assert mean.shape == (2, 3, 5, 5, 5) and unc.shape == (2, 1, 5, 5, 5) and bool((unc >= 0).all())
    onehot = torch.zeros(3, 1, 2, 2, 2, 2)
    onehot[:, :, 0] = 1
    assert float(ensemble_statistics(onehot, kind)[1].max()) == 0.0


@pytest.mark.parametrize(("overrides", "match"), [
    ({"inference_steps": 0}, "inference_steps"),
    ({"text_dropout": 1.0}, "text_dropout"),
    ({"decode_fraction": 0.0}, "decode_fraction"),
    ({"beta_start": 0.1, "beta_end": 0.01}, "beta_start"),
    ({"start_timestep": 1000}, "start_timestep"),
    ({"mse_weight": -1.0}, "mse_weight"),
    ({"samples": 0}, "samples"),
])
def test_config_errors(overrides: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        DiffusionConfig(**overrides)


def test_call_errors() -> None:
    sched = make_scheduler(DiffusionConfig(), "ddim")
    with pytest.raises(UserInputError, match="`kind`"):
        make_scheduler(DiffusionConfig(), "pndm")  # type: ignore[arg-type]
    with pytest.raises(UserInputError, match="`steps`"):
        ddim_sample(lambda z, t, p: z, torch.randn(1, 1, 2, 2, 2), sched, steps=0)
    with pytest.raises(UserInputError, match="`probabilities`"):
        ensemble_statistics(torch.rand(3, 4))
    with pytest.raises(UserInputError, match="prediction_type"):
        denoising_target(sched, torch.zeros(1), torch.zeros(1), torch.zeros(1, dtype=torch.long), "x1")  # type: ignore[arg-type]
