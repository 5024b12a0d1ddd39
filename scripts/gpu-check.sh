#!/usr/bin/env bash
# The GPU check, run from inside an extracted hemato bundle on a GPU server:
#   1. prepare (checks, node, the addon built against this machine's PyTorch) and `hemato doctor --json`;
#   2. the engine's CUDA tests (dist/test/engine-cuda.test.js);
#   3. the ConvNeXt block training step with bf16 autocast at batch 128, in hemato and in PyTorch, same machine,
#      same call (NCHW, then channels_last).
# Prints each result and a summary line per layout; keeps them under $OUT (the device tool's folder) or ./gpu-check-out.
#
#   ./gpu-check.sh                                   the real check (cuda, batch 128, 96x56x56)
#   ./gpu-check.sh --device cpu --batch 2 --size 14 --reps 1 --warmup 1    a CPU rehearsal of the same steps
# PYTHON picks the interpreter for the PyTorch side (default python3, the one run.sh builds against).
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
RESULTS=${OUT:-$HERE/gpu-check-out}
PYTHON=${PYTHON:-python3}
mkdir -p "$RESULTS"
device=cuda
bench_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device=$2; shift 2 ;;
    --batch|--size|--channels|--reps|--warmup) bench_args+=("$1" "$2"); shift 2 ;;
    *) echo "gpu-check: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ ${#bench_args[@]} -gt 0 ] || bench_args=(--batch 128)
status=0
section() { printf '\n== %s\n' "$*"; }

section "prepare and doctor"
"$HERE/run.sh" --prepare || exit 3
export HEMATO_RUN_QUIET=1
"$HERE/run.sh" doctor --json | tee "$RESULTS/doctor.json" || status=1

section "engine CUDA tests"
# A bare `node --test` here: skipped tests say 'no CUDA device' on a machine without one.
"$HERE/run.sh" --node --test --test-reporter=spec dist/test/engine-cuda.test.js 2>&1 | tee "$RESULTS/engine-cuda-tests.txt"
[ "${PIPESTATUS[0]}" = 0 ] || status=1

for layout in nchw channels_last; do
  extra=()
  [ "$layout" = channels_last ] && extra=(--channels-last)
  section "ConvNeXt block step, bf16 autocast, $device, $layout: hemato"
  "$HERE/run.sh" --node dist/bench/cuda-block.js --device "$device" "${bench_args[@]}" "${extra[@]}" | tee "$RESULTS/block-hemato-$layout.json"
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
  section "ConvNeXt block step, bf16 autocast, $device, $layout: PyTorch ($PYTHON)"
  "$PYTHON" "$HERE/app/bench/peers/torch_cuda_block.py" --device "$device" "${bench_args[@]}" "${extra[@]}" | tee "$RESULTS/block-pytorch-$layout.json"
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
done

section "summary"
"$HERE/node/bin/node" - "$RESULTS" <<'JS' || status=1
const fs = require('node:fs');
const dir = process.argv[2];
const read = (name) => { try { return JSON.parse(fs.readFileSync(`${dir}/${name}`, 'utf8')); } catch { return null; } };
for (const layout of ['nchw', 'channels_last']) {
  const h = read(`block-hemato-${layout}.json`);
  const p = read(`block-pytorch-${layout}.json`);
  if (!h || !p) { console.log(`${layout}: missing result (hemato ${!!h}, pytorch ${!!p})`); process.exitCode = 1; continue; }
  console.log(`${layout}: hemato ${h.step_ms} ms/step (${h.images_per_s} img/s) vs PyTorch ${p.torch} ${p.step_ms} ms/step ` +
    `(${p.images_per_s} img/s): ratio ${(h.step_ms / p.step_ms).toFixed(2)}; batch ${h.batch}, ${h.device}${p.gpu ? ` (${p.gpu})` : ''}`);
}
JS
echo "gpu-check: results in $RESULTS; exit $status"
exit $status
