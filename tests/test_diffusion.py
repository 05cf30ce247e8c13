"""Schedules, targets, the DDIM loop, guidance and ensembles (no networks: analytic denoisers)."""

from __future__ import annotations

import pytest
import torch

from tdseg_lite.config import ConfigError
from tdseg_lite.diffusion import (
    DiffusionConfig,
    classifier_free_guidance,
    ddim_sample,
    ddim_step,
    denoising_target,
    ensemble_statistics,
    make_scheduler,
    predicted_x0,
    sampling_timesteps,
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


def _on_schedule_after_each_step(sched, steps: int, prediction: str, step_fn) -> list[float]:
    """Run DDIM with a perfect denoiser and a known ε; return the error of z after each step against
    sqrt(ᾱ_next) x0 + sqrt(1 − ᾱ_next) ε at the next *listed* timestep (ᾱ = 1 after the last)."""
    x0, eps = torch.randn(2, 3, 4, 4, 4), torch.randn(2, 3, 4, 4, 4)
    timesteps = sampling_timesteps(sched, steps)
    a = sched.alphas_cumprod
    z = a[timesteps[0]].sqrt() * x0 + (1 - a[timesteps[0]]).sqrt() * eps
    errors = []
    for i, t in enumerate(timesteps):
        out = _perfect(sched, x0, prediction)(z, torch.full((2,), t), None)
        t_next = timesteps[i + 1] if i + 1 < len(timesteps) else -1
        z = step_fn(out, t, t_next, z)
        a_next = a[t_next] if t_next >= 0 else torch.tensor(1.0)
        errors.append(float((z - (a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps)).abs().max()))
    return errors


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("steps", [1, 2, 3, 5, 7, 10, 50])
def test_ddim_step_lands_on_the_next_listed_timestep(steps: int, prediction: str) -> None:
    sched = make_scheduler(DiffusionConfig(prediction_type=prediction), "ddim")
    errors = _on_schedule_after_each_step(sched, steps, prediction,
                                          lambda out, t, t_next, z: ddim_step(sched, out, t, t_next, z)[0])
    assert len(errors) == steps and max(errors) < 2e-3, errors


@pytest.mark.parametrize("steps", [2, 3, 5, 7, 10])
def test_monai_step_misses_the_listed_timesteps(steps: int) -> None:
    """Documents the MONAI 1.6 bug that ``ddim_step`` fixes: its ``step`` moves to t − T // k, off the list
    (k = 1 and 50 happen to agree: T // k matches the list's spacing there)."""
    sched = make_scheduler(DiffusionConfig(prediction_type="sample"), "ddim")
    errors = _on_schedule_after_each_step(sched, steps, "sample",
                                          lambda out, t, t_next, z: sched.step(out, t, z)[0])
    assert max(errors) > 0.05, errors


def test_ddim_step_matches_monai_where_monai_steps_right() -> None:
    """Same formulas as ``DDIMScheduler.step`` (η > 0 included) when t_next = t − T // k."""
    for prediction in PREDICTIONS:
        sched = make_scheduler(DiffusionConfig(prediction_type=prediction), "ddim")
        sched.set_timesteps(10)
        for t in (999, 500, 150):
            out, z = torch.randn(1, 2, 4, 4, 4), torch.randn(1, 2, 4, 4, 4)
            ours = ddim_step(sched, out, t, t - 100, z, eta=0.5, generator=torch.Generator().manual_seed(t))
            theirs = sched.step(out, t, z, eta=0.5, generator=torch.Generator().manual_seed(t))
            torch.testing.assert_close(ours[0], theirs[0], rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(ours[1], theirs[1], rtol=1e-4, atol=1e-4)


def test_sampler_calls_the_denoiser_at_the_listed_timesteps() -> None:
    sched = make_scheduler(DiffusionConfig(prediction_type="sample"), "ddim")
    seen: list[int] = []
    x0 = torch.randn(1, 2, 4, 4, 4)

    def fn(z: torch.Tensor, t: torch.Tensor, _p: torch.Tensor | None) -> torch.Tensor:
        seen.append(int(t[0]))
        return x0
    ddim_sample(fn, torch.randn_like(x0), sched, steps=2)
    assert seen == [999, 0]
    seen.clear()
    ddim_sample(fn, torch.randn_like(x0), sched, steps=10, start=x0, start_timestep=300)
    assert seen == [222, 111, 0]


def test_ddim_step_rejects_a_wrong_next_timestep() -> None:
    sched = make_scheduler(DiffusionConfig(), "ddim")
    with pytest.raises(UserInputError, match="t_next"):
        ddim_step(sched, torch.zeros(1, 1, 2, 2, 2), 100, 100, torch.zeros(1, 1, 2, 2, 2))


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
    ({"aux_blend": 1.5}, "aux_blend"),
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
