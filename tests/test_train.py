"""The training loop and whole-volume inference/metrics, with the tiny models of test_model."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from test_model import fixed_batch, make, one_thread  # noqa: F401 - tests/ is on sys.path; fixture
from torch import nn

from tdseg_lite.checkpoint import (
    load_checkpoint,
    save_checkpoint,
)
from tdseg_lite.config import ConfigError
from tdseg_lite.train import NonFiniteLossError, TrainConfig, Trainer, amp_setup, fit, learning_rate_at


def test_fit_respects_the_step_budget_and_logs() -> None:
    model = make("unet")
    history = fit(model, [fixed_batch()], TrainConfig(log_every=2, warmup_steps=1, device="cpu"), max_steps=4,
                  val_fn=lambda m: {"score": 1.0})
    assert history["steps"] == 4 and history["step"] == [1, 2, 4]
    assert {"loss", "seg", "lr"} <= set(history) and history["val"] == [{"step": 4, "score": 1.0}]
    assert not model.training


def test_fit_respects_the_time_budget() -> None:
    history = fit(make("unet"), [fixed_batch()], TrainConfig(device="cpu"), max_seconds=0.0)
    assert history["steps"] == 0


def test_training_step_skips_frozen_parameters() -> None:
    model = make()
    trainer = Trainer(model, TrainConfig(device="cpu"))
    frozen = {id(p) for p in model.label_ae.parameters()}
    assert not any(id(p) in frozen for g in trainer.optimizer.param_groups for p in g["params"])
    before = [p.clone() for p in model.label_ae.parameters()]
    out = trainer.train_step(iter([fixed_batch()]))
    assert math.isfinite(out["loss"])
    assert all(torch.equal(a, b) for a, b in zip(before, model.label_ae.parameters()))


def test_learning_rate_schedule() -> None:
    cfg = TrainConfig(learning_rate=1.0, warmup_steps=10)
    assert learning_rate_at(cfg, 0, 0.0) == pytest.approx(0.1)
    assert learning_rate_at(cfg, 50, 0.5) == pytest.approx(0.5)
    assert learning_rate_at(cfg, 99, 1.0) == pytest.approx(0.0)
    assert learning_rate_at(TrainConfig(learning_rate=1.0, schedule="constant", warmup_steps=0), 5, 0.9) == 1.0


def test_train_config_errors() -> None:
    with pytest.raises(ConfigError, match="learning_rate"):
        TrainConfig(learning_rate=0.0)
    with pytest.raises(ConfigError, match="max_steps"):
        TrainConfig(max_steps=0)


class Quadratic(nn.Module):
    """A model with the Segmenter training interface: loss = mean((x·w − y)²)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))

    def loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        err = ((batch["x"] * self.w).sum(-1) - batch["y"]).pow(2).mean()
        return {"loss": err, "mse": err.detach()}


def batch(seed: int, n: int = 4, nan: bool = False) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g)
    return {"x": x * (float("nan") if nan else 1.0), "y": torch.randn(n, generator=g)}


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    trainer = Trainer(Quadratic(), TrainConfig(device="cpu", checkpoint_every=1, max_steps=10))
    batches = iter([batch(0), batch(1), batch(2, nan=True), batch(3)])
    saved = tmp_path / "last.pt"
    with pytest.raises(NonFiniteLossError, match="non-finite at step 3.*last checkpoint is intact"):
        trainer.run(batches, on_checkpoint=lambda t: save_checkpoint(saved, t.state_dict()))
    assert load_checkpoint(saved)["step"] == 2


def test_gradient_accumulation_equals_one_big_batch() -> None:
    big, halves = batch(0, n=8), [batch(0, n=8)]
    halves = [{k: v[:4] for k, v in big.items()}, {k: v[4:] for k, v in big.items()}]
    cfg = TrainConfig(device="cpu", warmup_steps=0, grad_clip=0.0, schedule="constant")
    one = Trainer(Quadratic(), cfg)
    one.train_step(iter([big]))
    two = Trainer(Quadratic(), TrainConfig(device="cpu", warmup_steps=0, grad_clip=0.0, schedule="constant",
                                           accumulation_steps=2))
    two.train_step(iter(halves))
    torch.testing.assert_close(one.model.w, two.model.w)
    assert two.batches == 2 and two.step == 1


def test_amp_settings_and_a_bf16_step_on_cpu() -> None:
    cpu = torch.device("cpu")
    assert amp_setup("auto", cpu) == (None, None) and amp_setup("off", cpu) == (None, None)
    assert amp_setup("bf16", cpu)[0] is torch.bfloat16
    with pytest.raises(ConfigError, match="needs a CUDA device"):
        amp_setup("fp16", cpu)
    trainer = Trainer(Quadratic(), TrainConfig(device="cpu", amp="bf16"))
    losses = trainer.train_step(iter([batch(0)]))
    assert torch.isfinite(torch.tensor(losses["loss"])) and trainer.step == 1


def test_compiled_training_step_matches_eager() -> None:
    cfg = {"device": "cpu", "warmup_steps": 0, "schedule": "constant"}
    eager, compiled = Trainer(Quadratic(), TrainConfig(**cfg)), Trainer(Quadratic(), TrainConfig(**cfg, compile=True))
    for i in range(2):
        a, b = eager.train_step(iter([batch(i)])), compiled.train_step(iter([batch(i)]))
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    torch.testing.assert_close(eager.model.w, compiled.model.w)
    assert compiled.net is not compiled.ddp and type(compiled.net).__name__ == "OptimizedModule"
