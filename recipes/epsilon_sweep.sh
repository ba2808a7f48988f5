#!/usr/bin/env bash
# Test perplexity against epsilon on the embedded demo: one run directory per epsilon, each with
# REPEATS independent DP draws (default 3), then one plot (log-x, error bars = std over the draws):
#   bash recipes/epsilon_sweep.sh            -> runs/sweep/results.{png,md}
# The data stage (corpus, tokenizer, public base models) does not depend on epsilon: it runs once, in the
# epsilon-2 run, and the others start from a copy of it. The epsilon-2 run also trains the non-private
# teacher and student (epsilon inf): with the public base models (epsilon 0, in every run) they are the
# plot's dashed reference lines.
set -euo pipefail
REPEATS="${REPEATS:-3}"
ROOT="${ROOT:-runs/sweep}"
for eps in 2 0.5 1 4 8; do
  run="$ROOT/eps_$eps"
  methods=distildp,dp_syn_data,dp_sgd_student
  if [ "$eps" = 2 ]; then
    methods="$methods,non_private_teacher,non_private_student"
  elif [ ! -e "$run/stages/data.json" ]; then
    mkdir -p "$run/stages"
    cp -r "$ROOT/eps_2/data" "$ROOT/eps_2/base" "$run/"
    cp "$ROOT/eps_2/stages/data.json" "$run/stages/"
  fi
  accelerate launch examples/run_dpkd.py --config recipes/demo.yaml --target_epsilon "$eps" \
    --run_dir "$run" --repeats "$REPEATS" --methods "$methods" \
    --stages data,histogram,teacher,generate,students,evaluate
done
python examples/plot_sweep.py "$ROOT"
