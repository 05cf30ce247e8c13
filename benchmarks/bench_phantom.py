"""Benchmark the synthetic CT phantom: generation speed and HU realism.

Times ``tdseg_lite.phantom.generate_phantom`` for 40 cases (default config: kidney task,
96x96x64 voxels at 3 mm, files written and gzipped) once per ``--workers`` value, then pools the
HU statistics of the same cases per tissue and per label. Prints a summary and a Markdown table
(for the README "Results / The phantom" section); writes ``benchmarks/results/phantom.json``
and the table as ``phantom.md`` next to it (or ``--out``), both with device, threads, date and commit.

Target: 40 cases in <= 30 s on 2 CPU cores. Timings on a shared machine are noisy: the JSON
records the load average before and after each run.

Usage::

    .venv/bin/python benchmarks/bench_phantom.py                       # workers 1 and 2
    .venv/bin/python benchmarks/bench_phantom.py --workers 2 --no-stats --out /tmp/bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import stamp, title

from tdseg_lite.phantom import (
    PhantomConfig,
    generate_case,
    generate_phantom,
    hu_statistics,
)
from tdseg_lite.utils import atomic_write_text

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "phantom.json"


def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover - not available on every platform
        return None


def time_generation(cfg: PhantomConfig, workers: int) -> dict[str, object]:
    """Seconds to write ``cfg`` with ``workers`` processes into a fresh temporary folder."""
    with tempfile.TemporaryDirectory(prefix="bench-phantom-") as tmp:
        before = _load()
        start = time.perf_counter()
        generate_phantom(Path(tmp) / "ds", cfg, workers=workers)
        seconds = time.perf_counter() - start
        size_mb = sum(f.stat().st_size for f in (Path(tmp) / "ds").rglob("*") if f.is_file()) / 2**20
    return {"workers": workers, "seconds": round(seconds, 2), "cases_per_s": round(cfg.num_cases / seconds, 2),
            "dataset_mib": round(size_mb, 1), "load_avg_before": before, "load_avg_after": _load()}


def markdown(report: dict) -> str:
    """A heading, the README table: timings, then HU mean +- SD per tissue against the expected range."""
    cfg = report["config"]
    lines = [title(report, "Synthetic CT phantom", f"{cfg['num_cases']} cases, task {cfg['task']}"), "",
             "| workers | seconds | cases/s |", "|---|---|---|"]
    lines += [f"| {r['workers']} | {r['seconds']} | {r['cases_per_s']} |" for r in report["runs"]]
    if "tissue_hu" in report:
        lines += ["", "| tissue | mean HU | SD | expected mean | voxels |", "|---|---|---|---|---|"]
        for name, s in report["tissue_hu"].items():
            lo, hi = s["expected"]
            lines.append(f"| {name} | {s['mean']:.1f} | {s['std']:.1f} | {lo:g} to {hi:g} | {s['voxels']} |")
        lines += ["", "| label | mean HU | SD | voxels |", "|---|---|---|---|"]
        lines += [f"| {k} | {s['mean']:.1f} | {s['std']:.1f} | {s['voxels']} |" for k, s in report["label_hu"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=40)
    parser.add_argument("--task", default="kidney")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--no-stats", action="store_true", help="skip the HU statistics")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    cfg = PhantomConfig(task=args.task, num_cases=args.cases)
    report: dict[str, object] = {
        "benchmark": "phantom", **stamp(torch.device("cpu"), torch.get_num_threads()), "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "platform": platform.platform(), "python": platform.python_version(), "config": cfg.block(),
        "target": "40 cases <= 30 s on 2 CPU cores",
    }
    report["runs"] = runs = [time_generation(cfg, w) for w in args.workers]
    for r in runs:
        print(f"workers={r['workers']}: {cfg.num_cases} cases in {r['seconds']} s ({r['cases_per_s']} cases/s), "
              f"load {r['load_avg_before']} -> {r['load_avg_after']}")
    if not args.no_stats:
        cases = [generate_case(cfg, i) for i in range(cfg.num_cases)]
        report["tissue_hu"] = hu_statistics(cases)
        report["label_hu"] = hu_statistics(cases, by="label")
        report["tumours"] = sum(f["kind"] == "tumour" for c in cases for f in c.findings)
        report["tumour_sizes_cm"] = sorted(f["size_cm"] for c in cases for f in c.findings if f["kind"] == "tumour")
    table = markdown(report)
    atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")
    atomic_write_text(args.out.with_suffix(".md"), table + "\n")
    print(table)
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
