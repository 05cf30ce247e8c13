"""Run the notebook series in order with papermill and collect everything in one run folder.

    python scripts/run_series.py --preset cpu --out runs/2026-11-26_cpu
    python scripts/run_series.py --preset smoke --only 00 01        # a subset, by number prefix
    python scripts/run_series.py --preset full -p data_dir /content/data/kits19_prepared

The run folder holds, for every notebook ``NN_name``:
``NN_name.ipynb`` (executed), ``NN_name.html`` and ``artifacts/NN_name/summary.json`` (plus the
pictures and checkpoints it saved), and ``run.json`` with the preset, timings and status.
The first failing notebook stops the run (exit status 1); its executed copy shows the error.

The HTML renders its equations offline: when the ``jupyter-server-mathjax`` package is installed,
its MathJax 2 copy is placed in ``mathjax/`` of the run folder and nbconvert points the pages at
it (``--HTMLExporter.mathjax_url``), so the folder can be opened anywhere without a network;
without that package the pages load MathJax from nbconvert's default CDN.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _parse(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="cpu", choices=["smoke", "cpu", "full", "auto"], help="config preset (default cpu)")
    ap.add_argument("--out", type=Path, default=None, help="run folder (default runs/<UTC time>_<preset>)")
    ap.add_argument("--only", nargs="*", default=None, help="notebook number prefixes to run, e.g. 00 02")
    ap.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                    help="extra papermill parameter (repeatable)")
    ap.add_argument("--timeout", type=int, default=3600, help="per-cell timeout in seconds")
    return ap.parse_args(argv)


def _notebooks(only: list[str] | None) -> list[Path]:
    books = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if only:
        books = [b for b in books if any(b.name.startswith(o) for o in only)]
    if not books:
        raise SystemExit(f"run_series: no notebooks matched --only {only} in {REPO / 'notebooks'}")
    return books


def _generate_dataset(preset: str, artifacts: Path) -> str:
    """Build (or reuse) the phantom the notebooks read, from the same DataConfig they use."""
    from tdseg_lite.config import build_config
    from tdseg_lite.data import DataConfig, default_dataset

    cfg = build_config(DataConfig, preset)
    path = default_dataset(cfg, "", artifacts=artifacts)
    return str(path)


#: MathJax settings for the copy in the run folder: it ships only the STIX web fonts (no TeX fonts)
_MATHJAX_LOCAL_CONFIG = """MathJax.Hub.Config({"HTML-CSS": {availableFonts: [], preferredFont: null,
                                 webFont: "STIX-Web", imageFont: null}});
MathJax.Ajax.loadComplete("[MathJax]/config/local/tdseg.js");
"""


def offline_mathjax(out: Path) -> str | None:
    """Copy a locally installed MathJax into ``out/mathjax``; the page-relative URL for nbconvert, or None.

    The copy comes from the ``jupyter-server-mathjax`` package (MathJax 2.7, the version nbconvert's
    HTML template is written for). ``None`` when the package is missing: nbconvert then uses its CDN.
    """
    try:
        import jupyter_server_mathjax
    except ImportError:
        return None
    source = Path(jupyter_server_mathjax.__file__).parent / "static"
    if not (source / "MathJax.js").is_file():
        return None
    target = out / "mathjax"
    if not (target / "MathJax.js").is_file():
        shutil.copytree(source, target, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("a11y", "SVG"))  # accessibility maps, SVG output: unused
    local = target / "config" / "local"
    local.mkdir(parents=True, exist_ok=True)
    (local / "tdseg.js").write_text(_MATHJAX_LOCAL_CONFIG)
    return "mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full,Safe,local/tdseg"


def export_html(notebook: Path, mathjax_url: str | None) -> int:
    """nbconvert ``notebook`` to HTML next to it (equations through ``mathjax_url`` when given)."""
    cmd = [sys.executable, "-m", "nbconvert", "--to", "html", "--log-level", "WARN", str(notebook)]
    if mathjax_url:
        cmd.insert(-1, f"--HTMLExporter.mathjax_url={mathjax_url}")
    return subprocess.run(cmd, check=False).returncode


def main(argv: list[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    import papermill as pm

    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d_%H%M%S")
    out = (args.out or REPO / "runs" / f"{stamp}_{args.preset}").resolve()
    artifacts = out / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    os.environ.update(TDSEG_ARTIFACTS=str(artifacts), TDSEG_STATIC_VIEWER="1", TDSEG_PRESET=args.preset)
    params = {"preset": args.preset, "artifacts": str(artifacts)}
    params.update({k: v for k, v in args.param})
    record = {"preset": args.preset, "started": stamp, "params": params, "notebooks": []}
    user_data = params.get("data_dir")
    if not user_data:
        t0 = time.perf_counter()
        dataset = _generate_dataset(args.preset, artifacts)
        record["dataset"] = {"path": dataset, "seconds": round(time.perf_counter() - t0, 1)}
        print(f"[series] dataset ready: {dataset} ({record['dataset']['seconds']} s)", flush=True)
    mathjax_url = offline_mathjax(out)
    record["mathjax"] = "offline: mathjax/ in the run folder" if mathjax_url else "CDN (pip install jupyter-server-mathjax for offline)"
    status = 0
    for book in _notebooks(args.only):
        target = out / book.name
        print(f"[series] {book.name} (preset {args.preset}) ...", flush=True)
        t0 = time.perf_counter()
        entry = {"notebook": book.name}
        try:
            pm.execute_notebook(str(book), str(target), parameters=params, kernel_name="python3",
                                cwd=str(REPO / "notebooks"), execution_timeout=args.timeout, progress_bar=False)
            entry["status"] = "ok"
        except Exception as err:  # noqa: BLE001 - papermill already wrote the executed copy with the error
            entry["status"] = f"failed: {type(err).__name__}"
            status = 1
        entry["seconds"] = round(time.perf_counter() - t0, 1)
        export_html(target, mathjax_url)
        summary = artifacts / book.stem / "summary.json"
        entry["summary"] = str(summary.relative_to(out)) if summary.exists() else None
        record["notebooks"].append(entry)
        print(f"[series] {book.name}: {entry['status']} in {entry['seconds']} s", flush=True)
        (out / "run.json").write_text(json.dumps(record, indent=2) + "\n")
        if status:
            break
    print(f"[series] run folder: {out}")
    return status


if __name__ == "__main__":
    sys.exit(main())
