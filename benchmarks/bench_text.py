"""Does the report guide the segmentation? ``tdseg bench text``: models × seeds × six report conditions.

    .venv/bin/python benchmarks/bench_text.py                       # textdiffseg, text-unet, unet; 3 seeds; 10 min
    .venv/bin/python benchmarks/bench_text.py --minutes 1 --seeds 0 --test-cases 4      # a quick look
    .venv/bin/python benchmarks/bench_text.py --models "tds-structured=textdiffseg@text.model=structured"
    .venv/bin/python benchmarks/bench_text.py --decoys 1 --models textdiffseg,unet     # side only in the report

Each run trains one model at the ``cpu`` preset for the same wall clock (``--minutes``; runs go
``--parallel`` at a time, ``--threads`` each, so every run gets the same share of the machine) on the
phantom's training split, with the label autoencoder **reused** from the cache (``label_cache.py``;
its one-off training time is reported). It is then scored on a **test phantom it never saw**
(``--test-cases`` new cases, another seed) under six conditions (``reports.report_conditions``):

* ``right`` -- the case's own report; ``none`` -- no report (the label names only);
* ``other`` -- another case's report; ``swapped`` -- the own report with left and right exchanged;
* ``no_tumour`` -- "Both kidneys are normal; no renal tumour."; ``paraphrase`` -- the own facts in a
  phrasing never used in training (``reports.HELD_OUT_STYLES``).

Per condition: kidney and tumour Dice (tumour over the cases with a tumour), tumour false-positive
mL per tumour-free case, and the share of the predicted tumour volume that lies on the side of the
body the report names (cases whose report names a tumour side and that predict some tumour). The
table gives mean ± sd over seeds; verdict lines check the targets. A ``--models`` entry is a model
name or ``label=model@part.field=value@...``. Runs are stored per (label, seed) in ``--work`` and
re-used when their JSON exists (``--fresh`` ignores them); each run's weights are kept next to it
(``<label>_seed<seed>.pt``, ``{spec, state_dict}``: notebook 06 shows what such a model does with a report).

``--decoys P`` trains and tests on phantoms where each tumour-free kidney gets, with probability P,
a *decoy*: a lesion that looks like a tumour but is labelled kidney and is not in the report
(``phantom.findings.add_decoys``). On the plain phantom the image shows where the tumour is, so a
model has no reason to read the side from the report; with decoys only the report tells the tumour
from its look-alike, and the swapped report should move the prediction to the other kidney.

Writes ``results/text_effect.json`` and ``.md`` (``text_effect_decoys`` with ``--decoys``; stamped:
device, threads, date, commit).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import fmt, parse_models, results_dir, stamp, title, write_report

from tdseg_lite.reports import CONDITIONS, parse_report, report_conditions

DEFAULT_MODELS = "textdiffseg,text-unet,unet"
TARGETS = ("right − none tumour Dice ≥ +0.10 (TextDiffSeg)", "no-tumour report: ≤ 0.5 mL per tumour-free case",
           "swapped ≥ 0.05 tumour Dice below right", "paraphrase within 0.03 of right",
           "TextDiffSeg (right) ≥ UNet + 0.05 tumour Dice")


def side_fraction(pred: torch.Tensor, label: torch.Tensor, report_text: str | None) -> float | None:
    """Share of the predicted tumour voxels on the side(s) the report names (None: nothing to judge).

    The sides are split at the midline between the kidneys (mean x of the kidney voxels; x grows
    towards the patient's right in the RAS model grid).
    """
    report = parse_report(report_text)
    tumour = pred == 2
    if report is None or not report.tumours or not bool(tumour.any()) or not bool((label > 0).any()):
        return None
    mid = float((label > 0).nonzero()[:, 0].float().mean())
    xs = tumour.nonzero()[:, 0].float()
    inside = ((xs > mid) & ("right" in report.tumour_sides)) | ((xs <= mid) & ("left" in report.tumour_sides))
    return float(inside.float().mean())


def _mean(values: list[float | None]) -> float:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return sum(vals) / len(vals) if vals else math.nan


def phantoms(args: argparse.Namespace, dcfg: Any) -> tuple[Path, Path]:
    """(training dataset, test dataset) folders under ``--work``; generated when absent.

    Without ``--decoys`` the training set is the run's default phantom; the test set is always
    ``--test-cases`` new cases of seed ``--test-seed``.
    """
    from tdseg_lite.data import default_dataset
    from tdseg_lite.phantom import PhantomConfig, ensure_phantom

    data = Path(args.work) / "artifacts" / "data"
    tag = f"_decoys{args.decoys:g}" if args.decoys else ""
    test = ensure_phantom(data / f"phantom_kidney_test_{args.test_cases}{tag}", PhantomConfig(
        task="kidney", num_cases=args.test_cases, seed=args.test_seed, decoy_fraction=args.decoys))
    if not args.decoys:
        return Path(default_dataset(dcfg, "", artifacts=data.parent)), Path(test)
    train = ensure_phantom(data / f"phantom_kidney{tag}", PhantomConfig(
        task="kidney", num_cases=dcfg.phantom_cases, seed=dcfg.phantom_seed, decoy_fraction=args.decoys))
    return Path(train), Path(test)


def worker(args: argparse.Namespace) -> int:
    """Train one (model, seed) for the budget and score it under every condition; writes ``--result``."""
    from tdseg_lite.config import build_config, parse_set_arguments
    from tdseg_lite.data import DataConfig, load_datalist, make_datasets, make_loaders, val_transforms
    from tdseg_lite.inference import case_metrics, sliding_window_predict
    from tdseg_lite.label_cache import cached_label_autoencoder
    from tdseg_lite.model import AuxHeadView, ModelSpec, build_model
    from tdseg_lite.prompts import dataset_prompts
    from tdseg_lite.text import make_text_encoder
    from tdseg_lite.train import TrainConfig, fit
    from tdseg_lite.utils import seed_everything

    torch.set_num_threads(args.threads)
    art = Path(args.work) / "artifacts"
    os.environ.setdefault("TDSEG_ARTIFACTS", str(art))
    label, (name, sets) = next(iter(parse_models(args.models).items()))
    sets = parse_set_arguments([f"{k}={v}" for k, v in sets.items()] + list(args.set))
    dcfg = build_config(DataConfig, args.preset, {k[5:]: v for k, v in sets.items() if k.startswith("data.")})
    root, test_root = phantoms(args, dcfg)
    train_ds, val_ds = make_datasets(dcfg, root, splits_path=Path(args.work) / "splits.json")
    loader, _ = make_loaders(dcfg, train_ds, val_ds)
    tf = val_transforms(dcfg)
    entries = load_datalist(test_root)
    cases = [tf(e) for e in entries]
    seed_everything(args.seed)
    spec = ModelSpec.build(args.preset, {**{k: v for k, v in sets.items() if not k.startswith(("train.", "data."))},
                                         "model": name})
    tcfg = build_config(TrainConfig, args.preset, {"seed": args.seed, "device": args.device,
                                                    **{k[6:]: v for k, v in sets.items() if k.startswith("train.")}})
    encoder = make_text_encoder(spec.text) if spec.model.text_fusion and name != "unet" else None
    model = build_model(spec, text_encoder=encoder, phrases=dataset_prompts("phantom_kidney").phrases,
                        patch_size=dcfg.patch_size)
    ae = {"source": None, "seconds": 0.0}
    if hasattr(model, "label_ae"):
        res = cached_label_autoencoder(dcfg, root, model.label_ae.cfg, seed=0)
        model.label_ae.load_state_dict(res.model.state_dict())
        ae = {"source": res.source, "seconds": res.seconds}
    side: dict[str, Any] = {"seconds": 0.0}
    start = time.perf_counter()
    if getattr(model, "side_reader", None) is not None:  # fusion.side_map: its reader's phase counts in the budget
        from tdseg_lite.label_cache import training_label_volumes

        items = train_ds.data
        taught = model.pretrain_side([e.get("description") for e in items], training_label_volumes(dcfg, items),
                                     seed=args.seed)
        side = {**(taught or {}), "seconds": time.perf_counter() - start}
    history = fit(model, loader, tcfg, max_seconds=args.minutes * 60 - side["seconds"], max_steps=10**9)
    train_seconds = time.perf_counter() - start
    model.eval()
    conds = report_conditions([e.get("description") for e in entries], seed=args.seed)
    views: dict[str, Any] = {"model": model}
    if getattr(model, "predict_aux", None) is not None and spec.model.aux_head and spec.model.image_features:
        views["aux head"] = AuxHeadView(model)
    sampler = {"steps": args.steps, "samples": args.samples} if hasattr(model, "dcfg") else {}
    scores: dict[str, Any] = {}
    seconds = []
    for view_name, view in views.items():
        for cond in CONDITIONS if view_name == "model" else ("right", "none"):
            rows = []
            for i, case in enumerate(cases):
                image, lab = case["image"][None].as_tensor(), case["label"][None].as_tensor()
                prompt = model.text.prompts([conds[cond][i]])[0] if getattr(model, "text", None) is not None else None
                kw = {**sampler, "generator": torch.Generator().manual_seed(args.seed)} if hasattr(view, "dcfg") else {}
                t0 = time.perf_counter()
                with torch.no_grad():
                    probs = sliding_window_predict(view, image, prompt, roi_size=dcfg.patch_size, **kw)
                seconds.append(time.perf_counter() - t0)
                probs = probs.cpu()
                m = case_metrics(probs, lab, 3, dcfg.spacing)
                pred, truth = probs.argmax(1)[0], lab[0, 0]
                rows.append({"dice_kidney": m["dice"][0], "dice_tumour": m["dice"][1],
                             "has_tumour": bool((truth == 2).any()),
                             "tumour_ml": float((pred == 2).sum()) * math.prod(dcfg.spacing) / 1000,
                             "side_fraction": side_fraction(pred, truth, conds[cond][i])})
            scores[f"{view_name}/{cond}"] = {
                "dice_kidney": _mean([r["dice_kidney"] for r in rows]),
                "dice_tumour": _mean([r["dice_tumour"] for r in rows]),
                "fp_ml_tumour_free": _mean([r["tumour_ml"] for r in rows if not r["has_tumour"]]),
                "side_fraction": _mean([r["side_fraction"] for r in rows]), "cases": rows}
    torch.save({"spec": spec.to_dict(), "state_dict": model.state_dict()}, Path(args.result).with_suffix(".pt"))
    result = {"label": label, "model": name, "sets": sets, "seed": args.seed, "train_seconds": train_seconds,
              "steps": history["steps"], "label_ae": ae, "side_reader": side, "sampler": sampler,
              "seconds_per_case": sum(seconds) / len(seconds), "scores": scores}
    Path(args.result).write_text(json.dumps(result, indent=1, default=float) + "\n")
    right = scores["model/right"]
    print(f"[{label} seed {args.seed}] {history['steps']} steps; right: kidney {right['dice_kidney']:.3f} tumour "
          f"{right['dice_tumour']:.3f}; none tumour {scores['model/none']['dice_tumour']:.3f}", flush=True)
    return 0


def _stats(values: list[float]) -> tuple[float, float]:
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return math.nan, math.nan
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else math.nan


def side_shift(run: dict[str, Any], single_side: list[bool]) -> float:
    """How far the swapped report moves the predicted tumour: mean of share(right) + share(swapped) − 1.

    Over the cases whose report names exactly one tumour side (``single_side``) and that predict
    tumour under both reports. ``share`` is the fraction of predicted tumour on the side the report
    names, so for a model that ignores the side share(swapped) = 1 − share(right) and the shift is 0;
    1 means all predicted tumour follows the report to the other kidney.
    """
    right, swapped = run["scores"]["model/right"]["cases"], run["scores"]["model/swapped"]["cases"]
    return _mean([a["side_fraction"] + b["side_fraction"] - 1 for a, b, one in zip(right, swapped, single_side)
                  if one and a["side_fraction"] is not None and b["side_fraction"] is not None])


def single_sided(descriptions: list[str | None]) -> list[bool]:
    """Whether each report names a tumour in exactly one kidney."""
    reports = [parse_report(d) for d in descriptions]
    return [r is not None and len(r.tumour_sides) == 1 for r in reports]


def aggregate(runs: list[dict[str, Any]], single_side: list[bool] | None = None) -> dict[str, Any]:
    """``{label: {view/condition: {metric: (mean, sd)}}}`` over seeds, plus per-label steps (and side shift)."""
    out: dict[str, Any] = {}
    for label in dict.fromkeys(r["label"] for r in runs):
        mine = [r for r in runs if r["label"] == label]
        table = {}
        for key in mine[0]["scores"]:
            table[key] = {m: _stats([r["scores"][key][m] for r in mine])
                          for m in ("dice_kidney", "dice_tumour", "fp_ml_tumour_free", "side_fraction")}
        out[label] = {"model": mine[0]["model"], "seeds": [r["seed"] for r in mine], "scores": table,
                      "steps": _stats([float(r["steps"]) for r in mine]),
                      "seconds_per_case": _stats([r["seconds_per_case"] for r in mine]),
                      "label_ae": mine[0]["label_ae"]}
        if single_side is not None:
            out[label]["side_shift"] = _stats([side_shift(r, single_side) for r in mine])
    return out


def verdicts(agg: dict[str, Any], tds: str | None = None, unet: str = "unet") -> list[str]:
    """One line per target, computed (met / not met, by how much), for ``tds``: the run labelled
    ``textdiffseg``, else the first TextDiffSeg variant (named in the lines)."""
    if tds is None:
        variants = [label for label, r in agg.items() if r["model"] == "textdiffseg"]
        tds = "textdiffseg" if "textdiffseg" in variants or not variants else variants[0]
    if tds not in agg:
        return [f"- targets need the `{tds}` model; not run."]
    lines = _verdict_lines(agg, tds, unet)
    return lines if tds == "textdiffseg" else [f"- (`{tds}`) {line[2:]}" for line in lines]


def _verdict_lines(agg: dict[str, Any], tds: str, unet: str) -> list[str]:
    s = agg[tds]["scores"]
    t = lambda c: s[f"model/{c}"]["dice_tumour"][0]
    lines = []
    gain = t("right") - t("none")
    lines.append(f"- {TARGETS[0]}: {'met' if gain >= 0.10 else 'not met'} ({gain:+.3f}).")
    fp = s["model/no_tumour"]["fp_ml_tumour_free"][0]
    lines.append(f"- {TARGETS[1]}: {'met' if fp <= 0.5 else 'not met'} ({fp:.2f} mL).")
    drop = t("right") - t("swapped")
    shift = ", ".join(f"{label} {fmt(r['side_shift'][0], 2)}" for label, r in agg.items() if "side_shift" in r)
    lines.append(f"- {TARGETS[2]}: {'met' if drop >= 0.05 else 'not met'} ({drop:+.3f}; side share "
                 f"{fmt(s['model/right']['side_fraction'][0], 2)} → {fmt(s['model/swapped']['side_fraction'][0], 2)}"
                 + (f"; side shift {shift}" if shift else "") + ").")
    gap = abs(t("right") - t("paraphrase"))
    lines.append(f"- {TARGETS[3]}: {'met' if gap <= 0.03 else 'not met'} (|Δ| = {gap:.3f}).")
    if unet in agg:
        margin = t("right") - agg[unet]["scores"]["model/right"]["dice_tumour"][0]
        lines.append(f"- {TARGETS[4]}: {'met' if margin >= 0.05 else 'not met'} ({margin:+.3f}).")
    return lines


def markdown(report: dict[str, Any]) -> list[str]:
    agg, a = report["aggregate"], report["args"]
    lines = [title(report, "Text effect: six report conditions", f"{a['minutes']} min per run, seeds {a['seeds']}"),
             "", (f"Training: {a['preset']} preset on {a.get('device', 'cpu')}, {a['minutes']} min wall clock per run, "
             f"{a['parallel']} runs at a time with {a['threads']} thread(s) each; label autoencoder reused from the cache. Test: {a['test_cases']} new "
             f"phantom cases (seed {a['test_seed']})."
             + (f" Decoys: each tumour-free kidney of the training and test phantoms has, with probability "
                f"{a['decoys']:g}, a tumour-like lesion labelled kidney that no report mentions." if a.get('decoys') else "")
             + f" TextDiffSeg sampler: {a['steps'] or 'default'} DDIM steps × "
             f"{a['samples']} sample(s). Mean ± sd over seeds."), "",
             "| model | condition | Dice kidney | Dice tumour | tumour FP mL / tumour-free case | tumour on the named side |",
             "|---|---|---|---|---|---|"]
    pm = lambda v, d=3: f"{fmt(v[0], d)} ± {fmt(v[1], d)}"
    for label, r in agg.items():
        for key, m in r["scores"].items():
            view, cond = key.split("/")
            name = label if view == "model" else f"{label} ({view})"
            lines.append(f"| {name} | {cond} | {pm(m['dice_kidney'])} | {pm(m['dice_tumour'])} | "
                         f"{pm(m['fp_ml_tumour_free'], 2)} | {pm(m['side_fraction'], 2)} |")
    lines += ["", "| model | seeds | iterations | s / case | side shift (single-sided tumours) |", "|---|---|---|---|---|"]
    lines += [f"| {label} | {','.join(map(str, r['seeds']))} | {fmt(r['steps'][0], 0)} | {fmt(r['seconds_per_case'][0], 2)} | "
              f"{pm(r['side_shift'], 2) if 'side_shift' in r else '–'} |" for label, r in agg.items()]
    lines += ["", ("Side shift: share of predicted tumour on the named side under the right report plus the same "
                   "under the left↔right swapped report, minus 1, over cases whose report names one kidney. A model "
                   "that ignores the side scores 0 (its tumour stays put, so the two shares add to 1); 1 = all "
                   "predicted tumour follows the report. The raw side share of a text-free model also drops under "
                   "the swap — compare with the UNet row, not with the right-report row.")]
    lines += ["", "Targets:", *report["verdicts"]]
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=DEFAULT_MODELS, help="comma list: model or label=model@part.field=value@...")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--minutes", type=float, default=10.0, help="training wall clock per run")
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--set", action="append", default=[], help="part.field=value for every run")
    ap.add_argument("--test-cases", type=int, default=24)
    ap.add_argument("--test-seed", type=int, default=1)
    ap.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the model's)")
    ap.add_argument("--samples", type=int, default=1, help="samples per prediction (TextDiffSeg)")
    ap.add_argument("--parallel", type=int, default=2, help="runs at a time")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")
    ap.add_argument("--decoys", type=float, default=0.0, help="P(decoy lesion) per tumour-free kidney in the "
                    "training and test phantoms (default 0: the plain phantom)")
    ap.add_argument("--device", default="cpu", help="cpu | cuda | auto (training and prediction; use --parallel 1 on one GPU)")
    ap.add_argument("--work", default="/tmp/tdseg_bench_text", help="run folder (results per run, artifacts)")
    ap.add_argument("--fresh", action="store_true", help="ignore stored run results")
    ap.add_argument("--out", default=None, help="report stem (default results/text_effect)")
    ap.add_argument("--stored-only", action="store_true", help="train nothing: tabulate the stored runs of "
                    "--models and --seeds (missing ones left out; each model's seeds are listed)")
    ap.add_argument("--targets-for", default=None, help="the TextDiffSeg label the target lines judge "
                    "(default: textdiffseg, else the first TextDiffSeg variant)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--result", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if not 0 <= args.decoys <= 1:
        ap.error(f"--decoys must be in [0, 1], got {args.decoys}; pass e.g. --decoys 1")
    if args.worker:
        return worker(args)
    work = Path(args.work)
    (work / "runs").mkdir(parents=True, exist_ok=True)
    from tdseg_lite.config import build_config, parse_set_arguments
    from tdseg_lite.data import DataConfig, load_datalist

    dcfg = build_config(DataConfig, args.preset, {k[5:]: v for k, v in parse_set_arguments(list(args.set)).items()
                                                  if k.startswith("data.")})
    test_root = phantoms(args, dcfg)[1]  # both datasets exist before the runs start (no two writers)
    models = parse_models(args.models)
    seeds = [int(s) for s in args.seeds.split(",")]
    jobs = []
    for seed in seeds:
        for label, (name, sets) in models.items():
            result = work / "runs" / f"{label}_seed{seed}.json"
            if result.is_file() and not args.fresh or args.stored_only:
                continue
            spec = f"{label}={name}" + "".join(f"@{k}={v}" for k, v in sets.items())
            cmd = [sys.executable, __file__, "--worker", "--models", spec, "--seed", str(seed), "--result", str(result),
                   "--minutes", str(args.minutes), "--preset", args.preset, "--test-cases", str(args.test_cases),
                   "--test-seed", str(args.test_seed), "--samples", str(args.samples), "--threads", str(args.threads),
                   "--device", args.device, "--decoys", str(args.decoys),
                   "--work", str(work), *(["--steps", str(args.steps)] if args.steps else []),
                   *[f"--set={s}" for s in args.set]]
            jobs.append((label, seed, cmd))
    running: list[tuple[str, int, subprocess.Popen]] = []
    failed = []
    while jobs or running:
        while jobs and len(running) < args.parallel:
            label, seed, cmd = jobs.pop(0)
            print(f"start {label} seed {seed}", flush=True)
            running.append((label, seed, subprocess.Popen(cmd)))
        time.sleep(2)
        for item in list(running):
            if item[2].poll() is not None:
                running.remove(item)
                if item[2].returncode:
                    failed.append(f"{item[0]} seed {item[1]}")
    if failed:
        print(f"bench_text: runs failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    paths = [work / "runs" / f"{label}_seed{seed}.json" for label in models for seed in seeds]
    runs = [json.loads(p.read_text()) for p in paths if p.is_file() or not args.stored_only]
    if not runs:
        print(f"bench_text: no stored runs of {args.models} (seeds {args.seeds}) in {work / 'runs'}; run without "
              "--stored-only first.", file=sys.stderr)
        return 1
    from tdseg_lite.utils import pick_device

    agg = aggregate(runs, single_sided([e.get("description") for e in load_datalist(test_root)]))

    device = pick_device(args.device)
    report = {**stamp(device, args.threads), "args": vars(args), "aggregate": agg,
              "verdicts": verdicts(agg, args.targets_for), "runs": runs}
    out = Path(args.out) if args.out else results_dir(device) / ("text_effect_decoys" if args.decoys else "text_effect")
    write_report(out, report, markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
