#!/usr/bin/env bash
# The five `tdseg bench all` tables on a lent GPU, sized for one device call of under 10 minutes
# (short training budgets: MINUTES per model, default 1). Writes benchmarks/results/gpu_<name>/
# (cost, step, scaling, cli quality, frontier, SUMMARY.md). No network needed: MONAI, nibabel and
# scipy come from .whl/ when missing (benchmarks/device_env.sh); the text encoder is a tiny random BERT.
# On Colab or any CUDA machine with the package installed, `tdseg bench all` gives the full-budget version.
#
#   MINUTES=1 bash benchmarks/gpu_tables.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source benchmarks/device_env.sh
python -c "import torch, sys; sys.exit(not torch.cuda.is_available())" \
  || { echo "gpu_tables.sh: needs a CUDA GPU (on a CPU run: tdseg bench all)" >&2; exit 2; }
tiny_bert
export TDSEG_ARTIFACTS="${TDSEG_ARTIFACTS:-/tmp/tdseg_gpu_tables}"
start=$(date +%s)
python benchmarks/bench_denoiser_cost.py --device cuda | tail -3
python benchmarks/bench_step.py --device cuda --tiny-text | tail -6
python benchmarks/bench_scaling.py --device cuda --tiny-text | tail -6
python benchmarks/bench_cli.py --device cuda --minutes "${MINUTES:-1}" --set text.model=/tmp/tiny_bert \
  --steps-grid "${STEPS_GRID:-1,5,10,25}" --samples-grid 1,4 2>&1 | grep -v "^step " | tail -40
python benchmarks/bench_summary.py
echo "gpu_tables.sh: $(( $(date +%s) - start )) s"
