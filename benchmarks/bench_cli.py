"""Equal-budget quality through the `tdseg` command, then the speed/quality frontier of the sampler.

    .venv/bin/python benchmarks/bench_cli.py                 # = tdseg bench cli: 3 models x 10 min, then the frontier
    .venv/bin/python benchmarks/bench_cli.py --minutes 2 --models unet,textdiffseg --out-dir /tmp/cli_runs
    .venv/bin/python benchmarks/bench_cli.py --reuse --out-dir /tmp/cli_runs   # re-evaluate finished runs

1. For each model: ``tdseg train --preset cpu --model M --max-minutes MIN --out DIR/M`` (the budget
   includes TextDiffSeg's label-AE phase), then ``tdseg evaluate --run DIR/M --out DIR/M/metrics.json``
   (validation split, Dice / HD95 / surface Dice in each label file's own grid, and for TextDiffSeg
   the uncertainty AUROC and ECE of its default 4-sample ensemble).
2. The frontier: the trained TextDiffSeg scored at DDIM ``--steps-grid`` × ``--samples-grid`` (model
   grid) next to the UNet's seconds per case.

Writes ``results[/gpu_NAME]/cli_quality.{json,md}`` and ``frontier.{json,md}``, the latter with a
verdict against the goal (a setting within 3x the UNet's seconds per case at no loss of Dice on
any class). Every figure states the device, threads, date and commit.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import fmt, results_dir, stamp, tdseg, title, write_report

from tdseg_lite.utils import pick_device

SPEED_GOAL = 3.0  # the frontier goal: within 3x the UNet's seconds per case at no loss of Dice


def trained_steps(run: Path) -> int:
    """Optimiser steps of a finished run: the last row of its ``log.csv``."""
    with (run / "log.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    return int(float(rows[-1]["step"])) if rows else 0


def quality(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Train (unless ``--reuse`` finds a finished run) and evaluate each model; metrics per model."""
    rows = {}
    for model in args.models.split(","):
        run = out / model
        reuse = args.reuse and (run / "checkpoints" / "last.pt").exists()
        train_s = 0.0 if reuse else tdseg(
            "train", "--out", str(run), "--preset", args.preset, "--model", model, "--max-minutes", str(args.minutes),
            "--quiet", "--device", args.device, *[x for kv in args.set for x in ("--set", kv)])
        tdseg("evaluate", "--run", str(run), "--out", str(run / "metrics.json"), "--device", args.device, "--quiet")
        metrics = json.loads((run / "metrics.json").read_text())
        last = json.loads((run / "config.json").read_text())
        rows[model] = {"train_wall_s": train_s, "metrics": {k: metrics[k] for k in (
            "mean", "undefined", "mean_dice", "seconds_per_case", "steps", "samples", "uncertainty", "checkpoint")},
            "max_minutes": last["max_minutes"], "steps_trained": trained_steps(run),
            "label_ae": last.get("label_ae")}  # {"source": "trained"|"reused", "seconds", ...}; None: no label AE
    return rows


def denoiser_calls(scheduler: Any, steps: int, start: int | None) -> int:
    """Denoiser evaluations of a DDIM ``steps`` schedule started from noise (None) or at timestep ``start``."""
    scheduler.set_timesteps(steps)
    return int(len(scheduler.timesteps) if start is None else (scheduler.timesteps <= start).sum())


def frontier(args: argparse.Namespace, out: Path) -> tuple[list[dict[str, Any]], int]:
    """The trained TextDiffSeg at every DDIM steps × samples setting, then the UNet; (rows, cases)."""
    from tdseg_lite.evaluate import evaluate_cases, select_cases
    from tdseg_lite.train_run import load_trained

    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    model, plan, ckpt = load_trained(out / "textdiffseg", "best", device=device)
    _, items = select_cases(out / "textdiffseg", ckpt, plan["data"], None, "val")
    names = [v for k, v in sorted(ckpt["config"]["labels"].items(), key=lambda kv: int(kv[0])) if int(k) > 0]
    items = items[: args.frontier_cases or None]
    evaluate_cases(model, plan["data"], items[:1], names, steps=1, samples=1, space="model")  # warm-up, not timed
    rows = []
    starts = [None] + [int(t) for t in args.aux_starts.split(",") if t.strip()]
    for start in starts:  # None: from pure noise; t: from the aux head's latent noised to t (SDEdit-style)
        model.set_sampling_start("noise" if start is None else "aux", start)
        for steps in (int(s) for s in args.steps_grid.split(",")):
            for samples in (int(s) for s in args.samples_grid.split(",")):
                r = evaluate_cases(model, plan["data"], items, names, steps=steps, samples=samples, space="model")
                rows.append({"start": "noise" if start is None else f"aux@{start}", "steps": steps,
                             "denoiser_steps": denoiser_calls(model.sample_scheduler, steps, start),
                             "samples": samples, "dice": r["mean"]["dice"], "seconds_per_case": r["seconds_per_case"]})
                print(f"{rows[-1]['start']} DDIM {steps} x {samples}: {r['mean']['dice']} "
                      f"{r['seconds_per_case']:.2f} s/case", flush=True)
    model.set_sampling_start("noise")
    if (out / "unet" / "checkpoints" / "last.pt").exists():
        unet, uplan, _ = load_trained(out / "unet", "best", device=device)
        evaluate_cases(unet, uplan["data"], items[:1], names, space="model")  # warm-up, not timed
        r = evaluate_cases(unet, uplan["data"], items, names, space="model")
        rows.append({"steps": None, "samples": None, "model": "unet", "dice": r["mean"]["dice"],
                     "seconds_per_case": r["seconds_per_case"]})
    return rows, len(items)


def setting(row: dict[str, Any]) -> str:
    """``DDIM 5 × 4`` (from noise) or ``DDIM 5 × 4 from aux@500``."""
    start = row.get("start", "noise")
    return f"DDIM {row['steps']} × {row['samples']}" + ("" if start == "noise" else f" from {start}")


def frontier_verdict(rows: list[dict[str, Any]]) -> str:
    """Whether a sampler setting is within ``SPEED_GOAL`` × the UNet's seconds at no loss of Dice.

    A class counts when the UNet's Dice on it is defined (a class absent from every case scored is skipped).
    """
    unet = next((r for r in rows if r.get("model") == "unet"), None)
    if unet is None:
        return "Goal not checked: no UNet run to compare with."
    classes = [c for c, v in unet["dice"].items() if not math.isnan(v)]
    budget = SPEED_GOAL * unet["seconds_per_case"]
    goal = f"Goal (≤ {SPEED_GOAL:g}× the UNet's {unet['seconds_per_case']:.2f} s/case at no loss of Dice)"
    ours = [r for r in rows if r.get("model") != "unet"]
    ok = [r for r in ours if r["seconds_per_case"] <= budget and all(r["dice"][c] >= unet["dice"][c] for c in classes)]
    if ok:
        best = min(ok, key=lambda r: r["seconds_per_case"])
        return f"{goal}: **met** by {setting(best)} ({best['seconds_per_case']:.2f} s/case)."
    fast = sum(r["seconds_per_case"] <= budget for r in ours)
    best = max(ours, key=lambda r: sum(0.0 if math.isnan(r["dice"][c]) else r["dice"][c] for c in classes))
    gap = ", ".join(f"{c} {fmt(best['dice'][c])} vs {fmt(unet['dice'][c])}" for c in classes)
    return (f"{goal}: **not met**. {fast} of {len(ours)} settings fit the time; the best Dice of any setting "
            f"({setting(best)}, {best['seconds_per_case'] / unet['seconds_per_case']:.1f}× "
            f"the UNet's time) is {gap} (TextDiffSeg vs UNet).")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="wall-clock budget per model (AE phase included)")
    ap.add_argument("--models", default="unet,textdiffseg,pixel-diffusion")
    ap.add_argument("--preset", default="cpu", help="tdseg train preset of every model")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override passed to every tdseg train (e.g. text.model=/tmp/tiny_bert); repeatable")
    ap.add_argument("--out-dir", default=None, help="run folders (default /tmp/tdseg_bench_cli/<UTC time>)")
    ap.add_argument("--reuse", action="store_true", help="evaluate runs already in --out-dir instead of training")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda (training, evaluation, frontier)")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads")
    ap.add_argument("--steps-grid", default="1,2,5,10,25", help="DDIM steps (2: the default sampler)")
    ap.add_argument("--samples-grid", default="1,4")
    ap.add_argument("--frontier-cases", type=int, default=0, help="validation cases in the frontier (0: all)")
    ap.add_argument("--aux-starts", default="500",
                    help="also sample from the aux head's latent noised to these timesteps ('' for none)")
    ap.add_argument("--skip-frontier", action="store_true")
    ap.add_argument("--frontier-only", action="store_true", help="only the frontier, on the runs in --out-dir")
    ap.add_argument("--results-dir", default=None, help="where the tables go (default results[/gpu_NAME]/)")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    args.device = str(device)
    out = Path(args.out_dir or f"/tmp/tdseg_bench_cli/{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S}")
    results = Path(args.results_dir) if args.results_dir else results_dir(device)
    if not args.frontier_only:
        write_quality(args, out, device, results)
    if not args.skip_frontier:
        write_frontier(args, out, device, results)
    return 0


def label_ae_note(runs: dict[str, Any]) -> str:
    """Which runs trained their label autoencoder inside the budget and which reused a cached one."""
    parts = [f"{name} {r['label_ae']['source']} it in {r['label_ae']['seconds']:.0f} s"
             for name, r in runs.items() if r.get("label_ae")]
    return ("; ".join(parts) + " (trained: the AE steps count against the budget; reused: only the load time — "
            "pass --set label_ae.reuse=false to train it inside every budget)") if parts else "none here"


def write_quality(args: argparse.Namespace, out: Path, device: torch.device, results: Path) -> None:
    """Train/evaluate every model and write ``cli_quality.{json,md}``."""
    q = {**stamp(device, args.threads), "minutes": args.minutes, "preset": args.preset, "runs_dir": str(out),
         "runs": quality(args, out)}
    minutes = "/".join(sorted({f"{r['max_minutes']:g}" for r in q["runs"].values()}))
    lines = [title(q, "Equal budget through `tdseg train` + `tdseg evaluate`",
                   f"{minutes} min per model, {args.preset} preset, validation split in each label's own grid"),
             "",
             ("| model | Dice kidney | Dice tumour | HD95 kidney mm | HD95 tumour mm | NSD kidney | NSD tumour | "
             "iterations (best at) | s / case | uncertainty AUROC / ECE |"),
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in q["runs"].items():
        m, u = r["metrics"]["mean"], r["metrics"]["uncertainty"]
        unc = "–" if not u else f"{fmt(u['auroc'])} / {fmt(u['ece'])}"
        lines.append(f"| {name} | {fmt(m['dice']['kidney'])} | {fmt(m['dice']['tumor'])} | "
                     f"{fmt(m['hd95_mm']['kidney'], 1)} | {fmt(m['hd95_mm']['tumor'], 1)} | "
                     f"{fmt(m['surface_dice']['kidney'])} | {fmt(m['surface_dice']['tumor'])} | {r['steps_trained']} ({r['metrics']['checkpoint']['step']}) | "
                     f"{r['metrics']['seconds_per_case']:.2f} | {unc} |")
    lines += ["", ("HD95 is averaged over the cases where it is defined (a class missing from the prediction or the "
              "label leaves it undefined; counts in the JSON). NSD = surface Dice at MONAI's class thresholds. "
              "TextDiffSeg's budget includes its label-autoencoder phase: " + label_ae_note(q["runs"]) + ".")]
    write_report(results / "cli_quality", q, lines)


def write_frontier(args: argparse.Namespace, out: Path, device: torch.device, results: Path) -> None:
    """Score the trained TextDiffSeg at every sampler setting and write ``frontier.{json,md}``."""
    rows, cases = frontier(args, out)
    fr = {**stamp(device, args.threads), "cases": cases, "runs_dir": str(out), "rows": rows,
          "verdict": frontier_verdict(rows)}
    lines = [title(fr, "Speed/quality frontier", f"{cases} validation cases of the runs above, model grid"), "",
             "| model | start | DDIM steps (denoiser calls) | samples | Dice kidney | Dice tumour | s / case | × UNet time |",
             "|---|---|---|---|---|---|---|---|"]
    unet_s = next((r["seconds_per_case"] for r in rows if r.get("model") == "unet"), None)
    for r in rows:
        ratio = "–" if unet_s is None else f"{r['seconds_per_case'] / unet_s:.1f}"
        steps = "–" if r["steps"] is None else f"{r['steps']} ({r['denoiser_steps']})"
        lines.append(f"| {r.get('model', 'textdiffseg')} | {r.get('start', '–')} | {steps} | {r['samples'] or '–'} | "
                     f"{fmt(r['dice']['kidney'])} | {fmt(r['dice']['tumor'])} | {r['seconds_per_case']:.2f} | {ratio} |")
    lines += ["", ("start aux@t: DDIM from the aux head's latent noised to timestep t (only the schedule's steps ≤ t "
              "run; 0 calls = the aux head alone)."), "", fr["verdict"]]
    write_report(results / "frontier", fr, lines)


if __name__ == "__main__":
    raise SystemExit(main())
