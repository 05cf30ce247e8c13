"""The project stands alone: no tracked file cites material that lives outside the repository.

The design is in ``docs/design.md`` and measurements in ``benchmarks/results/``; README,
DEVELOPING.md, docstrings, notebooks, scripts and benchmarks link there, never to notes kept
beside the repository (a blueprint, a reference folder, earlier probes). Every tracked text file
is checked; only ``.git`` and ``.venv`` are left out.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SKIP_DIRS = {".git", ".venv"}

# Each pattern is assembled from pieces so that this file does not match itself.
_PIECES = [
    (r"\.\./", "shared"),                     # a path out of the repository into the shared folder
    (r"\bshared/", "reference"),              # the reference folder beside the repository
    (r"\bshared ", "reference"),
    (r"\bstack", r"\.md"),
    (r"\bpaper", r"\.md"),                    # the paper dossier (the paper itself is cited by arXiv id)
    (r"\bpaper ", r"§\s*\d"),                 # the dossier's section numbers
    (r"\baesthetics", r"\.md"),
    (r"\becosystem", r"\.md"),
    (r"\bcalibration", r"\.md"),
    (r"\bprevious ", "calibration"),          # the earlier calibration run, as a source
    (r"\bcalibration", "'s "),
    (r"\bthe ", r"calibration\b(?! of| curve| error| bins?\b)"),
    (r"\bstack ", "probe"),
]
PATTERNS = [re.compile(a + b, re.IGNORECASE) for a, b in _PIECES] + [
    re.compile(r"\bDESIGN" + r"(\.md|\s*§)"),  # the original blueprint and its sections (upper case: docs/design.md is ours)
]


def tracked_text_files() -> list[Path]:
    """Every file git tracks (or, outside a git checkout, every file), minus .git/.venv and binaries."""
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
        paths = [REPO / p for p in out.decode().split("\0") if p]
    except (OSError, subprocess.CalledProcessError):
        paths = [p for p in REPO.rglob("*") if p.is_file()]
    files = []
    for path in paths:
        rel = path.relative_to(REPO)
        if rel.parts and rel.parts[0] in SKIP_DIRS or not path.is_file():
            continue
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue  # binary (pictures, checkpoints)
        files.append(path)
    return files


def citations(text: str) -> list[tuple[int, str]]:
    """(line number, matched text) of every citation of outside material in ``text``."""
    hits = []
    for number, line in enumerate(text.splitlines(), start=1):
        for pattern in PATTERNS:
            match = pattern.search(line)
            if match:
                hits.append((number, match.group(0)))
    return hits


@pytest.mark.parametrize("text", [
    "see ../" + "shared/DESIGN" + ".md",
    "as DESIGN " + "§5 says",
    "(paper" + ".md §5.2)",
    "TextDiffSeg (paper " + "§1.2, item 3)",
    "the previous " + "calibration measured 9.2 s",
    "the calib" + "ration's design got 69 steps",
    "see stack" + ".md",
    "the stack " + "probe found",
    "aesthetics" + ".md",
])
def test_patterns_catch_outside_citations(text: str) -> None:
    assert citations(text), text


@pytest.mark.parametrize("text", [
    "the calibration of the confidence (ECE)",
    "perfect calibration",
    "a reliability diagram shows calibration",
    "the paper's cross-modal attention (paper item 3, docs/design.md §2)",
    "arXiv 2504.11825",
])
def test_patterns_leave_ordinary_words(text: str) -> None:
    assert not citations(text), citations(text)


def test_no_tracked_file_cites_outside_material() -> None:
    files = tracked_text_files()
    assert len(files) > 20, f"found only {len(files)} text files under {REPO}"
    hits = []
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        hits += [f"{path.relative_to(REPO)}:{n}: {m!r}" for n, m in citations(text)]
    assert not hits, ("these lines cite material outside the repository; link docs/design.md or a results "
                      "file in the repository instead:\n" + "\n".join(hits))
