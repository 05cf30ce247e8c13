"""What each part of TextDiffSeg contributes: ``tdseg bench ablation``, configurations × seeds at equal wall clock.

    .venv/bin/python benchmarks/bench_ablation.py                  # 5 configurations x seeds 0,1 x 6 min, cpu preset
    .venv/bin/python benchmarks/bench_ablation.py --minutes 10 --configs full,no-text --seeds 0,1,2
    .venv/bin/python benchmarks/bench_ablation.py --preset smoke --steps 3 --configs full,no-text --seeds 0,1 \
        --val-cases 1 --results-dir /tmp/abl --work /tmp/abl_work    # the plumbing, about a minute
    .venv/bin/python benchmarks/bench_ablation.py --configs unet,full,ae-in-budget --seeds 0,1,2 --minutes 10 \
        --reference unet --also aux-head,no-report --jobs 2 --threads 1 --name equal_budget_phantom_10min
        # TextDiffSeg vs the MONAI UNet at equal budget (label AE reused and trained inside the budget),
        # what the diffusion adds over the aux head, what the report adds; two runs side by side

For every seed the label autoencoder of that seed is built first, **outside** the budgets
(``label_cache.cached_label_autoencoder``, the entry ``tdseg train`` reuses), so each TextDiffSeg
run only pays for loading it. Then each configuration is trained with
``tdseg train --preset P --max-minutes M --set train.seed=S --set train.val_every=0 [switch]``
one after the other (same machine, same threads: equal wall clock, so a cheaper model gets more
steps; the table shows them), and scored with ``tdseg evaluate``'s evaluator on the validation
split in the model grid with the same sampler for every diffusion model (``--eval-steps`` DDIM
steps, ``--eval-samples`` samples, default 2 × 1).

Per configuration the tables give the mean ± sd over seeds of kidney / tumour / mean Dice, and for
each of them the difference to ``full`` with a 95 % paired bootstrap interval over the validation
cases (per-case Dice averaged over seeds; ``scipy.stats.bootstrap``, percentile method) and a
verdict: a difference is called real only when the interval excludes 0 **and** it is larger than
the noise floor 2·σ·sqrt(2/n) (σ = the pooled seed-to-seed sd of that Dice, n seeds). A last table
lists what differs besides the switch (``ALSO_CHANGES``). Notebook 06 reads the JSON (papermill
parameter ``results_json``) and explains every column.

``--also`` scores every TextDiffSeg run a second (third) way on the same cases: ``aux-head`` = its
aux head alone (``tdseg evaluate --head aux``, no denoiser call), ``no-report`` = with the label
names as the only prompt (``--reports none``). The tables then give each of them with the
difference default − it and its paired interval: what the sampling and what the report add.
``--jobs N`` trains N runs at a time (in waves, so that the runs of a wave share the machine for
the same minutes; give each ``--threads`` so that N × threads fits the cores).

Writes ``results[/gpu_NAME]/NAME.{json,md}`` (``--name``, default ``ablation``; stamped: device, threads, date, commit). Runs go
to ``--work`` (default ``/tmp/tdseg_bench_ablation``) and are reused when their ``ablation_run.json``
exists with the same budget and sampler (``--fresh`` retrains).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import fmt, results_dir, stamp, tdseg, title, write_report

from tdseg_lite.utils import pick_device

#: configuration -> (--model, --set items). "full" is TextDiffSeg as built by default.
CONFIGURATIONS: dict[str, tuple[str, list[str]]] = {
    "full": ("textdiffseg", []),
    "no-text": ("textdiffseg", ["model.text_fusion=false"]),
    "no-image-features": ("textdiffseg", ["model.image_features=false"]),
    "no-label-encoder": ("pixel-diffusion", []),
    "no-aux-condition": ("textdiffseg", ["model.aux_condition=false", "model.aux_residual=false"]),
    "pooled-text": ("textdiffseg", ["fusion.mode=pooled"]),
    "k16": ("textdiffseg", ["label_ae.latent_channels=16"]),
    "no-image-skip": ("textdiffseg", ["model.decoder_image_skip=false"]),
    "unet": ("unet", []),
    "ae-in-budget": ("textdiffseg", ["label_ae.reuse=false"]),
    "lean": ("textdiffseg", ["denoiser.channels=[8,16,32]", "diffusion.decode_fraction=0.25"]),
    "wide": ("textdiffseg", ["denoiser.channels=[16,32,64]", "diffusion.decode_fraction=0.5"]),
}
#: ``--also``: other ways of scoring a TextDiffSeg run -> the extra ``tdseg evaluate`` flags
ALSO_SCORES: dict[str, list[str]] = {"aux-head": ["--head", "aux"], "no-report": ["--reports", "none"]}
DEFAULT_CONFIGS = "full,no-text,no-image-features,no-label-encoder,no-aux-condition"
#: what changes besides the named switch (equal wall clock also gives every configuration its own
#: number of steps, shown in the table). "–": only the switch.
ALSO_CHANGES: dict[str, str] = {
    "full": "–",
    "no-text": "– (the cross-modal attention, the denoiser's cross-attention and FiLM are one switch; "
               "text dropout then has nothing to drop)",
    "no-image-features": "the aux head goes with E_img, so the aux condition, aux residual and aux loss terms go "
                         "too; z_i is the image + coordinates space-to-depth (4·f³ channels); the skip decoder "
                         "reads the raw 4 input channels; the denoiser gets no multi-scale image features",
    "no-label-encoder": "a different model (`--model pixel-diffusion`): no label autoencoder (nothing pre-trained), "
                        "no E_img (the condition is the raw image + coordinates), no cross-modal attention (text "
                        "only through the denoiser's cross-attention and FiLM), no aux head, no skip decoder; its "
                        "denoiser works at full resolution with `model.pixel_channels`, attention only at the "
                        "coarsest level, no multi-scale features",
    "no-image-skip": "– (the label decoder's output is the AE decoder's alone, for ẑ0 and the aux head: no "
                     "full-resolution image refinement; a step costs less, so the budget buys more of them)",
    "no-aux-condition": "– (the aux head is still trained with its loss terms; the denoiser's condition has c "
                        "instead of c + k channels and it predicts ẑ0 directly, not ẑ_aux + f_θ)",
    "pooled-text": "– (only the cross-modal attention reads the pooled vector; the denoiser's cross-attention "
                   "still reads the tokens and FiLM the pooled vector, as in full)",
    "k16": "its own label autoencoder (trained for k = 16: another reconstruction ceiling); the denoiser's and "
           "the aux head's latent width follow k",
    "unet": "a different model (`--model unet`): the text-free MONAI UNet baseline, trained on the same patches "
            "with Dice + CE; no label autoencoder, no diffusion, no report",
    "ae-in-budget": "– (the label autoencoder is trained inside this run's budget instead of loaded from the cache, "
                    "as on a dataset seen for the first time: fewer joint steps)",
    "lean": "a cheaper joint step, so more of them in the budget: a thinner denoiser (widths 8, 16, 32 instead of "
            "16, 32, 64; 1.3 M instead of 3.1 M trainable parameters in all) and one patch in four instead of one "
            "in two decoded to full resolution for the pixel losses (`diffusion.decode_fraction=0.25`); the cpu "
            "preset's default since commit 8e610f2 (it measured better at equal budget), so on that preset `full` "
            "and `lean` have been the same model since",
    "wide": "the cpu preset's joint step before it was made lean (`full` in the tables measured before): denoiser "
            "widths 16, 32, 64 (3.1 M trainable parameters in all) and half the batch decoded for the pixel losses",
}


def prewarm_label_ae(args: argparse.Namespace, config: str, seed: int) -> dict[str, Any] | None:
    """Build (or load) the label autoencoder a run of ``config`` and ``seed`` will reuse; None without one."""
    model, sets = CONFIGURATIONS[config]
    if model != "textdiffseg":
        return None
    from tdseg_lite.config import parse_set_arguments
    if parse_set_arguments(sets + args.set).get("label_ae.reuse") is False:
        return None  # it trains its own inside the budget
    from tdseg_lite.data import default_dataset, load_labels
    from tdseg_lite.label_cache import cached_label_autoencoder
    from tdseg_lite.runs import RunPlan

    sets_dict = parse_set_arguments(sets + args.set)  # typed as `tdseg train --set` reads them (same cache key)
    plan = RunPlan.build(args.preset, model, sets_dict)
    root = default_dataset(plan.data, args.data, artifacts=args.work)  # where `tdseg train` finds it too
    plan = RunPlan.build(args.preset, model, sets_dict, num_classes=len(load_labels(root)))
    res = cached_label_autoencoder(plan.data, root, plan.spec.label_ae, seed=seed)
    return {"source": res.source, "seconds": round(res.seconds, 1), "steps": res.steps}


def steps_trained(folder: Path) -> int:
    """The last step in a run's ``log.csv`` (0 when it logged none)."""
    with (folder / "log.csv").open(newline="") as fh:
        steps = [int(float(r["step"])) for r in csv.DictReader(fh) if r.get("step")]
    return steps[-1] if steps else 0


def run_one(args: argparse.Namespace, config: str, seed: int, runner: Callable[..., float] = tdseg,
            also: tuple[str, ...] = ()) -> dict[str, Any]:
    """Train and evaluate one (configuration, seed); reuses a finished run unless ``--fresh``.

    ``runner(*cli_args)`` runs one ``tdseg`` command and returns its wall seconds (default: a fresh
    process; notebook 06 passes one that calls ``tdseg_lite.cli.main`` in its own kernel). ``also``
    (names in ``ALSO_SCORES``) scores a TextDiffSeg run those other ways too, into ``record["also"]``;
    a reused run is scored only the ways it has not been yet.
    """
    folder = Path(args.work) / f"{config}_seed{seed}"
    record = folder / "ablation_run.json"
    budget = {"preset": args.preset, "minutes": args.minutes, "steps": args.steps, "set": args.set,
              "eval_steps": args.eval_steps, "eval_samples": args.eval_samples, "val_cases": args.val_cases}
    model, sets = CONFIGURATIONS[config]
    old = json.loads(record.read_text()) if record.is_file() and not args.fresh else {}
    if old.get("budget") == budget:
        out = old
    else:
        train = ["train", "--out", str(folder), "--preset", args.preset, "--model", model, "--quiet",
                 "--device", args.device, "--set", f"train.seed={seed}", "--set", "train.val_every=0",
                 "--set", "train.val_max_cases=1", "--set", "train.val_steps=1"]  # the end-of-run check: cheap
        train += ["--data", args.data] if args.data else []
        train += [x for item in sets + args.set for x in ("--set", item)]
        train += ["--set", f"train.max_steps={args.steps}"] if args.steps else ["--max-minutes", str(args.minutes)]
        if folder.exists():
            shutil.rmtree(folder)
        wall = runner(*train)
        m = score(args, folder, runner, "metrics.json", [])
        config_json = json.loads((folder / "config.json").read_text())
        out = {"config": config, "seed": seed, "model": model, "set": sets, "budget": budget,
               "train_wall_s": round(wall, 1), "steps_trained": steps_trained(folder),
               "label_ae": config_json.get("label_ae"), "seconds_per_case": m["seconds_per_case"],
               "classes": m["classes"], "cases": m["cases"]}
        out["mean_dice"] = class_means(out)
    if model == "textdiffseg":
        for name in also:
            if name not in out.get("also", {}):
                m = score(args, folder, runner, f"metrics_{name}.json", ALSO_SCORES[name])
                entry = {"seconds_per_case": m["seconds_per_case"], "classes": m["classes"], "cases": m["cases"]}
                out.setdefault("also", {})[name] = {**entry, "mean_dice": class_means(entry)}
    record.write_text(json.dumps(out, indent=2) + "\n")
    return out


def score(args: argparse.Namespace, folder: Path, runner: Callable[..., float], name: str,
          extra: list[str]) -> dict[str, Any]:
    """``tdseg evaluate`` of a finished run (last checkpoint, model grid, the benchmark's sampler) with
    ``extra`` flags; returns ``{"seconds_per_case", "classes", "cases": [{"case_id", "dice"}]}``."""
    metrics = folder / name
    sampler = [] if "--head" in extra else ["--steps", str(args.eval_steps), "--samples", str(args.eval_samples)]
    runner("evaluate", "--run", str(folder), "--out", str(metrics), "--which", "last", "--space", "model", "--quiet",
           *sampler, "--device", args.device, *extra,
           *(["--max-cases", str(args.val_cases)] if args.val_cases else []),
           *(["--data", args.data] if args.data else []))
    m = json.loads(metrics.read_text())
    return {"seconds_per_case": m["seconds_per_case"], "classes": m["classes"],
            "cases": [{"case_id": c["case_id"], "dice": c["dice"]} for c in m["cases"]]}


def run_all(args: argparse.Namespace, configs: list[str], seeds: list[int], jobs: int = 1,
            also: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Every (configuration, seed), seed-major; ``jobs`` > 1 runs them in waves of ``jobs`` side by side
    (each a ``tdseg`` process: the runs of a wave share the machine for the same minutes)."""
    from concurrent.futures import ThreadPoolExecutor

    todo = [(c, s) for s in seeds for c in configs]
    if jobs <= 1:
        return [run_one(args, c, s, also=also) for c, s in todo]
    runs: list[dict[str, Any]] = []
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for i in range(0, len(todo), jobs):
            wave = [pool.submit(run_one, args, c, s, tdseg, also) for c, s in todo[i: i + jobs]]
            runs += [f.result() for f in wave]
    return runs


def _finite(values: Any) -> list[float]:
    return [float(v) for v in values if v is not None and not math.isnan(v)]


def case_mean(dice: dict[str, float | None]) -> float:
    """Mean Dice over the classes defined in one case (NaN when none is)."""
    values = _finite(dice.values())
    return sum(values) / len(values) if values else math.nan


def case_score(case: dict[str, Any], key: str) -> float:
    """One case's Dice of class ``key``, or its ``case_mean`` for ``key == "mean"`` (NaN when undefined)."""
    value = case_mean(case["dice"]) if key == "mean" else case["dice"].get(key)
    return math.nan if value is None else float(value)


def class_means(run: dict[str, Any]) -> dict[str, float]:
    """NaN-skipping mean Dice per class over a run's cases, plus ``"mean"`` (of the per-case means)."""
    out = {}
    for key in [*run["classes"], "mean"]:
        values = _finite(case_score(c, key) for c in run["cases"])
        out[key] = sum(values) / len(values) if values else math.nan
    return out


def paired_bootstrap(a: list[float], b: list[float], n_resamples: int = 5000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of a − b over paired cases and its 95 % percentile bootstrap interval (``scipy.stats.bootstrap``).

    Pairs where either value is NaN are dropped; with fewer than 2 pairs, or all differences equal,
    the interval is undefined (NaN, NaN). ``notebooks/06_ablations.ipynb`` derives the same interval
    by hand (``naive_paired_bootstrap``).
    """
    from scipy.stats import bootstrap

    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    d = d[np.isfinite(d)]
    if len(d) < 2 or np.all(d == d[0]):
        return (float(d.mean()) if len(d) else math.nan), math.nan, math.nan
    res = bootstrap((d,), np.mean, n_resamples=n_resamples, method="percentile", rng=np.random.default_rng(seed))
    return float(d.mean()), float(res.confidence_interval.low), float(res.confidence_interval.high)


def noise_floor(sds: list[float], seeds: int) -> tuple[float, float]:
    """(σ, 2·σ·sqrt(2/n)): the pooled seed-to-seed sd and the smallest difference of two n-seed means called real.

    σ = sqrt(mean of the per-configuration variances); the difference of two means of n seeds each
    has sd σ·sqrt(2/n), and twice that is about a 95 % band. NaN with fewer than 2 seeds.
    """
    sds = _finite(sds)
    if not sds or seeds < 2:
        return math.nan, math.nan
    sigma = math.sqrt(sum(s * s for s in sds) / len(sds))
    return sigma, 2 * sigma * math.sqrt(2 / seeds)


def verdict(delta: float, lo: float, hi: float, floor: float) -> bool:
    """Real only when the interval excludes 0 **and** ``|delta|`` exceeds the noise floor (NaN anywhere: not real)."""
    if any(math.isnan(v) for v in (delta, lo, hi, floor)):
        return False
    return (lo > 0 or hi < 0) and abs(delta) > floor


def verdict_text(delta: dict[str, Any]) -> str:
    """The verdict cell of one difference: real, within noise, or no interval (fewer than 2 usable cases)."""
    if delta["real"]:
        return "**real**"
    return "no interval" if math.isnan(delta["ci_low"]) else "within noise"


def seed_summary(records: list[dict[str, Any]], keys: list[str]) -> dict[str, Any]:
    """Mean ± sd over seeds of each Dice key, and per case that Dice averaged over seeds.

    ``records``: one per seed, each with ``"mean_dice"`` and ``"cases"`` (every seed scores the same
    cases). Returns ``{KEY: {"mean", "sd"}, "per_case": {KEY: {case_id: Dice}}}``.
    """
    out: dict[str, Any] = {}
    for key in keys:
        values = _finite(r["mean_dice"][key] for r in records)
        out[key] = {"mean": statistics.mean(values) if values else math.nan,
                    "sd": statistics.stdev(values) if len(values) > 1 else math.nan}
    ids = [c["case_id"] for c in records[0]["cases"]]
    out["per_case"] = {}
    for key in keys:
        per = {}
        for cid in ids:
            vals = _finite(case_score(c, key) for r in records for c in r["cases"] if c["case_id"] == cid)
            per[cid] = sum(vals) / len(vals) if vals else math.nan
        out["per_case"][key] = per
    return out


def paired_delta(a: dict[str, Any], b: dict[str, Any], keys: list[str], noise: dict[str, Any]) -> dict[str, Any]:
    """Per key: mean over shared cases of a − b (``seed_summary`` per-case Dice), its paired bootstrap
    interval and whether it is real against ``noise[key]["floor"]``."""
    out = {}
    for key in keys:
        ids = [cid for cid in b["per_case"][key] if cid in a["per_case"][key]]
        delta, lo, hi = paired_bootstrap([a["per_case"][key][i] for i in ids], [b["per_case"][key][i] for i in ids])
        out[key] = {"delta": delta, "ci_low": lo, "ci_high": hi, "real": verdict(delta, lo, hi, noise[key]["floor"])}
    return out


def aggregate(runs: list[dict[str, Any]], reference: str = "full") -> dict[str, Any]:
    """Per configuration: mean ± sd over seeds; per Dice key the noise floor; Δ vs ``reference`` with a paired CI.

    Returns ``{"configs": {cfg: {"seeds", "steps", "seconds_per_case", KEY: {"mean", "sd"}, "per_case":
    {KEY: {case_id: Dice averaged over seeds}}, "delta": {KEY: {"delta", "ci_low", "ci_high", "real"}},
    "also": {NAME: {"seconds_per_case", KEY: {"mean", "sd"}, "per_case", "delta"}}}}, "noise": {KEY: {"sd",
    "floor"}}, "seeds_per_config", "reference", "keys"}`` with KEY = each class and "mean". ``also`` (runs
    scored other ways, ``ALSO_SCORES``): its ``delta`` is the default scoring − that one, same cases.
    """
    configs = list(dict.fromkeys(r["config"] for r in runs))
    keys = [*runs[0]["classes"], "mean"]
    table: dict[str, Any] = {}
    for cfg in configs:
        mine = [r for r in runs if r["config"] == cfg]
        table[cfg] = {"seeds": [r["seed"] for r in mine],
                      "steps": statistics.mean(r["steps_trained"] for r in mine),
                      "seconds_per_case": statistics.mean(r["seconds_per_case"] for r in mine),
                      **seed_summary(mine, keys)}
    n = min(len(e["seeds"]) for e in table.values())
    noise = {}
    for key in keys:
        sigma, floor = noise_floor([e[key]["sd"] for e in table.values()], n)
        noise[key] = {"sd": sigma, "floor": floor}
    for cfg, e in table.items():
        mine = [r for r in runs if r["config"] == cfg]
        names = [a for a in ALSO_SCORES if all(a in r.get("also", {}) for r in mine)]
        for name in names:
            other = seed_summary([r["also"][name] for r in mine], keys)
            other["seconds_per_case"] = statistics.mean(r["also"][name]["seconds_per_case"] for r in mine)
            other["delta"] = paired_delta(e, other, keys, noise)
            e.setdefault("also", {})[name] = other
        if cfg != reference and reference in table:
            e["delta"] = paired_delta(e, table[reference], keys, noise)
    return {"configs": table, "noise": noise, "seeds_per_config": n, "reference": reference, "keys": keys}


def switch_text(config: str) -> str:
    """The command-line switch of a configuration, as markdown."""
    model, sets = CONFIGURATIONS[config]
    return " ".join(f"`{s}`" for s in sets) or (f"`--model {model}`" if model != "textdiffseg" else "–")


def markdown(report: dict[str, Any]) -> list[str]:
    """The tables of ``ablation.md``: Dice mean ± sd, the differences to full with their verdicts, what else differs."""
    agg, keys = report["aggregate"], report["aggregate"]["keys"]
    budget = f"{report['steps']} steps" if report["steps"] else f"{report['minutes']:g} min"
    names = {k: ("mean Dice" if k == "mean" else f"Dice {k}") for k in keys}
    lines = [title(report, report.get("title", "Ablations at equal budget"), f"{budget} per run, {report['preset']} preset, seeds "
                   + ",".join(map(str, report["seeds"])) + f", {report['cases']} validation cases, model grid"
                   + (f", data {Path(report['data']).name}" if report.get("data") else "")
                   + (f", {report['jobs']} runs side by side" if report.get("jobs", 1) > 1 else "")), "",
             "| configuration | switch | steps in budget | " + " | ".join(f"{names[k]} (mean ± sd)" for k in keys) + " |",
             "|---|---|---|" + "---|" * len(keys)]
    for cfg, e in agg["configs"].items():
        cells = [f"{fmt(e[k]['mean'])} ± {fmt(e[k]['sd'])}" for k in keys]
        lines.append(f"| {cfg} | {switch_text(cfg)} | {e['steps']:.0f} | " + " | ".join(cells) + " |")
    ref = agg["reference"]
    lines += ["", f"| Δ vs {ref} [95 % paired bootstrap CI] | " + " | ".join(names[k] for k in keys) + " |",
              "|---|" + "---|" * len(keys)]
    for cfg, e in agg["configs"].items():
        if "delta" not in e:
            continue
        cells = []
        for k in keys:
            d = e["delta"][k]
            cells.append(f"{fmt(d['delta'])} [{fmt(d['ci_low'])}, {fmt(d['ci_high'])}] {verdict_text(d)}")
        lines.append(f"| {cfg} | " + " | ".join(cells) + " |")
    floors = ", ".join(f"{names[k]} σ = {fmt(agg['noise'][k]['sd'])}, floor {fmt(agg['noise'][k]['floor'])}"
                       for k in keys)
    real = [f"{cfg} ({names[k]})" for cfg, e in agg["configs"].items() for k in keys
            if e.get("delta", {}).get(k, {}).get("real")]
    lines += ["", (f"Noise floor (pooled seed-to-seed sd σ over the configurations, floor = 2·σ·sqrt(2/n), "
                   f"n = {agg['seeds_per_config']} seeds): {floors}. A difference is called real when its paired "
                   "bootstrap interval over the validation cases (per-case Dice averaged over seeds) excludes 0 and "
                   "it exceeds the floor."),
              "", "Verdict: " + (("real differences: " + "; ".join(real) + ".") if real else
                                 f"no difference to {ref} is larger than the noise."), *also_lines(agg, names),
              "", "| configuration | what differs besides the switch |", "|---|---|"]
    lines += [f"| {cfg} | {ALSO_CHANGES[cfg]} |" for cfg in agg["configs"]]
    in_budget = [c for c in agg["configs"] if "label_ae.reuse=false" in CONFIGURATIONS[c][1] + report.get("set", [])]
    ae = ("the label autoencoder of each seed was built before the timed runs (only its load counts)"
          + (f", except for {', '.join(in_budget)}, which trains its own inside the budget" if in_budget else ""))
    lines += ["", (f"Equal wall clock: a cheaper configuration gets more steps (column 3). Every diffusion model "
                   f"sampled with DDIM {report['eval_steps']} × {report['eval_samples']}; {ae}.")]
    return lines


#: how the ``--also`` scorings are named in the tables
ALSO_TITLES = {"aux-head": ("aux head alone (no denoiser call)", "sampled − aux head: what the diffusion adds"),
               "no-report": ("label names only (no report)", "report − label names: what the report adds")}


def also_lines(agg: dict[str, Any], names: dict[str, str]) -> list[str]:
    """One table per ``--also`` scoring: its Dice (mean ± sd over seeds) and default − it with the paired interval."""
    keys, lines = agg["keys"], []
    for also, (what, diff) in ALSO_TITLES.items():
        rows = [(cfg, e["also"][also]) for cfg, e in agg["configs"].items() if also in e.get("also", {})]
        if not rows:
            continue
        lines += ["", f"| {what} | s / case | " + " | ".join(f"{names[k]} (mean ± sd)" for k in keys) + " | "
                  + " | ".join(f"{diff.split(':')[0]}, {names[k]} [95 % CI]" for k in keys) + " |",
                  "|---|---|" + "---|" * (2 * len(keys))]
        for cfg, o in rows:
            cells = [f"{fmt(o[k]['mean'])} ± {fmt(o[k]['sd'])}" for k in keys]
            cells += [f"{fmt(o['delta'][k]['delta'])} [{fmt(o['delta'][k]['ci_low'])}, {fmt(o['delta'][k]['ci_high'])}] "
                      f"{verdict_text(o['delta'][k])}" for k in keys]
            lines.append(f"| {cfg} | {o['seconds_per_case']:.2f} | " + " | ".join(cells) + " |")
        lines += ["", f"({diff}; the same runs and cases scored twice, the floor as above.)"]
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--configs", default=DEFAULT_CONFIGS, help=f"comma-separated, from {', '.join(CONFIGURATIONS)}")
    ap.add_argument("--seeds", default="0,1", help="comma-separated train.seed values (>= 2 for a noise floor)")
    ap.add_argument("--minutes", type=float, default=6.0, help="wall-clock budget per run")
    ap.add_argument("--steps", type=int, default=0, help="train.max_steps instead of a wall-clock budget (smoke tests)")
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--data", default="", help="MSD-layout dataset (default: the phantom under --work)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every run")
    ap.add_argument("--eval-steps", type=int, default=2)
    ap.add_argument("--eval-samples", type=int, default=1)
    ap.add_argument("--val-cases", type=int, default=0, help="validation cases scored (0: all)")
    ap.add_argument("--work", default="/tmp/tdseg_bench_ablation", help="run folders (reused unless --fresh)")
    ap.add_argument("--fresh", action="store_true")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--results-dir", default=None, help="where the tables go (default results[/gpu_NAME]/)")
    ap.add_argument("--reference", default="full", help="the configuration every other is compared with")
    ap.add_argument("--also", default="", help=f"also score TextDiffSeg runs: comma-separated, from {', '.join(ALSO_SCORES)}")
    ap.add_argument("--jobs", type=int, default=1, help="runs side by side (each with --threads threads)")
    ap.add_argument("--name", default="ablation", help="report file stem (NAME.json, NAME.md)")
    ap.add_argument("--title", default="Ablations at equal budget", help="the report's heading")
    args = ap.parse_args(argv)
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in configs if c not in CONFIGURATIONS]
    if unknown:
        ap.error(f"--configs: unknown {unknown}; choose from {', '.join(CONFIGURATIONS)}")
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    also = tuple(a.strip() for a in args.also.split(",") if a.strip())
    if any(a not in ALSO_SCORES for a in also):
        ap.error(f"--also: unknown {[a for a in also if a not in ALSO_SCORES]}; choose from {', '.join(ALSO_SCORES)}")
    if args.reference not in configs:
        ap.error(f"--reference: {args.reference!r} is not in --configs {configs}; add it or pick one of them")
    if args.jobs < 1:
        ap.error(f"--jobs: must be >= 1, got {args.jobs}; use 1 (one run at a time) or the cores / --threads")
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    args.device = str(device)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    os.environ["TDSEG_ARTIFACTS"] = str(Path(args.work).resolve())  # the phantom of every run and of the prewarm
    prewarm = {f"{c}_seed{s}": prewarm_label_ae(args, c, s) for s in seeds for c in configs}
    runs = run_all(args, configs, seeds, jobs=args.jobs, also=also)
    report = {**stamp(device, args.threads), "title": args.title, "jobs": args.jobs, "set": args.set,
              "reference": args.reference, "also": list(also), "data": args.data, "preset": args.preset, "minutes": args.minutes, "steps": args.steps,
              "seeds": seeds, "configs": configs, "eval_steps": args.eval_steps, "eval_samples": args.eval_samples,
              "cases": len(runs[0]["cases"]), "classes": runs[0]["classes"], "work": args.work,
              "label_ae_prewarm": prewarm, "also_changes": {c: ALSO_CHANGES[c] for c in configs},
              "switches": {c: switch_text(c) for c in configs}, "runs": runs}
    report["aggregate"] = aggregate(runs, reference=args.reference)
    results = Path(args.results_dir) if args.results_dir else results_dir(device)
    write_report(results / args.name, report, markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
