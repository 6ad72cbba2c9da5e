#!/usr/bin/env bash
# Create .venv (seeing any torch already installed system-wide) and install kernelkit with its test
# extras. Without a torch, install the CPU build first so no multi-GB CUDA build is pulled.
# KERNELKIT_EXTRAS adds extras, e.g. KERNELKIT_EXTRAS=test,cuda13 on a GPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv --system-site-packages .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
if ! python -c "import torch" >/dev/null 2>&1; then
  pip install -q "torch==2.13.0"
fi
pip install -q -e ".[${KERNELKIT_EXTRAS:-test}]"
