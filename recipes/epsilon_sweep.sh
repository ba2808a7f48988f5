#!/usr/bin/env bash
# Test perplexity against epsilon on the embedded demo: one run directory per epsilon, each with
# REPEATS independent DP draws (default 3), then one plot (log-x, error bars = std over the draws):
#   bash recipes/epsilon_sweep.sh            -> runs/sweep/results.{png,md}
set -euo pipefail
REPEATS="${REPEATS:-3}"
for eps in 0.5 1 2 4 8; do
  accelerate launch examples/run_dpkd.py --config recipes/demo.yaml --target_epsilon "$eps" \
    --run_dir "runs/sweep/eps_$eps" --repeats "$REPEATS" \
    --stages data,histogram,teacher,generate,students,evaluate
done
python examples/plot_sweep.py runs/sweep
