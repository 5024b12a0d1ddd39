#!/usr/bin/env bash
# Ablations of issue 12 on our validation split, at a cheap input size: each path alone, plain concatenation,
# and ECA + AFF fusion, with and without MPM, two seeds each. Every run resumes if it was interrupted.
# Usage: bash scripts/ablations.sh [SIZE] [EPOCHS]   (then: node scripts/ablation-table.mjs runs/ablations)
set -euo pipefail
cd "$(dirname "$0")/.."
size=${1:-64}
epochs=${2:-10}
split=runs/ablations/split.csv
mkdir -p runs/ablations
[ -f "$split" ] || node bin/hemato.js split ../shared/data/pbc --seed 0 --out "$split"
for model in convnext-only swin-only dualpath-concat dualpath-atto; do
  for mpm in off on; do
    for seed in 1 2; do
      out="runs/ablations/${model}-mpm-${mpm}-seed${seed}"
      flags=(--split "$split" --out "$out" --model "$model" --size "$size" --epochs "$epochs" --seed "$seed" --patience "$epochs")
      [ "$mpm" = on ] && flags+=(--mpm)
      if [ -f "$out/model.safetensors" ]; then continue; fi
      if [ -f "$out/checkpoint.safetensors" ]; then flags+=(--resume); fi
      node bin/hemato.js train ../shared/data/pbc "${flags[@]}"
    done
  done
done
