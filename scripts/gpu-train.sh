#!/usr/bin/env bash
# Trains on a GPU server from an offline bundle and one pack, run from the repository root there:
#   bash scripts/gpu-train.sh PACK CONFIG [CONFIG...]
# It unpacks .bundle/hemato-bundle.tar.xz, builds the addon against the machine's PyTorch, runs a one-epoch smoke
# run of the first config, then every config at once on the one GPU until DEADLINE seconds from the start (default
# 480), when each trainer is stopped and writes a checkpoint. The best model of each run is copied in float16, and
# all runs are collected under $OUT (default gpu-out) in 15 MiB parts.
set -uo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
pack=$1; shift
out=${OUT:-gpu-out}
bundle=.bundle/x/hemato-bundle
hemato=$bundle/run.sh
runs=.gpuruns
export HEMATO_RUN_QUIET=1 OMP_WAIT_POLICY=PASSIVE
mkdir -p "$out" "$runs"
elapsed() { echo $(( $(date +%s) - started )); }
name() { basename "$1" .json; }
collect() {
  echo "collecting at $(elapsed) s"
  tar -czf - --exclude='checkpoint.safetensors' --exclude='best.safetensors' --exclude='model.safetensors' "$runs" |
    split -b 15M - "$out/gpu-runs.tgz.part-"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
ls -la "$pack"
rm -rf .bundle/x && mkdir -p .bundle/x && tar -xJf .bundle/hemato-bundle.tar.xz -C .bundle/x || exit 3
timeout 300 "$hemato" --prepare || { echo "prepare failed at $(elapsed) s"; exit 3; }
echo "prepared at $(elapsed) s"

rm -rf "$runs/smoke"
timeout "${SMOKE_TIMEOUT:-90}" "$hemato" train --config "$1" --pack "$pack" --epochs 1 --out "$runs/smoke" --json > "$runs/smoke.json" 2> "$runs/smoke.err"
smoke=$?
echo "smoke run exit $smoke at $(elapsed) s"; tail -5 "$runs/smoke.err"; cat "$runs/smoke/log.jsonl"
[ "$smoke" = 0 ] || { collect; exit 1; }

# Host-bound runs share the GPU; one CPU thread each, since their tensors live on the GPU.
export HEMATO_NUM_THREADS=1
pids=()
for config in "$@"; do
  "$hemato" train --config "$config" --pack "$pack" --out "$runs/$(name "$config")" --json > "$runs/$(name "$config").json" 2> "$runs/$(name "$config").err" &
  pids+=($!)
done
# The deadline: SIGTERM makes each trainer stop after its current step and write a checkpoint.
( sleep $(( ${DEADLINE:-480} - $(elapsed) )); echo "deadline at $(elapsed) s"; pkill -TERM -f 'hemato.js train' ) &
watchdog=$!
wait "${pids[@]}"
for _ in $(seq 30); do pgrep -f 'hemato.js train' > /dev/null || break; sleep 1; done
kill "$watchdog" 2>/dev/null
echo "runs ended at $(elapsed) s"
for config in "$@"; do
  echo "== $(name "$config")"; tail -2 "$runs/$(name "$config").err"; tail -1 "$runs/$(name "$config")/log.jsonl"
done
# fp16 copies of each run's calibrated model, or of its best weights when the deadline stopped it.
"$hemato" --node --input-type=module -e "
  import { loadModel, saveModel } from './dist/src/models/io.js';
  import { existsSync } from 'node:fs';
  const [root, ...names] = process.argv.slice(1);
  for (const run of names) {
    const file = ['model', 'best'].map((n) => root + '/' + run + '/' + n + '.safetensors').find(existsSync);
    if (!file) { console.log(run + ': no model'); continue; }
    const { model, metadata, ood } = await loadModel(file);
    await saveModel(root + '/' + run + '/' + run + '.fp16.safetensors', model, { ...metadata, ood }, { dtype: 'float16' });
    console.log(run + ': fp16 copy of ' + file);
  }" "$(pwd)/$runs" $(for c in "$@"; do name "$c"; done)
collect
