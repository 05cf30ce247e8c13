"""Shared helpers: atomic writes, summaries, devices, seeding."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from conftest import one_line

from tdseg_lite.cli import main
from tdseg_lite.errors import UserInputError
from tdseg_lite.utils import (
    artifacts_dir,
    atomic_write_text,
    environment_report,
    pick_device,
    seed_everything,
    write_summary,
)


def test_atomic_write_keeps_old_file_when_writing_fails(tmp_path, monkeypatch) -> None:
    target = tmp_path / "ckpt.json"
    atomic_write_text(target, "old")

    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="No space left"):
        atomic_write_text(target, "new content")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.json"], "temp file must be cleaned up"


def test_write_summary_is_valid_json_with_versions(tmp_path) -> None:
    import numpy as np
    import torch

    path = write_summary("99_test", {"dice": np.float32(0.5), "shape": torch.Size([1, 2]), "nan": float("nan")}, tmp_path)
    data = json.loads(path.read_text())
    assert path == tmp_path / "99_test" / "summary.json"
    assert data["dice"] == 0.5 and data["shape"] == [1, 2] and data["nan"] is None
    assert data["stage"] == "99_test" and "torch" in data["versions"]


def test_artifacts_dir_follows_env(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TDSEG_ARTIFACTS", str(tmp_path / "a"))
    assert artifacts_dir("01_x") == tmp_path / "a" / "01_x" and (tmp_path / "a" / "01_x").is_dir()


def test_pick_device() -> None:
    import torch

    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert pick_device("cpu").type == "cpu"
    with pytest.raises(UserInputError, match=r"`device` must be 'auto', 'cpu', 'cuda' or 'cuda:N', got 'gpu0'"):
        pick_device("gpu0")
    with pytest.raises(UserInputError, match=r"`--device` must be .*got 'tpu'"):
        pick_device("tpu", arg="--device")
    if not torch.cuda.is_available():
        with pytest.raises(UserInputError, match="`--device` asks for CUDA, got 'cuda' on a machine without"):
            pick_device("cuda", arg="--device")


def test_seed_everything_repeats_draws() -> None:
    import torch

    seed_everything(3)
    a = torch.rand(4)
    seed_everything(3)
    assert torch.equal(a, torch.rand(4))


def test_environment_report_has_versions() -> None:
    report = environment_report()
    assert {"torch", "monai", "python", "cuda_available", "cpu_threads"} <= set(report)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_one_line_before_anything_is_written(tmp_path: Path, capsys) -> None:
    assert main(["train", "--out", str(tmp_path / "r"), "--preset", "smoke", "--model", "unet",
                 "--device", "cuda"]) == 2
    assert "`--device` asks for CUDA, got 'cuda' on a machine without a CUDA GPU" in one_line(capsys, "train")
    assert not (tmp_path / "r").exists()
