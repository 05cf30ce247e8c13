"""`tdseg bench`: every suite's script exists, one runs end to end, bad use is a one-line error."""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import pytest

from tdseg_lite.bench import ALL, SUITES, benchmarks_dir
from tdseg_lite.cli import main

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def test_every_suite_has_its_script() -> None:
    assert benchmarks_dir() == BENCH
    missing = [s for s, (script, _) in SUITES.items() if not (BENCH / script).is_file()]
    assert not missing and set(ALL) <= set(SUITES)


def test_cost_suite_writes_json_and_markdown(tmp_path: Path) -> None:
    out = tmp_path / "cost"
    assert main(["bench", "cost", "--", "--batches", "2", "--repeats", "1", "--preset", "smoke", "--out", str(out)]) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["rows"][0]["batch"] == 2 and report["rows"][0]["ratio"] > 1
    assert "ratio pixel / latent" in out.with_suffix(".md").read_text() and report["commit"]


def test_all_takes_no_script_arguments(capsys) -> None:
    assert main(["bench", "all", "--", "--minutes", "1"]) == 2
    assert "takes no script arguments" in capsys.readouterr().err


def test_scaling_exponent_of_a_power_law() -> None:
    sys.path.insert(0, str(BENCH))
    from bench_scaling import exponent

    sizes = [48, 64, 96, 128]
    assert exponent(sizes, [1e-6 * s**3 for s in sizes]) == pytest.approx(1.0)
    assert exponent(sizes, [2.0 + 0 * s for s in sizes]) == pytest.approx(0.0)


def test_scaling_suite_measures_memory_per_model_and_size_in_its_own_process(tmp_path: Path) -> None:
    out = tmp_path / "scaling"
    assert _bench_module("bench_scaling").main(["--sizes", "32", "--models", "unet", "--preset", "smoke", "--steps", "1",
                 "--device", "cpu", "--out", str(out)]) == 0
    (row,) = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert row["model"] == "unet" and row["size"] == 32 and row["memory_kind"] == "process peak RSS"
    assert 0 < row["memory_before_model_gib"] <= row["peak_memory_gib"]  # a tiny model may not raise the peak
    assert "32³ step s / predict s / peak GiB" in out.with_suffix(".md").read_text()


def _bench_module(name: str):
    sys.path.insert(0, str(BENCH))
    return __import__(name)


def _row(kidney: float, tumor: float, seconds: float, steps: int | None = 5, model: str | None = None) -> dict:
    row = {"steps": steps, "samples": 1, "dice": {"kidney": kidney, "tumor": tumor}, "seconds_per_case": seconds}
    return row | ({"model": model} if model else {})


def test_frontier_verdict_met_not_met_and_undefined_class() -> None:
    verdict = _bench_module("bench_cli").frontier_verdict
    unet = _row(0.90, 0.50, 0.2, None, "unet")
    assert "**met** by DDIM 5 × 1" in verdict([_row(0.91, 0.55, 0.5), _row(0.95, 0.6, 2.0, 25), unet])
    # as good but 4x slower, or fast but worse on one class: not met; the line names the best setting's gap
    line = verdict([_row(0.91, 0.55, 0.8), _row(0.95, 0.40, 0.3, 1), unet])
    assert "**not met**" in line and "1 of 2 settings fit the time" in line and "tumor 0.550 vs 0.500" in line
    # a class the UNet's Dice leaves undefined (absent from every case) is not compared
    assert "**met**" in verdict([_row(0.91, float("nan"), 0.3), _row(0.90, float("nan"), 0.2, None, "unet")])
    assert "no UNet" in verdict([_row(0.9, 0.5, 0.3)])


def test_cost_verdict_names_the_batches_below_the_goal() -> None:
    verdict = _bench_module("bench_denoiser_cost").verdict
    rows = [{"batch": 1, "ratio": 18.0}, {"batch": 2, "ratio": 41.0}]
    assert verdict(rows).startswith("Goal (ratio >= 30x): **met** at batch 2; not at batch 1: 18x")
    assert "**not met**" in verdict(rows[:1]) and "every batch" in verdict(rows[1:])


def test_summary_gathers_tables_and_replaces_only_the_readme_block(tmp_path: Path, monkeypatch) -> None:
    summary = _bench_module("bench_summary")
    results = tmp_path / "results"
    results.mkdir()
    (results / "scaling.md").write_text("# Cost vs volume size (cpu, 2026, commit abc)\n\n| a |\n|---|\n| 1 |\n")
    (results / "step_cpu-preset_p64_none.md").write_text("# Step (cpu)\n\n| s |\n|---|\n| 0.5 |\n")
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- bench:results:begin -->\nold table\n<!-- bench:results:end -->\noutro\n")
    monkeypatch.setattr(summary, "RESULTS", results)  # the default folder's README key is "results"
    assert summary.main(["--results-dir", str(results), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("intro\n<!-- bench:results:begin -->") and text.endswith("<!-- bench:results:end -->\noutro\n")
    assert "old table" not in text and "| 0.5 |" in text and "([scaling.md](results/scaling.md))" in text
    page = (results / "SUMMARY.md").read_text()
    assert "([scaling.md](scaling.md))" in page
    assert page.count("*Missing:") == 3 and "`denoiser_cost.md`" in page and "`cli_quality.md`" in page
    assert summary.replace_block("no markers here", "results", "x") is None


def test_step_suite_measures_each_model_in_its_own_process(tmp_path: Path) -> None:
    out = tmp_path / "step.json"
    assert main(["bench", "step", "--", "--models", "lean=unet@model.unet_res_units=0", "--preset", "smoke",
                 "--steps", "1", "--warmup", "1", "--device", "cpu", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    (row,) = report["rows"]
    assert row["model"] == "lean" and row["step_s"] > 0 and row["peak_memory_gib"] > 0
    from tdseg_lite.model import ModelSpec, build_model

    lean = build_model(ModelSpec.build("smoke", {"model": "unet", "model.unet_res_units": 0}), patch_size=(32,) * 3)
    assert row["trainable_params_m"] == pytest.approx(sum(p.numel() for p in lean.parameters()) / 1e6)  # the variant ran
    assert report["args"]["batch"] == "4" and report["args"]["patch"] == "32"  # the smoke preset's 2 × 2 crops of 32³
    assert "| lean |" in out.with_suffix(".md").read_text() and report["commit"] and report["device"].startswith("cpu")


def test_step_suite_interleaved_gives_ratios_to_the_first_model(tmp_path: Path) -> None:
    out = tmp_path / "inter.json"
    assert _bench_module("bench_step").main(["--interleave", "--models", "unet,lean=unet@model.unet_res_units=0",
                 "--preset", "smoke", "--steps", "1", "--warmup", "1", "--device", "cpu", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    first, lean = report["rows"]
    assert report["interleaved"] and (first["model"], lean["model"]) == ("unet", "lean")
    assert first["x_first"] == 1.0 and lean["x_first"] == pytest.approx(lean["step_s"] / first["step_s"])
    assert first["step_min_s"] <= first["step_s"] <= first["step_max_s"] and lean["trainable_params_m"] < first["trainable_params_m"]
    assert "| lean |" in out.with_suffix(".md").read_text()


def test_step_layout_variant_switches_the_cpu_layout_per_variant(monkeypatch) -> None:
    bench_step = _bench_module("bench_step")
    sets = {"layout": "first", "model.unet_res_units": "0"}
    assert bench_step.layout_env(sets) == "0" and sets == {"model.unet_res_units": "0"}  # popped: not a model key
    assert bench_step.layout_env({}) == "1"
    with pytest.raises(SystemExit, match=r"@layout must be one of \['first', 'last'\], got 'cf'"):
        bench_step.layout_env({"layout": "cf"})
    seen = []
    monkeypatch.setattr("tdseg_lite.train.Trainer.train_step",
                        lambda self, batches: seen.append(__import__("os").environ["TDSEG_CHANNELS_LAST"]) or {})
    monkeypatch.setenv("TDSEG_CHANNELS_LAST", "1")
    args = bench_step.argparse.Namespace(models="unet,cf=unet@layout=first", preset="smoke", patch=16, batch=1,
                                         amp="none", compile=False, warmup=1, steps=1, tiny_text=True)
    rows = bench_step.time_interleaved(args, bench_step.torch.device("cpu"), Path("."))
    assert [r["model"] for r in rows] == ["unet", "cf"] and seen == ["1", "0", "1", "1", "0", "0"]


def test_model_variants_keep_list_values_whole() -> None:
    got = _bench_module("common").parse_models("unet, thin=textdiffseg@denoiser.channels=[8,16,32]@diffusion.decode_fraction=0.25,b=unet")
    assert got == {"unet": ("unet", {}), "b": ("unet", {}),
                   "thin": ("textdiffseg", {"denoiser.channels": "[8,16,32]", "diffusion.decode_fraction": "0.25"})}


STAMP = re.compile(r"^# .+\((?:cpu \(.+\), \d+ threads|cuda \(.+\)), \d{4}-\d\d-\d\dT[\d:]+\+00:00, commit [0-9a-f]{7,}")


def test_every_published_table_is_stamped_or_its_provenance_is_in_the_readme() -> None:
    """Issue #9: every figure states device, threads, date and commit."""
    readme = (BENCH.parent / "README.md").read_text()
    unstamped = []
    for md in sorted((BENCH / "results").rglob("*.md")):
        if md.name == "SUMMARY.md":
            continue
        first = md.read_text().splitlines()[0] if md.stat().st_size else ""
        if not STAMP.match(first) and f"benchmarks/results/{md.relative_to(BENCH / 'results').as_posix()}" not in readme:
            unstamped.append(md.name)
    assert not unstamped, f"tables without a device/date/commit stamp nor a README provenance row: {unstamped}"
    tables = _bench_module("bench_summary").TABLES
    for pattern, _ in tables:
        files = sorted((BENCH / "results").glob(pattern))
        assert files, f"tdseg bench all's table {pattern} is missing from benchmarks/results/"
        assert all(STAMP.match(f.read_text().splitlines()[0]) for f in files), f"{pattern} is not stamped"
    assert "<!-- bench:results:begin -->" in readme and "<!-- bench:results:end -->" in readme


def _ablation_run(config: str, seed: int, kidney: list[float], tumor: list[float | None]) -> dict:
    """A record in the layout of ``bench_ablation.run_one`` (no training)."""
    ab = _bench_module("bench_ablation")
    run = {"config": config, "seed": seed, "model": "textdiffseg", "set": [], "steps_trained": 10, "seconds_per_case": 1.0,
           "classes": ["kidney", "tumor"],
           "cases": [{"case_id": f"c{i}", "dice": {"kidney": k, "tumor": t}} for i, (k, t) in enumerate(zip(kidney, tumor))]}
    run["mean_dice"] = ab.class_means(run)
    return run


def test_ablation_verdict_needs_the_interval_and_the_noise_floor() -> None:
    ab = _bench_module("bench_ablation")
    assert ab.verdict(0.05, 0.01, 0.09, 0.02) and ab.verdict(-0.05, -0.09, -0.01, 0.02)
    assert not ab.verdict(0.05, -0.01, 0.09, 0.02)          # the interval holds 0
    assert not ab.verdict(0.015, 0.01, 0.02, 0.02)          # below the floor
    assert not ab.verdict(0.05, 0.01, 0.09, float("nan"))   # one seed: no floor, nothing is called real
    sigma, floor = ab.noise_floor([0.02, 0.04, float("nan")], seeds=2)
    assert sigma == pytest.approx(0.001**0.5) and floor == pytest.approx(2 * 0.001**0.5)
    assert all(map(math.isnan, ab.noise_floor([0.02], seeds=1)))


def test_ablation_paired_bootstrap_drops_undefined_pairs() -> None:
    ab = _bench_module("bench_ablation")
    delta, lo, hi = ab.paired_bootstrap([0.8, 0.7, float("nan"), 0.6], [0.7, 0.7, 0.5, 0.5])
    assert delta == pytest.approx(0.2 / 3) and lo <= delta <= hi
    assert math.isnan(ab.paired_bootstrap([0.5, 0.6], [0.4, 0.5])[1])  # all differences equal: no interval


def test_ablation_aggregate_calls_a_difference_real_only_above_the_noise() -> None:
    ab = _bench_module("bench_ablation")
    kidney = [0.90, 0.85, 0.80, 0.88, 0.92, 0.86, 0.83, 0.89]
    tumor = [0.6, None, 0.5, 0.7, None, 0.55, 0.65, 0.6]  # tumour-free cases: undefined, skipped
    quiet = [_ablation_run("full", s, [k + 0.005 * s for k in kidney], tumor) for s in (0, 1)]
    quiet += [_ablation_run("no-text", s, [k - 0.10 + 0.005 * s + 0.01 * (i % 3) for i, k in enumerate(kidney)], tumor)
              for s in (0, 1)]
    agg = ab.aggregate(quiet)
    d = agg["configs"]["no-text"]["delta"]["kidney"]
    assert d["delta"] == pytest.approx(-0.09, abs=0.01) and d["ci_high"] < 0 and d["real"]
    assert not agg["configs"]["no-text"]["delta"]["tumor"]["real"]  # the same tumour Dice: no difference
    assert agg["configs"]["full"]["tumor"]["mean"] == pytest.approx(0.6)
    # the same per-case drop, but the seeds disagree by more than the drop: the floor refuses it
    noisy = [_ablation_run("full", s, [k + 0.15 * s for k in kidney], tumor) for s in (0, 1)]
    noisy += [_ablation_run("no-text", s, [k - 0.10 + 0.15 * (1 - s) + 0.01 * (i % 3) for i, k in enumerate(kidney)],
                            tumor) for s in (0, 1)]
    agg = ab.aggregate(noisy)
    d = agg["configs"]["no-text"]["delta"]["kidney"]
    assert d["ci_high"] < 0 and abs(d["delta"]) < agg["noise"]["kidney"]["floor"] and not d["real"]
    # one seed per configuration: no floor, so no verdict of "real"
    single = ab.aggregate([quiet[0], quiet[2]])
    assert single["seeds_per_config"] == 1 and not single["configs"]["no-text"]["delta"]["kidney"]["real"]


def test_ablation_markdown_states_verdicts_and_what_else_differs() -> None:
    ab = _bench_module("bench_ablation")
    runs = [_ablation_run(c, s, [0.9 - (0.2 + 0.01 * (i % 2)) * (c == "no-label-encoder") + 0.01 * s + 0.01 * i
                              for i in range(6)],
                          [0.5 + 0.01 * (-1) ** i * (c != "full") for i in range(6)])  # tumour: noise only
            for s in (0, 1) for c in ("full", "no-label-encoder")]
    report = {"device": "cpu (x86_64), 2 threads", "date": "2026-01-01T00:00:00+00:00", "commit": "abcdef0",
              "preset": "cpu", "steps": 0, "minutes": 6.0, "seeds": [0, 1], "cases": 6, "eval_steps": 2,
              "eval_samples": 1, "aggregate": ab.aggregate(runs)}
    text = "\n".join(ab.markdown(report))
    assert STAMP.match(text.splitlines()[0])
    assert "| no-label-encoder | `--model pixel-diffusion` |" in text and "**real**" in text
    assert "within noise" in text and "real differences: no-label-encoder (Dice kidney)" in text
    assert ab.ALSO_CHANGES["no-label-encoder"] in text and set(ab.ALSO_CHANGES) == set(ab.CONFIGURATIONS)


def test_ablation_also_scores_give_default_minus_other_on_the_same_cases() -> None:
    ab = _bench_module("bench_ablation")
    kidney = [0.90, 0.85, 0.80, 0.88, 0.92, 0.86, 0.83, 0.89]
    tumor = [0.6, None, 0.5, 0.7, None, 0.55, 0.65, 0.6]
    runs = []
    for s in (0, 1, 2):
        unet = _ablation_run("unet", s, [k + 0.004 * s for k in kidney], tumor)
        full = _ablation_run("full", s, [k - 0.02 + 0.004 * s for k in kidney], tumor)
        aux = _ablation_run("full", s, [k - 0.02 + 0.004 * s - 0.03 - 0.005 * (i % 2) for i, k in enumerate(kidney)],
                            tumor)  # the aux head alone: 0.03 below the sampled prediction on every case
        full["also"] = {"aux-head": {k: aux[k] for k in ("seconds_per_case", "classes", "cases", "mean_dice")}}
        runs += [unet, full]
    agg = ab.aggregate(runs, reference="unet")
    full = agg["configs"]["full"]
    assert "delta" not in agg["configs"]["unet"] and "also" not in agg["configs"]["unet"]
    assert full["delta"]["kidney"]["delta"] == pytest.approx(-0.02) and "no-report" not in full["also"]
    d = full["also"]["aux-head"]["delta"]["kidney"]
    assert d["delta"] == pytest.approx(0.0325) and d["ci_low"] > 0 and d["real"]  # sampled − aux head
    assert full["also"]["aux-head"]["kidney"]["mean"] == pytest.approx(full["kidney"]["mean"] - 0.0325)
    report = {"device": "cpu (x86_64), 1 threads", "date": "2026-01-01T00:00:00+00:00", "commit": "abcdef0",
              "preset": "cpu", "steps": 0, "minutes": 10.0, "seeds": [0, 1, 2], "cases": 8, "eval_steps": 2,
              "eval_samples": 1, "title": "Equal budget", "data": "/data/kits_x", "jobs": 2, "aggregate": agg,
              "set": []}
    text = "\n".join(ab.markdown(report))
    assert text.startswith("# Equal budget (") and ", data kits_x, 2 runs side by side)" in text.splitlines()[0]
    assert "| Δ vs unet [95 % paired bootstrap CI] |" in text and "| aux head alone (no denoiser call) |" in text
    assert "| full | 1.00 | 0.818 ± 0.004 |" in text and "label names only" not in text


def test_ablation_run_one_scores_a_textdiffseg_run_the_other_ways_once(tmp_path: Path) -> None:
    ab = _bench_module("bench_ablation")
    calls: list[tuple[str, ...]] = []

    def runner(*cli: str) -> float:  # stands in for `tdseg train` / `tdseg evaluate`: writes what they write
        calls.append(cli)
        out = Path(cli[cli.index("--out") + 1])
        if cli[0] == "train":
            out.mkdir(parents=True)
            (out / "config.json").write_text(json.dumps({"label_ae": {"source": "reused"}}))
            (out / "log.csv").write_text("step,loss\n5,0.5\n")
        else:
            dice = 0.7 if "--head" in cli else 0.8
            out.write_text(json.dumps({"seconds_per_case": 0.5, "classes": ["kidney"],
                                       "cases": [{"case_id": "c0", "dice": {"kidney": dice}, "hd95_mm": {}}]}))
        return 1.0

    args = __import__("argparse").Namespace(work=str(tmp_path), preset="smoke", minutes=1.0, steps=0, set=[],
                                            eval_steps=2, eval_samples=1, val_cases=0, fresh=False, device="cpu",
                                            data="")
    rec = ab.run_one(args, "full", 0, runner=runner, also=("aux-head",))
    evals = [c for c in calls if c[0] == "evaluate"]
    assert len(evals) == 2 and "--head" not in evals[0] and "--steps" in evals[0]
    assert evals[1][evals[1].index("--head") + 1] == "aux" and "--steps" not in evals[1]
    assert rec["mean_dice"]["kidney"] == 0.8 and rec["also"]["aux-head"]["mean_dice"]["kidney"] == 0.7
    calls.clear()
    rec = ab.run_one(args, "full", 0, runner=runner, also=("aux-head", "no-report"))  # reused: one new scoring
    assert [c[c.index("--reports") + 1] for c in calls if "--reports" in c] == ["none"] and len(calls) == 1
    assert set(rec["also"]) == {"aux-head", "no-report"}
    calls.clear()
    unet = ab.run_one(args, "unet", 0, runner=runner, also=("aux-head",))
    assert "also" not in unet and [c[0] for c in calls] == ["train", "evaluate"]


def test_text_side_shift_is_zero_when_the_tumour_ignores_the_report_and_one_when_it_follows() -> None:
    bt = _bench_module("bench_text")
    one_left = "A 3.4 cm tumour in the lower pole of the left kidney; the right kidney is normal."
    both = ("A 3.2 cm tumour in the interpolar region of the right kidney and a 2.5 cm tumour in the lower pole of "
            "the left kidney.")
    single = bt.single_sided([one_left, both, "Both kidneys are normal; no renal tumour.", None])
    assert single == [True, False, False, False]

    def run(right: list[float | None], swapped: list[float | None]) -> dict:
        cases = lambda values: [{"side_fraction": v} for v in values]
        return {"scores": {"model/right": {"cases": cases(right)}, "model/swapped": {"cases": cases(swapped)}}}

    # a text-free model: 80 % of its tumour on the left whatever the report says -> the named share flips
    assert bt.side_shift(run([0.8, 1.0, None, None], [0.2, 1.0, None, None]), single) == pytest.approx(0.0)
    # all predicted tumour follows the report to the named kidney; the bilateral case does not count
    assert bt.side_shift(run([1.0, 1.0, None, None], [1.0, 1.0, None, None]), single) == pytest.approx(1.0)
    assert math.isnan(bt.side_shift(run([None, 1.0, None, None], [0.5, 1.0, None, None]), single))


def test_text_verdicts_name_the_variant_they_judge() -> None:
    bt = _bench_module("bench_text")
    cell = lambda tumour, side=math.nan, fp=0.0: {"dice_kidney": (0.9, 0.0), "dice_tumour": (tumour, 0.0),
                                                  "fp_ml_tumour_free": (fp, 0.0), "side_fraction": (side, 0.0)}
    scores = {"model/right": cell(0.30, 0.9), "model/none": cell(0.10), "model/other": cell(0.1, fp=5.0),
              "model/swapped": cell(0.20, 0.4), "model/no_tumour": cell(0.0), "model/paraphrase": cell(0.29, 0.9)}
    agg = {"tds-structured": {"model": "textdiffseg", "scores": scores, "side_shift": (0.3, 0.0)}}
    lines = bt.verdicts(agg)
    assert len(lines) == 4 and all(line.startswith("- (`tds-structured`) ") for line in lines)
    assert "met (+0.200)" in lines[0] and "met (+0.100; side share 0.90 → 0.40; side shift tds-structured 0.30)" in lines[2]
    assert bt.verdicts({"unet": {"model": "unet", "scores": scores}}) == ["- targets need the `textdiffseg` model; not run."]


def test_uncertainty_aggregate_pairs_the_seeds_of_ensemble_and_single_pass() -> None:
    bu = _bench_module("bench_uncertainty")
    assert bu.scorings_for("unet") == ["softmax"] and bu.scorings_for("textdiffseg") == ["aux-head", "one-sample", "ensemble", "blend"]

    def rec(config: str, scoring: str, seed: int, auroc_fg: float, seconds: float) -> dict:
        numbers = {f: 0.5 for f in bu.FIELDS} | {"auroc_foreground": auroc_fg, "seconds_per_case": seconds}
        return {"config": config, "seed": seed, "scoring": scoring, "numbers": numbers}

    records = [rec("unet", "softmax", s, 0.60, 1.0) for s in (0, 1, 2)]
    records += [rec("full", "aux-head", s, 0.62 + 0.01 * s, 1.0) for s in (0, 1, 2)]
    records += [rec("full", "ensemble", s, 0.70 + 0.01 * s + 0.01 * (s == 2), 4.0) for s in (0, 1)]  # seed 2 missing
    agg = bu.aggregate(records)
    assert agg["rows"]["full/ensemble"]["seeds"] == [0, 1]
    assert agg["rows"]["unet/softmax"]["auroc_foreground"]["sd"] == pytest.approx(0.0)
    aux = agg["deltas"]["full ensemble − aux-head"]
    assert aux["seeds"] == 2 and aux["auroc_foreground"]["mean"] == pytest.approx(0.08)
    assert aux["time_ratio"] == pytest.approx(4.0)
    assert agg["deltas"]["full ensemble − unet softmax"]["auroc_foreground"]["mean"] == pytest.approx(0.105)
    assert "full ensemble − one-sample" not in agg["deltas"]  # no one-sample scoring recorded
    lines = bu.markdown({"aggregate": agg, "title": "T", "device": "cpu", "date": "d", "commit": "c", "seeds": [0, 1, 2],
                         "cases": 8, "samples": 4})
    assert any(line.startswith("| full ensemble − aux-head | 0.000 ± 0.000 | 0.080 ± 0.000") for line in lines)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="on a GPU the script would run for real")
def test_gpu_equal_budget_script_refuses_a_machine_without_a_gpu_in_one_line(tmp_path: Path) -> None:
    import os
    import subprocess

    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"  # `python` = this interpreter
    env = {**os.environ, "PATH": path, "DEVICE": "cuda", "WORK": str(tmp_path)}
    done = subprocess.run(["bash", str(BENCH / "gpu_equal_budget.sh")], env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 2 and not any(tmp_path.iterdir())
    assert done.stderr.strip().splitlines()[-1].startswith("gpu_equal_budget.sh: DEVICE=cuda needs a CUDA GPU")
