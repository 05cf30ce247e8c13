"""``tdseg bench``: run the measurement scripts of a source checkout (``benchmarks/``).

    tdseg bench all                         # the README tables: cost, step, scaling, cli, summary (≈ 1 h, 2 CPU cores)
    tdseg bench cost -- --batches 2,8       # one suite; arguments after -- go to its script
    tdseg bench quality -- --minutes 15

Each suite writes JSON + a markdown table into ``benchmarks/results/`` stating device, threads,
date and commit. The scripts live next to the package in a git checkout (they are not installed
with it); ``tdseg bench`` refuses with a one-line message elsewhere.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from tdseg_lite.errors import UserInputError

__all__ = ["SUITES", "add_cli_arguments", "cli_main"]

#: suite -> (script in benchmarks/, what it measures)
SUITES: dict[str, tuple[str, str]] = {
    "cost": ("bench_denoiser_cost.py", "per-step denoiser cost, latent vs pixel space (ratio, goal >= 30x)"),
    "step": ("bench_step.py", "training-step time, it/s and peak memory per model (CPU or GPU, fp32/bf16)"),
    "scaling": ("bench_scaling.py", "cost vs volume size 48³..128³ per model, fitted growth exponent"),
    "cli": ("bench_cli.py", "equal budget through tdseg train + evaluate, then the DDIM steps x samples frontier"),
    "quality": ("bench_quality.py", "equal wall-clock quality incl. aux head, one-step and AE ceiling (Python API)"),
    "text": ("bench_text.py", "six report conditions x models x seeds: does the report guide the segmentation"),
    "side-probe": ("bench_side_probe.py", "can a reader of the frozen text tokens learn the tumour's side (mirror or not)"),
    "ablation": ("bench_ablation.py", "configurations x seeds at equal wall clock: what each switch removes, noise floor"),
    "uncertainty": ("bench_uncertainty.py", "what the sampling buys: voxel uncertainty of ensembles vs one pass"),
    "phantom": ("bench_phantom.py", "phantom generation speed and HU statistics"),
    "text-fusion": ("bench_text_fusion.py", "text encoding and cross-attention speed"),
    "label-ae": ("bench_label_ae.py", "label autoencoder reconstruction trade-offs"),
    "summary": ("bench_summary.py", "gather the tables into results/SUMMARY.md and the README's block"),
}
#: what ``tdseg bench all`` runs, in order (the summary last)
ALL = ("cost", "step", "scaling", "cli", "summary")


def benchmarks_dir() -> Path:
    """``benchmarks/`` of the checkout this package was imported from."""
    folder = Path(__file__).resolve().parents[1] / "benchmarks"
    if not (folder / "bench_step.py").is_file():
        raise UserInputError(f"`tdseg bench` needs the benchmarks/ folder of a source checkout, got none at {folder}. "
                             "Clone the repository and install it with pip install -e .")
    return folder


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``tdseg bench``."""
    parser.add_argument("suite", choices=[*SUITES, "all"],
                        help="; ".join(f"{k}: {v[1]}" for k, v in SUITES.items()) + "; all: " + ", ".join(ALL))
    parser.add_argument("script_args", nargs=argparse.REMAINDER, help="arguments for the script (after --)")


def cli_main(args: argparse.Namespace) -> int:
    """Run one suite (or ``all``); returns the first non-zero exit status."""
    folder = benchmarks_dir()
    extra = [a for a in args.script_args if a != "--"]
    if args.suite == "all" and extra:
        raise UserInputError(f"`tdseg bench all` takes no script arguments, got {extra}. Run one suite to pass them.")
    for suite in ALL if args.suite == "all" else (args.suite,):
        script = folder / SUITES[suite][0]
        print(f"tdseg bench {suite}: {script.name} {' '.join(extra)}", file=sys.stderr, flush=True)
        status = subprocess.run([sys.executable, str(script), *extra], check=False).returncode
        if status:
            return status
    return 0
