#!/usr/bin/env bash
# BTCV (Synapse multi-organ abdominal CT, 13 organs) -> the common dataset layout, recommended settings.
#
#   bash data_scripts/prepare_btcv.sh SRC [OUT] [more `tdseg prepare btcv` options]
#
#   SRC        RawData.zip from Synapse, or the unzipped RawData/ folder (Training/img, Training/label,
#              Testing/img). There is no public direct download: register at https://www.synapse.org,
#              open https://www.synapse.org/#!Synapse:syn3193805/wiki/89480, accept the data terms and
#              download Abdomen/RawData.zip (see data_scripts/README.md).
#   OUT        output dataset folder (default data/btcv_tdseg)
#
# SPACING (default "1.5 1.5 2.0" mm) resamples while converting; SPACING="" keeps the native grid
# (reoriented to RAS). All logic lives in tdseg_lite/datasets/prepare.py.
set -euo pipefail
SRC="${1:-}"
OUT="${2:-data/btcv_tdseg}"
shift $(( $# > 1 ? 2 : $# ))
SPACING="${SPACING-1.5 1.5 2.0}"
# without SRC, `tdseg prepare btcv` explains where to register and how to place the folder (exit 2)
# shellcheck disable=SC2086  # SPACING is three words on purpose
exec "${TDSEG:-tdseg}" prepare btcv ${SRC:+--src "$SRC"} --out "$OUT" ${SPACING:+--spacing $SPACING} "$@"
