#!/usr/bin/env bash
# The main job: set up, tune this machine for the quick preset, print what was chosen vs the vendor.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
kernelkit info
exec kernelkit tune --preset "${PRESET:-quick}" --threads "${THREADS:-$(nproc)}" "$@"
