#!/usr/bin/env bash
# CPU goals of the fast-inference issue: DINOv3-S/16 teacher vs a hybrid with 2 F blocks (the rest L/W),
# fp32, batch 1, 2 threads, eager and compiled, at 1024x1024 and 2048x2048. Peak memory is measured (eagerly, in
# a subprocess) in the eager runs only; the compiled runs skip it.
# Results: benchmarks/results/cpu-dinov3s-<mode>-<res>/bench.{json,md,png}. Run from the repository root.
set -euo pipefail
PY=${PY:-.venv/bin/python}
ARCH=${ARCH:-LLWLWFLLWLLF}
REPEATS_1K=${REPEATS_1K:-7}
REPEATS_2K=${REPEATS_2K:-3}
export OMP_NUM_THREADS=2
for mode in eager compiled; do
  flags=""; [ "$mode" = compiled ] && flags="--compile --no-memory"
  $PY -m jetvit bench --preset dinov3-s --arch "$ARCH" --res 1024x1024 --threads 2 --repeats "$REPEATS_1K" \
      --warmup 1 $flags --out "benchmarks/results/cpu-dinov3s-$mode-1024"
  $PY -m jetvit bench --preset dinov3-s --arch "$ARCH" --res 2048x2048 --threads 2 --repeats "$REPEATS_2K" \
      --warmup 1 $flags --out "benchmarks/results/cpu-dinov3s-$mode-2048"
done
