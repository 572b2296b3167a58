#!/usr/bin/env bash
# The main job: set up, meta-train MAML (TRPO, second order) on Navigation2D with the paper's
# settings for 150 meta-iterations (a few minutes on 2 CPU cores), then evaluate adaptation on
# 40 held-out goals after 0..3 gradient steps, print the returns beside the paper's and write
# the plots (learning curves and the adaptation curve).
set -euo pipefail
cd "$(dirname "$0")/.."
bash experiments/setup.sh
run=runs/quickstart-$(date +%Y%m%d-%H%M%S)
.venv/bin/rlmaml train experiments/navigation2d_quick.yaml --run-dir "$run"
.venv/bin/rlmaml evaluate "$run"
