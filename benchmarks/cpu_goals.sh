#!/usr/bin/env bash
# CPU goals of the fast-inference issue: DINOv3-S/16 teacher vs a hybrid with 2 F blocks (the rest L/W),
# fp32, batch 1, 2 threads, eager and compiled, at 1024x1024 and 2048x2048.
# Results: benchmarks/results/cpu-dinov3s-<mode>-<res>/bench.{json,md,png}. Run from the repository root.
set -euo pipefail
PY=${PY:-.venv/bin/python}
ARCH=${ARCH:-LLWLWFLLWLLF}
export OMP_NUM_THREADS=2
for mode in eager compiled; do
  flag=""; [ "$mode" = compiled ] && flag="--compile"
  $PY -m jetvit bench --preset dinov3-s --arch "$ARCH" --res 1024x1024 --threads 2 --repeats 10 --warmup 2 $flag \
      --out "benchmarks/results/cpu-dinov3s-$mode-1024"
  $PY -m jetvit bench --preset dinov3-s --arch "$ARCH" --res 2048x2048 --threads 2 --repeats 5 --warmup 1 $flag \
      --out "benchmarks/results/cpu-dinov3s-$mode-2048"
done
