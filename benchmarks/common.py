"""What every benchmark script shares: the stamp on each table and where results go.

Each result states device, threads, date and commit (the issue's rule). On a CPU the tables go
to ``benchmarks/results/``; on a GPU to ``benchmarks/results/gpu_<name>/`` so that a Colab run
never overwrites the CPU tables the README quotes.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from tdseg_lite.utils import atomic_write_text, environment_report

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def commit() -> str:
    """Short hash of HEAD, with ``+dirty`` when code outside ``benchmarks/results`` is modified."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, cwd=HERE, check=False).stdout.strip()
        except OSError:
            return ""

    head = git("rev-parse", "--short", "HEAD") or "?"
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", ":(top)", ":(top,exclude)benchmarks/results")
    return head + ("+dirty" if dirty else "")


def cpu_name() -> str:
    """The CPU's model name and the widest vector ISA torch uses, e.g. ``AMD EPYC, AVX2``.

    Two machines that both say ``x86_64`` can differ by 2x in conv speed (AVX-512 or not), so every
    CPU figure names both.
    """
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {torch.backends.cpu.get_cpu_capability()}"


def device_label(device: torch.device, threads: int) -> str:
    """``cpu (AMD EPYC, AVX2), 2 threads`` or ``cuda (NVIDIA H200)``."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({cpu_name()}), {threads} threads"


def results_dir(device: torch.device) -> Path:
    """``results/`` for a CPU, ``results/gpu_<name>/`` for a GPU."""
    if device.type != "cuda":
        return RESULTS
    name = re.sub(r"[^a-z0-9]+", "_", torch.cuda.get_device_name(device).lower()).strip("_")
    return RESULTS / f"gpu_{name}"


def stamp(device: torch.device, threads: int) -> dict[str, Any]:
    """The fields every report starts with: date (UTC), commit, device, threads, load average, versions."""
    return {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "commit": commit(),
            "device": device_label(device, threads), "threads": threads, "load_average": list(os.getloadavg()),
            "env": environment_report()}


def title(report: dict[str, Any], what: str, extra: str = "") -> str:
    """Markdown heading naming the device, date and commit of ``report``."""
    tail = f"; {extra}" if extra else ""
    return f"# {what} ({report['device']}, {report['date']}, commit {report['commit']}{tail})"


def write_report(stem: Path, report: dict[str, Any], lines: list[str]) -> None:
    """Write ``stem.json`` and ``stem.md`` atomically (a killed run leaves the previous tables intact)."""
    atomic_write_text(stem.with_suffix(".json"), json.dumps(report, indent=2, default=float) + "\n")
    atomic_write_text(stem.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)


def parse_models(text: str) -> dict[str, tuple[str, dict[str, str]]]:
    """A comma list of model variants, each a model name or ``label=model@part.field=value@...``:

    ``"a=textdiffseg@text.model=structured,unet"`` -> ``{"a": ("textdiffseg", {...}), "unet": ("unet", {})}``.
    A list value keeps its commas inside brackets: ``"thin=textdiffseg@denoiser.channels=[8,16,32]"``.
    """
    out = {}
    for item in filter(None, (x.strip() for x in re.split(r",(?![^\[]*\])", text))):
        head, *rest = item.split("@")
        label, _, name = head.rpartition("=")
        out[label or name] = (name, dict(p.split("=", 1) for p in rest))
    return out


def fmt(value: float | None, digits: int = 3) -> str:
    """``value`` with ``digits`` decimals, or an en dash for a missing/undefined value."""
    return "–" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def tdseg(*args: str) -> float:
    """Run ``python -m tdseg_lite.cli ARGS``; returns its wall seconds (raises on failure)."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "tdseg_lite.cli", *args], check=True)
    return time.perf_counter() - start
