#!/usr/bin/env bash
# The test command (README "Run the tests"; .ci/run calls exactly this).
# Installs what it needs into .venv, then runs the unit tests and every notebook under nbval
# with the `smoke` preset on CPU. Extra arguments go to pytest (e.g. -k phantom).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh .venv
ART="$(mktemp -d -t tdseg-test-XXXXXX)"
trap 'rm -rf "$ART"' EXIT
export TDSEG_PRESET=smoke TDSEG_ARTIFACTS="$ART" TDSEG_CACHE="$ART/cache" TDSEG_STATIC_VIEWER=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
.venv/bin/python -m pytest -p no:cacheprovider -q \
  --nbval-lax --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg \
  --nbval-cell-timeout 300 \
  tests notebooks "$@"
