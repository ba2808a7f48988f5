#!/usr/bin/env bash
# Perplexity against epsilon on the embedded demo: one run directory per epsilon.
set -euo pipefail
for eps in 0.5 1 2 4 8; do
  accelerate launch examples/run_dpkd.py --config recipes/demo.yaml --target_epsilon "$eps" \
    --run_dir "runs/sweep/eps_$eps" --methods distildp,dp_syn_data,dp_sgd_student --stages data,histogram,teacher,generate,students,evaluate
done
