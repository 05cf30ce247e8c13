"""Small shared helpers: seeding, device choice, environment report, artifacts, atomic writes.

Explained in ``notebooks/00_setup_and_data.ipynb``.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "artifacts_dir",
    "atomic_write_bytes",
    "atomic_write_text",
    "default_file_mode",
    "environment_report",
    "is_colab",
    "jsonable",
    "pick_device",
    "seed_everything",
    "show_source",
    "timed",
    "versions",
    "write_summary",
]


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch (through ``monai.utils.set_determinism``).

    Args:
        seed: the global seed.
        deterministic: also ask cuDNN for deterministic kernels (slower on GPU).
    """
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        from monai.utils import set_determinism

        set_determinism(seed=seed)


def pick_device(device: str = "auto", arg: str = "device") -> torch.device:  # noqa: F821 - torch imported lazily
    """``"auto"`` -> CUDA if available, else CPU; ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` as asked.

    Raises:
        UserInputError: another name, or CUDA asked for where there is none (``arg`` names the argument).
    """
    import re

    import torch

    from tdseg_lite.errors import UserInputError

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not re.fullmatch(r"cuda:\d+", str(device)):
        raise UserInputError(f"`{arg}` must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}. Use auto.")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserInputError(f"`{arg}` asks for CUDA, got {device!r} on a machine without a CUDA GPU. Use auto "
                             "or cpu.")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UserInputError(f"`{arg}` must name one of the {torch.cuda.device_count()} GPU(s), got {device!r}. "
                             "Use cuda:0 or auto.")
    return dev


def is_colab() -> bool:
    """True inside a Google Colab kernel."""
    return "google.colab" in sys.modules


def versions() -> dict[str, str]:
    """Versions of the packages that decide numerical results (for summaries and checkpoints)."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for pkg in ("tdseg_lite", "torch", "monai", "transformers", "numpy", "nibabel"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def environment_report() -> dict[str, Any]:
    """Versions plus the compute environment (device, threads, GPU name and memory)."""
    import torch

    report: dict[str, Any] = dict(versions())
    report["platform"] = platform.platform()
    report["cpu_threads"] = torch.get_num_threads()
    report["cuda_available"] = torch.cuda.is_available()
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        report["gpu"] = props.name
        report["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        report["bf16_supported"] = torch.cuda.is_bf16_supported()
    report["colab"] = is_colab()
    return report


def artifacts_dir(stage: str | None = None, root: str | os.PathLike[str] | None = None) -> Path:
    """The artifacts folder (``$TDSEG_ARTIFACTS`` or ``./artifacts``), or a stage's sub-folder.

    Args:
        stage: notebook name such as ``"00_setup_and_data"``; ``None`` gives the root.
        root: explicit root; overrides the environment variable.
    """
    base = Path(root) if root else Path(os.environ.get("TDSEG_ARTIFACTS", "artifacts"))
    path = base / stage if stage else base
    path.mkdir(parents=True, exist_ok=True)
    return path


def default_file_mode() -> int:
    """The mode a plain ``open(path, "w")`` would give a new file (0o666 minus the umask)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _atomic_write(path: Path, write: Callable[[Any], None], mode: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, default_file_mode())  # mkstemp creates 0600 files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write text so that ``path`` is either the old file or the complete new one, never half."""
    _atomic_write(Path(path), lambda h: h.write(text), "w")


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Binary twin of ``atomic_write_text``."""
    _atomic_write(Path(path), lambda h: h.write(data), "wb")


def jsonable(value: Any) -> Any:
    """Convert tensors, numpy scalars/arrays, paths and tuples into JSON-friendly values."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):  # numpy arrays/scalars, torch tensors
        return value.tolist()
    if isinstance(value, float) and math.isnan(value):  # NaN -> null keeps the file valid JSON
        return None
    return value


def write_summary(stage: str, summary: Mapping[str, Any], root: str | os.PathLike[str] | None = None) -> Path:
    """Write ``ARTIFACTS/<stage>/summary.json`` (atomically) with versions added; return its path."""
    payload = {"stage": stage, "versions": versions(), **jsonable(summary)}
    path = artifacts_dir(stage, root) / "summary.json"
    atomic_write_text(path, json.dumps(payload, indent=2, allow_nan=False) + "\n")
    return path


@contextmanager
def timed(store: dict[str, float], key: str) -> Iterator[None]:
    """Context manager that records the wall-clock seconds of its block in ``store[key]``."""
    start = time.perf_counter()
    try:
        yield
    finally:
        store[key] = time.perf_counter() - start


def show_source(obj: Any) -> None:
    """Display the source code of a package object (syntax-highlighted in Jupyter).

    Notebooks use it to show the code that actually runs instead of copying it.
    """
    source = inspect.getsource(obj)
    try:
        from IPython.display import Code, display

        display(Code(source, language="python"))
    except ImportError:  # plain Python: print it
        print(source)
