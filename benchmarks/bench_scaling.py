"""How each model's cost grows with the volume: a training step and a one-window prediction at 48³ … 128³.

    .venv/bin/python benchmarks/bench_scaling.py [--sizes 48,64,96,128] [--models unet,textdiffseg,pixel-diffusion]

For every model and cube side ``s`` (a patch of s³ voxels, batch 1): the median seconds of one
optimiser step of the real engine (``profiling.measure_training``) and of one ``predict`` call (the
preset's DDIM steps, one sample), then the growth exponent ``b`` of ``seconds ∝ voxels^b`` fitted
by least squares on log–log axes (b = 1: linear in the number of voxels). The denoiser's attention
levels are allowed up to 16³ tokens here (``denoiser.max_attention_tokens=4096``) so that the latent
model builds at 128³; the pixel model attends only on its coarsest level. Writes
``results/scaling.{json,md}`` with device, threads, date and commit.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_step import text_encoder
from common import results_dir, stamp, title, write_report

from tdseg_lite.model import ModelSpec, build_model
from tdseg_lite.profiling import measure_training, synthetic_batch
from tdseg_lite.train import TrainConfig
from tdseg_lite.utils import pick_device


def exponent(sizes: list[int], seconds: list[float]) -> float:
    """Least-squares slope of log(seconds) against log(voxels = s³)."""
    xs, ys = [3 * math.log(s) for s in sizes], [math.log(t) for t in seconds]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def measure(name: str, size: int, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
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
    # (no memory column: on a CPU the process's peak RSS accumulates over the models measured before)
    return {"model": name, "size": size, "train_step_s": train["step_s"], "predict_s": statistics.median(times[1:])}


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
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    for name in args.models.split(","):
        for size in sizes:
            rows.append(measure(name, size, args, device))
            print(json.dumps(rows[-1]), flush=True)
    fits = {name: {key: exponent(sizes, [r[key] for r in rows if r["model"] == name])
                   for key in ("train_step_s", "predict_s")} for name in args.models.split(",")}
    report = {**stamp(device, args.threads), "preset": args.preset, "rows": rows, "exponents": fits}
    lines = [title(report, "Cost vs volume size", f"batch 1, {args.preset} preset networks"), "",
             "| model | " + " | ".join(f"{s}³ step / predict s" for s in sizes) + " | exponent b (step, predict) |",
             "|---" * (len(sizes) + 2) + "|"]
    for name in args.models.split(","):
        cells = [f"{r['train_step_s']:.3f} / {r['predict_s']:.3f}" for r in rows if r["model"] == name]
        lines.append(f"| {name} | " + " | ".join(cells) +
                     f" | {fits[name]['train_step_s']:.2f}, {fits[name]['predict_s']:.2f} |")
    lines += ["", ("seconds ∝ voxels^b, fitted on log–log axes: b = 1 is linear in the number of voxels. "
              "Step = one optimiser step of the real engine; predict = one window, the preset's DDIM steps, "
              "one sample.")]
    write_report(Path(args.out) if args.out else results_dir(device) / "scaling", report, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
