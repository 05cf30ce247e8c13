#!/usr/bin/env bash
# The equal-budget quality comparison with every model and ablation at once, one process per
# configuration pinned to its own 2 CPU cores (`taskset`, 2 torch threads) — for a many-core
# machine. Same protocol as benchmarks/bench_quality.py (the cpu preset, whole-volume validation);
# all runs share the machine, so compare them with each other, not with a run on a quiet laptop.
#
#   MINUTES=7 OUT=/tmp/q bash benchmarks/quality_parallel.sh [extra bench_quality args, e.g. --set text.model=DIR]
#
# Writes $OUT/q_<name>.json/.md per configuration and $OUT/summary.md.
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES="${MINUTES:-7}"
OUT="${OUT:-benchmarks/results/quality_parallel}"
PY="${PY:-python}"
mkdir -p "$OUT"
ART="${TDSEG_ARTIFACTS:-/tmp/tdseg_quality}"
"$PY" -m tdseg_lite.cli phantom --out "$ART/data/phantom_kidney" --cases 40 >/dev/null
# name | model | extra --set arguments
CONFIGS=(
  "unet|unet|"
  "textdiffseg|textdiffseg|"
  "no-text|textdiffseg|--set model.text_fusion=false"
  "no-image-features|textdiffseg|--set model.image_features=false"
  "pixel-diffusion|pixel-diffusion|"
  "no-aux-condition|textdiffseg|--set model.aux_condition=false --set model.aux_residual=false"
)
cores=$(nproc)
i=0
pids=()
for cfg in "${CONFIGS[@]}"; do
  IFS='|' read -r name model sets <<<"$cfg"
  first=$(( (2 * i) % (cores - cores % 2) ))   # wraps around (overcommits) on machines with < 14 cores
  # shellcheck disable=SC2086
  pin=(); command -v taskset >/dev/null && pin=(taskset -c "$first,$((first + 1))")
  "${pin[@]}" "$PY" benchmarks/bench_quality.py --minutes "$MINUTES" --models "$model" \
    --threads 2 --data "$ART/data/phantom_kidney" --artifacts "$ART/a_$name" --out "$OUT/q_$name" --no-cost \
    $sets "$@" >"$OUT/log_$name.txt" 2>&1 &
  pids+=($!)
  i=$((i + 1))
done
for pid in "${pids[@]}"; do wait "$pid" || echo "a run failed (pid $pid)"; done
"$PY" - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
lines = ["| configuration | iters (AE) | Dice kidney | Dice tumour | HD95 kidney mm | HD95 tumour mm | s/case | aux head kidney / tumour |",
         "|---|---|---|---|---|---|---|---|"]
for f in sorted(out.glob("q_*.json")):
    r = json.loads(f.read_text())["runs"][0]
    m, aux = r["metrics"], r.get("aux_head")
    a = f"{aux['mean']['dice']['kidney']:.3f} / {aux['mean']['dice']['tumor']:.3f}" if aux else "–"
    d, h = m["mean"]["dice"], m["mean"]["hd95_mm"]
    lines.append(f"| {f.stem[2:]} | {r['train_steps']} ({r['pretrain_steps']}) | {d['kidney']:.3f} | "
                 f"{d['tumor']:.3f} | {h['kidney']:.1f} | {h['tumor']:.1f} | "
                 f"{m['seconds_per_case']:.2f} | {a} |")
(out / "summary.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
