#!/usr/bin/env bash
# Set up, then run the linter and the whole test suite (GPU-only tests skip with a reason).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
ruff check kernelkit tests bench
exec python -m pytest tests "$@"
