#!/usr/bin/env bash
# The test command (README "Run the tests"; .ci/run calls exactly this).
# Installs what it needs into .venv, then runs the unit tests and every notebook under nbval
# with the `smoke` preset on CPU. Extra arguments go to pytest (e.g. -k phantom).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh .venv
ART="$(mktemp -d -t tdseg-test-XXXXXX)"
trap 'rm -rf "$ART"' EXIT
# Two pytest workers (one file or notebook each at a time), one torch/OpenMP thread per process: on the
# 2-core machine that halves the wall time, and single-threaded processes do not stall each other at
# OpenMP barriers when the machine is loaded.
export TDSEG_PRESET=smoke TDSEG_ARTIFACTS="$ART" TDSEG_CACHE="$ART/cache" TDSEG_STATIC_VIEWER=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
.venv/bin/python -m pytest -p no:cacheprovider -q -n 2 --dist loadfile \
  --nbval-lax --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg \
  --nbval-cell-timeout 300 \
  tests notebooks "$@"
