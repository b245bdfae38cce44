#!/usr/bin/env bash
# Creates .venv (if missing) and installs writemypaper into it; sourced by scripts/demo and scripts/test.
# torch: kept if already importable (Colab, a CUDA box); otherwise PyPI's default (CUDA) build where an NVIDIA driver
# is present, and a CPU build of the pinned release where none is.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
# --no-compile: Python compiles a module when it is first imported; compiling every file of torch and its neighbours
# up front took about half of the install (90 s -> 45 s on 2 cores)
PIP=(python -m pip install -q --disable-pip-version-check --no-compile)
"${PIP[@]}" --upgrade pip >/dev/null
if ! python -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    "${PIP[@]}" torch
  elif [ "$(uname -s)" != Linux ] || (d=$(mktemp -d); trap 'rm -rf "$d"' EXIT; python -m pip download -q \
      --disable-pip-version-check --no-deps --no-index -d "$d" "torch==2.13.0+cpu" >/dev/null 2>&1); then
    # macOS and Windows wheels on PyPI are CPU builds; a Linux machine with a CPU wheel at hand (pip's find-links,
    # as on our CI machines) takes that one without asking any index.
    "${PIP[@]}" "torch==2.13.0"
  else
    # PyPI's Linux torch is a CUDA build of several GB; PyTorch's own CPU index has the CPU build (its +cpu version
    # sorts above PyPI's of the same release).
    "${PIP[@]}" --extra-index-url https://download.pytorch.org/whl/cpu \
      "torch==2.13.0"
  fi
fi
# WRITEMYPAPER_CONSTRAINTS: scripts/test installs the exact versions the suite last passed on (constraints/tested.txt).
LOCK=()
if [ -n "${WRITEMYPAPER_CONSTRAINTS:-}" ]; then LOCK=(-c "$WRITEMYPAPER_CONSTRAINTS"); fi
"${PIP[@]}" "${LOCK[@]}" -e ".${WRITEMYPAPER_EXTRAS:-}"
