"""Per-step cost of the latent denoiser vs the pixel-space denoiser of the same UNet family.

The point of the label latent (paper abstract: "reduces computational complexity"): a denoiser
step on the 16³ latent of a 64³ patch touches f³ = 64x fewer voxels than one on the one-hot label
map. Both are ``tdseg_lite.denoiser.ConditionalDenoiser`` (MONAI ``DiffusionModelUNet``) built
exactly as ``build_model`` builds them for the ``textdiffseg`` and ``pixel-diffusion`` models,
with attention only where the grid has <= 8³ voxels. Forward pass, batch 2, median of repeats.

    .venv/bin/python benchmarks/bench_denoiser_cost.py [--preset cpu] [--threads 2] [--batches 1,2,4,8]

Writes results/denoiser_cost.json/.md (one row per batch size: at inference the denoiser sees
sliding-window batch x samples, x2 with guidance); ``bench_quality.py`` calls ``denoiser_cost`` and reports the ratio (goal >= 30x).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from tdseg_lite.denoiser import ConditionalDenoiser
from tdseg_lite.model import ModelSpec

TEXT_DIM, TOKENS = 384, 64


def median_seconds(fn: Any, repeats: int = 5) -> float:
    """Median wall-clock seconds of ``fn()`` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.no_grad()
def denoiser_cost(preset: str = "cpu", patch: int = 64, repeats: int = 5, batch: int = 2) -> dict[str, Any]:
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
    latent = ConditionalDenoiser(k, cond_ch, TEXT_DIM, spec.denoiser,
                                 feature_channels=icfg.channels[scale:], grid=grid).eval()
    pixel_cfg = dataclasses.replace(spec.denoiser, channels=spec.model.pixel_channels,
                                    attention_levels=spec.model.pixel_attention_levels, multiscale=False)
    pixel = ConditionalDenoiser(n, 1, TEXT_DIM, pixel_cfg, grid=(patch,) * 3).eval()
    tokens, pooled, t = torch.randn(batch, TOKENS, TEXT_DIM), torch.randn(batch, TEXT_DIM), torch.full((batch,), 500)
    z, cond = torch.randn(batch, k, *grid), torch.randn(batch, cond_ch, *grid)
    feats = [torch.randn(batch, icfg.channels[scale + i], *(g // 2**i for g in grid)) for i in range(2)]
    x, image = torch.randn(batch, n, patch, patch, patch), torch.randn(batch, 1, patch, patch, patch)
    lat_s = median_seconds(lambda: latent(z, t, cond, tokens, pooled, feats), repeats)
    pix_s = median_seconds(lambda: pixel(x, t, image, tokens, pooled), max(1, repeats // 2))
    return {"latent_s": lat_s, "pixel_s": pix_s, "ratio": pix_s / lat_s, "latent_grid": f"{k}x{grid[0]}^3",
            "pixel_grid": f"{n}x{patch}^3", "latent_params": sum(p.numel() for p in latent.parameters()),
            "pixel_params": sum(p.numel() for p in pixel.parameters()), "threads": torch.get_num_threads(),
            "batch": batch}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batches", default="1,2,4,8", help="denoiser batch sizes (inference: windows x samples)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "denoiser_cost"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [denoiser_cost(args.preset, batch=int(b), repeats=args.repeats) for b in args.batches.split(",")]
    report = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "preset": args.preset,
              "device": f"cpu ({platform.machine()}), {args.threads} threads", "load_average": os.getloadavg(),
              "commit": _commit(), "rows": rows}
    lines = [f"Per-step denoiser cost, latent vs pixel space ({report['device']}, {report['date']}, commit "
             f"{report['commit']}; forward pass, median of {args.repeats})", "",
             "| batch | latent s ({}) | pixel s ({}) | ratio pixel / latent |".format(rows[0]["latent_grid"],
                                                                                rows[0]["pixel_grid"]),
             "|---|---|---|---|"]
    lines += [f"| {r['batch']} | {r['latent_s']:.4f} | {r['pixel_s']:.3f} | **{r['ratio']:.0f}x** |" for r in rows]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parent, check=False).stdout.strip() or "?"
    except OSError:
        return "?"


if __name__ == "__main__":
    raise SystemExit(main())
