"""Speed of the text branch: encoding prompts with the offline encoder, and 3D cross-modal attention.

Goals (CPU): encoding 20 prompts after the model is loaded <= 2 s; one cross-attention forward over
a 16^3 latent grid with 16 text tokens <= 50 ms. Reports medians (and min/max) of repeated runs at
1 thread and at torch's default thread count, plus the cached paths (memory, disk) that training
actually uses. On a busy 2-core machine 2 threads can be much slower than 1 (the threads wait for
each other), so both are recorded.

    .venv/bin/python benchmarks/bench_text_fusion.py [--repeats 7] [--device auto] [--threads 1,2]

Writes ``benchmarks/results/text_fusion.json`` with device, threads (the most measured), date and commit.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import stamp, title

from tdseg_lite.config import build_config
from tdseg_lite.fusion import CrossModalAttention3d, FusionConfig
from tdseg_lite.prompts import KNOWN_DATASETS
from tdseg_lite.text import TextConfig, TextEncoder
from tdseg_lite.utils import atomic_write_text, pick_device, versions

RESULTS = Path(__file__).resolve().parent / "results" / "text_fusion.json"
GOALS_S = {"encode_20_prompts": 2.0, "cross_attention_16cubed_16tokens": 0.050}


def twenty_prompts() -> list[str]:
    """20 distinct prompts: every class prompt of the known datasets, then case prompts."""
    prompts = [p for ds in KNOWN_DATASETS.values() for p in ds.class_prompts().values()]
    prompts += [ds.case_prompt("An incidental finding.") for ds in KNOWN_DATASETS.values()]
    unique = list(dict.fromkeys(prompts))
    return unique[:20]


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 1, sync: bool = False) -> dict[str, float]:
    """Median, min and max wall-clock seconds of ``fn`` over ``repeats`` runs after ``warmup``."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if sync:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "repeats": repeats}


def bench_text(repeats: int, device: str) -> dict[str, object]:
    prompts = twenty_prompts()
    out: dict[str, object] = {"prompts": len(prompts)}
    with tempfile.TemporaryDirectory() as tmp:
        enc = TextEncoder(build_config(TextConfig, "smoke"), cache_dir=tmp, device=device)
        start = time.perf_counter()
        enc.model  # noqa: B018 - load tokenizer and weights
        out["load_s"] = time.perf_counter() - start
        out["max_length"], out["dim"] = enc.cfg.max_length, enc.dim
        start = time.perf_counter()
        enc.encode(prompts)  # cold: fills memory and disk
        out["first_encode_20_s"] = time.perf_counter() - start
        out["encode_20_prompts"] = median_seconds(lambda: enc.encode_uncached(prompts), repeats)
        out["encode_20_memory_cache"] = median_seconds(lambda: enc.encode(prompts), repeats)

        def from_disk() -> None:
            TextEncoder(enc.cfg, cache_dir=tmp, device=device).encode(prompts)

        out["encode_20_disk_cache"] = median_seconds(from_disk, repeats)
    return out


def bench_fusion(repeats: int, device: str) -> dict[str, object]:
    dev = pick_device(device)
    cfg = build_config(FusionConfig, "cpu")
    channels, text_dim = 32, 384
    block = CrossModalAttention3d(channels, text_dim, cfg).to(dev).eval()
    out: dict[str, object] = {"image_channels": channels, "text_dim": text_dim,
                              "num_heads": cfg.num_heads, "head_dim": cfg.head_dim}
    sync = dev.type == "cuda"
    for size, tokens in ((16, 16), (16, 64), (32, 16)):
        image = torch.randn(1, channels, size, size, size, device=dev)
        text = torch.randn(1, tokens, text_dim, device=dev)
        mask = torch.ones(1, tokens, dtype=torch.bool, device=dev)
        key = f"cross_attention_{size}cubed_{tokens}tokens"
        for suffix, maps in (("", False), ("_with_maps", True)):
            if maps and (size, tokens) != (16, 16):
                continue

            @torch.no_grad()
            def forward(image=image, text=text, mask=mask, maps=maps) -> None:
                block(image, text, mask, return_attention=maps)

            out[key + suffix] = median_seconds(forward, repeats * 3, warmup=3, sync=sync)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per measurement (median reported)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--threads", default=f"1,{torch.get_num_threads()}",
                        help="comma-separated torch thread counts to measure (default: 1 and torch's default)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to write the JSON")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    import transformers  # noqa: F401 - timed once here so that load_s below is the weights only

    import_s = time.perf_counter() - start
    thread_counts = list(dict.fromkeys(int(t) for t in args.threads.split(",")))
    device = pick_device(args.device)
    runs = {}
    for threads in thread_counts:
        torch.set_num_threads(threads)
        runs[str(threads)] = {"text": bench_text(args.repeats, args.device),
                              "fusion": bench_fusion(args.repeats, args.device)}
    best = {
        "encode_20_prompts": min(r["text"]["encode_20_prompts"]["median_s"] for r in runs.values()),
        "cross_attention_16cubed_16tokens":
            min(r["fusion"]["cross_attention_16cubed_16tokens"]["median_s"] for r in runs.values()),
    }
    report = {
        "benchmark": "text_fusion",
        **stamp(device, max(thread_counts)),
        "threads_measured": list(runs),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "versions": versions(),
        "note": "wall-clock medians (and min/max) per thread count; shared machines give noisy timings",
        "import_transformers_s": import_s,
        "goals_s": GOALS_S,
        "best_median_s": best,
        "goals_met": {k: best[k] <= GOALS_S[k] for k in GOALS_S},
        "runs_by_threads": runs,
    }
    atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")
    print(title(report, "Text encoding and cross-modal attention speed", f"threads {', '.join(runs)} measured"))
    for threads, run in runs.items():
        text, fusion = run["text"], run["fusion"]
        print(f"[threads={threads}] load {text['load_s']:.2f} s; encode 20 prompts (uncached): "
              f"{text['encode_20_prompts']['median_s'] * 1e3:.0f} ms; memory cache "
              f"{text['encode_20_memory_cache']['median_s'] * 1e3:.2f} ms; disk cache "
              f"{text['encode_20_disk_cache']['median_s'] * 1e3:.1f} ms")
        for key, value in fusion.items():
            if isinstance(value, dict):
                print(f"[threads={threads}] {key}: median {value['median_s'] * 1e3:.1f} ms "
                      f"(min {value['min_s'] * 1e3:.1f})")
    print(f"import transformers: {import_s:.2f} s (once)")
    print(f"goals {GOALS_S} met (best thread count): {report['goals_met']}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
