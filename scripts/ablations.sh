#!/usr/bin/env bash
# The reproduction study's ablations (docs/results.md) on our validation split, at a cheap input size: each path
# alone, plain concatenation, and ECA + AFF fusion, with and without MPM, two seeds each. Every run resumes if it was
# interrupted.
#   bash scripts/ablations.sh [SIZE] [EPOCHS] [extra train flags...]
#   then: node scripts/ablation-table.mjs runs/ablations
# Environment:
#   HEMATO    the hemato command (default: node bin/hemato.js; on a GPU server: the bundle's run.sh)
#   PACKS     a folder with pbc-SIZE-mpm-off.pack and pbc-SIZE-mpm-on.pack (hemato pack --split) to train from,
#             instead of decoding ../shared/data/pbc in every run
#   JOBS      runs at once (default 1; on a GPU several small runs share it well)
#   RUNS      where the runs go (default runs/ablations)
#   MODELS, MPM  a subset of the grid (default: all four models; off on)
set -euo pipefail
cd "$(dirname "$0")/.."
size=${1:-64}
epochs=${2:-10}
shift $(( $# < 2 ? $# : 2 ))
read -r -a hemato <<< "${HEMATO:-node bin/hemato.js}"
runs=${RUNS:-runs/ablations}
jobs=${JOBS:-1}
split=$runs/split.csv
mkdir -p "$runs"
[ -n "${PACKS:-}" ] || [ -f "$split" ] || "${hemato[@]}" split ../shared/data/pbc --seed 0 --out "$split"

one_run() {
  local model=$1 mpm=$2 seed=$3
  shift 3
  local out="$runs/${model}-mpm-${mpm}-seed${seed}"
  [ -f "$out/model.safetensors" ] && return 0
  local flags=(--out "$out" --model "$model" --size "$size" --epochs "$epochs" --seed "$seed" --patience "$epochs" "$@")
  if [ -n "${PACKS:-}" ]; then flags+=(--pack "$PACKS/pbc-${size}-mpm-${mpm}.pack")
  else flags=(../shared/data/pbc --split "$split" "${flags[@]}"); [ "$mpm" = on ] && flags+=(--mpm); fi
  [ -f "$out/checkpoint.safetensors" ] && flags+=(--resume)
  mkdir -p "$out"
  "${hemato[@]}" train "${flags[@]}" > "$out/train.out" 2> "$out/train.err" || echo "ablations: $out failed (exit $?); see $out/train.err" >&2
}

for model in ${MODELS:-convnext-only swin-only dualpath-concat dualpath-atto}; do
  for mpm in ${MPM:-off on}; do
    for seed in 1 2; do
      while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n || true; done
      one_run "$model" "$mpm" "$seed" "$@" &
    done
  done
done
wait
