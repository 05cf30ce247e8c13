"""DDP (tdseg_lite.distributed): `tdseg train` under torchrun with two CPU processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import FAST, run_env

from tdseg_lite.checkpoint import load_checkpoint


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
