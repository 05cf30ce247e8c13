"""The training engine: exact resume after SIGKILL, DDP on 2 CPU processes, AMP, accumulation,
the NaN guard, atomic checkpoints, the resumable data order and `tdseg train` argument errors."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import write_msd_dataset
from torch import nn

from tdseg_lite.batches import ResumableSampler, SeededDataset, endless_batches
from tdseg_lite.checkpoint import (
    CheckpointError,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from tdseg_lite.cli import main
from tdseg_lite.config import ConfigError
from tdseg_lite.train import NonFiniteLossError, TrainConfig, Trainer, amp_setup

# every `tdseg train` in this file: tiny TextDiffSeg, 1 thread, a step-only budget
FAST = ["--preset", "smoke", "--device", "cpu", "--quiet", "--set", "label_ae.max_steps=5", "--set", "train.val_max_cases=1",
        "--set", "train.val_steps=1", "--set", "train.warmup_steps=2"]


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


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_msd_dataset(tmp_path_factory.mktemp("ds"), n_cases=5)


def run_env(tmp: Path) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TDSEG_ARTIFACTS": str(tmp / "artifacts"),
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONHASHSEED": "0"}


def tdseg(args: list[str], env: dict[str, str], **kw: Any) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tdseg_lite.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def finish(proc: subprocess.Popen, timeout: float = 240) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    return out


def test_sigkill_and_resume_end_with_identical_weights(dataset: Path, tmp_path: Path) -> None:
    env = run_env(tmp_path)
    common = ["train", "--data", str(dataset), *FAST, "--set", "train.max_steps=6", "--set", "train.checkpoint_every=1"]
    finish(tdseg([*common, "--out", str(tmp_path / "a")], env))
    killed = tdseg([*common, "--out", str(tmp_path / "b")], env)
    last, deadline, step = tmp_path / "b" / "checkpoints" / "last.pt", time.time() + 180, -1
    while time.time() < deadline and killed.poll() is None:
        if last.exists():
            step = load_checkpoint(last)["step"]
            if step >= 2:
                break
        time.sleep(0.05)
    assert killed.poll() is None, "the run ended before it could be killed; " + killed.communicate()[0]
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    stopped_at = load_checkpoint(last)["step"]
    assert 2 <= stopped_at < 6
    out = finish(tdseg([*common, "--out", str(tmp_path / "b"), "--resume"], env))
    a, b = (load_checkpoint(tmp_path / r / "checkpoints" / "last.pt") for r in ("a", "b"))
    assert a["step"] == b["step"] == 6 and a["batches"] == b["batches"]
    assert a["model"].keys() == b["model"].keys()
    different = [k for k in a["model"] if not torch.equal(a["model"][k], b["model"][k])]
    assert not different, f"resumed from step {stopped_at}; differing tensors: {different[:5]}\n{out}"
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])
    steps = [int(line.split(",")[0]) for line in (tmp_path / "b" / "log.csv").read_text().splitlines()[1:]]
    assert steps == sorted(set(steps)), "log rows after the checkpoint must not be duplicated on resume"


def test_ddp_with_two_cpu_processes_trains_and_saves_one_checkpoint(dataset: Path, tmp_path: Path) -> None:
    env = {**run_env(tmp_path), "MASTER_ADDR": "127.0.0.1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           "-m", "tdseg_lite.cli", "train", "--data", str(dataset), "--out", str(tmp_path / "ddp"), *FAST,
           "--set", "train.max_steps=2"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ckpts = sorted(p.name for p in (tmp_path / "ddp" / "checkpoints").iterdir())
    assert ckpts in (["best.pt", "last.pt"], ["last.pt"])
    state = load_checkpoint(tmp_path / "ddp" / "checkpoints" / "last.pt")
    assert state["step"] == 2 and state["config"]["world_size"] == 2 and state["batches"] == 2
    assert (tmp_path / "ddp" / "log.csv").read_text().count("\n") == 3  # header + steps 1 and 2, written once


def test_smoke_run_writes_the_run_folder(dataset: Path, tmp_path: Path) -> None:
    out = finish(tdseg(["train", "--data", str(dataset), "--out", str(tmp_path / "r"), *FAST, "--model", "unet",
                        "--set", "train.max_steps=4", "--set", "train.val_every=2"], run_env(tmp_path)))
    run = tmp_path / "r"
    assert {"config.json", "log.csv", "val.csv", "loss_curve.png", "splits.json"} <= {p.name for p in run.iterdir()}
    assert "val mean Dice" in out
    val = (run / "val.csv").read_text().splitlines()
    assert val[0].startswith("step,dice_kidney,dice_tumor,mean_dice") and len(val) == 3
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    assert best["best"]["step"] in (2, 4) and best["config"]["plan"]["spec"]["model"]["model"] == "unet"


@pytest.mark.parametrize(("args", "pattern"), [
    (["--set", "train.learnig_rate=1e-3"], "did you mean train.learning_rate"),
    (["--set", "trian.max_steps=3"], "did you mean train"),
    (["--set", "train.max_steps"], "must look like part.field=value"),
    (["--set", "data.patch_size=[30,30,30]"], "divisible by 16"),
    (["--max-minutes", "-1"], "--max-minutes"),
])
def test_bad_arguments_are_one_line_errors(args: list[str], pattern: str, tmp_path: Path, capsys) -> None:
    assert main(["train", "--out", str(tmp_path / "r"), "--preset", "smoke", *args]) == 2
    err = capsys.readouterr().err
    assert pattern in err and err.count("\n") == 1


def test_existing_run_needs_resume_and_resume_keeps_the_model(tmp_path: Path, capsys) -> None:
    run = tmp_path / "r"
    save_checkpoint(run / "checkpoints" / "last.pt", {"model": {}, "config": {}})
    assert main(["train", "--out", str(run), "--preset", "smoke"]) == 2
    assert "Pass --resume" in capsys.readouterr().err
    (run / "config.json").write_text('{"plan": {"preset": "smoke", "spec": {"model": {"model": "textdiffseg"}}}}')
    assert main(["train", "--out", str(run), "--resume", "--model", "unet"]) == 2
    assert "`--model` must be the run's model (textdiffseg) on --resume" in capsys.readouterr().err


def test_resume_refuses_changes_other_than_the_budget() -> None:
    from tdseg_lite.runs import RunPlan

    saved = RunPlan.build("smoke", "unet", {}).to_dict()
    assert RunPlan.from_dict(saved, {"train.max_steps": 50}).train.max_steps == 50
    assert RunPlan.from_dict(saved, {"train.learning_rate": 1e-3}).train.learning_rate == 1e-3  # unchanged: fine
    with pytest.raises(ConfigError, match="did you mean train"):
        RunPlan.from_dict(saved, {"trian.max_steps": 5})
    with pytest.raises(ConfigError, match="cannot change on --resume"):
        RunPlan.from_dict(saved, {"train.learning_rate": 0.1})


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    trainer = Trainer(Quadratic(), TrainConfig(device="cpu", checkpoint_every=1, max_steps=10))
    batches = iter([batch(0), batch(1), batch(2, nan=True), batch(3)])
    saved = tmp_path / "last.pt"
    with pytest.raises(NonFiniteLossError, match="non-finite at step 3.*last checkpoint is intact"):
        trainer.run(batches, on_checkpoint=lambda t: save_checkpoint(saved, t.state_dict()))
    assert load_checkpoint(saved)["step"] == 2


def test_disk_full_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(3)}, "step": 1})
    before = path.read_bytes()

    def full_disk(obj: Any, handle: Any) -> None:
        handle.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointError, match=r"no space left on the device\); the previous last.pt is intact"):
        save_checkpoint(path, {"model": {"w": torch.zeros(3)}, "step": 2})
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_checkpoint_loads_with_weights_only_and_rejects_foreign_files(tmp_path: Path) -> None:
    torch.manual_seed(5)
    state = rng_state()
    expected = torch.rand(3)
    save_checkpoint(tmp_path / "c.pt", {"model": {}, "rng": state})
    set_rng_state(load_checkpoint(tmp_path / "c.pt")["rng"])
    assert torch.equal(torch.rand(3), expected)
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


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


def test_resumable_sampler_skips_shards_and_replays() -> None:
    data = list(range(10))
    full = ResumableSampler(data, seed=3)
    full.set_epoch(1)
    whole = list(full)
    full.set_epoch(1, skip=4)
    assert list(full) == whole[4:]
    ranks = [ResumableSampler(data, seed=3, rank=r, world=3) for r in range(3)]
    for s in ranks:
        s.set_epoch(1)
    shards = [[i for i, _ in s] for s in ranks]
    assert all(len(s) == 4 for s in shards) and {i for s in shards for i in s} == set(data)
    assert [i for i, _ in whole] != list(range(10))  # shuffled
    assert len({seed for _, seed in whole}) == 10


def test_seeded_dataset_reseeds_monai_transforms() -> None:
    from monai import transforms as mt
    from monai.data import Dataset

    ds = SeededDataset(Dataset([{"x": torch.arange(64.0).reshape(1, 4, 4, 4)}],
                               mt.RandSpatialCropd("x", roi_size=(2, 2, 2), random_size=False)))
    a, b, c = ds[(0, 7)]["x"], ds[(0, 8)]["x"], ds[(0, 7)]["x"]
    assert torch.equal(a, c) and a.shape == (1, 2, 2, 2)
    assert any(not torch.equal(ds[(0, s)]["x"], a) for s in range(9, 20)) and b is not None


def test_endless_batches_resume_mid_epoch() -> None:
    from monai.data import DataLoader

    data = list(range(6))
    sampler = ResumableSampler(data, seed=0)
    loader = DataLoader(SeededDataset(data), batch_size=2, sampler=sampler, drop_last=True)
    stream = endless_batches(loader, sampler)
    first = [next(stream).tolist() for _ in range(7)]
    resumed = endless_batches(loader, sampler, consumed=4)
    assert [next(resumed).tolist() for _ in range(3)] == first[4:]


def test_a_dataset_failing_validate_is_refused_before_training(dataset: Path, tmp_path: Path, capsys) -> None:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(dataset, broken)
    (broken / "labelsTr" / "case_001.nii.gz").unlink()  # a listed label file is missing
    assert main(["train", "--data", str(broken), "--out", str(tmp_path / "r"), "--preset", "smoke", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "case_001.nii.gz" in err and err.startswith("tdseg train: error:")
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_compiled_training_step_matches_eager() -> None:
    cfg = {"device": "cpu", "warmup_steps": 0, "schedule": "constant"}
    eager, compiled = Trainer(Quadratic(), TrainConfig(**cfg)), Trainer(Quadratic(), TrainConfig(**cfg, compile=True))
    for i in range(2):
        a, b = eager.train_step(iter([batch(i)])), compiled.train_step(iter([batch(i)]))
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    torch.testing.assert_close(eager.model.w, compiled.model.w)
    assert compiled.net is not compiled.ddp and type(compiled.net).__name__ == "OptimizedModule"
