#!/usr/bin/env bash
# KiTS19 (kidney + kidney tumour, contrast CT) -> the common dataset layout, recommended settings.
#
#   bash data_scripts/prepare_kits19.sh [OUT] [more `tdseg prepare kits19` options]
#
#   OUT        output dataset folder (default data/kits19_tdseg)
#   options    e.g. --src /path/to/kits19   use a clone prepared with `python -m starter_code.get_imaging`
#                   --cases 0-19           a quick try with 20 cases
#                   --cases 0-299          also convert the 90 unlabelled test cases (imagesTs/)
#
# Without --src, `tdseg prepare` downloads the 210 labelled cases into $DOWNLOADS (segmentations from
# github.com/neheller/kits19, imaging from its Hugging Face dataset, about 25 GB, resumable). SPACING
# (default "1.5 1.5 2.0" mm, the `full` preset) resamples while converting, which makes the output
# several times smaller; SPACING="" keeps the native grid. All logic lives in tdseg_lite/datasets/prepare.py;
# see data_scripts/README.md for the Colab recipe and the licence (CC BY-NC-SA 4.0).
set -euo pipefail
OUT="${1:-data/kits19_tdseg}"
shift $(( $# > 0 ? 1 : 0 ))
SPACING="${SPACING-1.5 1.5 2.0}"
# shellcheck disable=SC2086  # SPACING is three words on purpose
exec "${TDSEG:-tdseg}" prepare kits19 --out "$OUT" --download-dir "${DOWNLOADS:-data/downloads/kits19}" \
    ${SPACING:+--spacing $SPACING} "$@"
