"""What the sampling buys besides Dice: ``tdseg bench uncertainty`` on finished equal-budget runs.

    .venv/bin/python benchmarks/bench_uncertainty.py --work /tmp/eq/phantom --configs unet,full --seeds 0,1,2 \
        --name uncertainty_phantom_10min
        # the runs of `bench_ablation.py --work /tmp/eq/phantom`, each scored again four ways

A diffusion model can draw several segmentations of one CT; their disagreement is a voxel-wise
uncertainty that a single forward pass does not have. But a single pass has an uncertainty too —
the entropy of its softmax, free of charge — so the question is whether the ensemble's is *better*:
does it find the wrong voxels sooner, is its confidence better calibrated? Every run folder
``<config>_seed<k>`` under ``--work`` (written by ``bench_ablation.py``) is scored on its
validation cases, on the model grid, with ``inference.evaluate_cases(..., uncertainty=True)``:

* the UNet: one pass, softmax entropy;
* TextDiffSeg's aux head alone (``--head aux``): one pass, softmax entropy, no denoiser call;
* TextDiffSeg's sampler with one sample (the run's DDIM steps and start): the entropy of that sample;
* TextDiffSeg's sampler with ``--samples`` samples: the entropy of their mean (``DiffusionConfig.uncertainty``);
* the blend: ½ one sample + ½ the aux head (``diffusion.aux_blend=0.5``): does mixing the two cheap
  predictions keep the aux head's kidney and the sample's tumour?

For each: Dice, the AUROC of the uncertainty for the error voxels over the whole volume and inside
the organs (voxels predicted or labelled foreground, where every error lies), the expected
calibration error of the confidence and the seconds per case; mean ± sd over seeds, and per seed the
difference ensemble − aux head and ensemble − UNet (mean ± sd of the paired differences). A
scoring is stored next to its run (``uncertainty_<scoring>.json``) and reused when its settings match.

Writes ``results[/gpu_NAME]/NAME.{json,md}`` (stamped: device, threads, date, commit).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import fmt, results_dir, stamp, title, write_report

from tdseg_lite.utils import atomic_write_text, jsonable, pick_device

#: scoring -> (the models it applies to, head, samples: None = the run's, "S" = --samples, DiffusionConfig changes)
SCORINGS: dict[str, tuple[tuple[str, ...], str, str | None, dict[str, Any]]] = {
    "softmax": (("unet", "text-unet"), "sampler", None, {}),
    "aux-head": (("textdiffseg",), "aux", None, {}),
    "one-sample": (("textdiffseg", "pixel-diffusion"), "sampler", "1", {}),
    "ensemble": (("textdiffseg", "pixel-diffusion"), "sampler", "S", {}),
    "blend": (("textdiffseg",), "sampler", "1", {"aux_blend": 0.5}),
}
TITLES = {"softmax": "one pass, softmax entropy", "aux-head": "aux head alone, softmax entropy",
          "one-sample": "one DDIM sample, its entropy", "ensemble": "DDIM ensemble, entropy of the mean",
          "blend": "½ one sample + ½ aux head, entropy of the blend"}
#: the paired differences reported within a configuration (``aggregate``): (scoring, minus scoring)
PAIRS = (("ensemble", "aux-head"), ("ensemble", "one-sample"), ("one-sample", "aux-head"),
         ("blend", "one-sample"), ("blend", "aux-head"))
#: the numbers each scoring contributes to the table (``_numbers``)
FIELDS = ("kidney", "tumor", "auroc", "auroc_foreground", "ece", "error_rate", "seconds_per_case")


def _numbers(res: dict[str, Any]) -> dict[str, float]:
    """The table's numbers of one ``evaluate_cases`` result (NaN where undefined)."""
    unc = res["uncertainty"] or {}
    nan = lambda v: math.nan if v is None else float(v)
    out = {name: nan(res["mean"]["dice"].get(name)) for name in ("kidney", "tumor")}
    out |= {k: nan(unc.get(k)) for k in ("auroc", "auroc_foreground", "ece", "error_rate")}
    return out | {"seconds_per_case": float(res["seconds_per_case"])}


def score_run(folder: Path, scoring: str, samples: int, val_cases: int, max_voxels: int) -> dict[str, Any]:
    """Score one run folder one way (reusing ``uncertainty_<scoring>.json`` when its settings match)."""
    from tdseg_lite.evaluate import pick_head, select_cases
    from tdseg_lite.inference import evaluate_cases
    from tdseg_lite.runs import load_trained

    _, head, want, changes = SCORINGS[scoring]
    n = None if want is None else samples if want == "S" else int(want)
    settings = {"scoring": scoring, "samples": n, "val_cases": val_cases, "max_voxels": max_voxels, **changes}
    cache = folder / f"uncertainty_{scoring}.json"
    if cache.is_file():
        stored = json.loads(cache.read_text())
        if stored.get("settings") == settings:  # JSON wrote NaN (an undefined AUROC) as null
            stored["numbers"] = {k: math.nan if v is None else v for k, v in stored["numbers"].items()}
            return stored
    model, plan, ckpt = load_trained(folder, "best", "cpu")
    if changes:
        model.dcfg = dataclasses.replace(model.dcfg, **changes)
    _, items = select_cases(folder, ckpt, plan.data, None, "val")
    labels = {int(k): v for k, v in ckpt["config"]["labels"].items()}
    names = [labels[k] for k in sorted(labels) if k > 0]
    start = time.perf_counter()
    res = evaluate_cases(pick_head(model, head), plan.data, items[: val_cases or None], names, space="model",
                         samples=n, uncertainty=True, max_voxels=max_voxels)
    out = {"settings": settings, "run": str(folder), "model": plan.spec.model.model, "steps": res["steps"],
           "samples": res["samples"], "wall_s": time.perf_counter() - start, "numbers": _numbers(res),
           "cases": [{"case_id": c["case_id"], "dice": c["dice"], "uncertainty": c["uncertainty"]} for c in res["cases"]]}
    atomic_write_text(cache, json.dumps(jsonable(out), indent=2, allow_nan=False) + "\n")
    return out


def scorings_for(model: str) -> list[str]:
    """The scorings that apply to a run of ``model`` (``tdseg train --model``)."""
    return [name for name, (models, *_) in SCORINGS.items() if model in models]


def mean_sd(values: list[float]) -> dict[str, float]:
    """Mean and sd of the finite values (NaN where there are too few)."""
    vals = [v for v in values if not math.isnan(v)]
    return {"mean": statistics.mean(vals) if vals else math.nan,
            "sd": statistics.stdev(vals) if len(vals) > 1 else math.nan}


def aggregate(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Rows ``(config, scoring)`` with mean ± sd over seeds of every ``FIELDS`` number, and the paired
    differences ``PAIRS`` within a configuration and ensemble − each softmax run (per seed, then mean ± sd).

    ``records``: ``{"config", "seed", "scoring", "numbers": {FIELD: float}}``.
    """
    rows: dict[str, Any] = {}
    for rec in records:
        key = f"{rec['config']}/{rec['scoring']}"
        rows.setdefault(key, {"config": rec["config"], "scoring": rec["scoring"], "seeds": [], "per_seed": {}})
        rows[key]["seeds"].append(rec["seed"])
        rows[key]["per_seed"][rec["seed"]] = rec["numbers"]
    for row in rows.values():
        row.update({f: mean_sd([n[f] for n in row["per_seed"].values()]) for f in FIELDS})
    deltas: dict[str, Any] = {}
    configs = list(dict.fromkeys(r["config"] for r in rows.values()))
    pairs = [(rows.get(f"{c}/{a}"), rows.get(f"{c}/{b}"), f"{c} {a} − {b}") for c in configs for a, b in PAIRS]
    pairs += [(row, other, f"{row['config']} ensemble − {other['config']} softmax") for row in rows.values()
              if row["scoring"] == "ensemble" for other in rows.values() if other["scoring"] == "softmax"]
    for row, other, name in pairs:
        if row is not None and other is not None:
            seeds = [s for s in row["per_seed"] if s in other["per_seed"]]
            deltas[name] = {
                **{f: mean_sd([row["per_seed"][s][f] - other["per_seed"][s][f] for s in seeds]) for f in FIELDS},
                "seeds": len(seeds), "time_ratio": row["seconds_per_case"]["mean"] / other["seconds_per_case"]["mean"]}
    return {"rows": rows, "deltas": deltas}


def _pm(cell: dict[str, float], digits: int = 3) -> str:
    return f"{fmt(cell['mean'], digits)} ± {fmt(cell['sd'], digits)}"


def markdown(report: dict[str, Any]) -> list[str]:
    """The report's tables."""
    agg = report["aggregate"]
    lines = [title(report, report["title"], f"seeds {','.join(map(str, report['seeds']))}, "
                   f"{report['cases']} validation cases, model grid, ensemble of {report['samples']}"), "",
             "| run | scoring | Dice kidney | Dice tumour | AUROC (volume) | AUROC (in organs) | ECE | error rate | s / case |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in agg["rows"].values():
        lines.append(f"| {row['config']} | {TITLES[row['scoring']]} | {_pm(row['kidney'])} | {_pm(row['tumor'])} | "
                     f"{_pm(row['auroc'])} | {_pm(row['auroc_foreground'])} | {_pm(row['ece'])} | "
                     f"{_pm(row['error_rate'], 4)} | {fmt(row['seconds_per_case']['mean'], 2)} |")
    if agg["deltas"]:
        lines += ["", "Paired differences over seeds (mean ± sd of the per-seed differences):", "",
                  "| difference | Δ AUROC (volume) | Δ AUROC (in organs) | Δ ECE | Δ Dice kidney | Δ Dice tumour | × time |",
                  "|---|---|---|---|---|---|---|"]
        for name, d in agg["deltas"].items():
            lines.append(f"| {name} | {_pm(d['auroc'])} | {_pm(d['auroc_foreground'])} | {_pm(d['ece'])} | "
                         f"{_pm(d['kidney'])} | {_pm(d['tumor'])} | {fmt(d['time_ratio'], 1)} |")
    lines += ["", ("AUROC (volume): how well the voxel uncertainty ranks the wrong voxels above the right ones, "
              "on random voxels of the whole volume (mostly far background that every model gets right). "
              "AUROC (in organs): the same among the voxels predicted or labelled kidney or tumour, where every "
              "error lies. ECE: expected calibration error of the confidence max_c p_c (10 bins; lower is better). "
              "A single pass's uncertainty is the entropy of its probabilities; the ensemble's is the entropy "
              "of the mean of its samples. The blend (`--set diffusion.aux_blend=0.5`) averages one sample's "
              "probabilities with the aux head's, at the cost of the aux head run once more (condition and decode).")]
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", required=True, help="a bench_ablation.py work folder (run folders CONFIG_seedS)")
    ap.add_argument("--configs", default="unet,full", help="comma-separated run configurations under --work")
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    ap.add_argument("--samples", type=int, default=4, help="ensemble size")
    ap.add_argument("--scorings", default=",".join(SCORINGS), help=f"comma-separated, from {', '.join(SCORINGS)}")
    ap.add_argument("--val-cases", type=int, default=0, help="validation cases scored (0: all)")
    ap.add_argument("--max-voxels", type=int, default=20_000, help="random voxels per case for the uncertainty")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--results-dir", default=None, help="where the tables go (default results[/gpu_NAME]/)")
    ap.add_argument("--name", default="uncertainty", help="report file stem (NAME.json, NAME.md)")
    ap.add_argument("--title", default="What the sampling buys: voxel uncertainty that finds errors",
                    help="the report's heading")
    args = ap.parse_args(argv)
    if args.samples < 2:
        ap.error(f"--samples: an ensemble needs >= 2 samples, got {args.samples}; use e.g. 4")
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    wanted = [x.strip() for x in args.scorings.split(",") if x.strip()]
    if any(x not in SCORINGS for x in wanted):
        ap.error(f"--scorings: unknown {[x for x in wanted if x not in SCORINGS]}; choose from {', '.join(SCORINGS)}")
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    work = Path(args.work)
    missing = [f"{c}_seed{s}" for c in configs for s in seeds if not (work / f"{c}_seed{s}" / "checkpoints").is_dir()]
    if missing:
        ap.error(f"--work: {work} has no trained run {missing[0]!r} ({len(missing)} missing); "
                 "train them first with benchmarks/bench_ablation.py --work DIR")
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    torch.set_num_threads(args.threads)
    device = pick_device("cpu")
    records = []
    for config in configs:
        for seed in seeds:
            folder = work / f"{config}_seed{seed}"
            model = json.loads((folder / "ablation_run.json").read_text())["model"]
            for scoring in (x for x in scorings_for(model) if x in wanted):
                res = score_run(folder, scoring, args.samples, args.val_cases, args.max_voxels)
                print(f"{folder.name} {scoring}: " + ", ".join(f"{k} {v:.3f}" for k, v in res["numbers"].items()),
                      flush=True)
                records.append({"config": config, "seed": seed, "scoring": scoring, "samples": res["samples"],
                                "steps": res["steps"], "cases": len(res["cases"]), "numbers": res["numbers"]})
    cases = max((r["cases"] for r in records), default=0)
    report = {**stamp(device, args.threads), "title": args.title, "work": str(work), "configs": configs,
              "seeds": seeds, "samples": args.samples, "scorings": wanted, "val_cases": args.val_cases, "max_voxels": args.max_voxels,
              "cases": cases, "records": records}
    report["aggregate"] = aggregate(records)
    results = Path(args.results_dir) if args.results_dir else results_dir(device)
    write_report(results / args.name, report, markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
