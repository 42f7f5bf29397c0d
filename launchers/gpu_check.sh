#!/usr/bin/env bash
# The GPU check of `make bench`, for a machine with Python and PyTorch (CUDA) but no internet:
# installs the wheels from .gpu/whl (launchers/gpu_bundle.sh made them), unpacks the weights,
# then runs the bench (engine vs per-triplet loop, then the loading rows -- BAPPS PNGs vs the
# decoded-triplet cache -- and the end-to-end rows: whole PGD(30) LPIPS(Alex) 64x64 runs from
# the cache and from PNGs next to the engine alone) and writes bench.json, bench.md and the
# log to OUT_DIR (`bench loading` runs just the loading and end-to-end rows). Then the
# certification throughput (noisy samples/s of attack=certify on LPIPS(Alex)) in certify.json.
# Then PGD's execution modes (docs/performance.md, "PGD execution modes"): shrinking batch, fixed shapes with a mask,
# compaction every k steps, and torch.compile / CUDA graphs on the fixed shapes, each with its
# "same decisions" count against the default, in engine_modes.{json,md} and engine_compile.{json,md}
# (ENGINE_MODES=0 skips them).
#
#   launchers/gpu_check.sh OUT_DIR [extra `bench engine` arguments, e.g. --quick]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:?usage: launchers/gpu_check.sh OUT_DIR [bench args]}
shift
mkdir -p "$OUT_DIR"
PY=${PY:-python3}
[ -d .gpu/whl ] || { echo "no .gpu/ here: run launchers/gpu_bundle.sh where pip works" >&2; exit 1; }

site=$(mktemp -d)
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" .gpu/whl/*.whl
export PYTHONPATH="$PWD:$site${PYTHONPATH:+:$PYTHONPATH}"

weights=$(mktemp -d)
for f in .gpu/weights/*.pt.xz; do xz -dc "$f" > "$weights/$(basename "$f" .xz)"; done
export ATTACKPSM_WEIGHTS=$weights ATTACKPSM_ALLOW_FETCH=false PYTHONUNBUFFERED=1

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"
  "$PY" -m attackpsm bench engine --device "${BENCH_DEVICE:-cuda}" --out "$OUT_DIR/bench.json" --markdown "$OUT_DIR/bench.md" "$@"
  "$PY" -m attackpsm bench certify --device "${BENCH_DEVICE:-cuda}" --metric lpips_alex --out "$OUT_DIR/certify.json"
  if [ "${ENGINE_MODES:-1}" != 0 ]; then
    "$PY" -m attackpsm bench modes shrink,masked,masked:5,compact:5,compact:10 --device "${BENCH_DEVICE:-cuda}" \
      --out "$OUT_DIR/engine_modes.json" --markdown "$OUT_DIR/engine_modes.md"
    "$PY" -m attackpsm bench modes masked --compile default,reduce-overhead --device "${BENCH_DEVICE:-cuda}" \
      --out "$OUT_DIR/engine_compile.json" --markdown "$OUT_DIR/engine_compile.md"
  fi
} 2>&1 | tee "$OUT_DIR/bench.log"
