#!/usr/bin/env bash
# The paper's network against its own ConvNeXt path at the paper's scale: dualpath_tiny (ECA + AFF) and
# convnext_tiny, trained side by side with configs/paper-dualpath-tiny-224.json, MPM off, one seed, the same epochs.
#   bash scripts/paper-scale.sh PACK [OUT]
# PACK is made with the MPM off, e.g.
#   hemato pack ../shared/data/pbc --split runs/pbc-split-halves.csv --size 224 --out pbc-224.pack
# Settings through the environment:
#   HEMATO    the command (default: node bin/hemato.js; on a GPU server, the offline bundle's run.sh)
#   ARCHS     the arms (default: dualpath_tiny convnext_tiny)
#   EPOCHS    epochs of every arm (default 15), SIZE the input size (default 224), SEED (default 0)
#   DEADLINE  seconds from the start after which every arm is stopped and writes a checkpoint (default 540)
#   IMAGES, SPLIT  the original images and the split the pack was made with: each arm is also scored on the
#             split's validation part, from the files (skipped when unset)
#   EXTRA     more train flags for every arm (the toy check uses --batch-size 8 --device cpu)
# Each arm runs in OUT/ARCH. A run the deadline stops keeps its checkpoint, its log and its best model so far. The
# last line printed, and OUT/summary.json, compare the arms: each arm's best validation accuracy on the pack's
# images (from its log) and on the original files, the standard error of the difference, and whether the first arm
# beats the second by more than twice it.
set -uo pipefail
cd "$(dirname "$0")/.."
pack=${1:?usage: bash scripts/paper-scale.sh PACK [OUT]}
out=${2:-runs/paper-scale}
read -r -a hemato <<< "${HEMATO:-node bin/hemato.js}"
read -r -a archs <<< "${ARCHS:-dualpath_tiny convnext_tiny}"
read -r -a extra <<< "${EXTRA:-}"
started=$(date +%s)
elapsed() { echo $(( $(date +%s) - started )); }
mkdir -p "$out"

pids=()
for arch in "${archs[@]}"; do
  # A fresh run each time; --resume continues one by hand.
  "${hemato[@]}" train --pack "$pack" --config configs/paper-dualpath-tiny-224.json --no-mpm --arch "$arch" \
    --size "${SIZE:-224}" --epochs "${EPOCHS:-15}" --seed "${SEED:-0}" "${extra[@]}" --out "$out/$arch" --overwrite --json \
    > "$out/$arch.json" 2> "$out/$arch.err" &
  pids+=($!)
done
# At the deadline, SIGTERM makes each trainer finish its current step, write a checkpoint and exit.
running() { for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && return 0; done; return 1; }
while running && [ "$(elapsed)" -lt "${DEADLINE:-540}" ]; do sleep 1; done
if running; then echo "deadline at $(elapsed) s"; kill -TERM "${pids[@]}" 2>/dev/null; fi
for pid in "${pids[@]}"; do wait "$pid"; done
echo "arms ended at $(elapsed) s"

for arch in "${archs[@]}"; do
  model=$(ls "$out/$arch/model.safetensors" "$out/$arch/best.safetensors" 2>/dev/null | head -1)
  if [ -z "$model" ]; then echo "$arch: no model (see $out/$arch.err)"; continue; fi
  if [ -n "${IMAGES:-}" ] && [ -n "${SPLIT:-}" ]; then
    "${hemato[@]}" eval --images "$IMAGES" --split "$SPLIT" --part val --model "$model" --json > "$out/$arch.files.json" 2> "$out/$arch.files.err" ||
      echo "$arch: scoring the original files failed (see $out/$arch.files.err)"
  fi
done
node scripts/paper-scale-summary.mjs "$out" "${archs[@]}" | tee "$out/summary.json"
