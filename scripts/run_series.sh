#!/usr/bin/env bash
# The main job (README "Run the series"): install into .venv, generate the phantom, execute every
# notebook in notebooks/ in order with papermill under the `cpu` preset. Leaves executed notebooks,
# their HTML and each notebook's summary.json in one run folder (printed at the end).
# Arguments go to scripts/run_series.py, e.g. --preset smoke, --out runs/mine, --only 00 01.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh .venv
exec .venv/bin/python scripts/run_series.py --preset cpu "$@"
