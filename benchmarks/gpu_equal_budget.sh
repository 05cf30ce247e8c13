#!/usr/bin/env bash
# TextDiffSeg against the UNet on a lent GPU, in one device call of about 8 minutes (H100/H200 class):
#   1. the training-step table, both models interleaved in one process: the cpu preset (64³ × 4, fp32)
#      and the full preset (96³ × 4, bf16);
#   2. the scaling table: step s, predict s and peak GPU memory at 64³, 96³ and 128³ (full-preset networks);
#   3. equal budget: `tdseg train --preset full --max-minutes MINUTES` of the UNet and of TextDiffSeg side by
#      side on the GPU (96³ patches, bf16 by `train.amp=auto`) on the phantom, each scored by `tdseg evaluate`
#      (TextDiffSeg also by its aux head alone). One seed: no noise floor, read the difference as a first look.
# Everything lands in benchmarks/results/gpu_<card>/ (the card's name, e.g. gpu_nvidia_h200/). No network: MONAI,
# nibabel and scipy come from .whl/ when missing (benchmarks/device_env.sh); the text encoder is a tiny random
# BERT (the report's words still reach the model, through an untrained encoder: compare the models, not the text).
# The label autoencoder is built before the clock starts (its cache is reused, as on the CPU rows) with
# LABEL_AE_STEPS steps instead of the full preset's 5000, to fit the call.
#
#   MINUTES=5 bash benchmarks/gpu_equal_budget.sh          # on the lent machine
#   DEVICE=cpu PRESET=smoke MINUTES=0.3 LABEL_AE_STEPS=20 SIZES=32,48 bash benchmarks/gpu_equal_budget.sh
#                                                           # the same steps on a CPU, tiny (a rehearsal)
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE="${DEVICE:-cuda}" PRESET="${PRESET:-full}" MINUTES="${MINUTES:-5}"
SIZES="${SIZES:-64,96,128}" LABEL_AE_STEPS="${LABEL_AE_STEPS:-1000}" WORK="${WORK:-/tmp/tdseg_gpu_equal_budget}"
source benchmarks/device_env.sh
if [ "$DEVICE" = cuda ]; then
  python -c "import torch, sys; sys.exit(not torch.cuda.is_available())" \
    || { echo "gpu_equal_budget.sh: DEVICE=cuda needs a CUDA GPU, none found; on a CPU rehearse with DEVICE=cpu PRESET=smoke" >&2; exit 2; }
  patch=96 amp=bf16 cpu_patch=64
else
  patch=32 amp=none cpu_patch=32  # the rehearsal: smoke-sized patches
fi
tiny_bert
out=$(python -c "import sys, torch; sys.path.insert(0, 'benchmarks'); from common import results_dir; print(results_dir(torch.device('$DEVICE')))")
[ "$DEVICE" = cuda ] || out="$WORK/results"  # a rehearsal never writes into the repository
mkdir -p "$out"
start=$(date +%s)
lap() { echo "gpu_equal_budget.sh: $1 done at $(( $(date +%s) - start )) s"; }

python benchmarks/bench_step.py --device "$DEVICE" --tiny-text --interleave --models unet,textdiffseg --preset cpu \
  --patch "$cpu_patch" --batch 4 --steps 10 --warmup 3 --out "$out/step_interleaved_cpu-preset_p${cpu_patch}.json" | tail -n 5
python benchmarks/bench_step.py --device "$DEVICE" --tiny-text --interleave --models unet,textdiffseg --preset "$PRESET" \
  --patch "$patch" --batch 4 --amp "$amp" --steps 10 --warmup 3 --out "$out/step_interleaved_${PRESET}-preset_p${patch}_${amp}.json" | tail -n 5
lap "step table"
python benchmarks/bench_scaling.py --device "$DEVICE" --tiny-text --models unet,textdiffseg --preset "$PRESET" \
  --sizes "$SIZES" --out "$out/scaling_${PRESET}-preset" | tail -n 5
lap "scaling table"
python benchmarks/bench_ablation.py --device "$DEVICE" --preset "$PRESET" --configs unet,full --seeds 0 \
  --minutes "$MINUTES" --jobs 2 --threads 4 --reference unet --also aux-head --work "$WORK/runs" \
  --set text.model=/tmp/tiny_bert --set "label_ae.max_steps=$LABEL_AE_STEPS" --results-dir "$out" \
  --name "equal_budget_phantom_${PRESET}_${MINUTES//./p}min" \
  --title "Equal budget on one GPU, phantom, $PRESET preset, $MINUTES minutes per model" | tail -n 12
lap "equal budget"
echo "gpu_equal_budget.sh: results in $out"
