"""Equal-budget quality through the `tdseg` command, then the speed/quality frontier of the sampler.

    .venv/bin/python benchmarks/bench_cli.py --minutes 10 --models textdiffseg,unet --out-dir /tmp/cli_runs

1. For each model: ``tdseg train --preset cpu --model M --max-minutes MIN --out DIR/M`` (the budget
   includes TextDiffSeg's label-AE phase), then ``tdseg evaluate --run DIR/M --out DIR/M/metrics.json``
   (validation split, Dice / HD95 / surface Dice in each label file's own grid, and for TextDiffSeg
   the uncertainty AUROC and ECE of its default 4-sample ensemble).
2. The frontier: the trained TextDiffSeg scored at DDIM ``--steps-grid`` × ``--samples-grid`` (model
   grid) next to the UNet's seconds per case.

Writes ``results/cli_quality.{json,md}`` and ``results/frontier.{json,md}``. Every figure states the
device, threads, date and commit.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False,
                         cwd=Path(__file__).resolve().parent)
    return out.stdout.strip() or "?"


def tdseg(*args: str) -> float:
    """Run ``python -m tdseg_lite.cli ARGS``; returns its wall seconds (raises on failure)."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "tdseg_lite.cli", *args], check=True)
    return time.perf_counter() - start


def header(threads: int) -> dict[str, Any]:
    return {"date": dt.datetime.now().isoformat(timespec="seconds"), "commit": commit(),
            "device": f"cpu ({platform.machine()}), {threads} threads", "load_average": os.getloadavg()}


def quality(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    rows = {}
    for model in args.models.split(","):
        run = out / model
        train_s = 0.0 if (run / "checkpoints" / "last.pt").exists() else tdseg(
            "train", "--out", str(run), "--preset", "cpu", "--model", model, "--max-minutes", str(args.minutes),
            "--quiet", "--device", "cpu")
        tdseg("evaluate", "--run", str(run), "--out", str(run / "metrics.json"), "--device", "cpu", "--quiet")
        metrics = json.loads((run / "metrics.json").read_text())
        last = json.loads((run / "config.json").read_text())
        rows[model] = {"train_wall_s": train_s, "metrics": {k: metrics[k] for k in (
            "mean", "undefined", "mean_dice", "seconds_per_case", "steps", "samples", "uncertainty", "checkpoint")},
            "max_minutes": last["max_minutes"]}
    return rows


def frontier(args: argparse.Namespace, out: Path) -> list[dict[str, Any]]:
    import torch

    from tdseg_lite.evaluate import evaluate_cases, select_cases
    from tdseg_lite.train_run import load_trained

    torch.set_num_threads(args.threads)
    model, plan, ckpt = load_trained(out / "textdiffseg", "best")
    _, items = select_cases(out / "textdiffseg", ckpt, plan["data"], None, "val")
    names = [v for k, v in sorted(ckpt["config"]["labels"].items(), key=lambda kv: int(kv[0])) if int(k) > 0]
    items = items[: args.frontier_cases]
    rows = []
    for steps in (int(s) for s in args.steps_grid.split(",")):
        for samples in (int(s) for s in args.samples_grid.split(",")):
            r = evaluate_cases(model, plan["data"], items, names, steps=steps, samples=samples, space="model")
            rows.append({"steps": steps, "samples": samples, "dice": r["mean"]["dice"],
                         "seconds_per_case": r["seconds_per_case"]})
            print(f"DDIM {steps} x {samples}: {r['mean']['dice']} {r['seconds_per_case']:.2f} s/case", flush=True)
    if (out / "unet" / "checkpoints" / "last.pt").exists():
        unet, uplan, uckpt = load_trained(out / "unet", "best")
        r = evaluate_cases(unet, uplan["data"], items, names, space="model")
        rows.append({"steps": None, "samples": None, "model": "unet", "dice": r["mean"]["dice"],
                     "seconds_per_case": r["seconds_per_case"]})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--models", default="textdiffseg,unet")
    ap.add_argument("--out-dir", default="/tmp/tdseg_cli_runs")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps-grid", default="1,5,10,25")
    ap.add_argument("--samples-grid", default="1,4")
    ap.add_argument("--frontier-cases", type=int, default=4)
    ap.add_argument("--skip-frontier", action="store_true")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    out = Path(args.out_dir)
    q = {**header(args.threads), "minutes": args.minutes, "runs": quality(args, out)}
    (RESULTS / "cli_quality.json").write_text(json.dumps(q, indent=2, default=float) + "\n")
    lines = [f"# Equal budget through `tdseg train` + `tdseg evaluate` ({q['date']}, commit {q['commit']}, "
             f"{q['device']}, {args.minutes:g} min per model)", "",
             "| model | Dice kidney | Dice tumour | HD95 kidney mm | HD95 tumour mm | NSD kidney | NSD tumour | s / case | uncertainty AUROC / ECE |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in q["runs"].items():
        m, u = r["metrics"]["mean"], r["metrics"]["uncertainty"]
        f = lambda v, p=3: "–" if v is None else f"{v:.{p}f}"  # noqa: E731
        unc = "–" if not u else f"{f(u['auroc'])} / {f(u['ece'])}"
        lines.append(f"| {name} | {f(m['dice']['kidney'])} | {f(m['dice']['tumor'])} | {f(m['hd95_mm']['kidney'], 1)} | "
                     f"{f(m['hd95_mm']['tumor'], 1)} | {f(m['surface_dice']['kidney'])} | {f(m['surface_dice']['tumor'])} | "
                     f"{r['metrics']['seconds_per_case']:.2f} | "
                     f"{unc} |")
    (RESULTS / "cli_quality.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)
    if not args.skip_frontier:
        rows = frontier(args, out)
        fr = {**header(args.threads), "cases": args.frontier_cases, "rows": rows}
        (RESULTS / "frontier.json").write_text(json.dumps(fr, indent=2, default=float) + "\n")
        lines = [f"# Speed/quality frontier ({fr['date']}, commit {fr['commit']}, {fr['device']}, "
                 f"{args.frontier_cases} validation cases, model grid)", "",
                 "| model | DDIM steps | samples | Dice kidney | Dice tumour | s / case |", "|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r.get('model', 'textdiffseg')} | {r['steps'] or '–'} | {r['samples'] or '–'} | "
                         f"{r['dice']['kidney']:.3f} | {r['dice']['tumor']:.3f} | {r['seconds_per_case']:.2f} |")
        (RESULTS / "frontier.md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
