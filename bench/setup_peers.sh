#!/usr/bin/env bash
# The benchmark peers of bench/test_bench_data.py, outside kernelkit's dependencies: torchvision
# and albumentations installed with --no-deps into a separate folder that only the bench run puts
# on PYTHONPATH (they reuse the torch, numpy and OpenCV that kernelkit's environment has).
#   bash bench/setup_peers.sh /work/benchvenv/site
#   PYTHONPATH=$PWD:/work/benchvenv/site python -m pytest bench/test_bench_data.py --benchmark-only -s
# The index here has only torchvision's CUDA build; it imports on a CPU torch once its
# _meta_registrations import is made optional (patched below). torchvision 0.28 pairs with torch 2.13.
set -euo pipefail
DEST="${1:?usage: bench/setup_peers.sh DEST}"
PY="${PYTHON:-python}"
"$PY" -m pip install -q --no-deps --target "$DEST" torchvision==0.28.0 albumentations==2.0.8 \
    albucore==0.0.24 stringzilla simsimd
"$PY" - "$DEST" <<'PYEOF'
import sys, pathlib
p = pathlib.Path(sys.argv[1]) / "torchvision" / "__init__.py"
s = p.read_text()
old = "from torchvision import (\n    _autograd_registrations,\n    _meta_registrations,\n"
if old in s:
    s = s.replace(old, "try:  # patched for the kernelkit bench: the CUDA build's ops do not load on CPU torch\n"
                  "    from torchvision import _autograd_registrations, _meta_registrations  # noqa: F401\n"
                  "except Exception:  # noqa: BLE001\n    pass\nfrom torchvision import (\n")
    p.write_text(s)
PYEOF
PYTHONPATH="$DEST" "$PY" -c "import torchvision, albumentations; print('peers:', torchvision.__version__, albumentations.__version__)"
