"""`tdseg bench`: every suite's script exists, one runs end to end, bad use is a one-line error."""

from __future__ import annotations

import json
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
