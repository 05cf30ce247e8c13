"""TextDiffSeg vs the MONAI UNet vs pixel-space diffusion under the same wall-clock training budget.

    .venv/bin/python benchmarks/bench_quality.py --minutes 15 --models unet,textdiffseg,pixel-diffusion
    .venv/bin/python benchmarks/bench_quality.py --minutes 2 --models textdiffseg --set diffusion.mse_weight=0.5

Protocol: the phantom kidney task with the ``cpu`` data
preset (40 cases, 3 mm, 64³ patches, 32 train / 8 val), every volume cached in RAM before the
clock starts, ``torch.set_num_threads(2)``, models trained one after another. The budget is wall
clock and includes everything a model needs (TextDiffSeg: its label-autoencoder phase too).
Evaluation: ``sliding_window_inference`` over each whole validation volume (roi 64³, overlap 0.5),
argmax, per-class Dice (``DiceMetric``) and HD95 in mm (``HausdorffDistanceMetric``, undefined
when a class present in the label is not predicted; counted). For TextDiffSeg the script also
reports its aux head alone (same model, no diffusion), the denoiser used as a one-step predictor,
the label-AE ceiling dec(enc(y)) with and without the image skip, and the per-step denoiser cost
of the latent vs the pixel-space denoiser (``bench_denoiser_cost.py``).

Writes ``benchmarks/results/quality.json`` and ``quality.md`` (or ``--out``) with device, threads,
date and commit.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_denoiser_cost import denoiser_cost
from common import stamp, title, write_report

from tdseg_lite.config import build_config, parse_set_arguments
from tdseg_lite.data import (
    DataConfig,
    default_dataset,
    ensure_splits,
    load_datalist,
    make_datasets,
    make_loaders,
    val_transforms,
)
from tdseg_lite.inference import evaluate, per_class_metrics
from tdseg_lite.model import AuxHeadView, ModelSpec, build_model
from tdseg_lite.prompts import dataset_prompts
from tdseg_lite.text import TextEncoder
from tdseg_lite.train import TrainConfig, fit
from tdseg_lite.utils import pick_device, seed_everything, versions

RESULTS = Path(__file__).resolve().parent / "results" / "quality"
CLASSES = ("kidney", "tumor")


def parse_sets(items: list[str]) -> dict[str, Any]:
    """``["diffusion.eta=0.5", "model.aux_head=false"]`` -> typed overrides (JSON values, else strings)."""
    return parse_set_arguments(items)


def load_data(args: argparse.Namespace) -> dict[str, Any]:
    """Cached train/val datasets, loaders, and the training label volumes (for the AE phase)."""
    dcfg = build_config(DataConfig, args.preset)
    root = default_dataset(dcfg, args.data or "", artifacts=args.artifacts)
    splits_path = Path(args.artifacts) / "splits_quality.json"
    train_ds, val_ds = make_datasets(dcfg, root, splits_path=splits_path)
    train_loader, val_loader = make_loaders(dcfg, train_ds, val_ds)
    by_id = {e["case_id"]: e for e in load_datalist(root)}
    split = ensure_splits(root, dcfg.val_fraction, dcfg.split_seed, path=splits_path)
    tf = val_transforms(dcfg)
    volumes = [tf(by_id[c])["label"][0].as_tensor().to(torch.uint8) for c in split["train"]]
    val_cases = [val_ds[i] for i in range(len(val_ds))]
    return {"cfg": dcfg, "root": root, "train_loader": train_loader, "val_loader": val_loader,
            "label_volumes": volumes, "val_cases": val_cases, "n_train": len(train_ds), "n_val": len(val_ds)}


def saved_model_parser(description: str, out: Path) -> argparse.ArgumentParser:
    """Arguments of the scripts that score a model saved by ``--save`` (bench_sampler)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--model", required=True, help="{spec, state_dict} file from bench_quality.py --save")
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--artifacts", default="/tmp/bq/art")
    ap.add_argument("--data", default="")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(out))
    return ap


def load_saved_run(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """``(model, data)`` for ``saved_model_parser``'s arguments, with the thread count applied."""
    torch.set_num_threads(args.threads)
    return load_saved_model(args.model, args.artifacts), load_data(args)


def load_saved_model(path: str | Path, artifacts: str | Path) -> Any:
    """A model written by ``--save`` (``{spec, state_dict}``), rebuilt with the offline text encoder, in eval mode."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    spec = ModelSpec.from_dict(saved["spec"])
    model = build_model(spec, text_encoder=TextEncoder(spec.text, cache_dir=Path(artifacts) / "text_cache"),
                        phrases=dataset_prompts("phantom_kidney").phrases, patch_size=(64, 64, 64))
    model.load_state_dict(saved["state_dict"])
    return model.eval()


def _pad(x: torch.Tensor, k: int) -> torch.Tensor:
    pads = [p for s in reversed(x.shape[2:]) for p in (0, (-s) % k)]
    return torch.nn.functional.pad(x, pads)


def ceiling_metrics(model: Any, cases: list[dict[str, Any]], spacing: tuple[float, ...]) -> dict[str, Any]:
    """Mean per-class Dice of dec(enc(y)) without and with the image skip, whole volumes."""
    rows: dict[str, list[list[float]]] = {"ae": [], "ae_skip": []}
    for case in cases:
        image, label = case["image"][None].as_tensor(), case["label"][None].as_tensor()
        shape = label.shape[2:]
        pimage, plabel = _pad(image, 2 * model.factor), _pad(label, 2 * model.factor)
        with torch.no_grad():
            z = model.encode_labels(plabel)
            plain = model.label_ae.decode(z)[..., :shape[0], :shape[1], :shape[2]]
            skip = model.ceiling(pimage, plabel)[..., :shape[0], :shape[1], :shape[2]]
        rows["ae"].append(per_class_metrics(plain, label, model.num_classes, spacing)["dice"])
        rows["ae_skip"].append(per_class_metrics(skip, label, model.num_classes, spacing)["dice"])
    return {k: dict(zip(CLASSES, _nanmean_cols(v))) for k, v in rows.items()}


def _nanmean_cols(rows: list[list[float]]) -> list[float]:
    cols = list(zip(*rows))
    return [sum(v for v in c if not math.isnan(v)) / max(1, sum(not math.isnan(v) for v in c)) for c in cols]


def run_model(name: str, args: argparse.Namespace, data: dict[str, Any], encoder: TextEncoder) -> dict[str, Any]:
    """Train one model for the budget, evaluate it (and its parts) on the validation cases."""
    seed_everything(args.seed)
    dcfg, sets = data["cfg"], parse_sets(args.set)
    spec = ModelSpec.build(args.preset, {**{k: v for k, v in sets.items() if not k.startswith("train.")},
                                         "model": name})
    tcfg = build_config(TrainConfig, args.preset, {"device": args.device,
                                                    **{k[6:]: v for k, v in sets.items() if k.startswith("train.")}})
    phrases = dataset_prompts("phantom_kidney").phrases
    model = build_model(spec, text_encoder=encoder, phrases=phrases, patch_size=dcfg.patch_size)
    model.to(pick_device(args.device))
    budget = args.minutes * 60
    load0 = os.getloadavg()
    start = time.perf_counter()
    pre = model.pretrain(data["label_volumes"], max_seconds=min(args.ae_seconds, budget / 2), seed=args.seed,
                         max_steps=args.ae_iters)
    history = fit(model, data["train_loader"], tcfg, max_seconds=None if args.max_iters else
                  budget - (time.perf_counter() - start), max_steps=args.max_iters, verbose=args.verbose)
    train_seconds = time.perf_counter() - start
    if args.save:
        Path(args.save).mkdir(parents=True, exist_ok=True)
        torch.save({"spec": spec.to_dict(), "state_dict": model.state_dict()}, Path(args.save) / f"{name}.pt")
    kw = {"roi_size": dcfg.patch_size, "spacing": dcfg.spacing, "class_names": CLASSES,
          "max_cases": args.max_val_cases}
    gen = torch.Generator().manual_seed(args.seed)
    result: dict[str, Any] = {
        "model": name, "budget_s": budget, "train_seconds": train_seconds, "pretrain_steps": pre.get("steps", 0),
        "pretrain_seconds": pre.get("train_seconds", 0.0), "train_steps": history["steps"],
        "final_losses": {k: history[k][-1] for k in history if isinstance(history.get(k), list) and history[k]
                         and k not in ("step", "seconds", "lr", "val")},
        "load_during_training": [load0, os.getloadavg()],
        "metrics": evaluate(model, data["val_loader"], steps=args.steps, generator=gen, **kw,
                            samples=args.pixel_samples if name == "pixel-diffusion" else args.samples),
        "sampler": {"steps": args.steps or spec.diffusion.inference_steps,
                    "samples": args.pixel_samples if name == "pixel-diffusion" else
                    (args.samples or spec.diffusion.samples), "guidance": spec.diffusion.guidance_scale},
        "spec": spec.to_dict()}
    if getattr(model, "predict_aux", None) is not None and spec.model.aux_head and spec.model.image_features:
        result["aux_head"] = evaluate(AuxHeadView(model), data["val_loader"], **kw)
    if getattr(model, "dcfg", None) is not None and name != "pixel-diffusion":
        result["one_step"] = evaluate(model, data["val_loader"], steps=1, samples=1,
                                      generator=torch.Generator().manual_seed(args.seed), **kw)
    if getattr(model, "ceiling", None) is not None:
        result["ceiling"] = ceiling_metrics(model, data["val_cases"][:args.max_val_cases], dcfg.spacing)
    for key in ("metrics", "aux_head", "one_step"):
        if key in result and not args.keep_cases:
            result[key].pop("cases", None)
    print(f"[{name}] {summary_line(result)}", flush=True)
    return result


def summary_line(r: dict[str, Any]) -> str:
    m = r["metrics"]
    parts = [f"iters {r['train_steps']} (+{r['pretrain_steps']} AE)", "Dice " + " / ".join(
        f"{m['mean']['dice'][c]:.3f}" for c in CLASSES), f"{m['seconds_per_case']:.2f} s/case"]
    if "aux_head" in r:
        parts.append("aux " + " / ".join(f"{r['aux_head']['mean']['dice'][c]:.3f}" for c in CLASSES))
    if "one_step" in r:
        parts.append("1-step " + " / ".join(f"{r['one_step']['mean']['dice'][c]:.3f}" for c in CLASSES))
    if "ceiling" in r:
        plain = " / ".join(f"{r['ceiling']['ae'][c]:.3f}" for c in CLASSES)
        skip = " / ".join(f"{r['ceiling']['ae_skip'][c]:.3f}" for c in CLASSES)
        parts.append(f"ceiling {plain} (skip {skip})")
    return ", ".join(parts)


def markdown(report: dict[str, Any]) -> str:
    """A heading naming device, date and commit, then the results table of ``report``."""
    header = (f"Threads {report['threads']}, load average at start "
              f"{report['load_start']}, at end {report['load_end']}. Budget {report['minutes']} min per model "
              f"(training incl. the AE phase). Data: phantom kidney, {report['n_train']} train / {report['n_val']} "
              f"val cases, cpu preset. Sampling (diffusion models): {report['sampler']}.")
    lines = [title(report, "Segmentation quality at equal wall clock", f"{report['minutes']} min per model"), "",
             header, "",
             "| model | iters (AE) | Dice kidney | Dice tumour | HD95 kidney mm | HD95 tumour mm (n undef) | s/case |",
             "|---|---|---|---|---|---|---|"]

    def row(label: str, it: str, m: dict[str, Any]) -> str:
        d, h, u = m["mean"]["dice"], m["mean"]["hd95_mm"], m["undefined"]["hd95_mm"]
        return (f"| {label} | {it} | {d['kidney']:.3f} | {d['tumor']:.3f} | {h['kidney']:.1f} | {h['tumor']:.1f} "
                f"({u['tumor']}) | {m['seconds_per_case']:.2f} |")

    for r in report["runs"]:
        it = f"{r['train_steps']} ({r['pretrain_steps']})"
        lines.append(row(f"**{r['model']}**", it, r["metrics"]))
        if "aux_head" in r:
            lines.append(row(f"{r['model']}: aux head alone (no diffusion)", it, r["aux_head"]))
        if "one_step" in r:
            lines.append(row(f"{r['model']}: denoiser, 1 step from noise", it, r["one_step"]))
        if "ceiling" in r:
            c = r["ceiling"]
            lines.append(f"| {r['model']}: AE ceiling dec(enc(y)) / with image skip | – | {c['ae']['kidney']:.3f} / "
                         f"{c['ae_skip']['kidney']:.3f} | {c['ae']['tumor']:.3f} / {c['ae_skip']['tumor']:.3f} "
                         "| – | – | – |")
    cost = report.get("denoiser_cost")
    if cost:
        lines += ["", (f"Per-step denoiser cost (forward, batch {cost['batch']}, median): latent "
                       f"{cost['latent_s']:.3f} s ({cost['latent_grid']}), pixel {cost['pixel_s']:.3f} s "
                       f"({cost['pixel_grid']}): **{cost['ratio']:.0f}x** (goal >= 30x).")]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=15.0, help="training budget per model (wall clock)")
    parser.add_argument("--models", default="unet,textdiffseg,pixel-diffusion")
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ae-seconds", type=float, default=90.0, help="TextDiffSeg's label-AE phase (in the budget)")
    parser.add_argument("--steps", type=int, default=None, help="DDIM steps at evaluation (default: the config's)")
    parser.add_argument("--samples", type=int, default=None, help="samples per window (default: the config's)")
    parser.add_argument("--pixel-samples", type=int, default=1, help="samples for pixel-diffusion (64x the cost)")
    parser.add_argument("--max-val-cases", type=int, default=None)
    parser.add_argument("--set", action="append", default=[], help="part.field=value (JSON), e.g. diffusion.eta=0.5")
    parser.add_argument("--data", default="")
    parser.add_argument("--artifacts", default=os.environ.get("TDSEG_ARTIFACTS", "artifacts"))
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--no-cost", action="store_true", help="skip the denoiser cost measurement")
    parser.add_argument("--keep-cases", action="store_true", help="keep per-case metrics in the JSON")
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--device", default="cpu", help="cpu (the protocol) | auto | cuda")
    parser.add_argument("--save", default="", help="folder for {spec, state_dict} of each trained model")
    parser.add_argument("--max-iters", type=int, default=None, help="iteration budget instead of wall clock")
    parser.add_argument("--ae-iters", type=int, default=None, help="AE iteration budget (with --max-iters)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    report: dict[str, Any] = {**stamp(pick_device(args.device), args.threads), "minutes": args.minutes,
                              "load_start": [round(v, 2) for v in os.getloadavg()], "seed": args.seed, "sets": args.set,
                              "versions": versions(), "command": " ".join(sys.argv)}
    data = load_data(args)
    report.update(n_train=data["n_train"], n_val=data["n_val"])
    spec_sets = {k: v for k, v in parse_sets(args.set).items() if not k.startswith("train.")}
    encoder = TextEncoder(ModelSpec.build(args.preset, spec_sets).text, cache_dir=Path(args.artifacts) / "text_cache")
    report["runs"] = [run_model(name.strip(), args, data, encoder) for name in args.models.split(",")]
    report["sampler"] = "; ".join(f"{r['model']}: DDIM {r['sampler']['steps']} steps x {r['sampler']['samples']} "
                                  f"sample(s), w={r['sampler']['guidance']}" for r in report["runs"] if "sampler" in r
                                  and r["model"] != "unet") or "n/a"
    if not args.no_cost:
        report["denoiser_cost"] = denoiser_cost(args.preset)
    report["load_end"] = [round(v, 2) for v in os.getloadavg()]
    write_report(Path(args.out), report, markdown(report).splitlines())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
