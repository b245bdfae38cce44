#!/usr/bin/env bash
# Creates .venv (if missing) and installs writemypaper into it; sourced by scripts/demo and scripts/test.
# torch: kept if already importable (Colab, a CUDA box); otherwise the pinned CPU-friendly release on machines
# without an NVIDIA driver, and the default build where one is present.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null
if ! python -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    python -m pip install -q --disable-pip-version-check torch
  else
    python -m pip install -q --disable-pip-version-check "torch==2.13.0"
  fi
fi
python -m pip install -q --disable-pip-version-check -e ".${WRITEMYPAPER_EXTRAS:-}"
