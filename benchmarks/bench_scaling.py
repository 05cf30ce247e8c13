"""How each model's cost grows with the volume: a training step and a one-window prediction at 48³ … 128³.

    .venv/bin/python benchmarks/bench_scaling.py [--sizes 48,64,96,128] [--models unet,textdiffseg,pixel-diffusion]

For every model and cube side ``s`` (a patch of s³ voxels, batch 1): the median seconds of one
optimiser step of the real engine (``profiling.measure_training``) and of one ``predict`` call (the
preset's DDIM steps, one sample), then the growth exponent ``b`` of ``seconds ∝ voxels^b`` fitted
by least squares on log–log axes (b = 1: linear in the number of voxels). The denoiser's attention
levels are allowed up to 16³ tokens here (``denoiser.max_attention_tokens=4096``) so that the latent
model builds at 128³; the pixel model attends only on its coarsest level. Memory: every (model,
size) runs in its own process, which reports its peak memory (CPU: the process's peak RSS, imports
included, and the RSS before the model was built; GPU: peak allocated tensors). Writes
``results/scaling.{json,md}`` with device, threads, date and commit.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_step import text_encoder
from common import results_dir, stamp, title, write_report

from tdseg_lite.model import ModelSpec, build_model
from tdseg_lite.profiling import measure_training, peak_memory_gib, synthetic_batch
from tdseg_lite.train import TrainConfig
from tdseg_lite.utils import pick_device


def exponent(sizes: list[int], seconds: list[float]) -> float:
    """Least-squares slope of log(seconds) against log(voxels = s³); NaN with fewer than two sizes."""
    if len(set(sizes)) < 2:
        return math.nan
    xs, ys = [3 * math.log(s) for s in sizes], [math.log(t) for t in seconds]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def measure(name: str, size: int, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """One (model, size) in this process: step and predict seconds, peak memory (GiB)."""
    before = peak_memory_gib(device)[0] if device.type == "cpu" else 0.0
    spec = ModelSpec.build(args.preset, {"model": name, "denoiser.max_attention_tokens": 4096})
    model = build_model(spec, text_encoder=text_encoder(Path("/tmp/tdseg_scaling"), args.tiny_text)
                        if name != "unet" else None, patch_size=(size,) * 3).to(device)
    batch = synthetic_batch(1, size, spec.model.num_classes, device)
    train = measure_training(model, batch, TrainConfig(device=str(device)), steps=args.steps, warmup=1)
    model.eval()
    times = []
    with torch.no_grad():
        for _ in range(args.steps + 1):
            start = time.perf_counter()
            model.predict(batch["image"], batch["description"], samples=1)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - start)
    peak, kind = peak_memory_gib(device)
    return {"model": name, "size": size, "train_step_s": train["step_s"], "predict_s": statistics.median(times[1:]),
            "peak_memory_gib": peak, "memory_kind": kind, "memory_before_model_gib": before}


def measure_in_subprocess(name: str, size: int, args: argparse.Namespace) -> dict[str, Any]:
    """``measure`` in a fresh process, so that a CPU's peak RSS belongs to this (model, size) alone."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "row.json"
        subprocess.run([sys.executable, __file__, "--models", name, "--sizes", str(size), "--preset", args.preset,
                        "--threads", str(args.threads), "--steps", str(args.steps), "--device", args.device,
                        *["--tiny-text"] * args.tiny_text, "--row-out", str(out)], check=True)
        return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="48,64,96,128")
    ap.add_argument("--models", default="unet,textdiffseg,pixel-diffusion")
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--tiny-text", action="store_true")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--out", default=None, help="output stem (default results[/gpu_NAME]/scaling)")
    ap.add_argument("--row-out", default=None, help=argparse.SUPPRESS)  # child: one model, one size
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.row_out:
        Path(args.row_out).write_text(json.dumps(measure(args.models, sizes[0], args, device)) + "\n")
        return 0
    rows = []
    for name in args.models.split(","):
        for size in sizes:
            rows.append(measure_in_subprocess(name, size, args))
            print(json.dumps(rows[-1]), flush=True)
    fits = {name: {key: exponent(sizes, [r[key] for r in rows if r["model"] == name])
                   for key in ("train_step_s", "predict_s")} for name in args.models.split(",")}
    report = {**stamp(device, args.threads), "preset": args.preset, "rows": rows, "exponents": fits}
    lines = [title(report, "Cost vs volume size", f"batch 1, {args.preset} preset networks"), "",
             "| model | " + " | ".join(f"{s}³ step s / predict s / peak GiB" for s in sizes)
             + " | exponent b (step, predict) |",
             "|---" * (len(sizes) + 2) + "|"]
    for name in args.models.split(","):
        cells = [f"{r['train_step_s']:.3f} / {r['predict_s']:.3f} / {r['peak_memory_gib']:.2f}"
                 for r in rows if r["model"] == name]
        lines.append(f"| {name} | " + " | ".join(cells) +
                     f" | {fits[name]['train_step_s']:.2f}, {fits[name]['predict_s']:.2f} |")
    lines += ["", ("seconds ∝ voxels^b, fitted on log–log axes: b = 1 is linear in the number of voxels. "
              "Step = one optimiser step of the real engine; predict = one window, the preset's DDIM steps, "
              "one sample. Peak GiB = " + (rows[0]["memory_kind"] if rows else "peak memory")
              + (f" of a process that held {statistics.fmean(r['memory_before_model_gib'] for r in rows):.2f} GiB "
                 "before the model was built (the imports)" if rows and device.type == "cpu" else "")
              + "; each (model, size) ran in its own process.")]
    write_report(Path(args.out) if args.out else results_dir(device) / "scaling", report, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
