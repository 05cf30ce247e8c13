"""Training checkpoints: atomic writes, safe loading, and every random-number state.

A checkpoint is one ``torch.save`` d dict of tensors, numbers, strings, lists and dicts only, so it
loads with ``torch.load(weights_only=True)`` (no pickled code runs on load)::

    {"format": 1, "config": {...}, "model": state_dict, "optimizer": ..., "lr_scheduler": ...,
     "grad_scaler": ..., "rng": rng_state(), "step": int, "batches": int,
     "best": {"metric", "value", "step"}, "elapsed_s": float, "versions": {...}}

``save_checkpoint`` writes to a temporary file in the same folder, fsyncs it and renames it
over the old one (``os.replace`` is atomic on POSIX and Windows): a crash, a SIGKILL or a full
disk leaves either the previous checkpoint or the new one, never half a file.

Explained in notebooks/04_gpu_training.ipynb
"""

from __future__ import annotations

import errno
import os
import random
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tdseg_lite.errors import UserInputError
from tdseg_lite.utils import default_file_mode

__all__ = ["CheckpointError", "load_checkpoint", "rng_state", "save_checkpoint", "set_rng_state"]

FORMAT = 1


class CheckpointError(UserInputError):
    """A checkpoint could not be written or read; the message says what is intact and what to do."""


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU and (if present) CUDA generator states, as tensors and plain lists."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what ``rng_state`` returned (CUDA states only when the device count matches)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def save_checkpoint(path: str | os.PathLike[str], payload: Mapping[str, Any]) -> Path:
    """Write ``payload`` to ``path`` atomically (temp file + fsync + rename).

    Raises:
        CheckpointError: the disk is full (or another OS error): the temp file is removed and the
            previous checkpoint at ``path``, if any, is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save({"format": FORMAT, **payload}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, default_file_mode())  # mkstemp creates 0600 files
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        kept = f"the previous {path.name} is intact" if path.exists() else f"no {path.name} was written"
        why = "no space left on the device" if err.errno == errno.ENOSPC else f"{type(err).__name__}: {err}"
        raise CheckpointError(f"`{path}` could not be saved ({why}); {kept}. Free disk space (or choose another "
                              "--out) and continue with --resume.") from err
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``torch.load(weights_only=True)``.

    Raises:
        CheckpointError: missing, unreadable or not a tdseg_lite checkpoint (names the file and the fix).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"`{path}` does not exist. Train first (tdseg train --out RUN) or pass the run "
                              "folder that holds checkpoints/last.pt.")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - truncated file, another pickle, foreign objects
        # torch's own text is not shown: it is several lines and advises weights_only=False, which runs code
        unsafe = "Unsupported global" in str(err)  # a pickled class or function, not only tensors and plain data
        why = ("it holds Python objects beyond tensors and plain data; it is refused because loading them could "
               "run code" if unsafe else f"truncated or not a torch file ({type(err).__name__})")
        raise CheckpointError(f"`{path}` is not a readable checkpoint: {why}. Use a file written by tdseg train, "
                              "or retrain.") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or "model" not in data:
        raise CheckpointError(f"`{path}` is not a tdseg_lite checkpoint (format {FORMAT} with a 'model' entry). "
                              "Use RUN/checkpoints/last.pt or best.pt written by tdseg train.")
    return data
