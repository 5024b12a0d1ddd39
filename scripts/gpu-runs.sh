#!/usr/bin/env bash
# The reproduction training on a GPU server without network access, run from the repository root there. The server
# takes at most 64 MiB per transfer, so the packs are copied there first (.gpudata64: the 64 px packs, then
# .gpudata: the 128 px pack); this script then runs once .bundle is there too. The packs are lossy, to fit a transfer:
#   hemato pack ../shared/data/pbc --split runs/pbc-split.csv --codec webp --quality 85 --size 128 --out .gpudata/pbc-128-mpm-off.pack
#   the same at --size 64 into .gpudata64/pbc-64-mpm-off.pack, and with --mpm into .gpudata64/pbc-64-mpm-on.pack
# The steps:
#   1. unpack the bundle, build the addon, the GPU check (engine CUDA tests, ConvNeXt block step against PyTorch);
#   2. a one-epoch smoke run; if it fails, stop here and keep the GPU time;
#   3. the reproduction run, two dualpath runs at 128 px (default and stain/scale augmentation) and the 64 px
#      ablations, all at once on the one GPU, until a deadline that leaves time to collect;
#   4. fp16 copies of the three models, the ablation table, and a tarball of it all (15 MiB parts) under $OUT.
# DEADLINE (default 520) is the seconds from the start after which the runs are stopped; each then writes a
# checkpoint, and its best model so far is kept. SMOKE_TIMEOUT (default 90) bounds the smoke run. GPU_CHECK_ARGS go to
# gpu-check.sh (a CPU rehearsal, with python3 holding a torch:
# GPU_CHECK_ARGS='--device cpu --batch 2 --size 14 --reps 1 --warmup 1').
set -uo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
out=${OUT:-gpu-out}
bundle=.bundle/x/hemato-bundle
hemato=$bundle/run.sh
runs=.gpuruns
pack128=.gpudata/pbc-128-mpm-off.pack
export HEMATO_RUN_QUIET=1 OMP_WAIT_POLICY=PASSIVE
mkdir -p "$out" "$runs"
elapsed() { echo $(( $(date +%s) - started )); }
collect() {
  echo "collecting at $(elapsed) s"
  tar -czf - --exclude='checkpoint.safetensors' --exclude='best.safetensors' --exclude='model.safetensors' "$runs" |
    split -b 15M - "$out/gpu-runs.tgz.part-"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
ls -la .gpudata .gpudata64
rm -rf .bundle/x && mkdir -p .bundle/x && tar -xJf .bundle/hemato-bundle.tar.xz -C .bundle/x || exit 3
timeout 360 "$hemato" --prepare || { echo "prepare failed at $(elapsed) s"; exit 3; }
echo "prepared at $(elapsed) s"
OUT=$runs/check timeout 150 "$bundle/gpu-check.sh" ${GPU_CHECK_ARGS:-}
echo "gpu-check exit $? at $(elapsed) s"

rm -rf "$runs/smoke"
timeout "${SMOKE_TIMEOUT:-90}" "$hemato" train --pack .gpudata64/pbc-64-mpm-off.pack --size 64 --model dualpath-atto --epochs 1 \
  --batch-size 128 --out "$runs/smoke" --json > "$runs/smoke.json" 2> "$runs/smoke.err"
smoke=$?
echo "smoke run exit $smoke at $(elapsed) s"; tail -5 "$runs/smoke.err"; cat "$runs/smoke/log.jsonl"
[ "$smoke" = 0 ] || { collect; exit 1; }

# Small host-bound runs share the GPU; one CPU thread each, since their tensors live on the GPU.
export HEMATO_NUM_THREADS=1
pids=()
if [ -f "$pack128" ]; then
  for run in repro:configs/repro-convnext-atto.json dualpath:configs/dualpath-atto-gpu.json dualpath-stain:configs/dualpath-atto-stain.json; do
    "$hemato" train --config "${run#*:}" --pack "$pack128" --out "$runs/${run%%:*}" --json > "$runs/${run%%:*}.json" 2> "$runs/${run%%:*}.err" &
    pids+=($!)
  done
else
  echo "no 128 px pack: the reproduction and dualpath runs are skipped"
fi
if [ -f .gpudata64/pbc-64-mpm-on.pack ]; then
  HEMATO="$hemato" PACKS=.gpudata64 JOBS=8 RUNS=$runs/ablations bash scripts/ablations.sh 64 12 --batch-size 128 --lr 0.002 &
  pids+=($!)
fi
# The deadline: SIGTERM makes each trainer stop after its current step and write a checkpoint.
( sleep $(( ${DEADLINE:-520} - $(elapsed) )); echo "deadline at $(elapsed) s"; pkill -TERM -f scripts/ablations.sh; pkill -TERM -f 'hemato.js train' ) &
watchdog=$!
wait "${pids[@]}"
for _ in $(seq 30); do pgrep -f 'hemato.js train' > /dev/null || break; sleep 1; done
kill "$watchdog" 2>/dev/null
echo "runs ended at $(elapsed) s"
for run in repro dualpath dualpath-stain; do
  [ -f "$runs/$run.err" ] || continue
  echo "== $run"; tail -2 "$runs/$run.err"; tail -1 "$runs/$run/log.jsonl"
done
# fp16 copies of each run's calibrated model, or of its best weights when the deadline stopped it.
"$hemato" --node --input-type=module -e "
  import { loadModel, saveModel } from './dist/src/models/io.js';
  import { existsSync } from 'node:fs';
  const root = process.argv[1];
  for (const run of ['repro', 'dualpath', 'dualpath-stain']) {
    const file = ['model', 'best'].map((n) => root + '/' + run + '/' + n + '.safetensors').find(existsSync);
    if (!file) { console.log(run + ': no model'); continue; }
    const { model, metadata } = await loadModel(file);
    await saveModel(root + '/' + run + '/' + run + '.fp16.safetensors', model, metadata, { dtype: 'float16' });
    console.log(run + ': fp16 copy of ' + file);
  }" "$(pwd)/$runs"
[ -d "$runs/ablations" ] && "$bundle/node/bin/node" scripts/ablation-table.mjs "$runs/ablations" | tee "$runs/ablations.md"
collect
