#!/usr/bin/env bash
# The GPU checks of the project in one short script (≈ 6 min on an H100/H200):
#   1. training-step cost of each model, fp32 vs bf16, at the cpu (64³) and full (96³) presets;
#   2. `tdseg train --preset full` end to end on the phantom for 2 minutes (AMP auto, checkpoints, resume).
# Results go to $OUT (default benchmarks/results/gpu). Uses a tiny random BERT as text encoder
# (--tiny-text) so that no hub download is needed; the prompt embedding is cached either way.
#
#   OUT=/tmp/gpu bash benchmarks/gpu_check.sh
# On a machine without MONAI/nibabel installed, put their wheels in .whl/ (pip download monai nibabel).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results/gpu}"
mkdir -p "$OUT"
source benchmarks/device_env.sh
export TDSEG_ARTIFACTS="${TDSEG_ARTIFACTS:-/tmp/tdseg_art}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/nvidia_smi.csv"
python - <<'EOF' | tee "$OUT/env.json"
import json, torch, monai
print(json.dumps({"torch": torch.__version__, "monai": monai.__version__, "cuda": torch.version.cuda,
                  "gpu": torch.cuda.get_device_name(0), "bf16": torch.cuda.is_bf16_supported()}))
EOF
for amp in ${AMPS:-none bf16}; do
  python benchmarks/bench_step.py --tiny-text --models unet,textdiffseg,pixel-diffusion --patch 64 --batch 4 \
    --steps 10 --amp "$amp" --out "$OUT/step_cpu-preset_p64_${amp}.json" | tail -5
  python benchmarks/bench_step.py --tiny-text --preset full --models unet,textdiffseg --patch 96 --batch 4 \
    --steps 10 --amp "$amp" --out "$OUT/step_full-preset_p96_${amp}.json" | tail -4
done
tiny_bert
RUN=/tmp/gpu_run
rm -rf "$RUN"
start=$(date +%s)
python -m tdseg_lite.cli train --out "$RUN" --preset full --quiet --max-minutes "${TRAIN_MIN:-2}" --set text.model=/tmp/tiny_bert \
  --set train.val_every=200 --set train.val_max_cases=2 --set label_ae.max_steps=1000 2>&1 | tail -5
python -m tdseg_lite.cli train --out "$RUN" --resume --quiet --max-minutes "${RESUME_MIN:-2.5}" 2>&1 | tail -3
echo "train+resume wall: $(( $(date +%s) - start )) s"
cp "$RUN"/log.csv "$RUN"/val.csv "$RUN"/config.json "$RUN"/loss_curve.png "$OUT"/ 2>/dev/null || true
python - "$RUN" <<'EOF' | tee "$OUT/train_summary.json"
import csv, json, sys
from tdseg_lite.checkpoint import load_checkpoint
s = load_checkpoint(f"{sys.argv[1]}/checkpoints/last.pt")
rows = list(csv.DictReader(open(f"{sys.argv[1]}/log.csv")))
print(json.dumps({"step": s["step"], "elapsed_s": s["elapsed_s"], "best": s["best"],
                  "amp": s["config"]["plan"]["train"]["amp"], "grad_scaler": "grad_scaler" in s,
                  "gpu_peak_gib": max(float(r.get("gpu_peak_gib") or 0) for r in rows)}))
EOF
