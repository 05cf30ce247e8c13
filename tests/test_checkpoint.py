"""Checkpoints (tdseg_lite.checkpoint): atomic writes on a full disk, `weights_only` loading with RNG states,
foreign, truncated and pickled files as one-line errors."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import one_line

from tdseg_lite.checkpoint import (
    CheckpointError,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from tdseg_lite.cli import main


def test_a_checkpoint_with_pickled_objects_never_suggests_unsafe_loading(run_copy: tuple[Path, Path], tmp_path: Path,
                                                                         capsys) -> None:
    run, _ = run_copy
    for name in ("best.pt", "last.pt"):
        path = run / "checkpoints" / name
        if path.is_file():
            state = torch.load(path, weights_only=True)
            torch.save({**state, "extra": Path("/")}, path)  # a Python object beyond tensors and plain data
    assert main(["evaluate", "--run", str(run), "--out", str(tmp_path / "m.json"), "--device", "cpu"]) == 2
    err = one_line(capsys, "evaluate")
    assert "refused because loading them could run code" in err and "weights_only" not in err
    (run / "checkpoints" / "last.pt").write_bytes(b"PK\x03\x04 truncated")
    (run / "checkpoints" / "best.pt").unlink(missing_ok=True)
    assert main(["evaluate", "--run", str(run), "--out", str(tmp_path / "m.json"), "--device", "cpu"]) == 2
    assert "truncated or not a torch file" in one_line(capsys, "evaluate")


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
