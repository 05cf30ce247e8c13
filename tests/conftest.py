"""Shared fixtures and helpers (``from conftest import ...``: tests/ is on sys.path)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

#: KiTS19-like voxel order: axis 0 runs inferior (5 mm), 1 posterior, 2 left (0.8 mm) -> codes I-P-L
IPL_AFFINE = np.array([[0.0, 0.0, -0.8, 10.0], [0.0, -0.8, 0.0, 20.0], [-5.0, 0.0, 0.0, 30.0], [0.0, 0.0, 0.0, 1.0]])
#: a plain RAS grid, 2 x 2 x 3 mm
RAS_AFFINE = np.diag([2.0, 2.0, 3.0, 1.0])


def synthetic_case(shape: tuple[int, ...], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A tiny CT-like volume (int16 HU: air -1000, body 40, organ 80, lesion 150) and its labels.

    Returns:
        ``(image, label)`` of ``shape`` (X, Y, Z); label 1 = organ box, 2 = lesion inside it.
    """
    rng = np.random.default_rng(seed)
    image = np.full(shape, -1000, np.int16)
    label = np.zeros(shape, np.uint8)
    body = tuple(slice(max(1, s // 10), s - max(1, s // 10)) for s in shape)
    image[body] = 40
    lo = [s // 3 + int(rng.integers(0, 2)) for s in shape]
    organ = tuple(slice(a, a + max(2, s // 3)) for a, s in zip(lo, shape))
    label[organ] = 1
    lesion = tuple(slice(sl.start, sl.start + max(1, (sl.stop - sl.start) // 2)) for sl in organ)
    label[lesion] = 2
    image[label == 1] = 80
    image[label == 2] = 150
    return image, label


def write_msd_dataset(root: Path, n_cases: int = 3, shape: tuple[int, int, int] = (40, 40, 24),
                      affine: np.ndarray = RAS_AFFINE, **meta: Any) -> Path:
    """Write a small MSD-layout dataset (``dataset.json``, ``imagesTr/``, ``labelsTr/``) under ``root``."""
    import nibabel as nib

    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    training = []
    for i in range(n_cases):
        image, label = synthetic_case(shape, seed=i)
        name = f"case_{i:03d}.nii.gz"
        nib.save(nib.Nifti1Image(image, affine), root / "imagesTr" / name)
        nib.save(nib.Nifti1Image(label, affine), root / "labelsTr" / name)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}",
                         "description": f"case {i}: a small lesion"})
    dataset = {"name": "synthetic", "modality": {"0": "CT"}, "labels": {"0": "background", "1": "kidney", "2": "tumor"},
               "numTraining": n_cases, "training": training, "test": []}
    dataset.update(meta)
    (root / "dataset.json").write_text(json.dumps(dataset, indent=2))
    return root


@pytest.fixture(autouse=True, scope="session")
def _label_ae_cache(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Every ``tdseg train`` of the session caches its label autoencoder in a temp folder, never ~/.cache."""
    patch = pytest.MonkeyPatch()
    patch.setenv("TDSEG_CACHE", str(tmp_path_factory.mktemp("tdseg_cache")))
    yield
    patch.undo()


@pytest.fixture
def msd_dataset(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``msd_dataset(n_cases=3, shape=(40, 40, 24), affine=RAS_AFFINE, name="ds", **dataset_json)``."""

    def make(n_cases: int = 3, name: str = "ds", **kwargs: Any) -> Path:
        return write_msd_dataset(tmp_path / name, n_cases=n_cases, **kwargs)

    return make


@pytest.fixture(scope="session")
def tiny_unet_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A real ``tdseg train`` run (UNet baseline, 2 steps, smoke preset) on a 5-case synthetic dataset.

    Returns:
        ``(run folder, dataset folder)``; shared by the evaluate and predict tests (~30 s once per session).
    """
    import os
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("tiny_unet_run")
    data = write_msd_dataset(root / "ds", n_cases=5)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TDSEG_ARTIFACTS": str(root / "artifacts"), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "tdseg_lite.cli", "train", "--data", str(data), "--out", str(root / "run"),
           "--preset", "smoke", "--device", "cpu", "--quiet", "--model", "unet", "--set", "train.max_steps=2",
           "--set", "label_ae.max_steps=5", "--set", "train.val_max_cases=1"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return root / "run", data


#: text that a one-line error of a command must never contain (tracebacks, library internals)
LEAKS = ("Traceback", "weights_only=False", "Weights only load failed", "nibabel", "ImageFileError", "zlib.error")


def one_line(capsys: pytest.CaptureFixture[str], command: str) -> str:
    """The command's stderr, checked to be exactly one `tdseg COMMAND: error:` line without foreign text."""
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"tdseg {command}: error: `"), err
    assert not any(leak in err for leak in LEAKS), err
    return err


def snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under ``folder``: (mtime_ns, bytes), to prove that nothing was written."""
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def run_copy(tiny_unet_run: tuple[Path, Path], tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the session's trained UNet run (smoke preset) and its dataset."""
    run, data = tiny_unet_run
    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run", data


# every `tdseg train` of test_train_run and test_distributed: tiny TextDiffSeg, 1 thread, a step-only budget
FAST = ["--preset", "smoke", "--device", "cpu", "--quiet", "--set", "label_ae.max_steps=5", "--set", "train.val_max_cases=1",
        "--set", "train.val_steps=1", "--set", "train.warmup_steps=2"]


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
