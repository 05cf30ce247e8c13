#!/usr/bin/env bash
# Medical Segmentation Decathlon CT task -> the common dataset layout, recommended settings.
#
#   bash data_scripts/prepare_msd.sh TASK [OUT] [more `tdseg prepare msd` options]
#
#   TASK       pancreas (Task07), liver (Task03), colon (Task10) or spleen (Task09)
#   OUT        output dataset folder (default data/msd_<task>_tdseg)
#   options    e.g. --src /path/to/Task07_Pancreas.tar   an archive downloaded elsewhere (MD5 checked)
#                   --max-cases 10                         a quick try
#
# Without --src, `tdseg prepare` downloads TaskXX_Name.tar from MONAI's mirror into $DOWNLOADS
# (URL and MD5 from monai.apps.DecathlonDataset; resumable; pancreas ~11 GB, liver ~27 GB, colon ~6 GB,
# spleen ~1.5 GB, and as much again to extract). SPACING (default "1.5 1.5 2.0" mm) resamples;
# SPACING="" hard-links the files as they are (no extra disk). See data_scripts/README.md
# (licence CC BY-SA 4.0).
set -euo pipefail
if [[ $# -lt 1 ]]; then
    sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
TASK="$1"
OUT="${2:-data/msd_${TASK,,}_tdseg}"
shift $(( $# > 1 ? 2 : 1 ))
SPACING="${SPACING-1.5 1.5 2.0}"
# shellcheck disable=SC2086  # SPACING is three words on purpose
exec "${TDSEG:-tdseg}" prepare msd --task "$TASK" --out "$OUT" --download-dir "${DOWNLOADS:-data/downloads/msd}" \
    ${SPACING:+--spacing $SPACING} "$@"
