"""Every notebook follows the anatomy in DEVELOPING.md and is committed without outputs.

These are the mechanical checks; nbval (run by the same test command) executes every cell.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb"))
REQUIRED_PARAMETERS = {"preset", "seed", "data_dir", "artifacts"}


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]


def _text(path: Path) -> str:
    return "\n".join("".join(c["source"]) for c in _cells(path))


def test_series_is_not_empty() -> None:
    assert NOTEBOOKS, "notebooks/ holds no NN_name.ipynb"
    assert NOTEBOOKS[0].name.startswith("00_")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs(path: Path) -> None:
    nb = json.loads(path.read_text())
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert not cell.get("outputs"), f"{path.name}: strip outputs (python scripts/nbsync.py strip ...)"
            assert cell.get("execution_count") is None


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_parameters_cell(path: Path) -> None:
    import papermill

    tagged = [c for c in _cells(path) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: exactly one cell must be tagged 'parameters'"
    params = papermill.inspect_notebook(str(path))
    assert REQUIRED_PARAMETERS <= set(params), f"{path.name}: parameters {sorted(params)} lack {REQUIRED_PARAMETERS}"
    assert "TDSEG_PRESET" in "".join(tagged[0]["source"]), "preset must default to $TDSEG_PRESET"
    for name, info in params.items():
        assert info["help"], f"{path.name}: parameter {name!r} needs a trailing comment"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_anatomy(path: Path) -> None:
    text = _text(path)
    first = "".join(_cells(path)[0]["source"])
    assert first.lstrip().startswith("# "), f"{path.name}: first cell must be the title"
    assert "colab.research.google.com" in first, f"{path.name}: Open-in-Colab badge in the title cell"
    assert "run time" in first.lower(), f"{path.name}: state the expected run time in the title cell"
    assert "except ImportError" in text and "pip install" in text, f"{path.name}: guarded install cell"
    assert "naive_" in text and "assert_close" in text, f"{path.name}: a naive_* derivation checked against the package"
    assert "write_summary(" in text, f"{path.name}: write summary.json"
    assert "## Exercises" in text, f"{path.name}: an Exercises section"
    assert "matplotlib.use(" not in text, f"{path.name}: do not switch matplotlib backends in notebooks"
    assert "cuda\")" not in text and "'cuda'" not in text, f"{path.name}: never hard-code cuda"
