#!/usr/bin/env bash
# Prepare .gpu/ for a GPU machine that has Python 3.12 with PyTorch but no package index and no
# internet: the pure-Python wheels attackpsm.commands.bench needs beyond PyTorch, and the LPIPS backbone
# weights from the local cache (xz-compressed so that both backbones fit a 64 MiB transfer).
#
#   launchers/gpu_bundle.sh            # writes .gpu/whl/*.whl and .gpu/weights/*.pt.xz
#   (copy the checkout with .gpu/ to the GPU machine)
#   launchers/gpu_check.sh OUT_DIR     # there: install, unpack, run the bench
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
CACHE=${ATTACKPSM_WEIGHTS:-$HOME/.cache/attackpsm/weights}
PYVER=${GPU_PYTHON_VERSION:-3.12}

rm -rf .gpu && mkdir -p .gpu/whl .gpu/weights
# pinned to the versions installed here, so the GPU run uses the same code
version() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
for pkg in lpips piq hydra-core omegaconf antlr4-python3-runtime; do
  spec="$pkg==$(version "$pkg")"
  # antlr4 4.9.3 exists only as an sdist: build a wheel of it here (pure Python)
  "$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PYVER" \
      --implementation cp --platform manylinux2014_x86_64 --platform any -d .gpu/whl "$spec" \
    || "$PY" -m pip wheel --quiet --no-deps -w .gpu/whl "$spec"
done

for name in alexnet vgg16; do
  [ -f "$CACHE/$name.pt" ] || { echo "missing $CACHE/$name.pt: run 'make weights' first" >&2; exit 1; }
  xz -T0 -6 -c "$CACHE/$name.pt" > ".gpu/weights/$name.pt.xz"
done
du -sh .gpu/whl .gpu/weights
