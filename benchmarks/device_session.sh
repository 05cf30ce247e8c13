#!/usr/bin/env bash
# Everything a lent GPU machine (16+ cores) should measure in one call of under 10 minutes:
# the GPU checks (benchmarks/gpu_check.sh, on 2 cores + the GPU) and, at the same time, the
# equal-budget quality comparison of every model and ablation on the other CPU cores
# (benchmarks/quality_parallel.sh, 7 configurations x 2 cores). No network needed: MONAI and
# nibabel come from .whl/ when missing; the text encoder is a tiny random BERT.
#
#   OUT=/tmp/dev MINUTES=6 bash benchmarks/device_session.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results/device}"
mkdir -p "$OUT"
source benchmarks/device_env.sh
tiny_bert
TDSEG_ARTIFACTS=/tmp/tdseg_quality MINUTES="${MINUTES:-6}" OUT="$OUT/quality" \
  bash benchmarks/quality_parallel.sh --set text.model=/tmp/tiny_bert >"$OUT/quality_log.txt" 2>&1 &
qpid=$!
pin=(); command -v taskset >/dev/null && pin=(taskset -c "$(( $(nproc) - 2 )),$(( $(nproc) - 1 ))")
TDSEG_ARTIFACTS=/tmp/tdseg_gpu OUT="$OUT/gpu" "${pin[@]}" bash benchmarks/gpu_check.sh >"$OUT/gpu_log.txt" 2>&1 || echo "gpu_check failed"
wait "$qpid" || echo "quality_parallel failed"
tail -n 30 "$OUT/gpu_log.txt"
cat "$OUT/quality/summary.md" 2>/dev/null || tail -n 20 "$OUT/quality_log.txt"
