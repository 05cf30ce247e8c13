"""Per-step cost of the latent denoiser vs the pixel-space denoiser of the same UNet family.

The point of the label latent (paper abstract: "reduces computational complexity"): a denoiser
step on the 16³ latent of a 64³ patch touches f³ = 64x fewer voxels than one on the one-hot label
map. Both are ``tdseg_lite.denoiser.ConditionalDenoiser`` (MONAI ``DiffusionModelUNet``) built
exactly as ``build_model`` builds them for the ``textdiffseg`` and ``pixel-diffusion`` models,
with attention only where the grid has <= 8³ voxels. Forward pass, batch 2, median of repeats.

    .venv/bin/python benchmarks/bench_denoiser_cost.py [--preset cpu] [--threads 2] [--batches 1,2,4,8] [--device auto]

Writes results/denoiser_cost.json/.md (one row per batch size: at inference the denoiser sees
sliding-window batch x samples, x2 with guidance) with a verdict against the goal (ratio >= 30x);
``bench_quality.py`` calls ``denoiser_cost`` too.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import results_dir, stamp, title, write_report

from tdseg_lite.denoiser import ConditionalDenoiser
from tdseg_lite.model import ModelSpec
from tdseg_lite.utils import pick_device

TEXT_DIM, TOKENS = 384, 64


GOAL = 30.0  # pixel / latent seconds per denoiser step (the goal)


def median_seconds(fn: Any, repeats: int = 5, device: torch.device | None = None) -> float:
    """Median wall-clock seconds of ``fn()`` after one warm-up call (CUDA work waited for)."""
    def sync() -> None:
        if device is not None and device.type == "cuda":
            torch.cuda.synchronize(device)

    fn()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.no_grad()
def denoiser_cost(preset: str = "cpu", patch: int = 64, repeats: int = 5, batch: int = 2,
                  device: torch.device | str = "cpu") -> dict[str, Any]:
    """Forward seconds of one latent and one pixel-space denoiser step and their ratio.

    Batch 2 (a sliding-window batch): at batch 1 PyTorch sends small 3D convs to its slow
    non-oneDNN kernel, which would inflate the latent step about 2x.
    """
    spec = ModelSpec.build(preset)
    f, k, n = spec.label_ae.downsample_factor, spec.label_ae.latent_channels, spec.model.num_classes
    icfg = spec.image_encoder
    scale = f.bit_length() - 1
    grid = (patch // f,) * 3
    cond_ch = icfg.latent_channels + (k if spec.model.aux_condition else 0)  # z_fused ⊕ aux latent
    device = torch.device(device)
    latent = ConditionalDenoiser(k, cond_ch, TEXT_DIM, spec.denoiser,
                                 feature_channels=icfg.channels[scale:], grid=grid).eval().to(device)
    pixel_cfg = dataclasses.replace(spec.denoiser, channels=spec.model.pixel_channels,
                                    attention_levels=spec.model.pixel_attention_levels, multiscale=False)
    pixel = ConditionalDenoiser(n, 1, TEXT_DIM, pixel_cfg, grid=(patch,) * 3).eval().to(device)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, device=device)

    tokens, pooled, t = randn(batch, TOKENS, TEXT_DIM), randn(batch, TEXT_DIM), torch.full((batch,), 500, device=device)
    z, cond = randn(batch, k, *grid), randn(batch, cond_ch, *grid)
    feats = [randn(batch, icfg.channels[scale + i], *(g // 2**i for g in grid)) for i in range(2)]
    x, image = randn(batch, n, patch, patch, patch), randn(batch, 1, patch, patch, patch)
    lat_s = median_seconds(lambda: latent(z, t, cond, tokens, pooled, feats), repeats, device)
    pix_s = median_seconds(lambda: pixel(x, t, image, tokens, pooled), max(1, repeats // 2), device)
    return {"latent_s": lat_s, "pixel_s": pix_s, "ratio": pix_s / lat_s, "latent_grid": f"{k}x{grid[0]}^3",
            "pixel_grid": f"{n}x{patch}^3", "latent_params": sum(p.numel() for p in latent.parameters()),
            "pixel_params": sum(p.numel() for p in pixel.parameters()), "threads": torch.get_num_threads(),
            "batch": batch}


def verdict(rows: list[dict[str, Any]]) -> str:
    """One line: at which batch sizes the pixel / latent ratio reaches ``GOAL``."""
    met = [r["batch"] for r in rows if r["ratio"] >= GOAL]
    missed = [f"batch {r['batch']}: {r['ratio']:.0f}x" for r in rows if r["ratio"] < GOAL]
    if not missed:
        return f"Goal (ratio >= {GOAL:.0f}x): **met** at every batch size measured."
    if not met:
        return f"Goal (ratio >= {GOAL:.0f}x): **not met** ({', '.join(missed)})."
    return (f"Goal (ratio >= {GOAL:.0f}x): **met** at batch {', '.join(map(str, met))}; not at "
            f"{', '.join(missed)} (inference runs batch = sliding-window batch × samples).")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batches", default="1,2,4,8", help="denoiser batch sizes (inference: windows x samples)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--out", default=None, help="output stem (default results[/gpu_NAME]/denoiser_cost)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    rows = [denoiser_cost(args.preset, batch=int(b), repeats=args.repeats, device=device)
            for b in args.batches.split(",")]
    report = {**stamp(device, args.threads), "preset": args.preset, "rows": rows, "goal_ratio": GOAL,
              "verdict": verdict(rows)}
    lines = [title(report, "Per-step denoiser cost, latent vs pixel space",
                   f"{args.preset} preset, forward pass, median of {args.repeats}"), "",
             "| batch | latent s ({}) | pixel s ({}) | ratio pixel / latent |".format(rows[0]["latent_grid"],
                                                                                rows[0]["pixel_grid"]),
             "|---|---|---|---|"]
    lines += [f"| {r['batch']} | {r['latent_s']:.4f} | {r['pixel_s']:.3f} | **{r['ratio']:.0f}x** |" for r in rows]
    lines += ["", report["verdict"]]
    write_report(Path(args.out) if args.out else results_dir(device) / "denoiser_cost", report, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
